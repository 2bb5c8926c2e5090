"""
Times the weight-kernel analysis (analyze.kernel_metrics) of the paper's 1,776 heads -- the shapes of
gpt2, gpt2-medium, gpt2-large, bert-base and bert-large, random weights, no downloads -- against the naive
float64 computation that forms each d_model x d_model kernel (analyze.kernel_metrics_naive), run on a
subset of heads and extrapolated to all 1,776. The fast path is timed as analyze.py runs it (one batched
call per layer, layers spread over the threads), single-threaded and with --threads; wall and CPU time.

    python bench_analyze.py [--naive_heads 24] [--threads N] [--out out/bench_analyze.json]
"""
import argparse
import json
import os
import time

import torch

from analyze import kernel_metrics_naive, layer_metrics, map_layers

SHAPES = {  # name: (n_layer, n_head, d_model); d_h = 64 everywhere
    'gpt2': (12, 12, 768), 'gpt2-medium': (24, 16, 1024), 'gpt2-large': (36, 20, 1280),
    'bert-base': (12, 12, 768), 'bert-large': (24, 16, 1024),
}
D_HEAD = 64

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument('--naive_heads', type=int, default=24,
               help='heads timed naively (about 1-7 s each), spread over the five shapes')
p.add_argument('--threads', type=int, default=0, help='most torch threads (0: torch default); 1 is timed too')
p.add_argument('--out', default='out/bench_analyze.json')
args = p.parse_args()
if args.naive_heads < len(SHAPES):
    raise SystemExit(f"error: --naive_heads must be at least {len(SHAPES)}, one per shape")
max_threads = args.threads or torch.get_num_threads()
load_before = os.getloadavg()[0]
torch.manual_seed(0)

# random float32 weights per layer, like a loaded model (0.02: GPT-2's init scale)
weights = {name: [dict(kind='standard', W_q=0.02 * torch.randn(H, D_HEAD, n), W_k=0.02 * torch.randn(H, D_HEAD, n))
                  for _ in range(L)] for name, (L, H, n) in SHAPES.items()}
n_heads = sum(L * H for L, H, _ in SHAPES.values())


def time_fast(threads):
    """Wall and CPU seconds of the weight-kernel analysis of all 1,776 heads, as analyze.py runs it."""
    torch.set_num_threads(threads)
    wall, cpu = {}, {}
    for name in SHAPES:
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in map_layers(layer_metrics, weights[name]):
            pass
        wall[name], cpu[name] = time.perf_counter() - t0, time.process_time() - c0
    return wall, cpu


threads = [1] + ([max_threads] if max_threads > 1 else [])
fast = {t: time_fast(t) for t in threads}
torch.set_num_threads(1)   # the naive path single-threaded too: same footing as the fast one's speedup
naive_per_shape = [args.naive_heads // len(SHAPES) + (i < args.naive_heads % len(SHAPES)) for i in range(len(SHAPES))]
results, max_err = {}, 0.0
for (name, (L, H, n)), k in zip(SHAPES.items(), naive_per_shape):
    w = weights[name][0]                                              # the first k heads of layer 0
    t0 = time.perf_counter()
    naive = kernel_metrics_naive(w['W_q'][:k], w['W_k'][:k])
    t_naive = (time.perf_counter() - t0) / k * L * H
    fast_m = layer_metrics(w)
    max_err = max([max_err] + [((fast_m[m][:k] - naive[m]).abs() / naive[m].abs().clamp_min(1)).max().item()
                               for m in naive])
    results[name] = dict(heads=L * H, d_model=n, naive_heads=k, naive_s_extrapolated=t_naive,
                         **{f'fast_s_{t}_threads': fast[t][0][name] for t in threads})
naive_total = sum(r['naive_s_extrapolated'] for r in results.values())
fast_total = {t: sum(fast[t][0].values()) for t in threads}
cpu_total = {t: sum(fast[t][1].values()) for t in threads}
summary = dict(heads=n_heads, d_head=D_HEAD, fast_s={t: fast_total[t] for t in threads},
               fast_cpu_s={t: cpu_total[t] for t in threads}, naive_s_extrapolated=naive_total,
               naive_threads=1, naive_heads_timed=args.naive_heads, speedup_1_thread=naive_total / fast_total[1],
               max_rel_diff_fast_vs_naive=max_err, load_avg_1min_before=load_before,
               load_avg_1min_after=os.getloadavg()[0], shapes=results)

head = f"{'model':>12} {'heads':>6} {'d_model':>7} " + ' '.join(f"{f'fast s, {t} thr':>13}" for t in threads)
print(head + f" {'naive s (extrapolated)':>23}")
for name, r in results.items():
    print(f"{name:>12} {r['heads']:6d} {r['d_model']:7d} " +
          ' '.join(f"{r[f'fast_s_{t}_threads']:13.2f}" for t in threads) + f" {r['naive_s_extrapolated']:23.1f}")
print(f"{'total':>12} {n_heads:6d} {'':>7} " + ' '.join(f"{fast_total[t]:13.2f}" for t in threads) +
      f" {naive_total:23.1f}")
print(f"{'(CPU s)':>12} {'':>6} {'':>7} " + ' '.join(f"{cpu_total[t]:13.2f}" for t in threads))
print(f"speedup {summary['speedup_1_thread']:.0f}x single-threaded (naive: {args.naive_heads} heads timed, "
      f"extrapolated); max relative difference fast vs naive over every metric {max_err:.1e}; "
      f"load average {load_before:.1f} before, {summary['load_avg_1min_after']:.1f} after")
os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
tmp = args.out + '.tmp'
with open(tmp, 'w') as f:
    json.dump(summary, f, indent=1)
os.replace(tmp, args.out)
