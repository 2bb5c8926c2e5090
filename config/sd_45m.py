# 45M scale, S−D attention without LayerNorm (the paper's setting); OpenWebText (python prepare.py openwebtext)
out_dir = 'out/sd_45m'
dataset = 'openwebtext'
n_layer, n_head, n_embd = 10, 7, 448
attn, norm = 'sd', 'none'
batch_size, gradient_accumulation_steps, block_size = 16, 16, 1024   # 262,144 tokens per iteration
max_iters, learning_rate, min_lr, warmup_iters = 15000, 0.0008, 8e-05, 1500
eval_interval, eval_iters = 1000, 200
