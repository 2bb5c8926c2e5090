# The GPT-2-initialisation reading of training without LayerNorm: no embedding multiplier (compose after a
# no-LayerNorm config): python train.py config/quick_sd.py config/gpt2_init.py
emb_scale = 1.0
