"""
Measures and prints (no pass/fail): training tokens/s, eager vs torch.compile, per attention type (S−D vs
standard at equal shape), and per-token decode latency vs context through GPT.generate for softmax (k/v
cache) and ELU+1 (recurrent state), each next to the way model.py decoded before issue 14 (a torch.cat
cache; ELU+1 through the chunked kernel), kept here as `old_forward`.

    python bench.py           # CPU, 1 thread: quickstart shape (4 layers x 4 heads x 128, block 64, batch 12,
                              #   vocab 65); decode 4 x 4 x 256, contexts 256..8K (about 5 minutes)
                              # GPU: 124M shape (12 x 12 x 768, block 1024, batch 12), bf16 autocast; same tables
    python bench.py --quick   # seconds, tiny shapes, compile traced with the 'eager' backend (CI smoke run)

Ratios come from one process: the variants run interleaved, one block of steps each per repeat, and every
number is the median over repeats. CPU times are process CPU time (the machine may be shared, and one
thread's CPU time is what it costs); GPU times are torch.cuda.synchronize + perf_counter. A training step
is train.py's: forward + loss (autocast on GPU), backward, clip_grad_norm_(1.0), AdamW. MFU is against the
matmul peak measured in the same run (bf16 on GPU, fp32 on CPU).
"""
import argparse
import json
import statistics
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from model import GPT, Attention, GPTConfig, elu_linear_attention

ATTNS = ('standard', 'sd', 'linear')
DECODE = (('softmax, torch.cat cache (before)', 'standard', True), ('softmax, preallocated cache', 'standard', False),
          ('ELU+1, chunked kernel (before)', 'linear', True), ('ELU+1, recurrent step', 'linear', False))
SETUPS = {   # train/decode: model shapes; steps per block, repeats (train, decode), new tokens, matmul peak size
    'cpu': dict(train=dict(n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=65, batch=12),
                decode=dict(n_layer=4, n_head=4, n_embd=256, vocab_size=65, contexts=(256, 1024, 4096, 8192)),
                steps=10, repeats=5, decode_repeats=3, new_tokens=256, peak_n=1024),
    'cuda': dict(train=dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50304, batch=12),
                 decode=dict(n_layer=12, n_head=12, n_embd=768, vocab_size=50304, contexts=(256, 1024, 4096, 8192)),
                 steps=20, repeats=5, decode_repeats=3, new_tokens=256, peak_n=8192),
    'quick': dict(train=dict(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=65, batch=2),
                  decode=dict(n_layer=2, n_head=2, n_embd=32, vocab_size=65, contexts=(16, 64)),
                  steps=2, repeats=2, decode_repeats=1, new_tokens=8, peak_n=128),
}


def clock(cuda):
    if cuda:
        torch.cuda.synchronize()
        return time.perf_counter()
    return time.process_time()


def matmul_peak(device, dtype, n, cuda):
    """Best-of-5 FLOP/s of an n x n x n matmul."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b, best = torch.randn_like(a), float('inf')
    a @ b
    for _ in range(5):
        t0 = clock(cuda)
        for _ in range(5):
            a @ b
        best = min(best, (clock(cuda) - t0) / 5)
    return 2 * n ** 3 / best


def shape(c, **kw):
    return GPTConfig(n_layer=c['n_layer'], n_head=c['n_head'], n_embd=c['n_embd'], vocab_size=c['vocab_size'],
                     dropout=0.0, bias=False, **kw)


def bench_train(s, device, cuda, autocast, peak, quick):
    """Per attention type, eager and compiled, same weights and batch: tokens/s, MFU, compile s, final loss."""
    c = s['train']
    B, T = c['batch'], c['block_size']
    data = torch.randint(c['vocab_size'], (B, T + 1), generator=torch.Generator().manual_seed(0)).to(device)
    x, y = data[:, :-1].contiguous(), data[:, 1:].contiguous()
    runs = {}
    for attn in ATTNS:
        for compiled in (False, True):
            torch.manual_seed(0)
            model = GPT(shape(c, block_size=T, attn=attn)).to(device)
            opt = model.configure_optimizers(0.1, 6e-4, (0.9, 0.95), 'cuda' if cuda else 'cpu')
            fwd = torch.compile(model, backend='eager' if quick else 'inductor') if compiled else model

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
            clock(cuda)
            first_s = time.perf_counter() - t0
            step()
            runs[attn, compiled] = dict(model=model, step=step, first_s=first_s, times=[])
    for _ in range(s['repeats']):   # interleaved: load drift hits every variant alike
        for r in runs.values():
            t0 = clock(cuda)
            for _ in range(s['steps']):
                r['loss'] = r['step']()
            r['times'].append((clock(cuda) - t0) / s['steps'])
    rows = []
    for (attn, compiled), r in runs.items():
        dt = statistics.median(r['times'])
        rows.append(dict(attn=attn, compiled=compiled, tokens_per_s=B * T / dt, ms_per_step=1e3 * dt,
                         mfu=r['model'].estimate_mfu(B * T, dt, peak), first_step_s=r['first_s'],
                         loss=r['loss'].item(), params=r['model'].num_params()))
    return rows


def old_forward(self, x, cache):
    """Attention.forward's cache path before issue 14, the reference the decode table compares with."""
    B, T, _ = x.shape
    q, k, v = self.qkv(x)
    if self.linear:   # the chunked training kernel, also for one token
        y, cache['state'] = elu_linear_attention(q, k, v, self.chunk, cache.get('state'))
    else:
        if 'k' in cache:   # a copy of the whole cache to append one token
            k, v = torch.cat([cache['k'], k], 2), torch.cat([cache['v'], v], 2)
        cache['k'], cache['v'] = k, v
        y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1)
    return self.c_proj(y.transpose(1, 2).reshape(B, T, -1))


def decode_ms(model, prompt, new_tokens, cuda, autocast, old):
    """Median ms between successive decode forwards of one model.generate call (sampling included)."""
    starts, new_forward = [], Attention.forward
    hook = model.register_forward_pre_hook(lambda module, args: starts.append(clock(cuda)))
    Attention.forward = old_forward if old else new_forward
    try:
        with autocast:
            model.generate(prompt, new_tokens)
    finally:
        Attention.forward = new_forward
        hook.remove()
    return 1e3 * statistics.median(b - a for a, b in zip(starts[1:], starts[2:]))   # starts[0]: the prompt


def bench_decode(s, device, cuda, autocast):
    c = s['decode']
    block = max(c['contexts']) + s['new_tokens']   # learned positions of that length
    models = {}
    for attn in ('standard', 'linear'):
        torch.manual_seed(0)
        models[attn] = GPT(shape(c, block_size=block, attn=attn)).to(device).eval()
    g = torch.Generator().manual_seed(0)
    prompts = {L: torch.randint(c['vocab_size'], (1, L), generator=g).to(device) for L in c['contexts']}
    ms = {(name, L): [] for name, _, _ in DECODE for L in c['contexts']}
    for _, attn, old in DECODE:   # warm-up
        decode_ms(models[attn], prompts[c['contexts'][0]], 8, cuda, autocast, old)
    for _ in range(s['decode_repeats']):
        for L in c['contexts']:
            for name, attn, old in DECODE:
                ms[name, L].append(decode_ms(models[attn], prompts[L], s['new_tokens'], cuda, autocast, old))
    return [dict(context=L, **{name: statistics.median(ms[name, L]) for name, _, _ in DECODE}) for L in c['contexts']]


def table(headers, rows):
    cells = [[f"{v:,.0f}" if isinstance(v, float) and v >= 1000 else f"{v:.3g}" if isinstance(v, float) else str(v)
              for v in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    for r in [headers] + cells:
        print('  '.join(v.rjust(w) for v, w in zip(r, widths)))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--quick', action='store_true', help="tiny shapes, seconds (CI smoke run)")
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--json', help="also write the results to this file")
    args = p.parse_args(argv)
    cuda = args.device.startswith('cuda')
    s = SETUPS['quick' if args.quick else 'cuda' if cuda else 'cpu']
    if not cuda:
        torch.set_num_threads(1)
    dtype = torch.bfloat16 if cuda else torch.float32
    autocast = torch.autocast('cuda', dtype=dtype) if cuda else nullcontext()
    name = torch.cuda.get_device_name(args.device) if cuda else 'cpu, 1 thread'
    peak = matmul_peak(args.device, dtype, s['peak_n'], cuda)
    print(f"bench.py{' --quick' if args.quick else ''} | {name} | torch {torch.__version__} | {str(dtype)[6:]} | "
          f"{'synchronize + perf_counter' if cuda else 'process CPU time'}, medians of {s['repeats']} repeats | "
          f"measured matmul peak {peak / 1e12:.3g} TFLOP/s")

    train = bench_train(s, args.device, cuda, autocast, peak, args.quick)
    c = s['train']
    print(f"\ntraining: {c['n_layer']} layers x {c['n_head']} heads x {c['n_embd']}, block {c['block_size']}, batch "
          f"{c['batch']}, vocab {c['vocab_size']}; tokens/s (MFU); blocks of {s['steps']} steps"
          + (" (compile backend 'eager')" if args.quick else ""))
    by = {(r['attn'], r['compiled']): r for r in train}
    table(['attn', 'eager tok/s', 'compiled tok/s', 'compiled/eager', 'vs standard, eager', 'vs standard, compiled',
           'MFU eager', 'MFU compiled', 'compile s', 'loss eager', 'loss compiled'],
          [[a, by[a, False]['tokens_per_s'], by[a, True]['tokens_per_s'],
            by[a, True]['tokens_per_s'] / by[a, False]['tokens_per_s'],
            *(by[a, comp]['tokens_per_s'] / by['standard', comp]['tokens_per_s'] for comp in (False, True)),
            f"{100 * by[a, False]['mfu']:.2g}%", f"{100 * by[a, True]['mfu']:.2g}%", by[a, True]['first_step_s'],
            by[a, False]['loss'], by[a, True]['loss']] for a in ATTNS])

    decode = bench_decode(s, args.device, cuda, autocast)
    c, names = s['decode'], [n for n, _, _ in DECODE]
    print(f"\ndecode: {c['n_layer']} layers x {c['n_head']} heads x {c['n_embd']}, vocab {c['vocab_size']}, batch 1; "
          f"ms/token, {s['new_tokens']} new tokens after a prompt of `context` tokens (model.generate)")
    table(['context', *names, 'softmax before/now', 'softmax/ELU+1'],
          [[r['context'], *(r[n] for n in names), r[names[0]] / r[names[1]], r[names[1]] / r[names[3]]]
           for r in decode])
    first, last = decode[0], decode[-1]
    kv_bytes = (last['context'] - first['context']) * c['n_layer'] * 2 * c['n_embd'] * (2 if cuda else 4)
    growth = last[names[1]] - first[names[1]]
    print(f"ELU+1 step {last['context']}/{first['context']}: {last[names[3]] / first[names[3]]:.2f}; softmax cache "
          f"grows {growth:.3g} ms/token for {kv_bytes / 2**20:.3g} MiB more k/v read "
          f"({kv_bytes / max(growth, 1e-9) / 1e6:.3g} GB/s)")
    res = dict(device=name, torch=torch.__version__, dtype=str(dtype), quick=args.quick, peak_flops=peak,
               settings=s, train=train, decode=decode)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(res, f, indent=1)
    return res


if __name__ == '__main__':
    main()
