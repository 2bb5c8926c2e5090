# Quickstart: S−D attention without LayerNorm (the paper's model), character-level tiny shakespeare, ~2 minutes
# on a laptop CPU.  python prepare.py shakespeare_char && python train.py config/quick_sd.py
out_dir = 'out/quick_sd'
attn, norm = 'sd', 'none'
dataset = 'shakespeare_char'
n_layer, n_head, n_embd = 4, 4, 128
batch_size, gradient_accumulation_steps, block_size = 12, 1, 64
max_iters, learning_rate, min_lr, warmup_iters, beta2 = 2000, 4e-3, 4e-4, 100, 0.99
eval_interval, eval_iters, log_interval = 250, 50, 10
device, dtype, compile = 'cpu', 'float32', False
