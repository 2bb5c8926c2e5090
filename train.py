"""
Train a GPT with standard, S−D or ELU+1 attention (per layer), on a CPU, one GPU, or several with DDP:
    python train.py config/quick_sd.py [config/std.py] [--key=value ...]
    torchrun --standalone --nproc_per_node=8 train.py config/sd_125m.py
Checkpoints are atomic; --init_from=resume continues exactly. SIGINT/SIGTERM saves a checkpoint and exits (a
second one stops at once); a NaN/inf loss stops before saving.
"""
import json
import math
import os
import signal
import sys
import time
from contextlib import nullcontext

import torch
from torch.distributed import destroy_process_group, init_process_group
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

import data
from configurator import configure
from model import GPT, GPTConfig

# defaults, overridden by config files and --key=value ------------------------------
out_dir = 'out'
eval_interval = 1000
log_interval = 10
eval_iters = 200
eval_only = False
init_from = 'scratch'       # 'scratch' | 'resume' | 'gpt2' | 'gpt2-medium' | 'gpt2-large' | 'gpt2-xl'
# data
dataset = 'openwebtext'
data_root = 'data'
gradient_accumulation_steps = 40    # global: divided among DDP processes
batch_size = 12                     # micro-batch per process
block_size = 1024
# model (see model.GPTConfig)
n_layer = 12
n_head = 12
n_embd = 768
dropout = 0.0
bias = False
norm = 'layernorm'
attn = 'standard'
head_dim = None
sd_rank = None
sd_filter = 'diag'
linear_chunk = 64
emb_scale = None                    # None: sqrt(n_embd) without LayerNorm in the blocks, else 1
# AdamW and schedule
learning_rate = 6e-4
max_iters = 600000
weight_decay = 1e-1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0
warmup_iters = 2000
lr_decay_iters = 0                  # 0: max_iters
min_lr = 6e-5
# system
seed = 1337
device = 'cuda' if torch.cuda.is_available() else 'cpu'
dtype = 'bfloat16' if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else 'float32'
compile = True
deterministic = False               # bitwise-reproducible kernels (slower)
peak_flops = 989e12                 # for MFU: H100 SXM dense bf16; measure yours with bench.py
config = {k: v for k, v in globals().items()
          if not k.startswith('_') and (v is None or isinstance(v, (int, float, str, list)))}
configure(config)
globals().update(config)


def say(msg):   # a flushed line (stdout may be a log file) that does not break the progress bar
    tqdm.write(msg)
    sys.stdout.flush()


def fail(msg):
    tqdm.write(f"error: {msg}", file=sys.stderr)
    sys.exit(1)


if dtype not in ('float32', 'bfloat16'):
    fail(f"dtype={dtype!r}: use 'float32' or 'bfloat16' (float16 would need a gradient scaler)")
if bad := [k for k in ('batch_size', 'block_size', 'gradient_accumulation_steps', 'eval_interval', 'eval_iters',
                       'log_interval', 'n_layer', 'n_head', 'n_embd') if config[k] < 1]:
    fail(f"{bad[0]}={config[bad[0]]} must be at least 1")

# distributed setup ----------------------------------------------------------
ddp = int(os.environ.get('RANK', -1)) != -1
if ddp:
    init_process_group(backend='nccl' if device.startswith('cuda') else 'gloo')
    rank, local_rank, world_size = int(os.environ['RANK']), int(os.environ['LOCAL_RANK']), int(os.environ['WORLD_SIZE'])
    if device.startswith('cuda'):
        device = f'cuda:{local_rank}'
        torch.cuda.set_device(device)
else:
    rank, world_size = 0, 1
master = rank == 0
if gradient_accumulation_steps % world_size:
    fail(f"gradient_accumulation_steps={gradient_accumulation_steps} is not divisible by the {world_size} processes")
micro_steps = gradient_accumulation_steps // world_size
tokens_per_iter = gradient_accumulation_steps * batch_size * block_size
lr_decay_iters = lr_decay_iters or max_iters
device_type = 'cuda' if 'cuda' in device else 'cpu'
torch.manual_seed(seed + rank)
if deterministic:
    os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')   # required by deterministic cuBLAS
    torch.use_deterministic_algorithms(True)
torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
autocast = nullcontext() if device_type == 'cpu' else torch.amp.autocast(device_type, dtype=getattr(torch, dtype))

# data -------------------------------------------------------------------------
data_dir = os.path.join(data_root, dataset)
splits = {split: data.open_split(data_root, dataset, split) for split in ('train', 'val')}
meta = data.read_meta(data_root, dataset)
if min(len(d) for d in splits.values()) <= block_size:
    fail(f"block_size={block_size} needs more than {block_size} tokens, but {data_dir} has "
         f"{len(splits['train'])} train / {len(splits['val'])} val tokens: lower --block_size or prepare more data")


def get_batch(split, it, micro):
    """Batch `micro` of iteration `it`, seeded by (seed, split, it, micro) alone: exact resume, the same global batch
    for any number of DDP processes. Evaluation (it = -1) does not depend on the seed: the same for every run."""
    rng_seed = [seed if it >= 0 else 0, split == 'val', it + 1, micro]
    x, y = data.get_batch(splits[split], batch_size, block_size, rng_seed)
    if device_type == 'cuda':
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x, y


# model --------------------------------------------------------------------------
model_keys = [k for k in GPTConfig.__dataclass_fields__ if k != 'vocab_size']
vocab, chars = meta.get('vocab_size', 50257), meta.get('chars')   # chars: a character-level dataset's vocabulary
model_args = {k: config[k] for k in model_keys} | {'vocab_size': vocab if chars else 64 * math.ceil(vocab / 64)}
iter_num, best_val_loss, checkpoint = 0, 1e9, None
ckpt_path = os.path.join(out_dir, 'ckpt.pt')
if meta.get('max_token_id', 0) >= vocab:
    fail(f"{data_dir}/meta.json has token id {meta['max_token_id']} outside its vocabulary of {vocab}: "
         f"prepare the data again with prepare.py")
try:   # every init_from: a bad attention name or per-layer list is a one-line error before anything else
    GPTConfig(**model_args)
except ValueError as e:
    fail(f"{e} (check the config)")
if init_from == 'resume':
    model, checkpoint = GPT.from_checkpoint(ckpt_path, device)
    if not {'optimizer', 'iter_num', 'best_val_loss'} <= set(checkpoint):
        fail(f"{ckpt_path} has no optimizer state (not written by train.py): train with --init_from=scratch")
    saved = checkpoint.get('config', {})   # compare what the user sets (also right for runs from GPT-2)
    differ = [k for k in model_keys if saved.get(k) != config[k]]
    if differ:
        fail("the config's model settings differ from the checkpoint's: " +
             ', '.join(f"{k}={config[k]!r} vs saved {saved.get(k)!r}" for k in differ))
    if checkpoint.get('chars') != chars:
        fail(f"{data_dir} has another vocabulary than {ckpt_path}: resume on the dataset it was trained on")
    model_args = checkpoint['model_args']
    iter_num, best_val_loss = checkpoint['iter_num'], checkpoint['best_val_loss']
elif init_from.startswith('gpt2'):
    model = GPT.from_pretrained(init_from, dropout=dropout)
    if block_size < model.config.block_size:
        model.crop_block_size(block_size)
    model_args = {k: getattr(model.config, k) for k in model_args}
elif init_from == 'scratch':
    model = GPT(GPTConfig(**model_args))
else:
    fail(f"init_from={init_from!r}: use 'scratch', 'resume' or a GPT-2 name ('gpt2', 'gpt2-medium', ...)")
model.to(device)
n_attn, n_params = model.num_attention_params(), model.num_params()
if master:
    try:
        with torch.device('meta'):
            uniform = GPT(GPTConfig(**(model_args | {'head_dim': None, 'sd_rank': None}))).num_attention_params()
        share = f" ({100 * n_attn / uniform:.1f}% of the uniform-width, full-rank model of this shape)"
    except ValueError:   # n_embd is not divisible by n_head: there is no uniform width
        share = ''
    say(f"parameters: {n_params / 1e6:.2f}M (non-embedding counts the tied token embedding); "
        f"attention: {n_attn / 1e6:.2f}M{share}; {tokens_per_iter:,} tokens per iteration")

optimizer = model.configure_optimizers(weight_decay, learning_rate, (beta1, beta2), device_type)
if checkpoint is not None:
    optimizer.load_state_dict(checkpoint['optimizer'])
raw_model, flops_per_token = model, model.flops_per_token(block_size)   # for MFU
if compile:
    model = torch.compile(model)
if ddp:
    model = DDP(model, device_ids=[local_rank] if device_type == 'cuda' else None)


def get_lr(it):
    """Linear warmup, then cosine decay to min_lr at lr_decay_iters (min_lr = learning_rate: constant)."""
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    ratio = min(1, (it - warmup_iters) / max(1, lr_decay_iters - warmup_iters))
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (learning_rate - min_lr)


@torch.no_grad()
def estimate_loss():
    out = {}
    model.eval()
    for split in ('train', 'val'):
        total = torch.zeros((), device=device)
        for k in range(rank, eval_iters, world_size):   # the same batches for any number of processes
            x, y = get_batch(split, -1, k)
            with autocast:
                total += model(x, y)[1].float()
        if ddp:
            torch.distributed.all_reduce(total)
        out[split] = total.item() / eval_iters
    model.train()
    return out


def save_checkpoint():
    ckpt = {'model': raw_model.state_dict(), 'optimizer': optimizer.state_dict(), 'model_args': model_args,
            'iter_num': iter_num, 'best_val_loss': best_val_loss, 'config': config, 'chars': chars}
    data.write_files({ckpt_path: lambda f: torch.save(ckpt, f)})


log_path, lines = os.path.join(out_dir, 'log.jsonl'), []
if master:
    os.makedirs(out_dir, exist_ok=True)
    if init_from == 'resume' and os.path.exists(log_path):   # drop what was logged after the checkpoint (and a
        with open(log_path) as f:                            # last line cut short by a kill: it has no newline)
            lines = [line for line in f if line.endswith('\n') and json.loads(line)['iter'] < iter_num]
    data.write_files({log_path: ''.join(lines)})
checkpoint = None   # free its memory


def log(record):
    with open(log_path, 'a') as f:
        f.write(json.dumps(record) + '\n')


def on_signal(signum, frame):   # the first SIGINT/SIGTERM stops with a checkpoint, a second one at once
    stop_signal.append(signum)
    signal.signal(signum, signal.SIG_DFL)


stop_signal = []
for sig in (signal.SIGINT, signal.SIGTERM):
    signal.signal(sig, on_signal)

# training loop --------------------------------------------------------------------


def check_finite():
    """Stop before anything is saved if a loss or gradient norm since the last check was NaN/inf (one host sync)."""
    if ddp:
        torch.distributed.all_reduce(bad_iter, op=torch.distributed.ReduceOp.MIN)
    if bad_iter.item() < sys.maxsize:
        fail(f"the loss became NaN or inf at iteration {bad_iter.item()}; {nan_hint}")


nan_hint = f"{ckpt_path} keeps the last good state: lower learning_rate or raise warmup_iters, then resume"
bad_iter = torch.tensor(sys.maxsize, device=device)   # first iteration with a non-finite loss or gradient
loss_sum = torch.zeros((), device=device)
saved_iter = iter_num if init_from == 'resume' else -1
t0, t_start, iters_since, lr = time.time(), time.time(), 0, get_lr(iter_num)
bar = tqdm(total=max_iters, initial=iter_num, disable=not master or not sys.stderr.isatty(), dynamic_ncols=True,
           desc='train')
while True:
    if ddp and iter_num % log_interval == 0:   # every process must agree to stop at the same iteration
        flag = torch.tensor(float(len(stop_signal)), device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        stopping = flag.item() > 0
    else:
        stopping = bool(stop_signal) and not ddp
    last = stopping or eval_only or iter_num >= max_iters
    if iters_since and (iter_num % log_interval == 0 or last):   # mean loss of the iterations since the last line
        check_finite()
        if ddp:
            torch.distributed.all_reduce(loss_sum)
        lossf = loss_sum.item() / iters_since / world_size
        dt = time.time() - t0
        if master:
            tokens_per_s = iters_since * tokens_per_iter / dt
            mfu = flops_per_token * tokens_per_s / peak_flops   # model FLOPs utilization
            log({'iter': iter_num - 1, 'loss': lossf, 'lr': lr, 'tokens_per_s': tokens_per_s, 'mfu': mfu,
                 'elapsed': time.time() - t_start})
            bar.set_postfix(loss=f"{lossf:.4f}", tok_s=f"{tokens_per_s:,.0f}", mfu=f"{100 * mfu:.1f}%")
            if bar.disable:   # no terminal to draw the bar on: a line instead
                say(f"iter {iter_num - 1}: loss {lossf:.4f}, lr {lr:.3g}, {tokens_per_s:,.0f} tokens/s, "
                    f"mfu {100 * mfu:.2f}%")
        loss_sum.zero_()
        t0, iters_since = time.time(), 0

    if iter_num % eval_interval == 0 or last:
        t_pause = time.time()
        check_finite()
        if iter_num % eval_interval == 0 or iter_num >= max_iters or eval_only:
            losses = estimate_loss()
            if not (math.isfinite(losses['train']) and math.isfinite(losses['val'])):
                fail(f"the evaluation loss is NaN or inf at iteration {iter_num}; {nan_hint}")
            best_val_loss = min(best_val_loss, losses['val'])
            if master:
                record = {'iter': iter_num, 'train_loss': losses['train'], 'val_loss': losses['val'],
                          'val_ppl': math.exp(min(losses['val'], 50)), 'elapsed': time.time() - t_start}
                log(record)
                say(f"iter {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}, "
                    f"val ppl {record['val_ppl']:.2f}")
        if master and iter_num > 0 and iter_num != saved_iter and not eval_only:
            save_checkpoint()
            saved_iter = iter_num
        if stopping and master:
            say(f"stopped by signal at iteration {iter_num}; " +
                (f"checkpoint saved to {ckpt_path}, continue with --init_from=resume" if iter_num > 0
                 else "nothing to save yet"))
        if last:
            break
        t0 += time.time() - t_pause   # tokens_per_s and mfu count training time only

    torch.manual_seed(hash((seed, rank, iter_num)))   # dropout depends on (seed, rank, iteration) alone: exact resume
    lr = get_lr(iter_num)
    for group in optimizer.param_groups:
        group['lr'] = lr
    for micro in range(micro_steps):
        x, y = get_batch('train', iter_num, rank * micro_steps + micro)
        if ddp:   # all-reduce gradients on the last micro-step only
            model.require_backward_grad_sync = micro == micro_steps - 1
        with autocast:
            loss = model(x, y)[1] / micro_steps
        loss.backward()
        loss_sum += loss.detach()
    finite = torch.isfinite(loss_sum)
    if grad_clip != 0.0:
        finite &= torch.isfinite(torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    bad_iter = torch.where(finite, bad_iter, bad_iter.clamp(max=iter_num))
    iter_num += 1
    iters_since += 1
    bar.update(1)

bar.close()
if ddp:
    destroy_process_group()
