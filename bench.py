"""
Measures and prints (no pass/fail); variants run interleaved in one process and every number is a median of repeats.
  training  tokens/s per attention type (standard, S−D, ELU+1), eager vs torch.compile, same weights and batch:
            compiled/eager, each type vs standard, MFU (vs the matmul peak measured here), compile s, final losses
  decode    ms/token vs context through GPT.generate: softmax (k/v cache) vs ELU+1 (recurrent state)
  analysis  analyze.py's weight-kernel metrics of the paper's 1,776 heads (gpt2, -medium, -large, bert-base, -large
            shapes; random 0.02-scale weights) vs kernel_metrics_naive (float64 n x n) on a few heads, extrapolated:
            seconds, speedup, max relative difference |fast - naive| / max(|naive|, 1) over every metric

    python bench.py           # CPU, 1 thread, ~7 min: train 4 x 4 x 128 (block 64, batch 12, vocab 65); decode
                              #   4 x 4 x 256 at contexts 256..8K; GPU: 124M (12 x 12 x 768, block 1024, batch 12)
    python bench.py --quick   # seconds: tiny shapes, compile with the 'eager' backend (CI smoke run)
    python bench.py --json results.json   # also write every number

CPU times: process CPU time on one thread (what it costs on a shared machine); GPU: synchronize + perf_counter,
bf16 autocast. A training step is train.py's (forward + loss, backward, clip_grad_norm_(1.0), AdamW). The analysis
is CPU work (one thread, CPU time) whatever --device.
"""
import argparse
import json
import statistics
import time
from contextlib import nullcontext

import torch

import data
from analyze import kernel_metrics_naive, layer_metrics, map_layers
from model import GPT, GPTConfig

ATTNS = ('standard', 'sd', 'linear')
DECODE = (('softmax, k/v cache', 'standard'), ('ELU+1, recurrent state', 'linear'))
PAPER = {'gpt2': (12, 12, 768), 'gpt2-medium': (24, 16, 1024), 'gpt2-large': (36, 20, 1280),   # n_layer, n_head,
         'bert-base': (12, 12, 768), 'bert-large': (24, 16, 1024)}                            # d_model; d_h = 64
ANALYSIS = dict(shapes=PAPER, d_head=64, naive_heads=2, repeats=3)   # naive_heads per shape: about 1-7 s each
SETUPS = {   # GPTConfig of train/decode; steps per block, repeats (train, decode), new tokens, matmul peak size
    'cpu': dict(train=dict(n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=65), batch=12,
                decode=dict(n_layer=4, n_head=4, n_embd=256, vocab_size=65), contexts=(256, 1024, 4096, 8192),
                steps=10, repeats=5, decode_repeats=3, new_tokens=256, peak_n=1024, analysis=ANALYSIS),
    'cuda': dict(train=dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50304), batch=12,
                 decode=dict(n_layer=12, n_head=12, n_embd=768, vocab_size=50304), contexts=(256, 1024, 4096, 8192),
                 steps=20, repeats=5, decode_repeats=3, new_tokens=256, peak_n=8192, analysis=ANALYSIS),
    'quick': dict(train=dict(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=65), batch=2,
                  decode=dict(n_layer=2, n_head=2, n_embd=32, vocab_size=65), contexts=(16, 64),
                  steps=2, repeats=2, decode_repeats=1, new_tokens=8, peak_n=128, analysis=dict(
                      shapes={'tiny1': (2, 3, 64), 'tiny2': (1, 2, 48)}, d_head=16, naive_heads=1, repeats=2)),
}
p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument('--quick', action='store_true', help="tiny shapes, seconds (CI smoke run)")
p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
p.add_argument('--json', help="also write every number to this file")
args = p.parse_args()
device, cuda = args.device, args.device.startswith('cuda')
s = SETUPS['quick' if args.quick else 'cuda' if cuda else 'cpu']
if not cuda:
    torch.set_num_threads(1)
dtype = torch.bfloat16 if cuda else torch.float32
autocast = torch.autocast('cuda', dtype=dtype) if cuda else nullcontext()


def clock():
    if cuda:
        torch.cuda.synchronize()
        return time.perf_counter()
    return time.process_time()


def table(headers, rows):
    cells = [[f"{v:,.0f}" if isinstance(v, float) and v >= 1000 else f"{v:.3g}" if isinstance(v, float) else str(v)
              for v in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    for r in [headers] + cells:
        print('  '.join(v.rjust(w) for v, w in zip(r, widths)))


def decode_ms(model, prompt, new_tokens):
    """Median ms between successive decode forwards of one model.generate call (sampling included)."""
    starts = []
    hook = model.register_forward_pre_hook(lambda module, args: starts.append(clock()))
    with autocast:
        model.generate(prompt, new_tokens)
    hook.remove()
    return 1e3 * statistics.median(b - a for a, b in zip(starts[1:], starts[2:]))   # starts[0]: the prompt


mat = torch.randn(s['peak_n'], s['peak_n'], device=device, dtype=dtype)   # matmul peak: best of 5 blocks of 5
times = []
for _ in range(6):   # the first: warm-up
    t0 = clock()
    for _ in range(5):
        mat @ mat
    times.append((clock() - t0) / 5)
peak = 2 * s['peak_n'] ** 3 / min(times[1:])
device_name = torch.cuda.get_device_name(device) if cuda else 'cpu, 1 thread'
print(f"bench.py{' --quick' if args.quick else ''} | {device_name} | torch {torch.__version__} | {str(dtype)[6:]} | "
      f"{'synchronize + perf_counter' if cuda else 'process CPU time'}, medians of {s['repeats']} repeats | "
      f"measured matmul peak {peak / 1e12:.3g} TFLOP/s")

# -----------------------------------------------------------------------------
# training: per attention type, eager and compiled, same weights and batch
c, B, T = s['train'], s['batch'], s['train']['block_size']
tokens = torch.randint(c['vocab_size'], (B, T + 1), generator=torch.Generator().manual_seed(0)).to(device)
x, y = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
runs = {}
for attn in ATTNS:
    for compiled in (False, True):
        torch.manual_seed(0)
        model = GPT(GPTConfig(**c, bias=False, attn=attn)).to(device)
        opt = model.configure_optimizers(0.1, 6e-4, (0.9, 0.95), 'cuda' if cuda else 'cpu')
        fwd = torch.compile(model, backend='eager' if args.quick else 'inductor') if compiled else model

        def step(model=model, opt=opt, fwd=fwd):
            with autocast:
                loss = fwd(x, y)[1]
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss

        t0 = time.perf_counter()
        step()   # compiles
        clock()
        runs[attn, compiled] = dict(model=model, step=step, first_s=time.perf_counter() - t0, times=[])
        step()
for _ in range(s['repeats']):   # interleaved: load drift hits every variant alike
    for r in runs.values():
        t0 = clock()
        for _ in range(s['steps']):
            r['loss'] = r['step']()
        r['times'].append((clock() - t0) / s['steps'])
train, by = [], {}
for (attn, compiled), r in runs.items():
    dt = statistics.median(r['times'])
    train.append(dict(attn=attn, compiled=compiled, tokens_per_s=B * T / dt, ms_per_step=1e3 * dt,
                      mfu=r['model'].estimate_mfu(B * T, dt, peak), first_step_s=r['first_s'],
                      loss=r['loss'].item(), params=r['model'].num_params()))
    by[attn, compiled] = train[-1]
print(f"\ntraining: {c['n_layer']} layers x {c['n_head']} heads x {c['n_embd']}, block {T}, batch {B}, vocab "
      f"{c['vocab_size']}; tokens/s (MFU); blocks of {s['steps']} steps{' (compile backend eager)' * args.quick}")
table(['attn', 'eager tok/s', 'compiled tok/s', 'compiled/eager', 'vs standard, eager', 'vs standard, compiled',
       'MFU eager', 'MFU compiled', 'compile s', 'loss eager', 'loss compiled'],
      [[a, by[a, False]['tokens_per_s'], by[a, True]['tokens_per_s'],
        by[a, True]['tokens_per_s'] / by[a, False]['tokens_per_s'],
        *(by[a, comp]['tokens_per_s'] / by['standard', comp]['tokens_per_s'] for comp in (False, True)),
        f"{100 * by[a, False]['mfu']:.2g}%", f"{100 * by[a, True]['mfu']:.2g}%", by[a, True]['first_step_s'],
        by[a, False]['loss'], by[a, True]['loss']] for a in ATTNS])

# -----------------------------------------------------------------------------
# decode: ms/token after prompts of each context length, softmax vs ELU+1
c, contexts, models = s['decode'], s['contexts'], {}
block = max(contexts) + s['new_tokens']   # learned positions for the longest prompt and its new tokens
for name, attn in DECODE:
    torch.manual_seed(0)
    models[name] = GPT(GPTConfig(**c, block_size=block, bias=False, attn=attn)).to(device).eval()
    decode_ms(models[name], torch.zeros(1, contexts[0], dtype=torch.long, device=device), 8)   # warm-up
g = torch.Generator().manual_seed(0)
prompts = {L: torch.randint(c['vocab_size'], (1, L), generator=g).to(device) for L in contexts}
ms = {(name, L): [] for name in models for L in contexts}
for _ in range(s['decode_repeats']):
    for L in contexts:
        for name, model in models.items():
            ms[name, L].append(decode_ms(model, prompts[L], s['new_tokens']))
decode = [dict(context=L, **{name: statistics.median(ms[name, L]) for name in models}) for L in contexts]
soft, elu = models
print(f"\ndecode: {c['n_layer']} layers x {c['n_head']} heads x {c['n_embd']}, vocab {c['vocab_size']}, batch 1; "
      f"ms/token, {s['new_tokens']} new tokens after a prompt of `context` tokens (model.generate)")
table(['context', soft, elu, 'softmax/ELU+1'], [[r['context'], r[soft], r[elu], r[soft] / r[elu]] for r in decode])

# -----------------------------------------------------------------------------
# analysis: every head's weight-kernel metrics as analyze.py runs them vs the naive float64 kernel on k heads
a, k = s['analysis'], s['analysis']['naive_heads']
torch.set_num_threads(1)   # CPU work whatever --device, on one thread like the naive reference
torch.manual_seed(0)
layers = {m: [dict(kind='standard', W_q=w[0], W_k=w[1]) for w in 0.02 * torch.randn(L, 2, H, a['d_head'], n)]
          for m, (L, H, n) in a['shapes'].items()}
fast, naive, err = {m: [] for m in layers}, {m: [] for m in layers}, 0.0
for _ in range(a['repeats']):
    for m, ws in layers.items():
        t0 = time.process_time()
        fm = list(map_layers(layer_metrics, ws))[0]
        fast[m].append(time.process_time() - t0)
        t0 = time.process_time()
        ref = kernel_metrics_naive(ws[0]['W_q'][:k], ws[0]['W_k'][:k])   # the first k heads of the first layer
        naive[m].append((time.process_time() - t0) / k * len(ws) * ws[0]['W_q'].size(0))
        err = max([err] + [((fm[key][:k] - v).abs() / v.abs().clamp_min(1)).max().item() for key, v in ref.items()])
rows = [dict(model=m, heads=L * H, d_model=n, fast_s=statistics.median(fast[m]), naive_s=statistics.median(naive[m]))
        for m, (L, H, n) in a['shapes'].items()]
heads, fast_s, naive_s = (sum(r[key] for r in rows) for key in ('heads', 'fast_s', 'naive_s'))
analysis = dict(heads=heads, fast_s=fast_s, naive_s=naive_s, speedup=naive_s / fast_s, max_rel_diff=err, shapes=rows)
print(f"\nanalysis: weight-kernel metrics of {heads:,} heads (d_h {a['d_head']}), CPU s on 1 thread, median of "
      f"{a['repeats']}; naive float64 n x n kernel: {k} head(s) per shape timed, extrapolated")
table(['model', 'heads', 'd_model', 'analyze.py s', 'naive s', 'speedup'],
      [[r['model'], r['heads'], r['d_model'], r['fast_s'], r['naive_s'], r['naive_s'] / r['fast_s']] for r in rows]
      + [['total', heads, '', fast_s, naive_s, naive_s / fast_s]])
print(f"max relative difference analyze.py vs naive, every metric: {err:.1e}")
if args.json:
    data.write_files({args.json: json.dumps(dict(device=device_name, torch=torch.__version__, dtype=str(dtype),
                                                 quick=args.quick, peak_flops=peak, settings=s, train=train,
                                                 decode=decode, analysis=analysis), indent=1)})
