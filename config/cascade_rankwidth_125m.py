# Cascade-allocated width and routing rank together: head_dim as in cascade_width_125m, S of rank 2r as in
# cascade_rank_125m; S−D without LayerNorm, GPT-2 small shape: about 54% fewer attention parameters
out_dir = 'out/cascade_rankwidth_125m'
dataset = 'openwebtext'
n_layer, n_head, n_embd = 12, 12, 768
attn, norm = 'sd', 'none'
head_dim = [16] * 6 + [24, 32, 40, 48, 56, 64]
sd_rank = [1, 1, 2, 2, 3, 4, 5, 6, 7, 8, 10, 12]
batch_size, gradient_accumulation_steps, block_size = 12, 40, 1024   # 491,520 tokens per iteration
max_iters, learning_rate, min_lr, warmup_iters = 30000, 0.0006, 6e-05, 2000
eval_interval, eval_iters = 1000, 200
