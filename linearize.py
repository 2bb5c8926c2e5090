"""Post-hoc linearization: switch k softmax layers of trained models to ELU+1 on their own q, k (beside a
softmax window, after attention transfer, after healing) and measure val PPL; see the README.
    python linearize.py --ckpt out/quick_sd out/quick_sd_std --order first last cascade [--finetune_iters 100]
    python linearize.py --ckpt out/d6_s* --per_layer --transfer_iters 50 --order cascade
"""
import argparse
import math
import os
import sys

import torch
import torch.nn.functional as F
from tqdm import tqdm

import data
from data import arm_of, label, mean_std, run_name
from model import ATTN_TYPES, GPT

ORDERS = ('first', 'last', 'cascade')
WINDOWS = (0, 2, 4, 8, 16, 32)   # --per_layer: the windows tried, smallest first
BUDGET = 5.0                     # --per_layer: a fix is a window whose PPL increase is under BUDGET %
STAGES = {'': ('switched', None, 'o', 1.0), 'at_': ('after attention transfer', 'transfer_iters', 's', 0.75),
          'ft_': ('healed', 'finetune_iters', 'x', 0.5)}   # column prefix: (what, its flag, marker, alpha)
STATS = ('val_loss', 'ppl', 'delta_pct')   # the columns of each stage


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.error = lambda msg: sys.exit(f"error: {msg} (see python linearize.py --help)")
    p.add_argument('--ckpt', action='extend', nargs='+', required=True,
                   help='train.py checkpoints or out_dirs')
    p.add_argument('--dataset', help="default: the checkpoints' dataset")
    p.add_argument('--data_root', default='data')
    p.add_argument('--order', action='extend', nargs='+', choices=ORDERS, help='one or more (default: first)')
    p.add_argument('--num_batches', type=int, default=20)
    p.add_argument('--batch_size', type=int, default=8)
    p.add_argument('--block_size', type=int, help="default: the checkpoints' (smallest) block size")
    p.add_argument('--seed', type=int, default=0, help='seeds the val (and healing) batches')
    p.add_argument('--window', type=int, default=0, help='softmax window of each switched layer (tokens)')
    p.add_argument('--transfer_iters', type=int, default=0, help='AdamW steps of attention transfer')
    p.add_argument('--transfer_lr', type=float, default=1e-2)
    p.add_argument('--finetune_iters', type=int, default=0, help='AdamW steps of healing after the switch')
    p.add_argument('--finetune_lr', type=float, default=1e-4)
    p.add_argument('--k', type=int, nargs='+', help='only these k (default: 0 … n_layer; k = 0 always)')
    p.add_argument('--per_layer', action='store_true', help='each layer alone at each window; cheapest fixes')
    p.add_argument('--out_dir', default='out/linearize')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    args = p.parse_args(argv)
    args.order = list(dict.fromkeys(args.order or ['first']))
    if min(args.num_batches, args.batch_size) < 1 or min(args.finetune_iters, args.transfer_iters) < 0 \
            or min(args.finetune_lr, args.transfer_lr) <= 0:
        p.error('--num_batches and --batch_size must be at least 1, --finetune_iters and --transfer_iters '
                '>= 0, --finetune_lr and --transfer_lr > 0')
    if args.k and min(args.k) < 0:
        p.error(f'--k must be >= 0, got {min(args.k)}')
    if args.window < 0:
        p.error(f'--window must be >= 0, got {args.window}')
    if len(set(map(os.path.abspath, args.ckpt))) != len(args.ckpt):
        p.error('a checkpoint is given twice in --ckpt; give each once')
    return args


def pick_layers(model, order, k, erank=None):
    """Indices of the k layers to switch (of model.switchable(): not trained as ELU+1), chosen by `order`."""
    layers = model.switchable()
    if order == 'first':
        return layers[:k]
    if order == 'last':
        return layers[len(layers) - k:]
    return sorted(layers, key=lambda i: (erank[i], i))[:k]


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


def match_loss(model, layers, x):
    """Attention transfer's loss: the sum over the switched `layers` of the MSE between each one's mixer
    output and its trained mixer's on the same q, k, v, all on the trained model's hidden states."""
    attns = [model.attention_layers()[i] for i in sorted(layers)]
    mixers, inputs = [a.mixer for a in attns], []
    hooks = [a.register_forward_pre_hook(lambda module, args: inputs.append(args[0])) for a in attns]
    try:
        for a in attns:
            a.set_mixer(ATTN_TYPES[a.kind])
        teachers = [a.mixer for a in attns]
        with torch.no_grad():
            model(x)
            qkv = [a.qkv(h) for a, h in zip(attns, inputs)]
    finally:
        for a, mixer, hook in zip(attns, mixers, hooks):
            a.mixer = mixer
            hook.remove()
    return sum(F.mse_loss(mixer(*t), teacher(*t)) for mixer, teacher, t in zip(mixers, teachers, qkv))


def transfer(model, layers, train, args, block_size):
    """Attention transfer in place: transfer_iters AdamW steps on match_loss over seeded train batches,
    training only what the switch added to `layers` (their feature maps and window gains)."""
    torch.manual_seed(args.seed)
    params = [p for i in layers for p in model.attention_layers()[i].mixer.parameters()]
    optimizer = torch.optim.AdamW(params, lr=args.transfer_lr, weight_decay=0.0)
    model.eval()   # no dropout: the teacher is the trained model as evaluated
    for it in range(args.transfer_iters):
        x, _ = data.get_batch(train, args.batch_size, block_size, [args.seed, 3, it])
        match_loss(model, layers, x.to(args.device)).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def without_attention(model, batches):
    """Val loss with every attention layer's output set to zero: the whole of what attention adds."""
    hooks = [a.register_forward_hook(lambda m, i, out: torch.zeros_like(out))
             for a in model.attention_layers()]
    loss = evaluate(model, batches)
    for h in hooks:
        h.remove()
    return loss


def measure(model, layers, window, batches, train, args, block_size, trained, heal=True):
    """Val loss with `layers` switched at `window` (int or {layer: w}): as switched, after attention transfer,
    after LM healing (unless heal=False); the trained model back after."""
    model.linearize(layers, window)
    out = {'val_loss': evaluate(model, batches)}
    if args.transfer_iters:
        if layers:
            transfer(model, layers, train, args, block_size)
        out['at_val_loss'] = evaluate(model, batches) if layers else out['val_loss']
    if args.finetune_iters and heal:
        finetune(model, train, args, block_size)
        out['ft_val_loss'] = evaluate(model, batches)
        model.linearize(())   # the switched layers' mixers dropped, then the trained weights back
        model.load_state_dict(trained)
    model.linearize(())
    return out


def add_deltas(rows, base):
    """PPL and its increase in % over `base` (the unswitched row's losses) for each stage measured."""
    for r in rows:
        for p in (p for p in STAGES if p + 'val_loss' in base):
            r[p + 'ppl'] = math.exp(min(r[p + 'val_loss'], 50))
            r[p + 'delta_pct'] = 100 * (r[p + 'ppl'] / math.exp(min(base[p + 'val_loss'], 50)) - 1)


def by_arm(rows, keys=('order', 'k')):
    """One row per arm and `keys`: n seeds, mean and std over the arm's seeds of every loss, Δ and erank."""
    groups = {}
    for r in rows:
        groups.setdefault((arm_of(r['name']), *(r[k] for k in keys)), []).append(r)
    out = []
    for (arm, *values), rs in groups.items():
        out.append({'arm': arm, **dict(zip(keys, values)), 'n': len(rs)})
        for c in [p + s for p in STAGES for s in ('val_loss', 'delta_pct')] + ['erank', 'no_attn_loss']:
            if c in rs[0]:
                out[-1][c], out[-1][c + '_std'] = mean_std([r[c] for r in rs])
    return out


def cheapest(arms, prefix):
    """{(arm, layer): the smallest window whose mean PPL increase (stage `prefix`) is under BUDGET, else the
    window of the lowest mean increase}."""
    fix = {}
    for a in sorted(arms, key=lambda a: a['window']):
        key, d = (a['arm'], a['layer']), a[prefix + 'delta_pct']
        if key not in fix or fix[key][1] >= BUDGET and d < fix[key][1]:
            fix[key] = (a['window'], d)
    return {key: w for key, (w, _) in fix.items()}


def per_layer(args, names, batches, train, block_size, erank_of):
    """Each switchable layer of each checkpoint switched alone at every window in WINDOWS, as switched and
    after attention transfer: a row per checkpoint, layer and window (with its erank for --order cascade)."""
    rows = []
    for path in tqdm(args.ckpt, desc='per layer', dynamic_ncols=True):
        model = GPT.from_checkpoint(path, args.device)[0]
        erank = erank_of(model) if erank_of else None
        run = lambda layers, w: measure(model, layers, w, batches, train, args, block_size, None, heal=False)
        mine = [{'ckpt': path, 'name': names[path], 'layer': i, 'window': w, **run((i,), w),
                 **({'erank': float(erank[i])} if erank else {})}
                for i in model.switchable() for w in WINDOWS]
        add_deltas(mine, run((), 0))
        rows += mine
    return rows


def cheapest_fixes(table, prefixes):
    """From the per-layer table: (its arm means, one row per arm and layer with its cheapest window and ΔPPL
    there for each stage, {arm: {layer: window}} of the last stage: after attention transfer if measured)."""
    arms = by_arm(table, ('layer', 'window'))
    mean, rows, windows = {(a['arm'], a['layer'], a['window']): a for a in arms}, [], {}
    fix = {p: cheapest(arms, p) for p in prefixes}
    for arm, layer in fix['']:
        a = mean[arm, layer, 0]
        rows.append({'arm': arm, 'layer': layer, 'n': a['n'], **{c: a[c] for c in ('erank',) if c in a}})
        for p in prefixes:
            at = mean[arm, layer, fix[p][arm, layer]]
            rows[-1] |= {p + 'window': at['window'], p + 'delta_pct': at[p + 'delta_pct'],
                         p + 'delta_pct_std': at[p + 'delta_pct_std']}
        windows.setdefault(arm, {})[layer] = fix[prefixes[-1]][arm, layer]
    return arms, rows, windows


def draw(ax, xs, rs, p, color, name, ls):
    """ΔPPL at stage p: the mean over seeds of the arm rows rs against xs, with a ± std band if n > 1."""
    d, sd, n = [a[p + 'delta_pct'] for a in rs], [a[p + 'delta_pct_std'] for a in rs], rs[0]['n']
    marker, alpha = STAGES[p][2:]
    ax.plot(xs, d, color=color, label=name + (f", n={n}" if n > 1 else ''), ls=ls, marker=marker, alpha=alpha)
    if n > 1:
        ax.fill_between(xs, [m - e for m, e in zip(d, sd)], [m + e for m, e in zip(d, sd)], color=color,
                        alpha=0.15 * alpha, lw=0)
    return d


def legend(p, args):   # a stage in a figure's legend
    steps = {'at_': f', transfer {args.transfer_iters} it', 'ft_': f', healed {args.finetune_iters} it'}
    return steps.get(p, '')


def figure(n_axes, width):
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width, 5), layout='constrained')
    return fig, fig.subplots(1, n_axes, squeeze=False)[0]


def finish(ax, deltas, **labels):
    ax.axhline(BUDGET, color='gray', lw=0.8, ls=(0, (1, 3)), label=f'+{BUDGET:g}%')
    if max(map(abs, deltas)) > 100:   # wide range: symlog keeps 0 and small negatives
        ax.set_yscale('symlog', linthresh=1)
        ax.set_ylim(bottom=min(-1, 1.5 * min(deltas)))
    ax.set(ylabel='validation PPL increase vs no switch (%)', **labels)
    ax.grid(True, alpha=0.3)


def plot(arms, args, block_size, prefixes):
    """ΔPPL against k, a panel per order: an arm per color, a stage per line style."""
    orders = [o for o in ORDERS if any(a['order'] == o for a in arms)]
    fig, axes = figure(len(orders), 6 * len(orders) + 3)
    deltas = [a[p + 'delta_pct'] for a in arms for p in prefixes]
    window = ' beside its cheapest window' if args.per_layer else \
        f' beside a {args.window}-token window' * bool(args.window)
    for ax, order in zip(axes, orders):
        for c, arm in enumerate(dict.fromkeys(a['arm'] for a in arms)):
            rs = [a for a in arms if a['arm'] == arm and a['order'] == order]
            for p, ls in zip(prefixes, ('-', '--', ':')) if rs else ():
                draw(ax, [a['k'] for a in rs], rs, p, f'C{c}', label(arm) + legend(p, args), ls)
        ax.xaxis.get_major_locator().set_params(integer=True)
        finish(ax, deltas, xlabel=f"k softmax layers switched to ELU+1{window}", title=f"order: {order}")
    fig.suptitle(f"Post-hoc linearization: {args.dataset} val, "
                 f"{args.num_batches}x{args.batch_size}x{block_size} tokens")
    fig.legend(*axes[0].get_legend_handles_labels(), loc='outside right upper', fontsize=8)
    return fig


def plot_per_layer(arms, args, prefixes):
    """ΔPPL of each layer switched alone against its window, one panel per arm."""
    names = list(dict.fromkeys(a['arm'] for a in arms))
    fig, axes = figure(len(names), 5 * len(names) + 2)
    for ax, arm in zip(axes, names):
        deltas, layers = [], sorted({a['layer'] for a in arms if a['arm'] == arm})
        for c, layer in enumerate(layers):
            rs = [a for w in WINDOWS for a in arms if (a['arm'], a['layer'], a['window']) == (arm, layer, w)]
            for p, ls in zip(prefixes, ('-', '--')):
                deltas += draw(ax, [WINDOWS.index(a['window']) for a in rs], rs, p, f'C{c}',
                               f"layer {layer}{legend(p, args)}", ls)
        ax.set_xticks(range(len(WINDOWS)), [str(w) for w in WINDOWS])
        finish(ax, deltas, xlabel='softmax window w (tokens; 0: ELU+1 alone)',
               title=f'{label(arm)}: one layer switched')
        ax.legend(fontsize=7)
    return fig


def main(argv=None):
    args = parse_args(argv)
    erank_of = None
    if 'cascade' in args.order:
        from analyze import layer_routing_erank as erank_of
    shapes = []   # every checkpoint is checked before the long part
    for path in args.ckpt:
        model, ckpt = GPT.from_checkpoint(path)
        shapes.append((model.config.block_size, model.config.vocab_size,
                       ckpt.get('config', {}).get('dataset'), data.tokenizer_of(ckpt)))
        if args.k and max(args.k) > len(model.switchable()):
            sys.exit(f"error: --k {max(args.k)} is more than the {len(model.switchable())} switchable layers "
                     f"of {path}")
    if args.dataset is None:
        datasets = {s[2] for s in shapes}
        if len(datasets) != 1 or None in datasets:
            sys.exit(f"error: the checkpoints were trained on {sorted(map(str, datasets))}: choose the "
                     f"evaluation data with --dataset")
        args.dataset = datasets.pop()
    max_block = min(s[0] for s in shapes)
    block_size = args.block_size or max_block
    if not 1 <= block_size <= max_block:
        sys.exit(f"error: --block_size={block_size} must be between 1 and the checkpoints' block size "
                 f"{max_block}")
    val = data.open_split(args.data_root, args.dataset, 'val')
    steps = args.finetune_iters + args.transfer_iters
    train = data.open_split(args.data_root, args.dataset, 'train') if steps else val
    if min(len(val), len(train)) <= block_size + 1:
        sys.exit(f"error: {args.data_root}/{args.dataset} has too few tokens for block_size={block_size}: "
                 f"lower --block_size or prepare more data")
    tokenizer = data.tokenizer_of(data.read_meta(args.data_root, args.dataset))
    batches = [data.get_batch(val, args.batch_size, block_size, [args.seed, 1, 0, i])
               for i in range(args.num_batches)]
    if any(s[3] != tokenizer for s in shapes) \
            or max(int(x.max()) for x, _ in batches) >= min(s[1] for s in shapes):
        sys.exit(f"error: {args.dataset} has another vocabulary than a checkpoint: evaluate on data "
                 f"tokenized like its training data (--dataset)")
    batches = [(x.to(args.device), y.to(args.device)) for x, y in batches]
    names = dict(zip(args.ckpt, map(run_name, args.ckpt)))
    prefixes = [p for p, (_, flag, *_) in STAGES.items() if not flag or getattr(args, flag)]
    measured = [p for p in prefixes if p != 'ft_']   # no LM healing per layer
    out, windows = {}, {}   # windows: {arm: {layer: its cheapest window}} from the per-layer table

    if args.per_layer:
        table = per_layer(args, names, batches, train, block_size, erank_of)
        layer_arms, fixes, windows = cheapest_fixes(table, measured)
        columns = ['ckpt', 'layer', 'window', *(p + s for p in measured for s in STATS)]
        out |= {os.path.join(args.out_dir, f): v for f, v in (
            ('per_layer.csv', data.csv_text(table, columns + ['erank'] * ('erank' in table[0]))),
            ('per_layer_arms.csv', data.csv_text(layer_arms, list(layer_arms[0]))),
            ('cheapest.csv', data.csv_text(fixes, list(fixes[0]))),
            ('per_layer.png', data.png(plot_per_layer(layer_arms, args, measured), dpi=120)))}
        print(f"cheapest fix per layer: the smallest window w in {WINDOWS} under +{BUDGET:g}% PPL (mean over "
              f"seeds), else the lowest; ΔPPL % there")
        for f in fixes:
            print(f"{f['arm']:<24} layer {f['layer']}" + (f" erank {f['erank']:.2f}" if 'erank' in f else '')
                  + ''.join(f" | {STAGES[p][0]}: w={f[p + 'window']} {f[p + 'delta_pct']:+.1f}%"
                            for p in measured))

    rows = []
    bar = tqdm(total=0, desc='linearize', dynamic_ncols=True)
    for path in args.ckpt:
        model = GPT.from_checkpoint(path, args.device)[0]
        erank = erank_of(model) if erank_of else None
        if erank:
            tqdm.write(f"{names[path]}: routing erank per layer {' '.join(f'{e:.2f}' for e in erank)}")
        trained = {k: v.clone() for k, v in model.state_dict().items()}
        window = windows.get(arm_of(names[path]), args.window)
        switchable = model.switchable()
        ks = [k for k in range(len(switchable) + 1) if not args.k or k in {0, *args.k}]
        bar.total += len(args.order) * len(ks)
        done = {}   # layers switched -> results; k = 0 is the same for every order
        no_attn = without_attention(model, batches)
        for order in args.order:
            for k in ks:
                layers = tuple(sorted(pick_layers(model, order, k, erank)))
                bar.set_postfix_str(f"{names[path]} {order} k={k}")
                if layers not in done:
                    done[layers] = measure(model, layers, window, batches, train, args, block_size, trained)
                bar.update(1)
                linear = sorted(set(layers) | set(range(len(model.attention_layers()))) - set(switchable))
                ws = [window.get(i, 0) if isinstance(window, dict) else window for i in layers]
                rows.append({'ckpt': path, 'name': names[path], 'order': order, 'k': k,
                             'layers': ';'.join(map(str, linear)), 'windows': ';'.join(map(str, ws)),
                             **done[layers], 'no_attn_loss': no_attn})
        add_deltas([r for r in rows if r['ckpt'] == path], done[()])
        del model, trained
    bar.close()

    arms = by_arm(rows)
    os.makedirs(args.out_dir, exist_ok=True)
    columns = ['ckpt', 'order', 'k', 'layers', 'windows', *(p + s for p in prefixes for s in STATS),
               'no_attn_loss']
    out |= {os.path.join(args.out_dir, f): v for f, v in (
        ('linearize.csv', data.csv_text(rows, columns)),
        ('linearize_arms.csv', data.csv_text(arms, list(arms[0]))),
        ('linearize.png', data.png(plot(arms, args, block_size, prefixes), dpi=120)))}
    data.write_files(out)

    print("ΔPPL % for k = 0, 1, ... (arms of several seeds: mean ± std over seeds, "
          "checkpoint folders NAME_s<seed>)")
    for a0 in (a for a in arms if a['k'] == 0):
        rs = [a for a in arms if a['arm'] == a0['arm'] and a['order'] == a0['order']]
        cells = {p: ' '.join(f"{a[p + 'delta_pct']:+.1f}" + (f"±{a[p + 'delta_pct_std']:.1f}" if a['n'] > 1
                                                             else '') for a in rs) for p in prefixes}
        print(f"{a0['arm']:<24} {a0['order']:<8} n={a0['n']} val loss {a0['val_loss']:.4f} (no attention "
              f"{a0['no_attn_loss']:.4f})  {cells['']}"
              + ''.join(f" | {STAGES[p][0]}: {cells[p]}" for p in prefixes[1:]))
    print(f"wrote {', '.join(out)}")
    return rows


if __name__ == '__main__':
    main()
