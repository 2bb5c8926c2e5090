# ELU+1 linear attention in the first third of the layers, the others unchanged (compose after the shape):
# python train.py config/quick_sd.py config/deep.py config/hybrid_third.py
attn = ['linear'] * (n_layer // 3) + (attn if isinstance(attn, list) else [attn] * n_layer)[n_layer // 3:]
