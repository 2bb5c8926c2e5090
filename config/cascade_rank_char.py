# Cascade-allocated S−D after config/quick_sd.py (README): sd_rank[l] = ceil(erank[l] / 2) in [1, d_h / 2],
# erank: routing erank per layer on text of d6_sd_emb1_s1337 (analyze.py), [2.07, 3.2, 2.26, 2.52, 3.38, 3.14]
n_layer, sd_rank = 6, [2, 2, 2, 2, 2, 2]
