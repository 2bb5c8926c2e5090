# Quick cascade-allocated routing rank on tiny shakespeare (CPU, minutes): S of rank 2r = 2, 4, 6, 8 by
# layer, S−D without LayerNorm; compare with config/quick_sd.py.  python train.py config/cascade_rank_quick.py
out_dir = 'out/cascade_rank_quick'
dataset = 'shakespeare'
n_layer, n_head, n_embd = 4, 4, 128
attn, norm = 'sd', 'none'
sd_rank = [1, 2, 3, 4]
batch_size, gradient_accumulation_steps, block_size = 8, 1, 256
max_iters, learning_rate, min_lr, warmup_iters = 600, 2e-3, 2e-4, 50
eval_interval, eval_iters, log_interval = 100, 20, 10
device, dtype, compile = 'cpu', 'float32', False
