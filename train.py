"""Train a GPT on a CPU, one GPU or several (DDP); atomic, exactly resumable checkpoints; survives spikes.
    python train.py config/quick_sd.py [config/std.py] [--key=value ...]
    torchrun --standalone --nproc_per_node=8 train.py config/sd_125m.py
"""
import copy
import json
import math
import os
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import fields

import torch
from torch.distributed import destroy_process_group, init_process_group
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

import data
from configurator import configure
from model import GPT, GPTConfig

# defaults, overridden by config files and --key=value ------------------------------
out_dir = 'out'                     # ckpt.pt and log.jsonl
eval_interval = 1000                # iterations between evaluations (each saves a checkpoint)
log_interval = 10                   # iterations between log lines (each checks the losses for a spike)
eval_iters = 200                    # batches per evaluation
eval_only = False                   # evaluate once; train and save nothing
init_from = 'scratch'               # 'scratch' | 'resume' (out_dir/ckpt.pt)
# data
dataset = 'openwebtext'             # data_root/dataset/{train,val}.bin and meta.json, from prepare.py
data_root = 'data'                  # where prepare.py wrote the datasets
gradient_accumulation_steps = 40    # global: divided among DDP processes
batch_size = 12                     # micro-batch per process
block_size = 1024                   # context length
# model: GPTConfig's fields and defaults (see there; block_size above, vocab_size from the data), no bias
model_defaults = {f.name: f.default for f in fields(GPTConfig) if f.name != 'vocab_size'}
globals().update({k: v for k, v in model_defaults.items() if k != 'block_size'})
bias = False                        # biases in Linear layers and LayerNorms (GPTConfig's True is GPT-2's)
# AdamW and schedule
learning_rate = 6e-4                # the peak, after warmup
max_iters = 600000                  # total iterations
weight_decay = 1e-1                 # on matrices only
beta1 = 0.9                         # AdamW's momentum
beta2 = 0.95                        # AdamW's second-moment decay
grad_clip = 1.0                     # clip the gradient norm at this value; 0: off
warmup_iters = 2000                 # linear warmup
lr_decay_iters = 0                  # cosine decay to min_lr until this iteration; 0: max_iters
min_lr = 6e-5                       # the learning rate after the decay
# surviving a spike (see check): a NaN/inf loss, or after warmup a loss above spike_factor x its running mean
spike_factor = 2.0                  # 0: NaN/inf only
good_interval = 100                 # iterations between in-memory copies of the last good state to go back to
max_spikes = 3                      # this many spikes in a row (no new good state between them) stop the run
# system
seed = 1337                         # seeds the weights, the batches and dropout
device = 'cuda' if torch.cuda.is_available() else 'cpu'   # 'cpu', 'cuda', 'cuda:1', ...
dtype = 'bfloat16' if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else 'float32'   # autocast
compile = True                      # torch.compile the model
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
# every numeric knob in its range before anything starts (one line, not an optimizer's traceback)
for names, ok, rule in (
        ('batch_size block_size gradient_accumulation_steps eval_interval eval_iters log_interval n_layer '
         'n_head n_embd good_interval max_spikes', lambda v: v >= 1, 'at least 1'),
        ('max_iters warmup_iters lr_decay_iters min_lr weight_decay grad_clip logit_softcap attn_softcap',
         lambda v: v >= 0, 'at least 0'),
        ('beta1 beta2 dropout', lambda v: 0 <= v < 1, 'in [0, 1)'),
        ('learning_rate peak_flops', lambda v: v > 0, 'above 0'),
        ('spike_factor', lambda v: v == 0 or v > 1, '0 (off) or above 1')):
    for k in names.split():
        v = config[k]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not ok(v):
            fail(f"{k}={v!r} must be {rule}")

# distributed setup ----------------------------------------------------------
ddp = int(os.environ.get('RANK', -1)) != -1
rank, world_size = 0, 1
if ddp:
    init_process_group(backend='nccl' if device.startswith('cuda') else 'gloo')
    rank, local_rank, world_size = (int(os.environ[k]) for k in ('RANK', 'LOCAL_RANK', 'WORLD_SIZE'))
    if device.startswith('cuda'):
        device = f'cuda:{local_rank}'
        torch.cuda.set_device(device)
master = rank == 0
if gradient_accumulation_steps % world_size:
    fail(f"gradient_accumulation_steps={gradient_accumulation_steps} is not divisible by the {world_size} "
         f"processes")
micro_steps = gradient_accumulation_steps // world_size
tokens_per_iter = gradient_accumulation_steps * batch_size * block_size
device_type = 'cuda' if 'cuda' in device else 'cpu'
torch.manual_seed(seed + rank)
if deterministic:
    os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')   # required by deterministic cuBLAS
    torch.use_deterministic_algorithms(True)
torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
autocast = nullcontext() if device_type == 'cpu' else torch.autocast(device_type, dtype=getattr(torch, dtype))

# data -------------------------------------------------------------------------
data_dir = os.path.join(data_root, dataset)
splits = {split: data.open_split(data_root, dataset, split) for split in ('train', 'val')}
meta = data.read_meta(data_root, dataset)
if min(len(d) for d in splits.values()) <= block_size:
    fail(f"block_size={block_size} needs more than {block_size} tokens, but {data_dir} has "
         f"{len(splits['train'])} train / {len(splits['val'])} val: lower --block_size or prepare more data")


def get_batch(split, it, micro):
    """Batch `micro` of iteration `it`, seeded by these alone: exact resume, one batch for any DDP size."""
    rng_seed = [seed if it >= 0 else 0, split == 'val', it + 1, micro]   # evaluation (-1): the same every run
    x, y = data.get_batch(splits[split], batch_size, block_size, rng_seed)
    if device_type == 'cuda':
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x, y


# model --------------------------------------------------------------------------
vocab, tokenizer = meta.get('vocab_size', 50257), data.tokenizer_of(meta)   # travels in every checkpoint
padded = vocab if tokenizer[0] != 'gpt2' else 64 * math.ceil(vocab / 64)
model_args = {k: config[k] for k in model_defaults} | {'vocab_size': padded}
ckpt_path, log_path = os.path.join(out_dir, 'ckpt.pt'), os.path.join(out_dir, 'log.jsonl')
if meta.get('max_token_id', 0) >= vocab:
    fail(f"{data_dir}/meta.json has token id {meta['max_token_id']} outside its vocabulary of {vocab}: "
         f"prepare the data again with prepare.py")
try:   # every init_from: a bad attention name or per-layer list is a one-line error before anything else
    GPTConfig(**model_args)
except ValueError as e:
    fail(f"{e} (check the config)")
checkpoint = {}   # from scratch: nothing to go on from
if init_from == 'resume':
    model, checkpoint = GPT.from_checkpoint(ckpt_path, device)
    if not {'optimizer', 'iter_num', 'best_val_loss'} <= set(checkpoint):
        fail(f"{ckpt_path} has no optimizer state (not written by train.py): train with --init_from=scratch")
    saved = checkpoint.get('config', {})   # compare what the user sets (a field it predates: the default)
    if differ := [k for k in model_defaults if saved.get(k, model_defaults[k]) != config[k]]:
        fail("the config's model settings differ from the checkpoint's: " +
             ', '.join(f"{k}={config[k]!r} vs saved {saved.get(k)!r}" for k in differ))
    if data.tokenizer_of(checkpoint) != tokenizer:
        fail(f"{data_dir} has another vocabulary than {ckpt_path}: resume on the dataset it was trained on")
    model_args = checkpoint['model_args']
elif init_from == 'scratch':
    model = GPT(GPTConfig(**model_args)).to(device)
else:
    fail(f"init_from={init_from!r}: use 'scratch' or 'resume'")
iter_num, best_val_loss = checkpoint.get('iter_num', 0), checkpoint.get('best_val_loss', 1e9)
skips, loss_ema = checkpoint.get('skips', []), checkpoint.get('loss_ema')   # [iteration, n more skipped]

optimizer = model.configure_optimizers(weight_decay, learning_rate, (beta1, beta2), device_type)
if checkpoint:
    optimizer.load_state_dict(checkpoint['optimizer'])
raw_model, flops_per_token = model, model.flops_per_token(block_size)   # for MFU
if compile:
    model = torch.compile(model)
if ddp:
    model = DDP(model, device_ids=[local_rank] if device_type == 'cuda' else None)


def get_lr(it):   # linear warmup, then cosine decay to min_lr (learning_rate: constant) at lr_decay_iters
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    ratio = min(1, (it - warmup_iters) / max(1, (lr_decay_iters or max_iters) - warmup_iters))
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


@torch.no_grad()
def layer_stats(x, y):
    """What grows before a spike, on the micro-batch just trained (one more forward), layer by layer."""
    out, causal = {'resid_rms': [], 'score_max': []}, torch.ones(len(x[0]), len(x[0]), device=x.device).tril()
    rms = lambda t: t.float().pow(2).mean().sqrt()

    def scores(attn, args):   # one sequence at a time: a batch's scores could fill the memory
        q, k, _ = attn.qkv(args[0])
        s = [(a.float() @ b.float().mT).abs().masked_fill(causal == 0, 0).amax() for a, b in zip(q, k)]
        out['score_max'].append(torch.stack(s).amax() / math.sqrt(q.size(-1)))

    resid = lambda module, args: out['resid_rms'].append(rms(args[0]))
    logits = lambda module, args, z: out.update(logit_rms=rms(z), logit_max=z.float().abs().amax())
    t = raw_model.transformer
    hooks = [m.register_forward_pre_hook(f) for b in t.h for m, f in ((b, resid), (b.attn, scores))]
    hooks += [t.ln_f.register_forward_pre_hook(resid), raw_model.lm_head.register_forward_hook(logits)]
    raw_model.eval()
    with autocast:
        raw_model(x, y)
    raw_model.train()
    for h in hooks:
        h.remove()
    return {k: torch.stack(v).tolist() if isinstance(v, list) else v.item() for k, v in out.items()}


def save_checkpoint():   # with the spike state; and the last good state if it is not this one (see snapshot)
    ckpt = {'model': raw_model.state_dict(), 'optimizer': optimizer.state_dict(), 'model_args': model_args,
            'iter_num': iter_num, 'best_val_loss': best_val_loss, 'config': config, 'bpe': meta.get('bpe'),
            'chars': meta.get('chars'), 'skips': skips, 'loss_ema': loss_ema, 'strikes': strikes,
            'good': good if good['iter'] < iter_num else None}
    data.write_files({ckpt_path: lambda f: torch.save(ckpt, f)})


def snapshot():   # the current state, kept in memory as the last good one to go back to (see check)
    global good, strikes
    good = {'iter': iter_num, 'model': {k: v.clone() for k, v in raw_model.state_dict().items()},
            'optimizer': copy.deepcopy(optimizer.state_dict()), 'loss_ema': loss_ema}
    strikes = 0


def log(record, below=None, spikes=False):
    """Append a record to log.jsonl; below: first drop the records from that iteration on and a line cut short
    by a kill; spikes: keep the spike records, and the others dropped go into this one's 'trace'."""
    if below is not None:
        kept, dropped = [], []
        if os.path.exists(log_path):
            with open(log_path) as f:
                for line in filter(lambda line: line.endswith('\n'), f):
                    keep = json.loads(line)['iter'] < below or spikes and '"spike_iter"' in line
                    (kept if keep else dropped).append(line)
        data.write_files({log_path: ''.join(kept)})
        if spikes:
            record['trace'] = [json.loads(line) for line in dropped]
    if record:
        with open(log_path, 'a') as f:
            f.write(json.dumps(record) + '\n')


def check():
    """The mean loss of the iterations since the last check (one host sync), or None after a spike (see the
    config; a NaN/inf gradient norm too): back to the last good state, skipping its batches to the spike."""
    global iter_num, loss_ema, strikes
    losses = torch.stack(pending) / world_size
    if ddp:
        torch.distributed.all_reduce(losses)
    losses, first, ema, bad = losses.tolist(), iter_num - len(pending), loss_ema, None
    pending.clear()
    for it, loss in enumerate(losses, first):
        if not loss < math.inf or (spike_factor and it >= warmup_iters and ema and loss > spike_factor * ema):
            bad = it
            break
        ema = loss if ema is None else 0.99 * ema + 0.01 * loss
    if bad is None:   # the same on every process, from the same all-reduced losses
        loss_ema = ema
        return sum(losses) / len(losses)
    loss, strikes = losses[bad - first], strikes + 1
    what = f"loss {loss:.4g} > {spike_factor:g} x mean {ema:.4g}" if loss < math.inf else 'NaN/inf loss/grad'
    if master:   # the log goes back too, but keeps every spike
        log({'iter': good['iter'], 'spike_iter': bad, 'spike_loss': loss if loss < math.inf else str(loss),
             'skipped': bad - good['iter'] + 1, 'in_a_row': strikes, 'elapsed': time.time() - t_start}
            | layer_stats(x, y),   # the model the spike left, before going back
            below=good['iter'], spikes=True)
    if strikes >= max_spikes:
        kept = (" or use norm='layernorm'" if model_args['norm'] != 'layernorm' else '') + \
            (f"; {ckpt_path} keeps the last good state (iteration {saved_iter})" if saved_iter > 0 else '')
        fail(f"{strikes} loss spikes in a row, the last at iteration {bad} ({what}): lower learning_rate "
             f"(now {learning_rate:g}){kept}")
    skips.append([good['iter'], bad - good['iter'] + 1])
    iter_num, loss_ema = good['iter'], good['loss_ema']
    raw_model.load_state_dict(good['model'])
    optimizer.load_state_dict(copy.deepcopy(good['optimizer']))   # a copy: it is updated in place
    if master:
        bar.n = iter_num   # say draws it again
        say(f"spike at iteration {bad} ({what}): back to iteration {iter_num}, skipping {skips[-1][1]} "
            f"batches ({strikes} in a row)")


def on_signal(signum, frame):   # the first SIGINT/SIGTERM stops with a checkpoint, a second one at once
    stop_signal.append(signum)
    signal.signal(signum, signal.SIG_DFL)


stop_signal = []
for sig in (signal.SIGINT, signal.SIGTERM):
    signal.signal(sig, on_signal)
if master:   # the parameter counts; a new log starts with them (as iteration -1), a resumed one keeps its own
    n_attn, n_params = raw_model.num_attention_params(), raw_model.num_params()
    say(f"parameters: {n_params / 1e6:.2f}M (non-embedding counts the tied token embedding); "
        f"attention: {n_attn / 1e6:.2f}M; {tokens_per_iter:,} tokens per iteration")
    os.makedirs(out_dir, exist_ok=True)
    log(None if init_from == 'resume' else {'iter': -1, 'params': n_params, 'attn_params': n_attn},
        below=iter_num if init_from == 'resume' else -1)
snapshot()   # resumed: where an uninterrupted run would go back to
good, strikes = checkpoint.get('good') or good, checkpoint.get('strikes', 0)
checkpoint = None   # free its memory

# training loop: stop? -> log -> evaluate and save -> step (nanoGPT's eval -> step -> log, begun at the log)
pending, x, y = [], None, None   # each iteration's loss since the last check (on the device); the last batch
saved_iter = iter_num   # the iteration of the last save (or the start)
t0, t_start, lr = time.time(), time.time(), get_lr(iter_num)
bar = tqdm(total=max_iters, initial=iter_num, disable=not master or not sys.stderr.isatty(),
           dynamic_ncols=True, desc='train')
while True:
    # stop? (a signal; with DDP every process must agree to stop at the same iteration)
    stopping = bool(stop_signal) and not ddp
    if ddp and iter_num % log_interval == 0:
        flag = torch.tensor(float(len(stop_signal)), device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        stopping = flag.item() > 0
    last = stopping or eval_only or iter_num >= max_iters

    # check and log the iterations since the last line, before anything is saved; a spike goes back (check)
    if pending and (iter_num % log_interval == 0 or iter_num % eval_interval == 0 or last):
        n, dt = len(pending), time.time() - t0
        if (lossf := check()) is None:   # a spike: back to the last good state
            continue
        if iter_num % log_interval == 0 and iter_num // good_interval > good['iter'] // good_interval:
            snapshot()
        if master:
            tokens_per_s = n * tokens_per_iter / dt
            mfu = flops_per_token * tokens_per_s / peak_flops   # model FLOPs utilization
            log({'iter': iter_num - 1, 'loss': lossf, 'lr': lr, 'tokens_per_s': tokens_per_s, 'mfu': mfu,
                 'elapsed': time.time() - t_start} | layer_stats(x, y))
            bar.set_postfix(loss=f"{lossf:.4f}", tok_s=f"{tokens_per_s:,.0f}", mfu=f"{100 * mfu:.1f}%")
            if bar.disable:   # no terminal to draw the bar on: a line instead
                say(f"iter {iter_num - 1}: loss {lossf:.4f}, lr {lr:.3g}, {tokens_per_s:,.0f} tokens/s, "
                    f"mfu {100 * mfu:.2f}%")

    # evaluate and save: every eval_interval iterations and at the end
    if iter_num % eval_interval == 0 or last:
        if iter_num % eval_interval == 0 or iter_num >= max_iters or eval_only:
            losses = estimate_loss()
            if not (math.isfinite(losses['train']) and math.isfinite(losses['val'])):
                fail(f"the evaluation loss is NaN or inf at iteration {iter_num}; {ckpt_path} keeps the last "
                     f"good state: lower learning_rate or raise warmup_iters, then resume")
            best_val_loss = min(best_val_loss, losses['val'])
            if master:
                record = {'iter': iter_num, 'train_loss': losses['train'], 'val_loss': losses['val'],
                          'val_ppl': math.exp(min(losses['val'], 50)), 'elapsed': time.time() - t_start}
                log(record)
                say(f"iter {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}, "
                    f"val ppl {record['val_ppl']:.2f}")
        if iter_num > 0 and iter_num != saved_iter and not eval_only:
            if iter_num % eval_interval == 0:
                snapshot()
            if master:
                save_checkpoint()
            saved_iter = iter_num
        if stopping and master:
            say(f"stopped by signal at iteration {iter_num}; " +
                (f"checkpoint saved to {ckpt_path}, continue with --init_from=resume" if iter_num > 0
                 else "nothing to save yet"))
        if last:
            break

    # step: forward, backward and update on the batches of iteration train_iter (past the skipped ones)
    if not pending:   # the first step since the last check: tokens_per_s and mfu count training time only
        t0 = time.time()
    train_iter = iter_num + sum(n for start, n in skips if start <= iter_num)   # a function of the checkpoint
    torch.manual_seed(hash((seed, rank, train_iter)))   # dropout of (seed, rank, batches) alone: exact resume
    lr = get_lr(iter_num)
    for group in optimizer.param_groups:
        group['lr'] = lr
    loss_iter = torch.zeros((), device=device)
    for micro in range(micro_steps):
        x, y = get_batch('train', train_iter, rank * micro_steps + micro)
        if ddp:   # all-reduce gradients on the last micro-step only
            model.require_backward_grad_sync = micro == micro_steps - 1
        with autocast:
            loss = model(x, y)[1] / micro_steps
        loss.backward()
        loss_iter += loss.detach()
    if grad_clip != 0.0:   # a NaN/inf gradient norm counts as a NaN/inf loss
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        loss_iter = torch.where(torch.isfinite(grad_norm), loss_iter, math.inf)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    pending.append(loss_iter)
    iter_num += 1
    bar.update(1)

bar.close()
if ddp:
    torch.distributed.barrier()   # every rank done with gloo's pending work before teardown
    destroy_process_group()
