# Variant: six layers, e.g. python train.py config/quick_sd.py config/deep.py
n_layer, out_dir = 6, out_dir + '_d6'
