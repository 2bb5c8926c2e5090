# Quick hybrid on tiny shakespeare (CPU, minutes): ELU+1 in the first layer, S−D without LayerNorm in the
# other 3; compare with config/quick_sd.py.  python train.py config/hybrid_elu1_quick_sd.py
out_dir = 'out/hybrid_elu1_quick_sd'
dataset = 'shakespeare'
n_layer, n_head, n_embd = 4, 4, 128
attn, norm = ['linear'] + ['sd'] * 3, 'none'
batch_size, gradient_accumulation_steps, block_size = 8, 1, 256
max_iters, learning_rate, min_lr, warmup_iters = 600, 2e-3, 2e-4, 50
eval_interval, eval_iters, log_interval = 100, 20, 10
device, dtype, compile = 'cpu', 'float32', False
