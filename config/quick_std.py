# Quickstart: a 7M-parameter standard-attention model (LayerNorm) on tiny shakespeare, a few minutes on a laptop CPU.
# python prepare.py shakespeare && python train.py config/quick_std.py
out_dir = 'out/quick_std'
dataset = 'shakespeare'
n_layer, n_head, n_embd = 4, 4, 128
attn, norm = 'standard', 'layernorm'
batch_size, gradient_accumulation_steps, block_size = 8, 1, 256
max_iters, learning_rate, min_lr, warmup_iters = 600, 2e-3, 2e-4, 50
eval_interval, eval_iters, log_interval = 100, 20, 10
device, dtype, compile = 'cpu', 'float32', False
