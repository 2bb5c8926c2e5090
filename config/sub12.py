# The paper's depth on a CPU: 12 layers x 4 heads x 128, S−D without LayerNorm, our BPE of 2,048 (README)
out_dir, n_layer, n_head, n_embd, attn, norm = 'out/sub12_sd', 12, 4, 128, 'sd', 'none'
dataset, batch_size, gradient_accumulation_steps, block_size = 'swiki_bpe2k', 16, 1, 128
max_iters, learning_rate, min_lr, warmup_iters, beta2 = 600, 2e-3, 2e-4, 60, 0.99
eval_interval, eval_iters, log_interval = 150, 20, 10
device, dtype, compile = 'cpu', 'float32', False
