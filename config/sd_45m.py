# 45M: S−D without LayerNorm on OpenWebText; variants compose: config/sd_45m.py config/std.py
out_dir, n_layer, n_head, n_embd, attn, norm = 'out/sd_45m', 10, 7, 448, 'sd', 'none'
batch_size, gradient_accumulation_steps, block_size = 16, 16, 1024   # 262,144 tokens per iteration
max_iters, learning_rate, min_lr, warmup_iters = 15000, 8e-4, 8e-5, 1500
