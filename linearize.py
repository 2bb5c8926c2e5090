"""
Post-hoc linearization: switch k softmax layers of trained models to ELU+1 attention on each layer's own q and k
(optionally healed by --finetune_iters steps) and measure val PPL, for k = 0, 1, ... and each --order: the first
or last k softmax layers, or cascade: the k of lowest routing erank. Every k of every checkpoint sees the same val
batches (with --seed 0, those train.py evaluates on). Writes OUT_DIR/linearize.csv, linearize_arms.csv (mean ± std
over the seeds of each arm: checkpoint folders NAME_s<seed>) and linearize.png.

    python linearize.py --ckpt out/quick_sd out/quick_sd_std --order first last cascade [--finetune_iters 100]
"""
import argparse
import math
import os
import sys

import torch
from tqdm import tqdm

import data
from model import GPT
from runs import arm_of, mean_std, run_name

ORDERS = ('first', 'last', 'cascade')


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.error = lambda msg: sys.exit(f"error: {msg} (see python linearize.py --help)")
    p.add_argument('--ckpt', action='extend', nargs='+', required=True, help='train.py checkpoints or out_dirs')
    p.add_argument('--dataset', help="DATA_ROOT/DATASET/val.bin (default: the checkpoints' dataset)")
    p.add_argument('--data_root', default='data')
    p.add_argument('--order', action='extend', nargs='+', choices=ORDERS, help='one or more (default: first)')
    p.add_argument('--num_batches', type=int, default=20)
    p.add_argument('--batch_size', type=int, default=8)
    p.add_argument('--block_size', type=int, help="default: the checkpoints' (smallest) block size")
    p.add_argument('--seed', type=int, default=0, help='seeds the val (and healing) batches')
    p.add_argument('--finetune_iters', type=int, default=0, help='AdamW steps of healing after the switch')
    p.add_argument('--finetune_lr', type=float, default=1e-4)
    p.add_argument('--out_dir', default='out/linearize')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    args = p.parse_args(argv)
    args.order = list(dict.fromkeys(args.order or ['first']))
    if min(args.num_batches, args.batch_size) < 1 or args.finetune_iters < 0 or args.finetune_lr <= 0:
        p.error('--num_batches and --batch_size must be at least 1, --finetune_iters >= 0, --finetune_lr > 0')
    if len(set(map(os.path.abspath, args.ckpt))) != len(args.ckpt):
        p.error('a checkpoint is given twice in --ckpt; give each once')
    return args


def pick_layers(model, order, k, erank=None):
    """Indices of the k softmax layers to switch, chosen by `order`."""
    softmax = [i for i, a in enumerate(model.attention_layers()) if a.kind != 'linear']
    if order == 'first':
        return softmax[:k]
    if order == 'last':
        return softmax[len(softmax) - k:]
    return sorted(softmax, key=lambda i: (erank[i], i))[:k]


@torch.no_grad()
def evaluate(model, batches):   # mean val loss over batches of one size
    model.eval()
    return sum(model(x, y)[1].item() for x, y in batches) / len(batches)


def finetune(model, train, args, block_size):
    """Heal in place: finetune_iters AdamW steps on seeded train batches (the same for every run)."""
    torch.manual_seed(args.seed)
    optimizer = model.configure_optimizers(0.0, args.finetune_lr, (0.9, 0.95), args.device.split(':')[0])
    model.train()
    for it in range(args.finetune_iters):
        x, y = data.get_batch(train, args.batch_size, block_size, [args.seed, 2, it])
        model(x.to(args.device), y.to(args.device))[1].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def by_arm(rows):
    """One row per arm, order and k: mean and std over the arm's seeds of every loss and Δ column, n seeds."""
    groups = {}
    for r in rows:
        groups.setdefault((arm_of(r['name']), r['order'], r['k']), []).append(r)
    out = []
    for (arm, order, k), rs in groups.items():
        out.append({'arm': arm, 'order': order, 'k': k, 'n': len(rs)})
        for c in ('val_loss', 'delta_pct', 'ft_val_loss', 'ft_delta_pct'):
            if c in rs[0]:
                out[-1][c], out[-1][c + '_std'] = mean_std([r[c] for r in rs])
    return out


def plot(arms, args, block_size):
    import matplotlib
    matplotlib.use('Agg')
    from matplotlib.figure import Figure
    fig = Figure(figsize=(10, 5), layout='constrained')
    ax, deltas = fig.subplots(), []
    for c, arm in enumerate(dict.fromkeys(a['arm'] for a in arms)):
        for order, style in zip(ORDERS, ('-', '--', ':')):
            rs = [a for a in arms if a['arm'] == arm and a['order'] == order]
            for col, marker, alpha, what in (('delta_pct', 'o', 1.0, ''),
                                             ('ft_delta_pct', 'x', 0.5, f', healed {args.finetune_iters} it')):
                if not rs or col not in rs[0]:
                    continue
                ks, d, sd, n = [a['k'] for a in rs], [a[col] for a in rs], [a[col + '_std'] for a in rs], rs[0]['n']
                ax.plot(ks, d, style, marker=marker, color=f'C{c}', alpha=alpha,
                        label=f"{arm} ({order}{what}" + (f", n={n})" if n > 1 else ")"))
                if n > 1:   # mean over seeds, ± std band
                    ax.fill_between(ks, [m - e for m, e in zip(d, sd)], [m + e for m, e in zip(d, sd)],
                                    color=f'C{c}', alpha=0.15 * alpha, lw=0)
                deltas += d
    ax.axhline(5, color='gray', lw=0.8, ls=(0, (1, 3)), label='+5%')
    if max(map(abs, deltas)) > 100:   # wide range: symlog keeps 0 and small negatives
        ax.set_yscale('symlog', linthresh=1)
        ax.set_ylim(bottom=min(-1, 1.5 * min(deltas)))
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set(xlabel='softmax attention layers switched to ELU+1 (k)', ylabel='validation PPL increase vs k = 0 (%)',
           title=f"Post-hoc linearization: {args.dataset} val, {args.num_batches}x{args.batch_size}x{block_size} "
                 f"tokens")
    ax.grid(True, alpha=0.3)
    fig.legend(loc='outside right upper', fontsize=8)
    return fig


def main(argv=None):
    args = parse_args(argv)
    erank_of = None
    if 'cascade' in args.order:
        from analyze import layer_routing_erank as erank_of
    shapes = []   # every checkpoint is checked before the long part
    for path in args.ckpt:
        model, ckpt = GPT.from_checkpoint(path)
        shapes.append((model.config.block_size, model.config.vocab_size, ckpt.get('config', {}).get('dataset'),
                       ckpt.get('chars')))
    if args.dataset is None:
        datasets = {s[2] for s in shapes}
        if len(datasets) != 1 or None in datasets:
            sys.exit(f"error: the checkpoints were trained on {sorted(map(str, datasets))}: choose the evaluation "
                     f"data with --dataset")
        args.dataset = datasets.pop()
    max_block = min(s[0] for s in shapes)
    block_size = args.block_size or max_block
    if not 1 <= block_size <= max_block:
        sys.exit(f"error: --block_size={block_size} must be between 1 and the checkpoints' block size {max_block}")
    val = data.open_split(args.data_root, args.dataset, 'val')
    train = data.open_split(args.data_root, args.dataset, 'train') if args.finetune_iters else val
    if min(len(val), len(train)) <= block_size + 1:
        sys.exit(f"error: {args.data_root}/{args.dataset} has too few tokens for block_size={block_size}: lower "
                 f"--block_size or prepare more data")
    chars = data.read_meta(args.data_root, args.dataset).get('chars')
    batches = [data.get_batch(val, args.batch_size, block_size, [args.seed, 1, 0, i]) for i in range(args.num_batches)]
    if any(s[3] != chars for s in shapes) or max(int(x.max()) for x, _ in batches) >= min(s[1] for s in shapes):
        sys.exit(f"error: {args.dataset} has another vocabulary than a checkpoint: evaluate on data tokenized like "
                 f"its training data (--dataset)")
    batches = [(x.to(args.device), y.to(args.device)) for x, y in batches]
    names = dict(zip(args.ckpt, map(run_name, args.ckpt)))

    rows = []
    bar = tqdm(total=0, desc='linearize', dynamic_ncols=True)
    for path in args.ckpt:
        model = GPT.from_checkpoint(path, args.device)[0]
        erank = erank_of(model) if erank_of else None
        if erank:
            tqdm.write(f"{names[path]}: routing erank per layer {' '.join(f'{e:.2f}' for e in erank)}")
        trained = {k: v.clone() for k, v in model.state_dict().items()} if args.finetune_iters else None
        n_softmax = sum(a.kind != 'linear' for a in model.attention_layers())
        bar.total += len(args.order) * (n_softmax + 1)
        done = {}   # layers switched -> results; k = 0 is the same for every order
        for order in args.order:
            for k in range(n_softmax + 1):
                layers = tuple(sorted(pick_layers(model, order, k, erank)))
                model.linearize(layers)
                bar.set_postfix_str(f"{names[path]} {order} k={k}")
                if layers not in done:
                    done[layers] = {'val_loss': evaluate(model, batches)}
                    if args.finetune_iters:
                        finetune(model, train, args, block_size)
                        done[layers]['ft_val_loss'] = evaluate(model, batches)
                        model.load_state_dict(trained)
                bar.update(1)
                linear = [i for i, a in enumerate(model.attention_layers()) if a.linear]
                rows.append({'ckpt': path, 'name': names[path], 'order': order, 'k': k,
                             'layers': ';'.join(map(str, linear)), **done[layers]})
        for r in rows:
            if r['ckpt'] == path:
                for p in ('', 'ft_') if args.finetune_iters else ('',):
                    r[p + 'ppl'] = math.exp(min(r[p + 'val_loss'], 50))
                    r[p + 'delta_pct'] = 100 * (r[p + 'ppl'] / math.exp(min(done[()][p + 'val_loss'], 50)) - 1)
        del model, trained
    bar.close()

    ft = ['ft_val_loss', 'ft_ppl', 'ft_delta_pct'] if args.finetune_iters else []
    arms = by_arm(rows)
    os.makedirs(args.out_dir, exist_ok=True)
    out = {os.path.join(args.out_dir, f): v for f, v in (
        ('linearize.csv', data.csv_text(rows, ['ckpt', 'order', 'k', 'layers', 'val_loss', 'ppl', 'delta_pct', *ft])),
        ('linearize_arms.csv', data.csv_text(arms, list(arms[0]))),
        ('linearize.png', lambda f: plot(arms, args, block_size).savefig(f, format='png', dpi=120)))}
    data.write_files(out)

    print("ΔPPL % for k = 0, 1, ... (arms of several seeds: mean ± std over seeds, checkpoint folders NAME_s<seed>)")
    for a0 in (a for a in arms if a['k'] == 0):
        rs = [a for a in arms if a['arm'] == a0['arm'] and a['order'] == a0['order']]
        cells = {c: ' '.join(f"{a[c]:+.1f}" + (f"±{a[c + '_std']:.1f}" if a['n'] > 1 else '') for a in rs)
                 for c in ('delta_pct', 'ft_delta_pct') if c in a0}
        print(f"{a0['arm']:<24} {a0['order']:<8} n={a0['n']} val loss {a0['val_loss']:.4f}  {cells['delta_pct']}"
              + (f" | healed: {cells['ft_delta_pct']}" if ft else ''))
    print(f"wrote {', '.join(out)}")
    return rows


if __name__ == '__main__':
    main()
