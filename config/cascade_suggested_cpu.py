# S-D config suggested by analyze.py from the routing cascade of cpu_sd (out/cpu_sd/ckpt.pt).
# sd_rank[l] = ceil(routing erank of layer l / 2) rotation planes (S = U V^T - V U^T has rank
# 2 sd_rank), at least 1 and at most head_dim // 2. Routing erank: mean over heads of the
# weight kernel M = W_q^T W_k (SCIENCE.md §2), per layer:
# [6.28, 4.22, 3.94, 3.8, 4.84, 6.78, 15.83, 21.9]
n_layer = 8
n_head = 4
n_embd = 128
attn = 'sd'
norm = 'none'
sd_rank = [4, 3, 2, 2, 3, 4, 8, 11]
