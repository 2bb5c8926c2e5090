# Without LayerNorm, GPT-2's initialisation as it is: no sqrt(n_embd) embedding multiplier.
# Composes after a scale file (and other variants): python train.py config/quick_sd.py config/gpt2_init.py
emb_scale, out_dir = 1.0, out_dir + '_gpt2init'
