# Variant (referee control): LayerNorm in every block and before the output
norm, out_dir = 'layernorm', out_dir + '_ln'
