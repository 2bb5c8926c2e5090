"""Measures and prints (no pass/fail); variants run interleaved in one process, every number a median
of repeats: training tokens/s per attention type, eager vs torch.compile (compiled/eager, vs standard, MFU
against the matmul peak measured here, compile s, losses); decode ms/token vs context and cache bytes,
softmax k/v cache vs ELU+1 state (alone, beside a 32-token window); analyze.py's metrics of the 1,776 heads
of GPT-2/BERT shapes (random weights) vs the naive float64 kernel on a few heads, extrapolated, and the
weight and rotary levels of a random Llama-3.2-1B-shaped model (--hf's reading included).
CPU: process CPU time, one thread (~9 min); GPU: synchronize + perf_counter, bf16, a 124M model.
    python bench.py [--quick] [--device cuda] [--json out.json]
        # --quick: seconds, tiny shapes, compile 'eager'
"""
import argparse
import json
import statistics
import time
from contextlib import nullcontext

import torch

import data
from analyze import OFFSETS, hf_layers, kernel_metrics, kernel_metrics_naive, layer_metrics, map_layers
from model import GPT, Cache, GPTConfig

ATTNS = ('standard', 'sd', 'linear')
DECODE = (('softmax, k/v cache', dict(attn='standard')), ('ELU+1, recurrent state', dict(attn='linear')),
          ('ELU+1 + 32-token softmax window', dict(attn='linear', linear_window=32)))   # name, GPTConfig keys
PAPER = {'gpt2': (12, 12, 768), 'gpt2-medium': (24, 16, 1024), 'gpt2-large': (36, 20, 1280),   # n_layer,
         'bert-base': (12, 12, 768), 'bert-large': (24, 16, 1024)}           # n_head, d_model; d_h = 64
LLAMA_1B = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                num_key_value_heads=8, head_dim=64, vocab_size=128256, max_position_embeddings=131072,
                rope_parameters=dict(rope_type='llama3', rope_theta=500000.0, factor=32.0,   # Llama-3.2-1B
                                     low_freq_factor=1.0, high_freq_factor=4.0,
                                     original_max_position_embeddings=8192))
FULL = dict(contexts=(256, 1024, 4096, 8192), repeats=5, decode_repeats=3, new_tokens=256, batch=12,
            analysis=dict(shapes=PAPER, d_head=64, naive_heads=2, repeats=3, llama=LLAMA_1B))   # naive: 1-7 s
gpt = lambda L, H, n, vocab, **kw: dict(n_layer=L, n_head=H, n_embd=n, vocab_size=vocab, **kw)   # GPTConfig
# SETUPS: GPTConfig of train/decode; steps per block, repeats (train, decode), new tokens, matmul peak size
SETUPS = {
    'cpu': dict(FULL, train=gpt(4, 4, 128, 65, block_size=64), decode=gpt(4, 4, 256, 65), steps=10,
                peak_n=1024),
    'cuda': dict(FULL, train=gpt(12, 12, 768, 50304, block_size=1024), decode=gpt(12, 12, 768, 50304),
                 steps=20, peak_n=8192),
    'quick': dict(train=gpt(2, 2, 32, 65, block_size=16), decode=gpt(2, 2, 32, 65), batch=2,
                  contexts=(16, 64), steps=2, repeats=2, decode_repeats=1, new_tokens=8, peak_n=128,
                  analysis=dict(
                      shapes={'tiny1': (2, 3, 64), 'tiny2': (1, 2, 48)}, d_head=16, naive_heads=1, repeats=2,
                      llama=dict(LLAMA_1B, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=256))),
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
clock = (lambda: torch.cuda.synchronize() or time.perf_counter()) if cuda else time.process_time


def timed(fn, n=1, clock=clock):   # (seconds per call over n calls of fn, its last result)
    t0 = clock()
    for _ in range(n):
        out = fn()
    return (clock() - t0) / n, out


def table(headers, rows):
    rows = [headers] + [[f"{v:,.0f}" if isinstance(v, float) and v >= 1000
                         else f"{v:.3g}" if isinstance(v, float)
                         else str(v) for v in r] for r in rows]
    widths = [max(map(len, column)) for column in zip(*rows)]
    for r in rows:
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
peak = 2 * s['peak_n'] ** 3 / min([timed(lambda: mat @ mat, 5)[0] for _ in range(6)][1:])   # 1st: warm-up
device_name = torch.cuda.get_device_name(device) if cuda else 'cpu, 1 thread'
print(f"bench.py{' --quick' if args.quick else ''} | {device_name} | torch {torch.__version__} | "
      f"{str(dtype)[6:]} | {'synchronize + perf_counter' if cuda else 'process CPU time'}, "
      f"medians of {s['repeats']} repeats | "
      f"measured matmul peak {peak / 1e12:.3g} TFLOP/s")

# training: per attention type, eager and compiled
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

        def step(model=model, opt=opt, fwd=fwd):   # train.py's
            with autocast:
                loss = fwd(x, y)[1]
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss

        first_s = timed(step, clock=clock if cuda else time.perf_counter)[0]   # compiles
        runs[attn, compiled] = dict(model=model, step=step, first_s=first_s, times=[])
        step()
for _ in range(s['repeats']):   # interleaved: load drift hits every variant alike
    for r in runs.values():
        dt, r['loss'] = timed(r['step'], s['steps'])
        r['times'].append(dt)
by = {(a, comp): dict(attn=a, compiled=comp, tokens_per_s=B * T / dt, ms_per_step=1e3 * dt,
                      first_step_s=r['first_s'], mfu=r['model'].flops_per_token(T) * B * T / dt / peak,
                      loss=r['loss'].item(), params=r['model'].num_params())
      for (a, comp), r in runs.items() for dt in [statistics.median(r['times'])]}
tok = {k: r['tokens_per_s'] for k, r in by.items()}
print(f"\ntraining: {c['n_layer']} layers x {c['n_head']} heads x {c['n_embd']}, block {T}, batch {B}, vocab "
      f"{c['vocab_size']}; tokens/s (MFU); blocks of {s['steps']} steps"
      f"{' (compile backend eager)' * args.quick}")
table(['attn', 'eager tok/s', 'compiled tok/s', 'compiled/eager', 'vs standard, eager',
       'vs standard, compiled', 'MFU eager', 'MFU compiled', 'compile s', 'loss eager', 'loss compiled'],
      [[a, tok[a, False], tok[a, True], tok[a, True] / tok[a, False], tok[a, False] / tok['standard', False],
        tok[a, True] / tok['standard', True], *(f"{100 * by[a, comp]['mfu']:.2g}%" for comp in (False, True)),
        by[a, True]['first_step_s'], by[a, False]['loss'], by[a, True]['loss']] for a in ATTNS])



def cache_bytes(model, prompt):
    """Bytes of a model's decode caches after the prompt (softmax: k/v buffers of the prompt's length)."""
    cache = [Cache() for _ in range(model.config.n_layer)]
    with torch.inference_mode(), autocast:
        model(prompt, cache=cache)
    tensors = [t for c in cache for t in (c.k, c.v, *(c.state or ())) if t is not None]
    return sum(t.numel() * t.element_size() for t in tensors)


c, contexts, models = dict(s['decode'], block_size=max(s['contexts']) + s['new_tokens']), s['contexts'], {}
for name, kw in DECODE:   # decode: ms/token after prompts of each length; positions for the longest + new
    torch.manual_seed(0)
    models[name] = GPT(GPTConfig(**c, bias=False, **kw)).to(device).eval()
    decode_ms(models[name], torch.zeros(1, contexts[0], dtype=torch.long, device=device), 8)   # warm-up
g = torch.Generator().manual_seed(0)
prompts = {L: torch.randint(c['vocab_size'], (1, L), generator=g).to(device) for L in contexts}
ms = [{(name, L): decode_ms(model, prompts[L], s['new_tokens'])
       for L in contexts for name, model in models.items()}
      for _ in range(s['decode_repeats'])]   # interleaved
decode = [dict(context=L, **{name: statistics.median(m[name, L] for m in ms) for name in models},
               **{f'{name} bytes': cache_bytes(model, prompts[L]) for name, model in models.items()})
          for L in contexts]
soft, elu, win = models
print(f"\ndecode: {c['n_layer']} layers x {c['n_head']} heads x {c['n_embd']}, vocab {c['vocab_size']}, "
      f"batch 1; ms/token, {s['new_tokens']} new tokens after a prompt of `context` tokens "
      f"(model.generate); the caches' KiB after the prompt")
table(['context', soft, elu, win, 'softmax/ELU+1', 'softmax/window', *(f'{n.split(",")[0]} KiB'
                                                                      for n in models)],
      [[r['context'], r[soft], r[elu], r[win], r[soft] / r[elu], r[soft] / r[win],
        *(r[f'{n} bytes'] / 1024 for n in models)] for r in decode])

a, k = s['analysis'], s['analysis']['naive_heads']   # every head's metrics vs the naive kernel on k heads
torch.set_num_threads(1)   # CPU work whatever --device, on one thread like the naive reference
torch.manual_seed(0)
layers = {m: [dict(kind='standard', W_q=w[0], W_k=w[1]) for w in 0.02 * torch.randn(L, 2, H, a['d_head'], n)]
          for m, (L, H, n) in a['shapes'].items()}
fast, naive, err = {m: [] for m in layers}, {m: [] for m in layers}, 0.0
rel = lambda x, ref: max(((x[key][:len(v)] - v).abs() / v.abs().clamp_min(1)).max().item()   # noqa: E731
                         for key, v in ref.items())
for _ in range(a['repeats']):
    for m, ws in layers.items():
        dt, fm = timed(lambda: list(map_layers(layer_metrics, ws))[0]['weight'], clock=time.process_time)
        fast[m].append(dt)
        dt, ref = timed(lambda: kernel_metrics_naive(ws[0]['W_q'][:k], ws[0]['W_k'][:k]),
                        clock=time.process_time)
        naive[m].append(dt / k * len(ws) * ws[0]['W_q'].size(0))   # the first k heads of layer 0, scaled
        err = max(err, rel(fm, ref))
rows = [dict(model=m, heads=L * H, d_model=n, fast_s=statistics.median(fast[m]),
             naive_s=statistics.median(naive[m])) for m, (L, H, n) in a['shapes'].items()]
heads, fast_s, naive_s = (sum(r[key] for r in rows) for key in ('heads', 'fast_s', 'naive_s'))
analysis = dict(heads=heads, fast_s=fast_s, naive_s=naive_s, speedup=naive_s / fast_s, max_rel_diff=err,
                shapes=rows)
print(f"\nanalysis: weight-kernel metrics of {heads:,} heads (d_h {a['d_head']}), CPU s on 1 thread, median "
      f"of {a['repeats']}; naive float64 n x n kernel: {k} head(s) per shape timed, extrapolated")
table(['model', 'heads', 'd_model', 'analyze.py s', 'naive s', 'speedup'],
      [[r['model'], r['heads'], r['d_model'], r['fast_s'], r['naive_s'], r['naive_s'] / r['fast_s']]
       for r in rows] + [['total', heads, '', fast_s, naive_s, naive_s / fast_s]])
print(f"max relative difference analyze.py vs naive, every metric: {err:.1e}")


def llama(shape):   # a random Llama on the meta device: only q/k projections (std 0.02) and rotary made real
    from transformers import LlamaConfig, LlamaModel
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
    c = LlamaConfig(**shape)
    with torch.device('meta'):
        model = LlamaModel(c)
    g = torch.Generator().manual_seed(0)
    for p in (p for layer in model.layers for p in (layer.self_attn.q_proj, layer.self_attn.k_proj)):
        p.weight = torch.nn.Parameter(0.02 * torch.randn(p.weight.shape, generator=g), requires_grad=False)
    model.rotary_emb = LlamaRotaryEmbedding(c)
    return model


model = llama(a['llama'])   # weight and rotary levels of every head, as analyze.py --hf runs them
times = [timed(lambda: list(map_layers(layer_metrics, hf_layers(model))), clock=time.process_time)
         for _ in range(a['repeats'])]
w, m1b = hf_layers(model)[0], times[-1][1]   # naive: a head of layer 0, offset 0 and the last offset
Wq, Wk, rot, heads = w['W_q'][:1], w['W_k'][:1], w['rot'][-1], len(m1b) * w['W_q'].shape[0]
dt, ref = timed(lambda: kernel_metrics_naive(Wq, Wk), clock=time.process_time)
llama_err = max(rel(m1b[0]['weight'], ref),
                rel(kernel_metrics(Wq, Wk, rot=rot), kernel_metrics_naive(Wq, Wk, rot=rot)))
analysis['llama'] = dict(params=sum(p.numel() for p in model.parameters()), heads=heads, d_model=Wq.shape[-1],
                         offsets=len(w['rot']), fast_s=statistics.median(t for t, _ in times),
                         naive_weight_s=dt * heads, max_rel_diff=llama_err)
print(f"\nanalysis of a random Llama-3.2-1B-shaped model ({analysis['llama']['params'] / 1e6:,.1f}M "
      f"parameters, {a['llama']['num_attention_heads']} query and {a['llama']['num_key_value_heads']} key "
      f"heads, on the meta device): weight level and rotary level at {len(w['rot'])} offsets, hf_layers "
      f"included, CPU s on 1 thread, median of {a['repeats']}; naive: a head timed, extrapolated")
table(['model', 'heads', 'd_model', 'analyze.py s', 'naive s (weight level)'],
      [['llama-1b', heads, Wq.shape[-1], analysis['llama']['fast_s'], dt * heads]])
print(f"max relative difference analyze.py vs naive (a head: its kernel and offset "
      f"{OFFSETS[len(w['rot']) - 1]}): {llama_err:.1e}")
if args.json:
    data.write_files({args.json: json.dumps(dict(device=device_name, torch=torch.__version__,
                                                 dtype=str(dtype), quick=args.quick, peak_flops=peak,
                                                 settings=s, train=list(by.values()), decode=decode,
                                                 analysis=analysis),
                                            indent=1)})
