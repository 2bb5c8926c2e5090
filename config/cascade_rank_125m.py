# Cascade-allocated routing rank: S = U V^T − V U^T with rank 2r growing with depth like the spectral
# cascade (erank(S) about 2 in layer 0, about 20 at the end), S−D without LayerNorm, GPT-2 small shape.
# S is a small part of S−D attention (u, v and output projections dominate), so this alone saves only
# about 2% of the attention parameters; cascade_width_125m / cascade_rankwidth_125m shrink the widths.
out_dir = 'out/cascade_rank_125m'
dataset = 'openwebtext'
n_layer, n_head, n_embd = 12, 12, 768
attn, norm = 'sd', 'none'
sd_rank = [1, 1, 2, 2, 3, 4, 5, 6, 7, 8, 10, 12]
batch_size, gradient_accumulation_steps, block_size = 12, 40, 1024   # 491,520 tokens per iteration
max_iters, learning_rate, min_lr, warmup_iters = 30000, 0.0006, 6e-05, 2000
eval_interval, eval_iters = 1000, 200
