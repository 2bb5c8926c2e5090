# 125M, GPT-2 small: S−D without LayerNorm on OpenWebText; variants compose: config/sd_125m.py config/std.py
out_dir, n_layer, n_head, n_embd, attn, norm = 'out/sd_125m', 12, 12, 768, 'sd', 'none'
batch_size, gradient_accumulation_steps, block_size = 12, 40, 1024   # 491,520 tokens per iteration
max_iters, learning_rate, min_lr, warmup_iters = 30000, 6e-4, 6e-5, 2000
