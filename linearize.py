"""
Post-hoc linearization: switch k softmax attention layers of a trained model to ELU+1
linear attention that reuses each layer's own q and k, no retraining, and measure validation PPL.

    python linearize.py --ckpt out/sd_125m/ckpt.pt --ckpt out/std_125m/ckpt.pt --dataset openwebtext
    python linearize.py --ckpt out/quick_sd/ckpt.pt out/quick_std/ckpt.pt --order first last cascade
    python linearize.py --ckpt out/quick_sd/ckpt.pt --finetune_iters 100     # also heal, then re-evaluate

For k = 0 ... (number of softmax layers), with the layers chosen by --order:
  first    the first k softmax layers
  last     the last k softmax layers
  cascade  the k layers with the lowest routing erank (analyze.layer_routing_erank)
Layers trained as 'linear' are linear at every k; k counts the softmax layers switched.
Every k and every checkpoint is evaluated on the same val batches: batch i is drawn with seed [seed, 1, 0, i];
with --seed 0 (the default) these are the batches train.py evaluates on, so k = 0 with train.py's batch_size
and block_size reproduces its logged val loss. Writes OUT_DIR/linearize.csv and linearize.png, and
linearize_arms.csv: several seeds of one arm (checkpoint folders NAME_s<seed>) as mean ± std over seeds
(also printed, and drawn as bands).
"""
import argparse
import csv
import io
import math
import os

import torch
from tqdm import tqdm

import data
from model import GPT
from runs import arm_of, mean_std

ORDERS = ('first', 'last', 'cascade')


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0].strip(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--ckpt', action='extend', nargs='+', required=True, help="train.py checkpoint(s)")
    p.add_argument('--dataset', help="data_root/DATASET/val.bin (default: the checkpoints' dataset)")
    p.add_argument('--data_root', default='data')
    p.add_argument('--order', action='extend', nargs='+', choices=ORDERS, help="one or more (default: first)")
    p.add_argument('--num_batches', type=int, default=20)
    p.add_argument('--batch_size', type=int, default=8)
    p.add_argument('--block_size', type=int, help="default: the checkpoints' (smallest) block size")
    p.add_argument('--seed', type=int, default=0, help="seeds the val (and finetune) batches")
    p.add_argument('--finetune_iters', type=int, default=0, help="AdamW steps of healing after switching")
    p.add_argument('--finetune_lr', type=float, default=1e-4)
    p.add_argument('--out_dir', default='out/linearize')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    args = p.parse_args(argv)
    args.order = list(dict.fromkeys(args.order or ['first']))
    for name in ('num_batches', 'batch_size'):
        if getattr(args, name) < 1:
            raise SystemExit(f"error: --{name} must be at least 1, got {getattr(args, name)}")
    if args.finetune_iters < 0 or args.finetune_lr <= 0:
        raise SystemExit("error: --finetune_iters must be >= 0 and --finetune_lr > 0")
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        raise SystemExit(f"error: --device {args.device} but CUDA is not available; use --device cpu")
    if len(set(map(os.path.abspath, args.ckpt))) != len(args.ckpt):
        raise SystemExit("error: a checkpoint is given twice in --ckpt; give each once")
    return args


def pick_layers(model, order, k, erank=None):
    """Indices of the softmax layers to switch: k of them, chosen by `order`."""
    softmax = [i for i, a in enumerate(model.attention_layers()) if a.kind != 'linear']
    if order == 'first':
        return softmax[:k]
    if order == 'last':
        return softmax[len(softmax) - k:]
    return sorted(softmax, key=lambda i: (erank[i], i))[:k]


def erank_function():
    try:
        from analyze import layer_routing_erank
    except ImportError as e:
        raise SystemExit(f"error: --order cascade needs analyze.layer_routing_erank ({e}); "
                         f"use --order first/last, or add analyze.py")
    return layer_routing_erank


def routing_erank(model):
    """Mean weight-level routing erank per layer; the cascade order switches the lowest first."""
    erank = [float(e) for e in erank_function()(model)]
    if len(erank) != model.config.n_layer or not all(math.isfinite(e) for e in erank):
        raise SystemExit(f"error: layer_routing_erank gave {erank} for {model.config.n_layer} layers; fix analyze.py")
    return erank


@torch.no_grad()
def evaluate(model, batches):
    """Mean val loss over the batches (each batch's mean cross-entropy; all batches are the same size)."""
    model.eval()
    losses = [model(x, y)[1].item() for x, y in batches]
    return sum(losses) / len(losses)


def finetune(model, train, args, block_size):
    """Heal in place: finetune_iters AdamW steps on seeded train batches (the same for every run)."""
    torch.manual_seed(args.seed)
    device_type = 'cuda' if 'cuda' in args.device else 'cpu'
    optimizer = model.configure_optimizers(0.0, args.finetune_lr, (0.9, 0.95), device_type)
    model.train()
    for it in range(args.finetune_iters):
        x, y = data.get_batch(train, args.batch_size, block_size, [args.seed, 2, it])
        loss = model(x.to(args.device), y.to(args.device))[1]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()


def ppl(loss):
    return math.exp(min(loss, 50))


def short_names(paths):
    """Legend names: the checkpoint's directory name, or the path where those collide."""
    names = [os.path.basename(os.path.dirname(os.path.abspath(p))) or p for p in paths]
    return names if len(set(names)) == len(names) else list(paths)


def by_arm(rows, names):
    """Rows aggregated over the seeds of each arm (checkpoint folders NAME_s<seed>): one per arm, order, k, with
    the mean and std over seeds of every loss and Δ column, and the number of seeds n."""
    groups = {}
    for r in rows:
        groups.setdefault((arm_of(names[r['ckpt']]), r['order'], r['k']), []).append(r)
    out = []
    for (arm, order, k), rs in groups.items():
        agg = {'arm': arm, 'order': order, 'k': k, 'n': len(rs)}
        for c in ('val_loss', 'delta_pct', 'ft_val_loss', 'ft_delta_pct'):
            if c in rs[0]:
                agg[c], agg[c + '_std'] = mean_std([r[c] for r in rs])
        out.append(agg)
    return out


def plot(rows, args, block_size, path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 5))
    styles = {'first': '-', 'last': '--', 'cascade': ':'}
    curves = (('delta_pct', 'o', 1.0, ''), ('ft_delta_pct', 'x', 0.5, f', healed {args.finetune_iters} it'))
    deltas = []
    arms = by_arm(rows, dict(zip(args.ckpt, short_names(args.ckpt))))   # one seed: the checkpoint itself
    for c, arm in enumerate(dict.fromkeys(a['arm'] for a in arms)):
        for order in args.order:
            rs = [a for a in arms if a['arm'] == arm and a['order'] == order]
            ks, n = [a['k'] for a in rs], rs[0]['n']
            for column, marker, alpha, what in curves:
                if column not in rs[0]:
                    continue
                d = [a[column] for a in rs]
                ax.plot(ks, d, styles[order], marker=marker, color=f'C{c}', alpha=alpha,
                        label=f"{arm} ({order}{what}" + (f", n={n})" if n > 1 else ")"))
                if n > 1:   # several seeds: mean over seeds, ± std band
                    sd = [a[column + '_std'] for a in rs]
                    ax.fill_between(ks, [m - e for m, e in zip(d, sd)], [m + e for m, e in zip(d, sd)],
                                    color=f'C{c}', alpha=0.15 * alpha, lw=0)
                deltas += d
    ax.axhline(5, color='gray', lw=0.8, ls=(0, (1, 3)))
    ax.text(0, 5, ' +5%', color='gray', va='bottom', fontsize=8)
    if max(map(abs, deltas)) > 100:   # wide range: log scale (symlog keeps 0 and small negatives)
        ax.set_yscale('symlog', linthresh=1)
        ax.set_ylim(bottom=min(-1, 1.5 * min(deltas)))
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel('softmax attention layers switched to ELU+1 (k)')
    ax.set_ylabel('validation PPL increase vs k = 0 (%)')
    ax.set_title(f"Post-hoc linearization: {args.dataset} val, "
                 f"{args.num_batches}x{args.batch_size}x{block_size} tokens")
    ax.grid(True, alpha=0.3)
    if len(ax.get_lines()) > 7:   # many curves: legend beside the plot
        fig.set_size_inches(11, 5)
        ax.legend(fontsize=8, loc='upper left', bbox_to_anchor=(1.01, 1))
    else:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120, format='png')
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    if 'cascade' in args.order:
        erank_function()
    # check every checkpoint before the long part: readable, one dataset, a common block size
    shapes = []
    for path in args.ckpt:
        model, ckpt = GPT.from_checkpoint(path, 'cpu')
        shapes.append(dict(block_size=model.config.block_size, vocab_size=model.config.vocab_size,
                           dataset=ckpt.get('config', {}).get('dataset'), chars=ckpt.get('chars'),
                           n_softmax=sum(a.kind != 'linear' for a in model.attention_layers())))
        del model, ckpt
    if args.dataset is None:
        datasets = {s['dataset'] for s in shapes}
        if len(datasets) != 1 or None in datasets:
            raise SystemExit(f"error: the checkpoints were trained on {sorted(map(str, datasets))}: "
                             f"choose the evaluation data with --dataset")
        args.dataset = datasets.pop()
    max_block = min(s['block_size'] for s in shapes)
    block_size = args.block_size or max_block
    if not 1 <= block_size <= max_block:
        raise SystemExit(f"error: --block_size={block_size} must be between 1 and the checkpoints' "
                         f"block size {max_block}")
    val = data.open_split(args.data_root, args.dataset, 'val')
    train = data.open_split(args.data_root, args.dataset, 'train') if args.finetune_iters else None
    for split, d in (('val', val), ('train', train)):
        if d is not None and len(d) <= block_size + 1:
            raise SystemExit(f"error: {args.data_root}/{args.dataset}/{split}.bin has {len(d)} tokens, too few "
                             f"for block_size={block_size}: lower --block_size or prepare more data")
    chars = data.read_meta(args.data_root, args.dataset).get('chars')
    if any(s['chars'] != chars for s in shapes):
        raise SystemExit(f"error: {args.dataset} has another vocabulary than a checkpoint: evaluate on data "
                         f"tokenized like its training data (--dataset)")
    batches = [data.get_batch(val, args.batch_size, block_size, [args.seed, 1, 0, i]) for i in range(args.num_batches)]
    top, vocab = max(int(x.max()) for x, _ in batches), min(s['vocab_size'] for s in shapes)
    if top >= vocab:
        raise SystemExit(f"error: {args.dataset} has token id {top}, outside a checkpoint's vocabulary "
                         f"({vocab}): evaluate on data tokenized like its training data")
    batches = [(x.to(args.device), y.to(args.device)) for x, y in batches]

    rows = []
    bar = tqdm(total=sum(len(args.order) * (s['n_softmax'] + 1) for s in shapes), desc='linearize', dynamic_ncols=True)
    for path in args.ckpt:
        model, _ = GPT.from_checkpoint(path, args.device)
        n_softmax = sum(a.kind != 'linear' for a in model.attention_layers())
        erank = routing_erank(model) if 'cascade' in args.order else None
        if erank is not None:
            tqdm.write(f"{path}: routing erank per layer {' '.join(f'{e:.2f}' for e in erank)}")
        trained = {k: v.clone() for k, v in model.state_dict().items()} if args.finetune_iters else None
        done = {}   # layers switched -> results; k = 0 is the same run for every order
        for order in args.order:
            for k in range(n_softmax + 1):
                layers = pick_layers(model, order, k, erank)
                model.linearize(layers)
                key = tuple(sorted(layers))
                bar.set_postfix_str(f"{os.path.basename(os.path.dirname(os.path.abspath(path)))} {order} k={k}")
                if key not in done:
                    result = {'val_loss': evaluate(model, batches)}
                    if args.finetune_iters:
                        finetune(model, train, args, block_size)
                        result['ft_val_loss'] = evaluate(model, batches)
                        model.load_state_dict(trained)
                    done[key] = result
                bar.update(1)
                linear = [i for i, a in enumerate(model.attention_layers()) if a.linear]
                rows.append({'ckpt': path, 'order': order, 'k': k, 'layers': ';'.join(map(str, linear)),
                             **done[key]})
        base = done[()]
        for r in rows:
            if r['ckpt'] == path:
                r['ppl'] = ppl(r['val_loss'])
                r['delta_pct'] = 100 * (r['ppl'] / ppl(base['val_loss']) - 1)
                if args.finetune_iters:
                    r['ft_ppl'] = ppl(r['ft_val_loss'])
                    r['ft_delta_pct'] = 100 * (r['ft_ppl'] / ppl(base['ft_val_loss']) - 1)
        del model, trained
    bar.close()

    columns = ['ckpt', 'order', 'k', 'layers', 'val_loss', 'ppl', 'delta_pct']
    if args.finetune_iters:
        columns += ['ft_val_loss', 'ft_ppl', 'ft_delta_pct']
    os.makedirs(args.out_dir, exist_ok=True)
    csv_path, png_path = os.path.join(args.out_dir, 'linearize.csv'), os.path.join(args.out_dir, 'linearize.png')
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator='\n')
    writer.writeheader()
    for r in rows:
        writer.writerow({c: f"{r[c]:.6f}" if isinstance(r[c], float) else r[c] for c in columns})
    names = dict(zip(args.ckpt, short_names(args.ckpt)))
    arms = by_arm(rows, names)
    arms_buf = io.StringIO()
    writer = csv.DictWriter(arms_buf, fieldnames=list(arms[0]), lineterminator='\n')
    writer.writeheader()
    writer.writerows({c: f"{v:.6f}" if isinstance(v, float) else v for c, v in a.items()} for a in arms)
    outputs = {csv_path: buf.getvalue(), os.path.join(args.out_dir, 'linearize_arms.csv'): arms_buf.getvalue()}
    try:
        for path, text in outputs.items():
            with open(path + '.tmp', 'w') as f:
                f.write(text)
        plot(rows, args, block_size, png_path + '.tmp')
        for path in [*outputs, png_path]:
            os.replace(path + '.tmp', path)
    finally:
        for path in [*outputs, png_path]:
            if os.path.exists(path + '.tmp'):
                os.remove(path + '.tmp')

    header = f"{'ckpt':<20} {'order':<8} {'k':>3} {'linear layers':<16} {'val loss':>9} {'ppl':>10} {'Δppl %':>9}"
    if args.finetune_iters:
        header += f" {'healed loss':>11} {'healed ppl':>10} {'Δ %':>9}"
    print(header)
    for r in rows:
        line = (f"{names[r['ckpt']][:20]:<20} {r['order']:<8} {r['k']:>3} {r['layers'] or '-':<16} "
                f"{r['val_loss']:>9.4f} {r['ppl']:>10.2f} {r['delta_pct']:>+9.2f}")
        if args.finetune_iters:
            line += f" {r['ft_val_loss']:>11.4f} {r['ft_ppl']:>10.2f} {r['ft_delta_pct']:>+9.2f}"
        print(line)
    if any(a['n'] > 1 for a in arms):
        print("\nmean ± std over seeds (arms: checkpoint folders NAME_s<seed>)")
        for order in args.order:
            for arm in dict.fromkeys(a['arm'] for a in arms):
                rs = sorted((a for a in arms if a['arm'] == arm and a['order'] == order), key=lambda a: a['k'])
                cells = ' '.join(f"{a['delta_pct']:+.1f}±{a['delta_pct_std']:.1f}" for a in rs)
                heal = ' | healed: ' + ' '.join(f"{a['ft_delta_pct']:+.1f}±{a['ft_delta_pct_std']:.1f}" for a in rs) \
                    if args.finetune_iters else ''
                loss = f"{rs[0]['val_loss']:.4f}±{rs[0]['val_loss_std']:.4f}"
                print(f"{arm:<24} {order:<8} n={rs[0]['n']} val loss {loss}"
                      f"  ΔPPL % for k = 0..{rs[-1]['k']}: {cells}{heal}")
    print(f"wrote {', '.join(outputs)} and {png_path}")
    return rows


if __name__ == '__main__':
    main()
