# S-D config suggested by analyze.py --allocate width from the routing cascade of d6_sd_emb1_s1337
# (out/exp/d6_sd_emb1_s1337): head_dim[l] = head_dim * erank[l] / max(erank), a multiple of 8 (>= 8).
# Routing erank, mean over heads of the interaction A = QK^T/sqrt(d_h) on text, per layer:
# [2.07, 3.2, 2.26, 2.52, 3.38, 3.14]
n_layer = 6
n_head = 4
n_embd = 128
attn = 'sd'
norm = 'none'
head_dim = [16, 32, 24, 24, 32, 32]
