"""
Compare training runs across seeds: one table row per arm (final val loss mean ± std over seeds, parameters,
tokens/s) and the val-loss curves with a mean ± std band per arm.

    python runs.py out/exp/*  [--out docs/runs.png]  [--csv runs.csv]

An arm is the run folder's name without a trailing `_s<seed>` (out/exp/sd_none_s1, _s2, _s3 -> sd_none).
Each folder holds a train.py log.jsonl (and its ckpt.pt, for the parameter count); unfinished runs are
reported with the iteration they reached, and left out of the mean.
"""
import argparse
import json
import math
import os
import re
import statistics
from collections import defaultdict

from model import GPT


def arm_of(name):
    """The arm of a run, checkpoint or model name: without a trailing _s<seed>."""
    return re.sub(r'_s\d+$', '', name)


def read_run(path):
    """{'evals': [(iter, val_loss)], 'tokens_per_s': median, 'params': n or None} of one run folder."""
    evals, speeds = [], []
    with open(os.path.join(path, 'log.jsonl')) as f:
        for line in f:
            r = json.loads(line)
            if 'val_loss' in r:
                evals.append((r['iter'], r['val_loss']))
            elif 'tokens_per_s' in r:
                speeds.append(r['tokens_per_s'])
    ckpt = os.path.join(path, 'ckpt.pt')
    params = GPT.from_checkpoint(ckpt)[0].num_params() if os.path.exists(ckpt) else None
    return dict(evals=evals, tokens_per_s=statistics.median(speeds) if speeds else math.nan, params=params)


def mean_std(xs):
    """Mean and sample std (nan for one value); nan in, nan out."""
    return statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else math.nan


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0].strip())
    p.add_argument('runs', nargs='+', help='train.py out_dirs')
    p.add_argument('--out', help='write the val-loss curves (mean ± std band per arm) to this PNG')
    p.add_argument('--csv', help='write the table as CSV')
    args = p.parse_args(argv)
    arms = defaultdict(dict)
    for path in args.runs:
        if not os.path.exists(os.path.join(path, 'log.jsonl')):
            raise SystemExit(f"error: {path} has no log.jsonl: give train.py out_dirs")
        name = os.path.basename(os.path.normpath(path))
        arms[arm_of(name)][name] = read_run(path)
    last = max(it for runs in arms.values() for r in runs.values() for it, _ in r['evals'][-1:])
    rows = []
    for arm, runs in arms.items():
        done = [r for r in runs.values() if r['evals'] and r['evals'][-1][0] == last]
        if not done:
            rows.append(dict(arm=arm, seeds=0, val_loss=math.nan, std=math.nan, params=None, tokens_per_s=math.nan))
            continue
        m, s = mean_std([r['evals'][-1][1] for r in done])
        rows.append(dict(arm=arm, seeds=len(done), val_loss=m, std=s, params=done[0]['params'],
                         tokens_per_s=statistics.median(r['tokens_per_s'] for r in done)))
    rows.sort(key=lambda r: (math.isnan(r['val_loss']), r['val_loss']))
    print(f"{'arm':<28} {'seeds':>5} {f'val loss @ {last}':>18} {'params':>8} {'tokens/s':>9}")
    for r in rows:
        loss = f"{r['val_loss']:.4f} ± {r['std']:.4f}" if r['seeds'] > 1 else f"{r['val_loss']:.4f}"
        params = f"{r['params'] / 1e6:.3f}M" if r['params'] else '-'
        print(f"{r['arm']:<28} {r['seeds']:>5} {loss:>18} {params:>8} {r['tokens_per_s']:>9,.0f}")
    if args.csv:
        with open(args.csv, 'w') as f:
            f.write('arm,seeds,val_loss_mean,val_loss_std,params,tokens_per_s\n')
            f.writelines(f"{r['arm']},{r['seeds']},{r['val_loss']:.5f},{r['std']:.5f},{r['params']},"
                         f"{r['tokens_per_s']:.0f}\n" for r in rows)
    if args.out:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for r in rows:
            curves = [dict(run['evals']) for run in arms[r['arm']].values() if run['evals'][-1:] and
                      run['evals'][-1][0] == last]   # the runs of the table: finished ones
            if not curves:
                continue
            iters = sorted(set.intersection(*(set(c) for c in curves)) - {0})
            stats = [mean_std([c[i] for c in curves]) for i in iters]
            mean = [m for m, _ in stats]
            line, = ax.plot(iters, mean, marker='.', label=f"{r['arm']} (n={len(curves)})")
            if len(curves) > 1:
                ax.fill_between(iters, [m - s for m, s in stats], [m + s for m, s in stats], alpha=0.2,
                                color=line.get_color())
        ax.set(xlabel='iteration', ylabel='val loss (nats/token)', title='validation loss, mean ± std over seeds')
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(args.out + '.tmp.png', dpi=130)
        os.replace(args.out + '.tmp.png', args.out)
    return rows


if __name__ == '__main__':
    main()
