# The CPU experiments of the README's Results: an 8-layer, 7.8M-parameter S−D model (no LayerNorm) on
# ../shared/data (python prepare.py --input ../shared/data/shakespeare_complete.txt
# ../shared/data/enwiki_sample.txt --name shared). Variants by override, e.g. --attn=standard --norm=layernorm.
out_dir = 'out/cpu_sd'
dataset = 'shared'
n_layer, n_head, n_embd = 8, 4, 128
attn, norm = 'sd', 'none'
batch_size, gradient_accumulation_steps, block_size = 16, 1, 128
max_iters, learning_rate, min_lr, warmup_iters = 1000, 2e-3, 2e-4, 100
eval_interval, eval_iters, log_interval = 250, 20, 25
device, dtype, compile = 'cpu', 'float32', False
