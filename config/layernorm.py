# Referee control: LayerNorm in every block and before the output.
# Composes after a scale file (and other variants): python train.py config/quick_sd.py config/layernorm.py
norm, out_dir = 'layernorm', out_dir + '_ln'
