# ELU+1 linear attention in the first third of the layers, the others unchanged.
# Composes after a scale file (and other variants): python train.py config/quick_sd.py config/hybrid_third.py
attn = ['linear'] * (n_layer // 3) + (attn if isinstance(attn, list) else [attn] * n_layer)[n_layer // 3:]
out_dir += '_hybrid'
