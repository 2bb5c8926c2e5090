# Variant: ELU+1 linear attention in the first third of the layers, the others unchanged
attn = ['linear'] * (n_layer // 3) + (attn if isinstance(attn, list) else [attn] * n_layer)[n_layer // 3:]
out_dir += '_hybrid'
