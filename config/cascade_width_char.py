# Cascade-allocated S−D after config/quick_sd.py (README): head_dim[l] = 32 erank[l] / max(erank) in 8s,
# erank: routing erank per layer on text of d6_sd_emb1_s1337 (analyze.py), [2.07, 3.2, 2.26, 2.52, 3.38, 3.14]
n_layer, head_dim = 6, [16, 32, 24, 24, 32, 32]
