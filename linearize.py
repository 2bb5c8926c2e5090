"""Post-hoc linearization: switch k softmax layers of trained models to ELU+1 on their own q, k (beside a
softmax window, after attention transfer, after healing) and measure val PPL; see the README.
    python linearize.py --ckpt out/quick_sd out/quick_sd_std --order first last cascade [--finetune_iters 100]
    python linearize.py --ckpt out/d6_s* --per_layer --transfer_iters 50 --order cascade"""
import argparse
import copy
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
    p.add_argument('--ckpt', action='extend', nargs='+', required=True, help='train.py checkpoints/out_dirs')
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
    for flag, least in (('num_batches', 1), ('batch_size', 1), ('finetune_iters', 0), ('transfer_iters', 0),
                        ('k', 0), ('window', 0)):
        value = min(args.k or [0]) if flag == 'k' else getattr(args, flag)
        if value < least:
            p.error(f'--{flag} must be >= {least}, got {value}')
    if min(args.finetune_lr, args.transfer_lr) <= 0:
        p.error('--finetune_lr and --transfer_lr must be > 0')
    if len(set(map(os.path.abspath, args.ckpt))) != len(args.ckpt):
        p.error('a checkpoint is given twice in --ckpt; give each once')
    return args


def pick_layers(model, order, k, erank=None):
    """Indices of the k layers to switch (of model.switchable(): not trained as ELU+1), chosen by `order`."""
    layers = model.switchable()
    if order == 'cascade':   # lowest routing erank first
        layers = sorted(layers, key=lambda i: (erank[i], i))
    return layers[len(layers) - k:] if order == 'last' else layers[:k]


@torch.no_grad()
def evaluate(model, batches):   # mean val loss over batches of one size
    model.eval()
    return sum(model(x, y)[1].item() for x, y in batches) / len(batches)


def match_loss(model, layers, x):
    """Attention transfer's loss: the sum over the switched `layers` of the MSE between each one's mixer
    output and its trained mixer's on the same q, k, v, all on the trained model's hidden states."""
    attns = [model.attention_layers()[i] for i in sorted(layers)]
    mixers, qkv = [a.mixer for a in attns], []
    hooks = [a.register_forward_pre_hook(lambda module, args: qkv.append(module.qkv(args[0]))) for a in attns]
    try:
        for a in attns:
            a.set_mixer(ATTN_TYPES[a.kind])
        teachers = [a.mixer for a in attns]
        with torch.no_grad():
            model(x)
    finally:
        for a, mixer, hook in zip(attns, mixers, hooks):
            a.mixer = mixer
            hook.remove()
    return sum(F.mse_loss(mixer(*t), teacher(*t)) for mixer, teacher, t in zip(mixers, teachers, qkv))


def transfer(model, layers, train, args, block_size):
    """Attention transfer in place: AdamW on match_loss, training only what the switch added to `layers`."""
    params = [p for i in layers for p in model.attention_layers()[i].mixer.parameters()]
    optimizer = torch.optim.AdamW(params, lr=args.transfer_lr, weight_decay=0.0)
    model.eval()   # no dropout: the teacher is the trained model as evaluated
    for it in range(args.transfer_iters):
        x, _ = data.get_batch(train, args.batch_size, block_size, [args.seed, 3, it])
        match_loss(model, layers, x.to(args.device)).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def measure(model, layers, window, batches, train, args, block_size, heal=False):
    """Val loss with `layers` switched at `window` (int or {layer: w}): as switched, after attention transfer,
    and if heal, after LM healing (AdamW on seeded train batches) of a copy; the trained model back after."""
    model.linearize(layers, window)
    out = {'val_loss': evaluate(model, batches)}
    if args.transfer_iters:
        if layers:
            transfer(model, layers, train, args, block_size)
        out['at_val_loss'] = evaluate(model, batches) if layers else out['val_loss']
    if args.finetune_iters and heal:
        healed = copy.deepcopy(model)
        torch.manual_seed(args.seed)
        optimizer = healed.configure_optimizers(0.0, args.finetune_lr, (0.9, 0.95), args.device.split(':')[0])
        healed.train()
        for it in range(args.finetune_iters):
            x, y = data.get_batch(train, args.batch_size, block_size, [args.seed, 2, it])
            healed(x.to(args.device), y.to(args.device))[1].backward()
            torch.nn.utils.clip_grad_norm_(healed.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        out['ft_val_loss'] = evaluate(healed, batches)
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
    """{(arm, layer): the smallest window of mean ΔPPL % (stage `prefix`) under BUDGET, else the lowest's}."""
    fix = {}
    for a in sorted(arms, key=lambda a: a['window']):
        key, d = (a['arm'], a['layer']), a[prefix + 'delta_pct']
        if key not in fix or fix[key][1] >= BUDGET and d < fix[key][1]:
            fix[key] = (a['window'], d)
    return {key: w for key, (w, _) in fix.items()}


def per_layer(args, names, batches, train, block_size, erank_of):
    """Each switchable layer switched alone at every window in WINDOWS, as switched and after attention
    transfer (no healing); prints each layer's cheapest fix. ({file: content}, {(arm, layer): its window})"""
    prefixes = ['', 'at_'] if args.transfer_iters else ['']   # the last one sets the window used
    table = []   # a row per checkpoint, layer and window (with its erank for --order cascade)
    for path in tqdm(args.ckpt, desc='per layer', dynamic_ncols=True):
        model = GPT.from_checkpoint(path, args.device)[0]
        erank = erank_of(model) if erank_of else None
        run = lambda layers, w: measure(model, layers, w, batches, train, args, block_size)
        mine = [{'ckpt': path, 'name': names[path], 'layer': i, 'window': w, **run((i,), w),
                 **({'erank': float(erank[i])} if erank else {})}
                for i in model.switchable() for w in WINDOWS]
        add_deltas(mine, run((), 0))
        table += mine
    arms = by_arm(table, ('layer', 'window'))
    mean = {(a['arm'], a['layer'], a['window']): a for a in arms}
    fix = {p: cheapest(arms, p) for p in prefixes}
    fixes = []   # a row per arm and layer: its cheapest window and ΔPPL there at each stage
    for arm, layer in fix['']:
        fixes.append({c: v for c, v in mean[arm, layer, 0].items() if c in ('arm', 'layer', 'n', 'erank')})
        for p in prefixes:
            at = mean[arm, layer, fix[p][arm, layer]]
            fixes[-1] |= {p + 'window': at['window'], p + 'delta_pct': at[p + 'delta_pct'],
                          p + 'delta_pct_std': at[p + 'delta_pct_std']}
    print(f"cheapest fix per layer: the smallest window w in {WINDOWS} under +{BUDGET:g}% PPL (mean over "
          f"seeds), else the lowest; ΔPPL % there")
    for f in fixes:
        print(f"{f['arm']:<24} layer {f['layer']}" + (f" erank {f['erank']:.2f}" if 'erank' in f else '')
              + ''.join(f" | {STAGES[p][0]}: w={f[p + 'window']} {f[p + 'delta_pct']:+.1f}%"
                        for p in prefixes))
    from matplotlib.figure import Figure
    arm_names = list(dict.fromkeys(a['arm'] for a in arms))   # the figure: a panel per arm, a color per layer
    fig = Figure(figsize=(5 * len(arm_names) + 2, 5), layout='constrained')
    axes = fig.subplots(1, len(arm_names), squeeze=False)[0]
    for ax, arm in zip(axes, arm_names):   # the table's rows: each layer's windows in WINDOWS' order
        lines = [(f"layer {layer}", [a for a in arms if (a['arm'], a['layer']) == (arm, layer)])
                 for layer in sorted({a['layer'] for a in arms if a['arm'] == arm})]
        deltas = [a[p + 'delta_pct'] for a in arms if a['arm'] == arm for p in prefixes]   # its own y scale
        panel(ax, lines, lambda a: WINDOWS.index(a['window']), prefixes, args, deltas,
              xlabel='softmax window w (tokens; 0: ELU+1 alone)', title=f'{label(arm)}: one layer switched')
        ax.set_xticks(range(len(WINDOWS)), [str(w) for w in WINDOWS])
        ax.legend(fontsize=7)
    columns = ['ckpt', 'layer', 'window', *(p + s for p in prefixes for s in STATS)]
    return {'per_layer.csv': data.csv_text(table, columns + ['erank'] * ('erank' in table[0])),
            'per_layer_arms.csv': data.csv_text(arms, list(arms[0])),
            'cheapest.csv': data.csv_text(fixes, list(fixes[0])),
            'per_layer.png': data.png(fig, dpi=120)}, fix[prefixes[-1]]


def panel(ax, lines, x, prefixes, args, deltas, **labels):
    """ΔPPL of each (name, arm rows) line (a color each; no rows: not drawn) against x(row), a line style per
    stage: the mean over seeds, ± std if n > 1; symlog if `deltas` range widely."""
    steps = {'at_': f', transfer {args.transfer_iters} it', 'ft_': f', healed {args.finetune_iters} it'}
    for c, (name, rs) in enumerate(lines):
        xs = [x(a) for a in rs]
        for p, ls in zip(prefixes, ('-', '--', ':')) if rs else ():
            d, sd, n = [a[p + 'delta_pct'] for a in rs], [a[p + 'delta_pct_std'] for a in rs], rs[0]['n']
            marker, alpha = STAGES[p][2:]
            ax.plot(xs, d, color=f'C{c}', ls=ls, marker=marker, alpha=alpha,
                    label=name + steps.get(p, '') + (f", n={n}" if n > 1 else ''))
            if n > 1:
                ax.fill_between(xs, [m - e for m, e in zip(d, sd)], [m + e for m, e in zip(d, sd)],
                                color=f'C{c}', alpha=0.15 * alpha, lw=0)
    ax.axhline(BUDGET, color='gray', lw=0.8, ls=(0, (1, 3)), label=f'+{BUDGET:g}%')
    if max(map(abs, deltas)) > 100:   # wide range: symlog keeps 0 and small negatives
        ax.set_yscale('symlog', linthresh=1)
        ax.set_ylim(bottom=min(-1, 1.5 * min(deltas)))
    ax.set(ylabel='validation PPL increase vs no switch (%)', **labels)
    ax.grid(True, alpha=0.3)


def plot(arms, args, block_size, prefixes):
    """ΔPPL against k, a panel per order: an arm per color, a stage per line style."""
    from matplotlib.figure import Figure
    orders = [o for o in ORDERS if any(a['order'] == o for a in arms)]
    fig = Figure(figsize=(6 * len(orders) + 3, 5), layout='constrained')
    axes = fig.subplots(1, len(orders), squeeze=False)[0]
    deltas = [a[p + 'delta_pct'] for a in arms for p in prefixes]   # one y scale for every panel
    window = ' beside its cheapest window' if args.per_layer else \
        f' beside a {args.window}-token window' * bool(args.window)
    for ax, order in zip(axes, orders):
        lines = [(label(arm), [a for a in arms if (a['arm'], a['order']) == (arm, order)])
                 for arm in dict.fromkeys(a['arm'] for a in arms)]   # an arm's color the same in every panel
        panel(ax, lines, lambda a: a['k'], prefixes, args, deltas,
              xlabel=f"k softmax layers switched to ELU+1{window}", title=f"order: {order}")
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(f"Post-hoc linearization: {args.dataset} val, "
                 f"{args.num_batches}x{args.batch_size}x{block_size} tokens")
    fig.legend(*axes[0].get_legend_handles_labels(), loc='outside right upper', fontsize=8)
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
    block_sizes, vocab_sizes, datasets, tokenizers = map(set, zip(*shapes))
    if args.dataset is None:
        if len(datasets) != 1 or None in datasets:
            sys.exit(f"error: the checkpoints were trained on {sorted(map(str, datasets))}: choose the "
                     f"evaluation data with --dataset")
        args.dataset = datasets.pop()
    block_size = args.block_size or min(block_sizes)
    if not 1 <= block_size <= min(block_sizes):
        sys.exit(f"error: --block_size={block_size} must be between 1 and the checkpoints' block size "
                 f"{min(block_sizes)}")
    val = data.open_split(args.data_root, args.dataset, 'val')
    steps = args.finetune_iters or args.transfer_iters
    train = data.open_split(args.data_root, args.dataset, 'train') if steps else val
    if min(len(val), len(train)) <= block_size + 1:
        sys.exit(f"error: {args.data_root}/{args.dataset} has too few tokens for block_size={block_size}: "
                 f"lower --block_size or prepare more data")
    batches = [data.get_batch(val, args.batch_size, block_size, [args.seed, 1, 0, i])
               for i in range(args.num_batches)]
    if tokenizers != {data.tokenizer_of(data.read_meta(args.data_root, args.dataset))} \
            or max(int(x.max()) for x, _ in batches) >= min(vocab_sizes):
        sys.exit(f"error: {args.dataset} has another vocabulary than a checkpoint: evaluate on data "
                 f"tokenized like its training data (--dataset)")
    batches = [(x.to(args.device), y.to(args.device)) for x, y in batches]
    names = dict(zip(args.ckpt, map(run_name, args.ckpt)))
    prefixes = [p for p, (_, flag, *_) in STAGES.items() if not flag or getattr(args, flag)]
    out, fixed = per_layer(args, names, batches, train, block_size, erank_of) if args.per_layer else ({}, {})

    rows = []
    bar = tqdm(total=0, desc='linearize', dynamic_ncols=True)
    for path in args.ckpt:
        model = GPT.from_checkpoint(path, args.device)[0]
        erank = erank_of(model) if erank_of else None
        if erank:
            tqdm.write(f"{names[path]}: routing erank per layer {' '.join(f'{e:.2f}' for e in erank)}")
        window = {i: w for (arm, i), w in fixed.items() if arm == arm_of(names[path])} or args.window
        attns, switchable = model.attention_layers(), model.switchable()
        ks = [k for k in range(len(switchable) + 1) if not args.k or k in {0, *args.k}]
        bar.total += len(args.order) * len(ks)
        done = {}   # layers switched -> results; k = 0 is the same for every order
        hooks = [a.register_forward_hook(lambda m, i, o: torch.zeros_like(o)) for a in attns]
        no_attn = evaluate(model, batches)   # every attention output zeroed: the whole of what attention adds
        for h in hooks:
            h.remove()
        for order, k in [(order, k) for order in args.order for k in ks]:
            layers = tuple(sorted(pick_layers(model, order, k, erank)))
            bar.set_postfix_str(f"{names[path]} {order} k={k}")
            if layers not in done:
                done[layers] = measure(model, layers, window, batches, train, args, block_size, heal=True)
            bar.update(1)
            linear = sorted(set(layers) | set(range(len(attns))) - set(switchable))
            ws = [window.get(i, 0) if isinstance(window, dict) else window for i in layers]
            rows.append({'ckpt': path, 'name': names[path], 'order': order, 'k': k,
                         'layers': ';'.join(map(str, linear)), 'windows': ';'.join(map(str, ws)),
                         **done[layers], 'no_attn_loss': no_attn})
        add_deltas([r for r in rows if r['ckpt'] == path], done[()])
        del model
    bar.close()

    arms = by_arm(rows)
    os.makedirs(args.out_dir, exist_ok=True)
    columns = ['ckpt', 'order', 'k', 'layers', 'windows', *(p + s for p in prefixes for s in STATS),
               'no_attn_loss']
    out |= {'linearize.csv': data.csv_text(rows, columns),
            'linearize_arms.csv': data.csv_text(arms, list(arms[0])),
            'linearize.png': data.png(plot(arms, args, block_size, prefixes), dpi=120)}
    out = {os.path.join(args.out_dir, f): content for f, content in out.items()}
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
