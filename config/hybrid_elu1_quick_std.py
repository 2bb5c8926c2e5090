# Control for hybrid_elu1_quick_sd: ELU+1 in the first layer, standard attention with LayerNorm in the other 3;
# compare with config/quick_std.py.
out_dir = 'out/hybrid_elu1_quick_std'
attn, norm = ['linear'] + ['standard'] * 3, 'layernorm'
dataset = 'shakespeare_char'
n_layer, n_head, n_embd = 4, 4, 128
batch_size, gradient_accumulation_steps, block_size = 12, 1, 64
max_iters, learning_rate, min_lr, warmup_iters, beta2 = 2000, 4e-3, 4e-4, 100, 0.99
eval_interval, eval_iters, log_interval = 250, 50, 10
device, dtype, compile = 'cpu', 'float32', False
