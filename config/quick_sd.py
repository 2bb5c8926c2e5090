# Quickstart (README): S−D attention without LayerNorm on character-level tiny shakespeare, ~2 min on a CPU
out_dir, n_layer, n_head, n_embd, attn, norm = 'out/quick_sd', 4, 4, 128, 'sd', 'none'
dataset, batch_size, gradient_accumulation_steps, block_size = 'shakespeare_char', 12, 1, 64
max_iters, learning_rate, min_lr, warmup_iters, beta2 = 2000, 4e-3, 4e-4, 100, 0.99
eval_interval, eval_iters, log_interval = 250, 50, 10
device, dtype, compile = 'cpu', 'float32', False
