# 20M: S−D without LayerNorm on OpenWebText; variants compose: config/sd_20m.py config/std.py
out_dir, n_layer, n_head, n_embd, attn, norm = 'out/sd_20m', 8, 4, 256, 'sd', 'none'
batch_size, gradient_accumulation_steps, block_size = 16, 8, 1024   # 131,072 tokens per iteration
max_iters, learning_rate, min_lr, warmup_iters = 10000, 1e-3, 1e-4, 1000
