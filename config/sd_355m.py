# 355M, GPT-2 medium: S−D without LayerNorm on OpenWebText; variants compose: config/sd_355m.py config/std.py
out_dir, n_layer, n_head, n_embd, attn, norm = 'out/sd_355m', 24, 16, 1024, 'sd', 'none'
batch_size, gradient_accumulation_steps, block_size = 16, 30, 1024   # 491,520 tokens per iteration
max_iters, learning_rate, min_lr, warmup_iters = 60000, 3e-4, 3e-5, 2000
