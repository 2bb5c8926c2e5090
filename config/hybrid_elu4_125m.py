# Hybrid (the paper's setting): ELU+1 linear attention in the first 4 layers (full head dim), S−D in the
# other 8, no LayerNorm, GPT-2 small shape; compare with config/sd_125m.py (OpenWebText)
out_dir = 'out/hybrid_elu4_125m'
dataset = 'openwebtext'
n_layer, n_head, n_embd = 12, 12, 768
attn, norm = ['linear'] * 4 + ['sd'] * 8, 'none'
batch_size, gradient_accumulation_steps, block_size = 12, 40, 1024   # 491,520 tokens per iteration
max_iters, learning_rate, min_lr, warmup_iters = 30000, 0.0006, 6e-05, 2000
eval_interval, eval_iters = 1000, 200
