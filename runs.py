"""Compare training runs across seeds (folders NAME_s<seed> of arm NAME): final val loss mean ± std over the
seeds that reached the last iteration, parameters, attention parameters, tokens/s; val-loss curves with ± std
bands; with --vs, ΔPPL vs attention parameters against a baseline arm. Each folder: train.py's log.jsonl
(parameter counts: its first record; '-' for logs from before they were written).
    python runs.py out/exp/*  [--out_dir docs]  [--vs ARM=BASELINE ...]
        # --out_dir: runs.csv, .png, tradeoff.png"""
import argparse
import json
import math
import os
import statistics
import sys
from collections import defaultdict

import numpy as np

import data
from data import arm_of, label, mean_std, run_name


def read_run(path):
    """{'evals': [(iter, val_loss)], 'tokens_per_s': median, 'params', 'attn_params': as train.py logged them,
    or None} of a run folder."""
    with open(os.path.join(path, 'log.jsonl')) as f:
        log = [json.loads(line) for line in f]
    speeds = [r['tokens_per_s'] for r in log if 'tokens_per_s' in r]
    counts = next((r for r in log if 'params' in r), {})
    return dict(evals=[(r['iter'], r['val_loss']) for r in log if 'val_loss' in r],
                tokens_per_s=statistics.median(speeds or [math.nan]), params=counts.get('params'),
                attn_params=counts.get('attn_params'))


def figures(rows, last, vs):
    from matplotlib.figure import Figure
    ax = Figure(figsize=(7, 4.5), layout='constrained').subplots()
    for r in (r for r in rows if r['done']):
        curves = [dict(run['evals']) for run in r['done']]
        iters = sorted(set.intersection(*map(set, curves)) - {0})
        # std nan for one seed: no band
        mean, std = np.array([mean_std([c[i] for c in curves]) for i in iters]).T
        line, = ax.plot(iters, mean, marker='.', label=f"{label(r['arm'])} (n={len(curves)})")
        ax.fill_between(iters, mean - std, mean + std, alpha=0.2, color=line.get_color())
    ax.set(xlabel='iteration', ylabel='val loss (nats/token)', title='validation loss, mean ± std over seeds')
    ax.legend(fontsize=7)
    axes = {'runs.png': ax}
    if vs:
        ax = axes['tradeoff.png'] = Figure(figsize=(7.5, 5.5), layout='constrained').subplots()
        ax.fill_between([35, 53], 3.9, 8.4, color='gray', alpha=0.3, lw=0,
                        label='paper: cascade allocation, 47-65% fewer for +3.9-8.4%')
        ax.axhspan(-1.4, 1.4, color='gray', alpha=0.12, lw=0,
                   label='paper: hybrid within 1.4% of its baseline')
        for c, r in enumerate(r for r in rows if r['arm'] in vs):
            ax.errorbar([r['attn_pct']], [r['dppl']], yerr=[r['dppl_std'] if r['seeds'] > 1 else 0], fmt='o',
                        color=f'C{c}', capsize=3,
                        label=f"{label(r['arm'])} vs {label(r['vs'])} (n={r['seeds']})")
            ax.fill_between([r['attn_pct'] - 1, r['attn_pct'] + 1], -r['base_std'], r['base_std'],
                            color=f'C{c}', alpha=0.25, lw=0)
        ax.axhline(0, color='k', lw=0.6)
        ax.set(xlabel="attention parameters, % of the baseline's", ylabel='val PPL vs baseline (%)',
               title=f"Trade-off at iteration {last}: mean ± std over seeds\n"
                     f"(shaded at 0: the baseline's own ± std)")
        ax.figure.legend(loc='outside lower center', ncol=2, fontsize=7)
    for ax in axes.values():
        ax.grid(alpha=0.3)
    return {name: lambda f, fig=ax.figure: fig.savefig(f, format='png', dpi=130) for name, ax in axes.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.error = lambda msg: sys.exit(f"error: {msg} (see python runs.py --help)")
    p.add_argument('runs', nargs='+', help='train.py out_dirs')
    p.add_argument('--out_dir', help='write runs.csv, runs.png (and tradeoff.png) here')
    p.add_argument('--vs', nargs='+', default=[], metavar='ARM=BASELINE',
                   help='arms for the trade-off figure')
    args = p.parse_args(argv)
    arms = defaultdict(dict)
    for path in args.runs:
        if not os.path.exists(os.path.join(path, 'log.jsonl')):
            p.error(f"{path} has no log.jsonl: give train.py out_dirs")
        arms[arm_of(run_name(path))][run_name(path)] = read_run(path)
    vs = dict(v.partition('=')[::2] for v in args.vs)
    if not set(vs) | set(vs.values()) <= set(arms):
        p.error(f"--vs names arms that are not among the runs ({', '.join(sorted(arms))})")
    last = max(it for runs in arms.values() for r in runs.values() for it, _ in r['evals'][-1:])
    rows = {}
    for arm, runs in arms.items():
        done = [r for r in runs.values() if r['evals'] and r['evals'][-1][0] == last]
        rows[arm] = dict(zip(('val_loss', 'std'), mean_std([r['evals'][-1][1] for r in done])),
                         arm=arm, done=done, seeds=len(done),
                         **{k: done[0][k] if done else None for k in ('params', 'attn_params')},
                         tokens_per_s=statistics.median([r['tokens_per_s'] for r in done] or [math.nan]))
    for arm, base in vs.items():   # ΔPPL of each seed against the baseline's mean; the baseline's own spread
        a, b = rows[arm], rows[base]
        a['dppl'], a['dppl_std'] = mean_std([100 * math.expm1(r['evals'][-1][1] - b['val_loss'])
                                             for r in a['done']])
        a.update(vs=base, attn_pct=100 * a['attn_params'] / b['attn_params'] if a['attn_params'] and
                 b['attn_params'] else math.nan,
                 base_std=100 * math.expm1(b['std']) if b['seeds'] > 1 else 0.0)
    rows = sorted(rows.values(), key=lambda r: (math.isnan(r['val_loss']), r['val_loss']))
    print(f"{'arm':<28} {'seeds':>5} {f'val loss @ {last}':>18} {'params':>8} {'attn':>8} {'tokens/s':>9}")
    for r in rows:
        loss = f"{r['val_loss']:.4f} ± {r['std']:.4f}" if r['seeds'] > 1 else f"{r['val_loss']:.4f}"
        params = [f"{r[k] / 1e6:.3f}M" if r[k] else '-' for k in ('params', 'attn_params')]
        print(f"{r['arm']:<28} {r['seeds']:>5} {loss:>18} {params[0]:>8} {params[1]:>8} "
              f"{r['tokens_per_s']:>9,.0f}"
              + (f"   vs {r['vs']}: attention {r['attn_pct']:.1f}%, PPL {r['dppl']:+.1f} "
                 f"± {r['dppl_std']:.1f}% (baseline's spread ± {r['base_std']:.1f}%)" if 'vs' in r else ''))
    if args.out_dir:
        os.makedirs(args.out_dir, exist_ok=True)
        csv = data.csv_text(rows, 'arm seeds val_loss std params attn_params tokens_per_s vs attn_pct dppl '
                                  'dppl_std base_std'.split())
        data.write_files({os.path.join(args.out_dir, name): out
                          for name, out in ({'runs.csv': csv} | figures(rows, last, vs)).items()})
    return rows


if __name__ == '__main__':
    main()
