# Variant: standard softmax attention with LayerNorm (GPT-2's block) instead of S−D without it
attn, norm, out_dir = 'standard', 'layernorm', out_dir + '_std'
