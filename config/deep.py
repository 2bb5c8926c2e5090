# Six layers instead of four (compose after a quick config): python train.py config/quick_sd.py config/deep.py
n_layer = 6
