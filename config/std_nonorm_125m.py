# Referee control: standard attention WITHOUT LayerNorm, GPT-2 small shape; does the cascade appear?
out_dir = 'out/std_nonorm_125m'
dataset = 'openwebtext'
n_layer, n_head, n_embd = 12, 12, 768
attn, norm = 'standard', 'none'
batch_size, gradient_accumulation_steps, block_size = 12, 40, 1024   # 491,520 tokens per iteration
max_iters, learning_rate, min_lr, warmup_iters = 30000, 0.0006, 6e-05, 2000
eval_interval, eval_iters = 1000, 200
