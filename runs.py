"""Training runs across seeds (folders NAME_s<seed> of arm NAME): val loss mean ± std, curves, spike rates,
each arm's first spike, and with --vs the trade-off against a baseline arm; see the README.
    python runs.py out/exp/*  [--out_dir docs]  [--vs ARM=BASELINE ...]"""
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
    """A run's val losses [(iter, val_loss)], median tokens/s, parameter counts or None, spikes, lines."""
    with open(os.path.join(path, 'log.jsonl')) as f:
        log = [json.loads(line) for line in f]
    speeds = [r['tokens_per_s'] for r in log if 'tokens_per_s' in r]
    counts = next((r for r in log if 'params' in r), {})
    return dict(evals=[(r['iter'], r['val_loss']) for r in log if 'val_loss' in r],
                tokens_per_s=statistics.median(speeds or [math.nan]), params=counts.get('params'),
                attn_params=counts.get('attn_params'), name=run_name(path),
                spikes=[r for r in log if 'spike_iter' in r], lines=[r for r in log if 'score_max' in r])


def fisher(a, b, c, d):
    """Two-sided Fisher's exact test of the 2×2 table [[a, b], [c, d]]: the probability, with the margins
    fixed, of a table no more likely than this one."""
    n, row, col = a + b + c + d, a + b, a + c
    p = lambda x: math.comb(row, x) * math.comb(n - row, col - x) / math.comb(n, col)
    tables = range(max(0, col - n + row), min(row, col) + 1)
    return min(1.0, sum(p(x) for x in tables if p(x) <= p(a) * (1 + 1e-7)))


def spike_figure(arms):
    """The first traced spike of the first 4 arms with one, from 200 iterations before it to the spike."""
    from matplotlib.figure import Figure
    firsts = [next(((run, s) for run in runs.values() for s in run['spikes'] if 'trace' in s), None)
              for runs in arms.values()]
    firsts = [f for f in firsts if f][:4]
    if not firsts:
        return {}
    fig = Figure(figsize=(13, 3.2 * len(firsts)), layout='constrained')
    for axes, (run, spike) in zip(fig.subplots(len(firsts), 3, squeeze=False), firsts):
        at = spike | {'iter': spike['spike_iter'], 'loss': float(spike['spike_loss'])}
        lines = [r for r in run['lines'] if r['iter'] < spike['iter']] + spike['trace'] + [at]
        lines = [r for r in lines if r['iter'] >= spike['spike_iter'] - 200 and 'score_max' in r]
        it, scores = [r['iter'] for r in lines], np.array([r['score_max'] for r in lines])
        axes[0].plot(it, [r['loss'] for r in lines], color='k')
        axes[0].set(title=f"{label(run['name'])}, {run['name'].rsplit('_', 1)[-1]}: train loss", yscale='log')
        axes[1].plot(it, scores, label=[f'layer {layer}' for layer in range(scores.shape[1])])
        axes[1].set(title='max |q·k|/√d per layer', yscale='log')
        axes[1].legend(fontsize=6, ncol=2)
        axes[2].plot(it, [(r['logit_max'], r['logit_rms'], r['resid_rms'][-1]) for r in lines],
                     label=['max |logit|', 'logit RMS', 'residual RMS at the output'])
        axes[2].set(title='output', yscale='log')
        axes[2].legend(fontsize=6)
        for ax in axes:
            ax.axvline(spike['spike_iter'], color='r', ls=':', lw=1)   # the spike
            ax.axvline(spike['iter'], color='g', ls=':', lw=1)         # the state it goes back to
            ax.grid(alpha=0.3)
    fig.supxlabel('iteration (red: the spike; green: the last good state it goes back to)')
    return {'spikes.png': data.png(fig)}


def curves(rows):   # runs.png
    from matplotlib.figure import Figure
    ax = Figure(figsize=(7, 4.5), layout='constrained').subplots()
    for r in (r for r in rows if r['done']):
        evals = [dict(run['evals']) for run in r['done']]
        iters = sorted(set.intersection(*map(set, evals)) - {0})
        mean, std = np.array([mean_std([e[i] for e in evals]) for i in iters]).T   # one seed: no band
        line, = ax.plot(iters, mean, marker='.', label=f"{label(r['arm'])} (n={len(evals)})")
        ax.fill_between(iters, mean - std, mean + std, alpha=0.2, color=line.get_color())
    ax.set(xlabel='iteration', ylabel='val loss (nats/token)', title='validation loss, mean ± std over seeds')
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return {'runs.png': data.png(ax.figure)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.error = lambda msg: sys.exit(f"error: {msg} (see python runs.py --help)")
    p.add_argument('runs', nargs='+', help='train.py out_dirs')
    p.add_argument('--out_dir', help='write runs.csv, runs.png (and spikes.png) here')
    p.add_argument('--vs', nargs='+', default=[], metavar='ARM=BASELINE',
                   help='arms against their baselines: attention share, ΔPPL, spike rates')
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
                         arm=arm, done=done, seeds=len(done), n=len(runs),
                         spiked=sum(bool(r['spikes']) for r in runs.values()),
                         **{k: done[0][k] if done else None for k in ('params', 'attn_params')},
                         tokens_per_s=statistics.median([r['tokens_per_s'] for r in done] or [math.nan]))
    for arm, base in vs.items():   # ΔPPL of each seed against the baseline's mean; the baseline's own spread
        a, b = rows[arm], rows[base]
        a['dppl'], a['dppl_std'] = mean_std([100 * math.expm1(r['evals'][-1][1] - b['val_loss'])
                                             for r in a['done']])
        a.update(vs=base, attn_pct=100 * (a['attn_params'] or math.nan) / (b['attn_params'] or math.nan),
                 base_std=100 * math.expm1(b['std']) if b['seeds'] > 1 else 0.0,
                 p_spiked=fisher(a['spiked'], a['n'] - a['spiked'], b['spiked'], b['n'] - b['spiked']))
    rows = sorted(rows.values(), key=lambda r: (math.isnan(r['val_loss']), r['val_loss']))
    print(f"{'arm':<28} {'seeds':>5} {f'val loss @ {last}':>18} {'params':>8} {'attn':>8} {'tokens/s':>9} "
          f"{'spiked':>6} {'stopped':>7}")
    for r in rows:
        loss = f"{r['val_loss']:.4f} ± {r['std']:.4f}" if r['seeds'] > 1 else f"{r['val_loss']:.4f}"
        params = [f"{r[k] / 1e6:.3f}M" if r[k] else '-' for k in ('params', 'attn_params')]
        print(f"{r['arm']:<28} {r['seeds']:>5} {loss:>18} {params[0]:>8} {params[1]:>8} "
              f"{r['tokens_per_s']:>9,.0f} {r['spiked']:>2}/{r['n']:<3} {r['n'] - r['seeds']:>3}/{r['n']:<3}"
              + (f"   vs {r['vs']}: attention {r['attn_pct']:.1f}%, PPL {r['dppl']:+.1f} "
                 f"± {r['dppl_std']:.1f}% (baseline's spread ± {r['base_std']:.1f}%), spiked: Fisher's "
                 f"p = {r['p_spiked']:.3g}" if 'vs' in r else ''))
    if args.out_dir:
        os.makedirs(args.out_dir, exist_ok=True)
        csv = data.csv_text(rows, 'arm n seeds spiked val_loss std params attn_params tokens_per_s vs '
                                  'attn_pct dppl dppl_std base_std p_spiked'.split())
        data.write_files({os.path.join(args.out_dir, name): out for name, out in
                          ({'runs.csv': csv} | curves(rows) | spike_figure(arms)).items()})
    return rows


if __name__ == '__main__':
    main()
