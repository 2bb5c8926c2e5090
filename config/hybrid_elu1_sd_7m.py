# 7M hybrid: ELU+1 in the first layer (1/4 of the depth, like 4/12), S−D without LayerNorm in the other 3;
# compare with config/sd_7m.py (OpenWebText)
out_dir = 'out/hybrid_elu1_sd_7m'
dataset = 'openwebtext'
n_layer, n_head, n_embd = 4, 4, 128
attn, norm = ['linear'] + ['sd'] * 3, 'none'
batch_size, gradient_accumulation_steps, block_size = 16, 8, 1024   # 131,072 tokens per iteration
max_iters, learning_rate, min_lr, warmup_iters = 5000, 0.001, 0.0001, 500
eval_interval, eval_iters = 1000, 200
