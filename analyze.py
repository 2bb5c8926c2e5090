"""Routing (skew) and filtering (symmetric) parts of each head's weight kernel M = W_q^T W_k and of
A = QK^T/√d_h on text, per model and arm; see the README.
    python analyze.py --ckpt out/quick_sd out/quick_sd_std --dataset shakespeare_char
    python analyze.py --hf gpt2 bert-base-uncased EleutherAI/pythia-410m --text_file wiki.txt --num_seqs 16
"""
import argparse
import json
import math
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from itertools import islice, product

import torch
from tqdm import tqdm

import data
from hf import FAMILIES, OFFSETS, hf_encoder, hf_layers, hf_qk, load_hf
from model import GPT

# Singular values below REL_TOL * ||M||_F count as zero: float32 weights and activations resolve M only to
# about 1e-7 of its norm, and the float64 computation below resolves it to ~1e-8 or better.
REL_TOL = 1e-6
METRICS = ('routing_erank', 'filtering_erank', 'routing_capacity', 'rho', 'routing_fraction', 'max_re_eig',
           'erank_S', 'd_scalarness', 'score_rms')
COLUMNS = ('model', 'level', 'layer', 'head', 'kind', 'head_dim', 'n', *METRICS, 'rotation_freqs',
           'offset_rf')
LEVELS = {'weight': 'weight kernel M = W_q^T W_k', 'data': 'interaction A = QK^T/sqrt(d_h) on text',
          'rotary': 'W_q^T R_Δ W_k vs its reverse, mean over offsets Δ'}
TABLE = {'weight': {'cap': 'routing_capacity', 'routing': 'routing_erank', 'filter': 'filtering_erank',
                    'rho': 'rho', 'maxRe(eig)': 'max_re_eig', 'erank(S)': 'erank_S', 'D cv': 'd_scalarness'},
         'rotary': {'RoPE rout.': 'routing_erank', 'RoPE rho': 'rho'},   # printed, per level
         'data': {'A routing': 'routing_erank', 'A rho': 'rho'}}
finite = lambda values: [v if v is not None and math.isfinite(v) else None for v in values]   # JSON: no nan
band = lambda pairs: dict(zip(('mean', 'std'), map(finite, zip(*pairs))))   # [(mean, std)] -> {mean, std}


def erank(s, ref=None):
    """Effective rank exp(H(p)), p = s / sum(s), of singular values s (..., k) (Roy & Vetterli 2007); values
    <= REL_TOL * ref count as zero (ref: a norm (...) of the matrix, default sqrt(sum s^2)); erank(0) = 0."""
    ref = s.square().sum(-1).sqrt() if ref is None else ref
    s = torch.where(s > REL_TOL * ref.unsqueeze(-1), s, 0.0)
    p = s / s.sum(-1, keepdim=True).clamp_min(torch.finfo(s.dtype).tiny)
    return torch.exp(-torch.xlogy(p, p).sum(-1)) * (s.sum(-1) > 0)


def routing_capacity(n, d_h=None):
    """The largest rank of the skew part of an n x n matrix (even) or of a d_h-wide head's kernel (<= 2d_h)"""
    cap = min(n, 2 * d_h) if d_h else n
    return cap - cap % 2


def kernel_metrics(W_q, W_k, eig=True, rot=None):
    """{metric: (...) float64 tensor} of the kernels M = W_q^T W_k of W_q, W_k (..., d_h, n), never forming
    M: with B = [W_q^T, W_k^T] = Q R (Q orthonormal, R = [R_q, R_k]), M = Q (R_q R_k^T) Q^T and its parts have
    the singular values, norms and nonzero eigenvalues of K = R_q R_k^T (2d_h x 2d_h) and its parts. Any R
    with R^T R = B^T B = G will do: G's Cholesky factor, or B's QR where G is (nearly) singular (S−D heads;
    n < 2d_h; W_q = W_k). rot (..., d_h, d_h): instead of sym and skew, the parts (M ± M')/2 of
    M = W_q^T rot W_k and its reverse M' = W_k^T rot W_q (M^T if rot = I), of R_q rot R_k^T, R_k rot R_q^T."""
    d, n = W_q.shape[-2:]
    X, Y = W_q.double(), W_k.double()
    XY = X @ Y.mT
    G = torch.cat([torch.cat([X @ X.mT, XY], -1), torch.cat([XY.mT, Y @ Y.mT], -1)], -2)   # [W_q; W_k][..]^T
    L, info = torch.linalg.cholesky_ex(G)
    R = L.mT
    # where G is singular to about sqrt(eps) (a pivot below 1e-8 of G's diagonal), a QR of B instead
    bad = (info > 0) | (L.diagonal(0, -2, -1).square().amin(-1) <= 1e-8 * G.diagonal(0, -2, -1).amax(-1))
    if bad.any():
        r = torch.linalg.qr(torch.cat([X[bad], Y[bad]], -2).mT, mode='r').R      # (.., min(n, 2d), 2d)
        R[bad] = torch.cat([r, r.new_zeros(r.shape[0], 2 * d - r.shape[1], 2 * d)], 1)
    Rq, Rk = R[..., :d], R[..., d:]
    K = Rq @ Rk.mT if rot is None else Rq @ rot.double() @ Rk.mT
    K2 = K.mT if rot is None else Rk @ rot.double() @ Rq.mT
    sym, skew = (K + K2) / 2, (K - K2) / 2
    sym2, skew2 = sym.square().sum((-2, -1)), skew.square().sum((-2, -1))
    norm = (sym2 + skew2).sqrt()                      # ||M||_F^2 = ||sym||_F^2 + ||skew||_F^2
    # singular values: of a symmetric matrix, |eigenvalues|; of any matrix A, sqrt(eig(A^T A))
    sv = lambda A: torch.linalg.eigvalsh(A.mT @ A).clamp_min(0).sqrt()
    out = dict(routing_erank=erank(sv(skew), norm),
               filtering_erank=erank(torch.linalg.eigvalsh(sym).abs() if rot is None else sv(sym), norm),
               routing_capacity=torch.full_like(norm, routing_capacity(n, d)),
               rho=(skew2 / sym2).sqrt(), routing_fraction=skew2 / norm.square())
    if eig and rot is None:  # the nonzero eigenvalues of W_q^T W_k are those of the d x d matrix W_k W_q^T
        out['max_re_eig'] = torch.linalg.eigvals(XY.mT).real.amax(-1)
    return out


def kernel_metrics_naive(W_q, W_k, rot=None, cap=None, eig=True):
    """Reference for kernel_metrics (tests, bench): the same metrics of the full n x n float64
    M = W_q^T rot W_k (rot: default I), its reverse M' and (M ± M')/2; cap: M soft-capped, cap tanh(M/cap)."""
    d, n = W_q.shape[-2:]
    X, Y, fro = W_q.double(), W_k.double(), torch.linalg.matrix_norm
    M = X.mT @ Y if rot is None else X.mT @ rot.double() @ Y
    M = M if cap is None else cap * torch.tanh(M / cap)
    M2 = M.mT if rot is None else Y.mT @ rot.double() @ X
    sym, skew = (M + M2) / 2, (M - M2) / 2
    norm = (fro(sym).square() + fro(skew).square()).sqrt()
    out = dict(routing_erank=erank(torch.linalg.svdvals(skew), norm),
               filtering_erank=erank(torch.linalg.svdvals(sym), norm),
               routing_capacity=torch.full_like(norm, routing_capacity(n, d)), rho=fro(skew) / fro(sym),
               routing_fraction=fro(skew).square() / norm.square())
    if eig and rot is None:
        lam = torch.linalg.eigvals(M)   # its nonzero eigenvalues
        out['max_re_eig'] = torch.where(lam.abs() > REL_TOL * norm[..., None], lam.real, -math.inf).amax(-1)
    return out


def interaction_metrics(q, k, cap=None):
    """Metrics of A = q k^T, q, k (..., T, d_h), the model's scaling folded into q: the kernel of W_q = q^T,
    W_k = k^T; soft-capped scores cap tanh(A / cap) (Gemma-2) have full rank: from the T x T matrix."""
    T, X, Y = q.shape[-2], q.double().mT, k.double().mT
    m = kernel_metrics(X, Y, eig=False) if cap is None else kernel_metrics_naive(X, Y, cap=cap, eig=False)
    m['routing_capacity'].fill_(routing_capacity(T))
    A = X.mT @ Y
    m['score_rms'] = (A if cap is None else cap * torch.tanh(A / cap)).square().mean((-2, -1)).sqrt()
    return m


def sd_metrics(S, D):
    """S−D heads: erank of S (H, d, d), its rotation frequencies |Im eig(S)| (H, d//2), one per +-i w pair,
    descending (a skew matrix's singular values are those, in equal pairs), D's (H, d) scalarness std/mean."""
    s = torch.linalg.svdvals(S.double())
    s = torch.where(s > REL_TOL * s.norm(dim=-1, keepdim=True), s, 0.0)   # zero as in erank
    pairs, D = 2 * (s.shape[-1] // 2), D.double()
    return dict(erank_S=erank(s), rotation_freqs=(s[..., 0:pairs:2] + s[..., 1:pairs:2]) / 2,
                d_scalarness=D.std(-1, correction=0) / D.mean(-1))


def gpt_layers(model):
    """Per layer of one of our GPTs: dict(kind, W_q, W_k[, S, D]), float64 (S−D: sym exactly −W^T D W)."""
    return [dict(kind=a.kind, **{k: v.detach() for k, v in a.head_weights(torch.float64).items()})
            for a in model.attention_layers()]


@torch.no_grad()
def layer_qk(module, idx):
    """Per layer on token ids idx (B, T): (q, k, cap), q, k (B, H, T, d) in float64 as the layer computes
    them (after its norms, biases, rotary), the scores q·k (its scaling folded into q), capped at cap/None."""
    if not isinstance(module, GPT):
        return hf_qk(module, idx)
    qk = []   # each attention layer's own qkv on its input
    hooks = [a.register_forward_pre_hook(lambda a, args: qk.append(a.qkv(args[0])[:2]))
             for a in module.attention_layers()]
    module(idx)
    for h in hooks:
        h.remove()
    return [(q.double() / math.sqrt(q.shape[-1]), k.double(), None) for q, k in qk]


def map_layers(fn, layers):
    """fn(layer) for each layer, in order, over torch's threads, each worker single-threaded: batched small
    LAPACK calls go one matrix at a time, and on a busy machine spinning intra-op threads slow them a lot."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(n) as pool:
            yield from pool.map(fn, layers)
    finally:
        torch.set_num_threads(n)


def layer_routing_erank(model):
    """Mean weight-kernel routing erank per layer of one of our GPTs (linearize.py --order cascade)."""
    return [m['routing_erank'].mean().item()
            for m in map_layers(lambda w: kernel_metrics(w['W_q'], w['W_k'], eig=False), gpt_layers(model))]


def layer_metrics(w):
    """{level: metrics} of one layer's heads (w: a gpt_layers / hf_layers entry); rotary: mean over offsets"""
    m = {'weight': kernel_metrics(w['W_q'], w['W_k']) | (sd_metrics(w['S'], w['D']) if 'S' in w else {})}
    if 'rot' in w:
        r = kernel_metrics(w['W_q'], w['W_k'], rot=w['rot'][:, None])
        m['rotary'] = {k: v.mean(0) for k, v in r.items()} | {'offset_rf': r['routing_fraction'].mT}
    return m


def weight_rows(name, w, layer):   # heads.csv rows of one layer's weight levels
    H, d, n = w['W_q'].shape
    return [dict(model=name, level=lv, layer=layer, head=h, kind=w['kind'], head_dim=d, n=n,
                 **{k: v[h].tolist() for k, v in ml.items()})
            for lv, ml in layer_metrics(w).items() for h in range(H)]


def data_rows(name, kinds, module, seqs, bar):
    """heads.csv rows of the data level: per layer and head, metrics averaged over the sequences (1-D ids)."""
    sums = None
    for seq in seqs:
        qk = layer_qk(module, seq[None])
        if len(qk) != len(kinds):
            raise SystemExit(f"error: {name}: {len(qk)} attention calls, not {len(kinds)}: q, k not read")
        ms = list(map_layers(lambda x: interaction_metrics(x[0][0], x[1][0], x[2]), qk))
        sums = ms if sums is None else [{key: s[key] + m[key] for key in m} for s, m in zip(sums, ms)]
        bar.update(len(qk))
    T = sum(len(s) for s in seqs) / len(seqs)
    return [dict(model=name, level='data', layer=layer, head=h, kind=kinds[layer], head_dim=q.shape[-1], n=T,
                 **{key: v[h].item() / len(seqs) for key, v in m.items()})
            for layer, (m, (q, *_)) in enumerate(zip(sums, qk)) for h in range(q.shape[1])]


def tokenize(lines, tok, num_seqs, seq_len, vocab):
    """Up to num_seqs sequences (LongTensors of 2..seq_len ids) of the lines in the tokenizer tok, or None."""
    encode = hf_encoder(tok[1], vocab, seq_len) if tok[0] == 'hf' else data.codec(tok)[0]
    ids = (encode(line)[:seq_len] for line in lines) if encode else ()
    return list(islice((torch.tensor(x) for x in ids if len(x) >= 2), num_seqs)) or None


def make_figures(models, arms):
    """(filename, matplotlib Figure) of cascade.png and rho.png, a panel per level."""
    from matplotlib.figure import Figure
    levels = [lv for lv in LEVELS if any(lv in m for m in models.values())]
    curves = [(f"{data.label(a)} ({len(st['seeds'])} seeds)", st, models[st['seeds'][0]])
              for a, st in arms.items()]
    curves += [(name, m, m) for name, m in models.items() if data.arm_of(name) not in arms]
    for fname, metric, label in (('cascade.png', 'routing_erank', 'routing erank (skew; dashed: capacity)'),
                                 ('rho.png', 'rho', r'$\rho = \|skew\|_F / \|sym\|_F$')):
        fig = Figure(figsize=(6.5 * len(levels), 4.8), layout='constrained')
        fig.suptitle(f"{label.split(' (')[0]} per layer: mean over heads (and an arm's seeds), ± std over "
                     f"heads (seeds)")
        for ax, lv in zip(fig.subplots(1, len(levels), squeeze=False)[0], levels):
            for i, (name, st, m) in ((i, c) for i, c in enumerate(curves) if lv in c[1]):   # C{i}: a model's
                x = (torch.arange(m['n_layer']) / max(m['n_layer'] - 1, 1)).numpy()
                mean, std = (torch.tensor(st[lv][metric][k]).float().numpy() for k in ('mean', 'std'))
                ax.plot(x, mean, 'o-', ms=3, color=f'C{i}', label=data.label(name))
                ax.fill_between(x, mean - std, mean + std, color=f'C{i}', alpha=0.12, lw=0)
                if metric == 'routing_erank':
                    ax.plot(x, m[lv]['routing_capacity']['mean'], '--', lw=1, color=f'C{i}', alpha=0.7)
                    ax.set_yscale('log', base=2)
            ax.set(xlabel='relative depth, layer / (n_layer - 1)', ylabel=label, title=LEVELS[lv])
            ax.yaxis.set_major_formatter('{x:g}')
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        yield fname, fig


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.error = lambda msg: sys.exit(f"error: {msg} (see python analyze.py --help)")
    p.add_argument('--ckpt', nargs='+', default=[], metavar='PATH', help='train.py checkpoints (or out_dirs)')
    p.add_argument('--hf', nargs='+', default=[], metavar='NAME',
                   help=f"transformers models, hub names or dirs, of the families {', '.join(FAMILIES)}")
    p.add_argument('--text_file', help='data level on this UTF-8 text, one sequence per line')
    p.add_argument('--dataset', help="data level on windows of this prepared dataset's val split")
    p.add_argument('--data_root', default='data')
    p.add_argument('--num_seqs', type=int, default=16)
    p.add_argument('--seq_len', type=int, default=256, help='tokens per sequence (at most)')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--out_dir', default='out/analysis')
    args = p.parse_args(argv)
    if not args.ckpt + args.hf:
        p.error('nothing to analyse: give --ckpt and/or --hf')
    if args.text_file and args.dataset:
        p.error('give --text_file or --dataset, not both')
    try:
        os.makedirs(args.out_dir, exist_ok=True)
        args.lines = args.text_file and [t.strip() for t in open(args.text_file, encoding='utf-8')
                                         if t.strip()]
    except (OSError, UnicodeDecodeError) as e:
        p.error(f'cannot create --out_dir {args.out_dir} or read --text_file {args.text_file} ({e})')
    args.texts = {}   # --dataset: {its tokenizer: sequences}
    if args.dataset:
        val = data.open_split(args.data_root, args.dataset, 'val')
        if len(val) <= args.seq_len + 1:
            p.error(f"{args.dataset}'s val split has {len(val)} tokens, not enough for --seq_len "
                    f"{args.seq_len}")
        tok = data.tokenizer_of(data.read_meta(args.data_root, args.dataset))
        args.texts[tok] = list(data.get_batch(val, args.num_seqs, args.seq_len, seed=0)[0])
    return args


def analyse(name, source, hf, args):
    """One model: (its heads' rows, its summary: shape; per level, metric and layer mean, std over heads)"""
    if hf:
        module, info = load_hf(source, args.device)
    else:
        module, ckpt = GPT.from_checkpoint(source, args.device)
        c = module.eval().config
        info = dict(norm=c.norm, max_len=c.block_size, vocab=c.vocab_size, tok=data.tokenizer_of(ckpt))
    seqs = tokenize(args.lines, info['tok'], args.num_seqs, args.seq_len, info['vocab']) if args.lines else \
        args.texts.get(info['tok'])
    if (args.lines or args.texts) and not seqs:
        print(f"warning: no local tokenizer for {name} that reads the text: no data level", file=sys.stderr)
    seqs = [t[:info['max_len']].to(args.device) for t in seqs or []]
    if seqs and max(t.max().item() for t in seqs) >= info['vocab']:
        raise SystemExit(f"error: the text has token ids beyond {name}'s vocabulary: give text in its "
                         f"tokenizer")
    layers = gpt_layers(module) if isinstance(module, GPT) else hf_layers(module)
    L, (H, _, n_embd) = len(layers), layers[0]['W_q'].shape
    rows = [r for rs in map_layers(lambda j: weight_rows(name, layers[j], j), range(L)) for r in rs]
    if seqs:
        with tqdm(total=L * len(seqs), desc=f'{name} on text', unit='layer', dynamic_ncols=True) as bar:
            rows += data_rows(name, [w['kind'] for w in layers], module, seqs, bar)
    m = dict(source=source, n_layer=L, n_head=H, n_embd=n_embd, norm=info['norm'], heads=L * H,
             head_dim=[w['W_q'].shape[1] for w in layers], attn=[w['kind'] for w in layers],
             num_seqs=len(seqs))
    if 'rot' in layers[0]:
        m['offsets'] = OFFSETS[:len(layers[0]['rot'])]
    for lv, k in product(LEVELS, METRICS):
        v = [[r[k] for r in rows if r['level'] == lv and r['layer'] == j and r.get(k) is not None]
             for j in range(L)]
        if any(v):
            v = [torch.tensor(x or [math.nan], dtype=torch.float64) for x in v]
            m.setdefault(lv, {})[k] = band([(x.mean().item(), x.std(correction=0).item()) for x in v])
    return rows, m


def main(argv=None):
    args = parse_args(argv)
    rows, models = [], {}   # every model's heads; per model its summary
    for i, source in enumerate(args.ckpt + args.hf):   # one model in memory at a time
        name = data.run_name(source) + (f'_{i + 1}' if data.run_name(source) in models else '')
        own, models[name] = analyse(name, source, i >= len(args.ckpt), args)
        rows += own
    arms = {}   # models NAME_s<seed> of several seeds: per layer, mean and std over the seeds of their means
    for arm in dict.fromkeys(map(data.arm_of, models)):
        names = [name for name in models if data.arm_of(name) == arm]
        for lv, k in product(LEVELS, METRICS):
            per_seed = [models[name].get(lv, {}).get(k, {}).get('mean') for name in names]
            if len(names) > 1 and None not in per_seed:
                st = arms.setdefault(arm, dict(seeds=names)).setdefault(lv, {})
                st[k] = band([data.mean_std(x) if None not in x else (None, None) for x in zip(*per_seed)])
    summary = dict(total_heads=sum(m['heads'] for m in models.values()), metrics=METRICS, rel_tol=REL_TOL,
                   models=models, arms=arms)
    outputs = {'heads.csv': data.csv_text(rows, COLUMNS), 'summary.json': json.dumps(summary, indent=1)}
    outputs |= {f: data.png(fig) for f, fig in make_figures(models, arms)}
    data.write_files({os.path.join(args.out_dir, f): out for f, out in outputs.items()})
    for name, m in models.items():   # per layer the columns of TABLE the model has
        cols = [(h, m[lv][k]['mean']) for lv, t in TABLE.items() for h, k in t.items() if k in m.get(lv, {})]
        print(f"\n{name}: {m['n_layer']} layers x {m['n_head']} heads, d_model {m['n_embd']}, norm "
              f"{m['norm']}\nlayer     attn  d_h " + ' '.join(f'{h:>10}' for h, _ in cols))
        for i in range(m['n_layer']):
            print(f"{i:5d} {m['attn'][i]:>8} {m['head_dim'][i]:4d} " +
                  ' '.join(f"{'-' if v[i] is None else f'{v[i]:.4g}':>10}" for _, v in cols))
    for arm, st in arms.items():
        print(f"\n{arm}: mean ± std over the seeds {', '.join(st['seeds'])} of the per-layer mean over heads")
        for lv in LEVELS:
            for k, v in st.get(lv, {}).items():
                print(f"{lv:>6} {k:<16} " + ' '.join('-' if x is None else f'{x:.3g}±{s:.2g}'
                                                     for x, s in zip(v['mean'], v['std'])))
    print(f"\n{summary['total_heads']} heads -> {args.out_dir}/ ({', '.join(outputs)})")


if __name__ == '__main__':
    main()
