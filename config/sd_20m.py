# 20M scale, S−D attention without LayerNorm (the paper's setting); OpenWebText (python prepare.py openwebtext)
out_dir = 'out/sd_20m'
dataset = 'openwebtext'
n_layer, n_head, n_embd = 8, 4, 256
attn, norm = 'sd', 'none'
batch_size, gradient_accumulation_steps, block_size = 16, 8, 1024   # 131,072 tokens per iteration
max_iters, learning_rate, min_lr, warmup_iters = 10000, 0.001, 0.0001, 1000
eval_interval, eval_iters = 1000, 200
