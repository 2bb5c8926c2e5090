# Referee control: no LayerNorm anywhere (e.g. after config/std.py).
# Composes after a scale file (and other variants): python train.py config/quick_sd.py config/nonorm.py
norm, out_dir = 'none', out_dir + '_nonorm'
