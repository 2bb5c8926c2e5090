# 355M scale, standard attention with LayerNorm; OpenWebText (python prepare.py openwebtext)
out_dir = 'out/std_355m'
dataset = 'openwebtext'
n_layer, n_head, n_embd = 24, 16, 1024
attn, norm = 'standard', 'layernorm'
batch_size, gradient_accumulation_steps, block_size = 16, 30, 1024   # 491,520 tokens per iteration
max_iters, learning_rate, min_lr, warmup_iters = 60000, 0.0003, 3e-05, 2000
eval_interval, eval_iters = 1000, 200
