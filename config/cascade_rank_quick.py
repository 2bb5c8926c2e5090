# Quick cascade-allocated routing rank: S of rank 2r = 2, 4, 6, 8 by layer, S−D without LayerNorm;
# compare with config/quick_sd.py.
out_dir = 'out/cascade_rank_quick'
attn, norm = 'sd', 'none'
sd_rank = [1, 2, 3, 4]
dataset = 'shakespeare_char'
n_layer, n_head, n_embd = 4, 4, 128
batch_size, gradient_accumulation_steps, block_size = 12, 1, 64
max_iters, learning_rate, min_lr, warmup_iters, beta2 = 2000, 4e-3, 4e-4, 100, 0.99
eval_interval, eval_iters, log_interval = 250, 50, 10
device, dtype, compile = 'cpu', 'float32', False
