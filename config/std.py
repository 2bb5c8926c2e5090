# Standard softmax attention with LayerNorm (GPT-2's block) instead of S−D without it.
# Composes after a scale file (and other variants): python train.py config/quick_sd.py config/std.py
attn, norm, out_dir = 'standard', 'layernorm', out_dir + '_std'
