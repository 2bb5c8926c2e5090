"""Speed, measured and printed (medians of interleaved repeats): training, decoding, analyze.py's metrics.
    python bench.py [--quick] [--device cuda] [--json out.json] [--attn TYPE ...]
"""
import argparse
import json
import statistics
import time
from contextlib import nullcontext

import torch

import data
from analyze import kernel_metrics_naive, layer_metrics, map_layers
from model import ATTN_TYPES, GPT, Cache, GPTConfig

DECODE = (('softmax', 'softmax, k/v cache', dict(attn='standard')),   # short name, name, GPTConfig keys
          ('ELU+1', 'ELU+1, recurrent state', dict(attn='linear')),
          ('window', 'ELU+1 + 32-token softmax window', dict(attn='linear', linear_window=32)))
PAPER = {'gpt2': (12, 12, 768), 'gpt2-medium': (24, 16, 1024), 'gpt2-large': (36, 20, 1280),   # n_layer,
         'bert-base': (12, 12, 768), 'bert-large': (24, 16, 1024)}           # n_head, d_model; d_h = 64
FULL = dict(contexts=(256, 1024, 4096, 8192), repeats=5, decode_repeats=3, new_tokens=256, batch=12,
            analysis=dict(shapes=PAPER, d_head=64, naive_heads=2, repeats=3))   # naive: 1-7 s
gpt = lambda L, H, n, vocab, **kw: dict(n_layer=L, n_head=H, n_embd=n, vocab_size=vocab, **kw)   # GPTConfig
SETUPS = {   # GPTConfig of train/decode; steps per block, repeats (train, decode), new tokens, matmul peak n
    'cpu': dict(FULL, train=gpt(4, 4, 128, 65, block_size=64), decode=gpt(4, 4, 256, 65), steps=10,
                peak_n=1024),
    'cuda': dict(FULL, train=gpt(12, 12, 768, 50304, block_size=1024), decode=gpt(12, 12, 768, 50304),
                 steps=20, peak_n=8192),
    'quick': dict(train=gpt(2, 2, 32, 65, block_size=16), decode=gpt(2, 2, 32, 65), batch=2,
                  contexts=(16, 64), steps=2, repeats=2, decode_repeats=1, new_tokens=8, peak_n=128,
                  analysis=dict(shapes={'tiny1': (2, 3, 64), 'tiny2': (1, 2, 48)}, d_head=16, naive_heads=1,
                                repeats=2)),
}


def timed(fn, clock, n=1):   # (seconds per call over n calls of fn, its last result)
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


def training(s, env, peak, types):
    """Tokens/s per attention type, eager and compiled (the same weights and batch), interleaved repeats."""
    c, B, T = s['train'], s['batch'], s['train']['block_size']
    tokens = torch.randint(c['vocab_size'], (B, T + 1), generator=torch.Generator().manual_seed(0))
    x, y = tokens[:, :-1].contiguous().to(env.device), tokens[:, 1:].contiguous().to(env.device)
    runs = {}
    for attn in types:
        for compiled in (False, True):
            torch.manual_seed(0)
            model = GPT(GPTConfig(**c, bias=False, attn=attn)).to(env.device)
            opt = model.configure_optimizers(0.1, 6e-4, (0.9, 0.95), 'cuda' if env.cuda else 'cpu')
            fwd = torch.compile(model, backend='eager' if env.quick else 'inductor') if compiled else model

            def step(model=model, opt=opt, fwd=fwd):   # train.py's
                with env.autocast:
                    loss = fwd(x, y)[1]
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)
                return loss

            first_s = timed(step, env.clock if env.cuda else time.perf_counter)[0]   # compiles
            runs[attn, compiled] = dict(model=model, step=step, first_s=first_s, times=[])
            step()
    for _ in range(s['repeats']):   # interleaved: load drift hits every variant alike
        for r in runs.values():
            dt, r['loss'] = timed(r['step'], env.clock, s['steps'])
            r['times'].append(dt)
    by = {(a, comp): dict(attn=a, compiled=comp, tokens_per_s=B * T / dt, ms_per_step=1e3 * dt,
                          first_step_s=r['first_s'], mfu=r['model'].flops_per_token(T) * B * T / dt / peak,
                          loss=r['loss'].item(), params=r['model'].num_params())
          for (a, comp), r in runs.items() for dt in [statistics.median(r['times'])]}
    tok, base = {k: r['tokens_per_s'] for k, r in by.items()}, types[0]
    print(f"\ntraining: {c['n_layer']} layers x {c['n_head']} heads x {c['n_embd']}, block {T}, batch {B}, "
          f"vocab {c['vocab_size']}; blocks of {s['steps']} steps{' (compile backend eager)' * env.quick}")
    table(['attn', 'eager tok/s', 'compiled tok/s', 'compiled/eager', f'vs {base}, eager',
           f'vs {base}, compiled', 'MFU eager', 'MFU compiled', 'compile s', 'loss eager', 'loss compiled'],
          [[a, tok[a, False], tok[a, True], tok[a, True] / tok[a, False], tok[a, False] / tok[base, False],
            tok[a, True] / tok[base, True], *(f"{100 * by[a, comp]['mfu']:.2g}%" for comp in (False, True)),
            by[a, True]['first_step_s'], by[a, False]['loss'], by[a, True]['loss']] for a in types])
    return list(by.values())


def decode_ms(model, prompt, new_tokens, env):
    """Median ms between successive decode forwards of one model.generate call (sampling included)."""
    starts = []
    hook = model.register_forward_pre_hook(lambda module, args: starts.append(env.clock()))
    with env.autocast:
        model.generate(prompt, new_tokens)
    hook.remove()
    return 1e3 * statistics.median(b - a for a, b in zip(starts[1:], starts[2:]))   # starts[0]: the prompt


def decoding(s, env, setups):
    """ms/token after prompts of each length and the caches' bytes, per setup (short name, name, GPTConfig)"""
    c, models = dict(s['decode'], block_size=max(s['contexts']) + s['new_tokens']), {}
    for _, name, kw in setups:
        torch.manual_seed(0)
        models[name] = GPT(GPTConfig(**c, bias=False, **kw)).to(env.device).eval()
        decode_ms(models[name], torch.zeros(1, s['contexts'][0], dtype=torch.long, device=env.device), 8, env)
    g = torch.Generator().manual_seed(0)
    prompts = {L: torch.randint(c['vocab_size'], (1, L), generator=g).to(env.device) for L in s['contexts']}
    ms = [{(name, L): decode_ms(model, prompts[L], s['new_tokens'], env) for L in prompts
           for name, model in models.items()} for _ in range(s['decode_repeats'])]   # interleaved
    rows = [dict(context=L, **{n: statistics.median(m[n, L] for m in ms) for n in models}) for L in prompts]
    for r in rows:   # the caches' bytes after the prompt (softmax: k/v buffers of the prompt's length)
        for n, model in models.items():
            cache = [Cache() for _ in range(model.config.n_layer)]
            with torch.inference_mode(), env.autocast:
                model(prompts[r['context']], cache=cache)
            r[f'{n} bytes'] = sum(t.numel() * t.element_size() for layer in cache
                                  for t in (layer.k, layer.v, *(layer.state or ())) if t is not None)
    short, names = [x[0] for x in setups], list(models)
    print(f"\ndecode: {c['n_layer']} layers x {c['n_head']} heads x {c['n_embd']}, batch 1; ms/token of "
          f"{s['new_tokens']} new tokens after `context` tokens (model.generate); the caches' KiB after it")
    table(['context', *names, *(f'{short[0]}/{x}' for x in short[1:]), *(f'{x} KiB' for x in short)],
          [[r['context'], *(r[n] for n in names), *(r[names[0]] / r[n] for n in names[1:]),
            *(r[f'{n} bytes'] / 1024 for n in names)] for r in rows])
    return rows


def analysis(a):
    """CPU s of analyze.py's kernel metrics of random heads of each shape, and of the naive float64 kernel."""
    k, clock = a['naive_heads'], time.process_time
    torch.set_num_threads(1)   # CPU work whatever --device, on one thread like the naive reference
    torch.manual_seed(0)
    layers = {m: [dict(W_q=w[0], W_k=w[1]) for w in 0.02 * torch.randn(L, 2, H, a['d_head'], n)]
              for m, (L, H, n) in a['shapes'].items()}
    fast, naive, err = {m: [] for m in layers}, {m: [] for m in layers}, 0.0
    for _ in range(a['repeats']):
        for m, ws in layers.items():
            dt, fm = timed(lambda: list(map_layers(layer_metrics, ws))[0]['weight'], clock)
            fast[m].append(dt)
            dt, ref = timed(lambda: kernel_metrics_naive(ws[0]['W_q'][:k], ws[0]['W_k'][:k]), clock)
            naive[m].append(dt / k * len(ws) * ws[0]['W_q'].size(0))   # the first k heads of layer 0, scaled
            err = max(err, *(((fm[key][:k] - v).abs() / v.abs().clamp_min(1)).max().item()
                             for key, v in ref.items()))   # relative, on the k heads of the reference
    rows = [dict(model=m, heads=L * H, d_model=n, fast_s=statistics.median(fast[m]),
                 naive_s=statistics.median(naive[m])) for m, (L, H, n) in a['shapes'].items()]
    heads, fast_s, naive_s = (sum(r[key] for r in rows) for key in ('heads', 'fast_s', 'naive_s'))
    print(f"\nanalysis: weight-kernel metrics of {heads:,} heads (d_h {a['d_head']}), CPU s on 1 thread, "
          f"median of {a['repeats']}; naive float64 n x n kernel: {k} head(s) per shape timed, extrapolated")
    table(['model', 'heads', 'd_model', 'analyze.py s', 'naive s', 'speedup'],
          [[r['model'], r['heads'], r['d_model'], r['fast_s'], r['naive_s'], r['naive_s'] / r['fast_s']]
           for r in rows] + [['total', heads, '', fast_s, naive_s, naive_s / fast_s]])
    print(f"max relative difference analyze.py vs naive, every metric: {err:.1e}")
    return dict(heads=heads, fast_s=fast_s, naive_s=naive_s, speedup=naive_s / fast_s, max_rel_diff=err,
                shapes=rows)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--quick', action='store_true', help="tiny shapes, seconds (CI smoke run)")
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--json', help="also write every number to this file")
    p.add_argument('--attn', nargs='+', choices=tuple(ATTN_TYPES),
                   help='train and decode only these types, no analysis (default: every type; decode: '
                        'softmax, ELU+1 alone and beside a window)')
    env = p.parse_args(argv)
    env.cuda = env.device.startswith('cuda')
    s = SETUPS['quick' if env.quick else 'cuda' if env.cuda else 'cpu']
    if not env.cuda:
        torch.set_num_threads(1)
    env.dtype = torch.bfloat16 if env.cuda else torch.float32
    env.autocast = torch.autocast('cuda', dtype=env.dtype) if env.cuda else nullcontext()
    env.clock = (lambda: torch.cuda.synchronize() or time.perf_counter()) if env.cuda else time.process_time
    mat = torch.randn(s['peak_n'], s['peak_n'], device=env.device, dtype=env.dtype)   # best of 5 blocks of 5
    peak = 2 * s['peak_n'] ** 3 / min([timed(lambda: mat @ mat, env.clock, 5)[0] for _ in range(6)][1:])
    device_name = torch.cuda.get_device_name(env.device) if env.cuda else 'cpu, 1 thread'
    print(f"bench.py{' --quick' if env.quick else ''} | {device_name} | torch {torch.__version__} | "
          f"{str(env.dtype)[6:]} | {'synchronize + perf_counter' if env.cuda else 'process CPU time'}, "
          f"medians of {s['repeats']} repeats | measured matmul peak {peak / 1e12:.3g} TFLOP/s")
    out = dict(device=device_name, torch=torch.__version__, dtype=str(env.dtype), quick=env.quick,
               peak_flops=peak, settings=s)
    out['train'] = training(s, env, peak, env.attn or tuple(ATTN_TYPES))
    out['decode'] = decoding(s, env, DECODE if env.attn is None else [(a, a, dict(attn=a)) for a in env.attn])
    if env.attn is None:
        out['analysis'] = analysis(s['analysis'])
    if env.json:
        data.write_files({env.json: json.dumps(out, indent=1)})


if __name__ == '__main__':
    main()
