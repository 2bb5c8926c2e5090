"""
Routing (skew-symmetric) and filtering (symmetric) parts of each head's weight kernel M = W_q^T W_k (S−D: also S, D)
and of its interaction matrix A = QK^T/sqrt(d_h) on text (pre-softmax, biases included, unmasked; mean over texts).

    python analyze.py --ckpt out/quick_sd out/quick_sd_std --dataset shakespeare_char [--suggest FILE]
    python analyze.py --hf gpt2 bert-base-uncased --text_file wiki.txt --num_seqs 16 --seq_len 256

Writes OUT_DIR/heads.csv (a row per model, level, layer, head), summary.json (per layer: mean and std over heads,
and over the seeds of each arm NAME_s<seed>), cascade.png, rho.png, heatmap_<model>.png: all or nothing.
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
from model import GPT
from runs import arm_of, mean_std, run_name

# Singular values below REL_TOL * ||M||_F count as zero: float32 weights and activations resolve M only to about
# 1e-7 of its norm, and the float64 computation below resolves it to ~1e-8 or better.
REL_TOL = 1e-6
METRICS = ('routing_erank', 'filtering_erank', 'routing_capacity', 'rho', 'routing_fraction', 'max_re_eig',
           'erank_S', 'd_scalarness', 'score_rms')
COLUMNS = ('model', 'level', 'layer', 'head', 'kind', 'head_dim', 'n') + METRICS + ('rotation_freqs',)
LEVELS = {'weight': 'weight kernel M = W_q^T W_k', 'data': 'interaction A = QK^T/sqrt(d_h) on text'}
TABLE = {'weight': {'cap': 'routing_capacity', 'routing': 'routing_erank', 'filter': 'filtering_erank', 'rho': 'rho',
                    'maxRe(eig)': 'max_re_eig', 'erank(S)': 'erank_S', 'D cv': 'd_scalarness'},   # printed, per level
         'data': {'A routing': 'routing_erank', 'A rho': 'rho'}}
finite = lambda values: [v if v is not None and math.isfinite(v) else None for v in values]   # JSON has no nan


def erank(s, ref=None):
    """Effective rank exp(H(p)), p = s / sum(s), of singular values s (..., k) (Roy & Vetterli 2007); values <=
    REL_TOL * ref count as zero (ref: a norm (...) of the matrix, default sqrt(sum s^2)); erank(0) = 0."""
    ref = s.square().sum(-1).sqrt() if ref is None else ref
    s = torch.where(s > REL_TOL * ref.unsqueeze(-1), s, 0.0)
    p = s / s.sum(-1, keepdim=True).clamp_min(torch.finfo(s.dtype).tiny)
    return torch.exp(-torch.xlogy(p, p).sum(-1)) * (s.sum(-1) > 0)


def routing_capacity(n, d_h=None):
    """The largest rank of the skew part of an n x n matrix (even), or of a d_h-wide head's kernel (<= 2 d_h)."""
    cap = min(n, 2 * d_h) if d_h else n
    return cap - cap % 2


def kernel_metrics(W_q, W_k, eig=True):
    """{metric: (...) float64 tensor} of the kernels M = W_q^T W_k of W_q, W_k (..., d_h, n), never forming M: with
    B = [W_q^T, W_k^T] = Q R (Q orthonormal, R = [R_q, R_k]), M = Q (R_q R_k^T) Q^T and its parts have the singular
    values, norms and nonzero eigenvalues of K = R_q R_k^T (2d_h x 2d_h) and its parts. Any R with R^T R = B^T B = G
    will do: G's Cholesky factor, or B's QR where G is (nearly) singular (S−D heads; n < 2d_h; W_q = W_k)."""
    d, n = W_q.shape[-2:]
    X, Y = W_q.double(), W_k.double()
    XY = X @ Y.mT
    G = torch.cat([torch.cat([X @ X.mT, XY], -1), torch.cat([XY.mT, Y @ Y.mT], -1)], -2)   # [W_q; W_k][W_q; W_k]^T
    L, info = torch.linalg.cholesky_ex(G)
    R = L.mT
    # where G is singular to about sqrt(eps) (a pivot below 1e-8 of G's diagonal), a QR of B instead
    bad = (info > 0) | (L.diagonal(0, -2, -1).square().amin(-1) <= 1e-8 * G.diagonal(0, -2, -1).amax(-1))
    if bad.any():
        r = torch.linalg.qr(torch.cat([X[bad], Y[bad]], -2).mT, mode='r').R      # (.., min(n, 2d), 2d)
        R[bad] = torch.cat([r, r.new_zeros(r.shape[0], 2 * d - r.shape[1], 2 * d)], 1)
    K = R[..., :d] @ R[..., d:].mT
    sym, skew = (K + K.mT) / 2, (K - K.mT) / 2
    sym2, skew2 = sym.square().sum((-2, -1)), skew.square().sum((-2, -1))
    norm = (sym2 + skew2).sqrt()                               # ||M||_F^2 = ||sym||_F^2 + ||skew||_F^2
    # singular values of a symmetric matrix are |eigenvalues|; of any matrix A, sqrt(eig(A^T A))
    out = dict(routing_erank=erank(torch.linalg.eigvalsh(skew.mT @ skew).clamp_min(0).sqrt(), norm),
               filtering_erank=erank(torch.linalg.eigvalsh(sym).abs(), norm),
               routing_capacity=torch.full_like(norm, routing_capacity(n, d)),
               rho=(skew2 / sym2).sqrt(), routing_fraction=skew2 / norm.square())
    if eig:  # the nonzero eigenvalues of W_q^T W_k are those of the d x d matrix W_k W_q^T
        out['max_re_eig'] = torch.linalg.eigvals(XY.mT).real.amax(-1)
    return out


def kernel_metrics_naive(W_q, W_k):
    """Reference for kernel_metrics: the same metrics from the full n x n float64 M (for tests and the bench)."""
    d, n = W_q.shape[-2:]
    M = W_q.double().mT @ W_k.double()
    sym, skew = (M + M.mT) / 2, (M - M.mT) / 2
    norm, fro = torch.linalg.matrix_norm(M), torch.linalg.matrix_norm
    lam = torch.linalg.eigvals(M)
    lam_re = torch.where(lam.abs() > REL_TOL * norm.unsqueeze(-1), lam.real, -math.inf)  # nonzero eigenvalues
    return dict(routing_erank=erank(torch.linalg.svdvals(skew), norm),
                filtering_erank=erank(torch.linalg.svdvals(sym), norm),
                routing_capacity=torch.full_like(norm, routing_capacity(n, d)), rho=fro(skew) / fro(sym),
                routing_fraction=fro(skew).square() / norm.square(), max_re_eig=lam_re.amax(-1))


def interaction_metrics(q, k):
    """Metrics of A = q k^T / sqrt(d_h), q, k (..., T, d_h): the kernel of W_q = q^T / sqrt(d_h), W_k = k^T."""
    T, d = q.shape[-2:]
    m = kernel_metrics(q.double().mT / math.sqrt(d), k.double().mT, eig=False)
    m['routing_capacity'].fill_(routing_capacity(T))
    m['score_rms'] = (q.double() @ k.double().mT / math.sqrt(d)).square().mean((-2, -1)).sqrt()   # logit scale
    return m


def sd_metrics(S, D):
    """S−D heads: erank of S (H, d, d), its rotation frequencies |Im eig(S)| (H, d//2), one per +-i w pair, descending
    (a skew matrix's singular values are those, in equal pairs), and D's (H, d) scalar-ness std/mean."""
    s = torch.linalg.svdvals(S.double())
    s = torch.where(s > REL_TOL * s.norm(dim=-1, keepdim=True), s, 0.0)   # zero as in erank
    pairs, D = 2 * (s.shape[-1] // 2), D.double()
    return dict(erank_S=erank(s), rotation_freqs=(s[..., 0:pairs:2] + s[..., 1:pairs:2]) / 2,
                d_scalarness=D.std(-1, correction=0) / D.mean(-1))


def gpt_layers(model):
    """Per layer of one of our GPTs: dict(kind, W_q, W_k[, S, D]) in float64."""
    layers = [dict(kind=a.kind, **{k: v.detach().double() for k, v in a.head_weights().items()})
              for a in model.attention_layers()]
    for w in (w for w in layers if w['kind'] == 'sd'):   # W_q = L^T W in float64: the sym part is exactly -W^T D W
        w['W_q'] = (w['S'] - torch.diag_embed(w['D'])).mT @ w['W_k']
    return layers


def hf_layers(hf):
    """Per layer of a transformers GPT-2 or BERT model: dict(kind, W_q, W_k, b_q, b_k)."""
    c, base = hf.config, hf.base_model
    H, n, d = c.num_attention_heads, c.hidden_size, c.hidden_size // c.num_attention_heads
    if c.model_type == 'gpt2':   # Conv1D stores (in, out)
        Wb = [(b.attn.c_attn.weight.detach().t().reshape(3, H, d, n), b.attn.c_attn.bias.detach().view(3, H, d))
              for b in base.h]
        return [dict(kind='standard', W_q=W[0], W_k=W[1], b_q=b[0], b_k=b[1]) for W, b in Wb]
    sas = [layer.attention.self for layer in base.encoder.layer]   # BERT: Linear stores (out, in)
    return [dict(kind='standard', W_q=sa.query.weight.detach().view(H, d, n), W_k=sa.key.weight.detach().view(H, d, n),
                 b_q=sa.query.bias.detach().view(H, d), b_k=sa.key.bias.detach().view(H, d)) for sa in sas]


@torch.no_grad()
def layer_qk(module, idx):
    """q, k (B, H, T, d) of every layer on token ids idx (B, T), as the layer computes them (GPT-2: after ln_1)."""
    if isinstance(module, GPT):   # each attention layer's own qkv on its input
        qk = []
        hooks = [a.register_forward_pre_hook(lambda a, args: qk.append(a.qkv(args[0])[:2]))
                 for a in module.attention_layers()]
        module(idx)
        for h in hooks:
            h.remove()
        return qk
    hidden = module.base_model(idx, output_hidden_states=True).hidden_states   # [i]: the input of layer i
    qk = []
    for i, w in enumerate(hf_layers(module)):
        x = module.base_model.h[i].ln_1(hidden[i]) if module.config.model_type == 'gpt2' else hidden[i]
        qk.append([torch.einsum('btn,hdn->bhtd', x, w[f'W_{p}']) + w[f'b_{p}'][:, None] for p in 'qk'])
    return qk


def map_layers(fn, layers):
    """fn(layer) for each layer, in order, over torch's threads, each worker single-threaded: batched small LAPACK
    calls go one matrix at a time, and on a busy machine spinning intra-op threads make them several times slower."""
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
    """Weight-level metrics of one layer's heads (w: a gpt_layers / hf_layers entry)."""
    m = kernel_metrics(w['W_q'], w['W_k'])
    return m | sd_metrics(w['S'], w['D']) if 'S' in w else m


def weight_rows(name, w, layer, m=None):   # heads.csv rows of one layer's weight level (m: its layer_metrics)
    m = layer_metrics(w) if m is None else m
    H, d, n = w['W_q'].shape
    return [dict(model=name, level='weight', layer=layer, head=h, kind=w['kind'], head_dim=d, n=n,
                 **{k: v[h].tolist() for k, v in m.items()}) for h in range(H)]


def data_rows(name, kinds, module, seqs, bar):
    """heads.csv rows of the data level: per layer and head, metrics averaged over the sequences (1-D ids)."""
    sums = None
    for seq in seqs:
        qk = layer_qk(module, seq[None])
        ms = list(map_layers(lambda qk_layer: interaction_metrics(qk_layer[0][0], qk_layer[1][0]), qk))
        sums = ms if sums is None else [{key: s[key] + m[key] for key in m} for s, m in zip(sums, ms)]
        bar.update(len(qk))
    T = sum(len(s) for s in seqs) / len(seqs)
    return [dict(model=name, level='data', layer=layer, head=h, kind=kinds[layer], head_dim=q.shape[-1], n=T,
                 **{key: v[h].item() / len(seqs) for key, v in m.items()})
            for layer, (m, (q, _)) in enumerate(zip(sums, qk)) for h in range(q.shape[1])]


def load_model(source, hf, device):
    """(module, info) of a train.py checkpoint or out_dir, or with hf, of a transformers GPT-2 or BERT model (hub
    name or directory); info['tok']: its tokenizer, ('codec', prepare.codec's chars: None for GPT-2 BPE) or BERT's."""
    if not hf:
        model, ckpt = GPT.from_checkpoint(source, device)
        c = model.config
        return model.eval(), dict(norm=c.norm, max_len=c.block_size, vocab=c.vocab_size,
                                  tok=('codec', ckpt.get('chars')))
    os.environ.setdefault('HF_HUB_VERBOSITY', 'error')   # no retry chatter offline
    import transformers
    transformers.utils.logging.set_verbosity_error()
    try:
        module = transformers.AutoModel.from_pretrained(source).to(device).eval()   # GPT2Model, BertModel, ...
    except Exception as e:
        raise SystemExit(f"error: cannot load {source!r} ({type(e).__name__}: {(str(e).strip() or '-').splitlines()[0]}"
                         f"); give a local model directory or a hub name that is online or in the local cache")
    c = module.config
    if c.model_type not in ('gpt2', 'bert'):
        raise SystemExit(f"error: {source} is a {c.model_type!r} model; --hf takes GPT-2 and BERT models")
    return module, dict(norm='layernorm', max_len=c.max_position_embeddings, vocab=c.vocab_size,
                        tok=('codec', None) if c.model_type == 'gpt2' else ('bert', source))


def tokenize(lines, tok, num_seqs, seq_len, vocab):
    """Up to num_seqs sequences (LongTensors of 2..seq_len ids) of the lines in the tokenizer tok, or None."""
    if tok[0] == 'codec':
        from prepare import codec
        enc = codec(tok[1])[0]
        encode = lambda line: enc(line)[:seq_len]
    else:
        from transformers import AutoTokenizer
        try:
            bert = AutoTokenizer.from_pretrained(tok[1])
        except Exception:
            return None
        if len(bert) != vocab:   # transformers makes an empty tokenizer for a directory without vocabulary files
            return None
        encode = lambda line: bert(line, truncation=True, max_length=seq_len)['input_ids']
    return list(islice((torch.tensor(ids) for ids in map(encode, lines) if len(ids) >= 2), num_seqs)) or None


def make_figures(rows, summary):
    """{filename: matplotlib Figure}: cascade.png, rho.png, heatmap_<model>.png."""
    from matplotlib.figure import Figure
    models, arms = summary['models'], summary['arms']
    levels = [lv for lv in LEVELS if any(lv in m for m in models.values())]
    curves = [(f"{a} ({len(st['seeds'])} seeds)", st, models[st['seeds'][0]]) for a, st in arms.items()]
    curves += [(name, m, m) for name, m in models.items() if arm_of(name) not in arms]
    figs = {}
    for fname, metric, label in (('cascade.png', 'routing_erank', 'routing erank (skew part; dashed: capacity)'),
                                 ('rho.png', 'rho', r'$\rho = \|skew\|_F / \|sym\|_F$')):
        fig = figs[fname] = Figure(figsize=(6.5 * len(levels), 4.8), layout='constrained')
        fig.suptitle(f"{label.split(' (')[0]} per layer: mean over heads (and an arm's seeds), ± std over heads "
                     f"(seeds)")
        for ax, lv in zip(fig.subplots(1, len(levels), squeeze=False)[0], levels):
            for i, (name, st, m) in enumerate(curves):
                if lv in st:
                    x = (torch.arange(m['n_layer']) / max(m['n_layer'] - 1, 1)).numpy()
                    mean, std = (torch.tensor(st[lv][metric][k], dtype=torch.float).numpy() for k in ('mean', 'std'))
                    ax.plot(x, mean, 'o-', ms=3, color=f'C{i}', label=name)
                    ax.fill_between(x, mean - std, mean + std, color=f'C{i}', alpha=0.12, lw=0)
                    if metric == 'routing_erank':
                        ax.plot(x, m[lv]['routing_capacity']['mean'], '--', lw=1, color=f'C{i}', alpha=0.7)
                        ax.set_yscale('log', base=2)
            ax.set(xlabel='relative depth, layer / (n_layer - 1)', ylabel=label, title=LEVELS[lv])
            ax.yaxis.set_major_formatter('{x:g}')
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    for name, m in models.items():
        L, H = m['n_layer'], m['n_head']
        fig = figs[f"heatmap_{name}.png"] = Figure(figsize=(max(4.5, 0.3 * H + 2.5) * len(levels),
                                                            max(3.5, 0.25 * L + 1.5)), layout='constrained')
        fig.suptitle(f"{name}: routing erank per head")
        for ax, lv in zip(fig.subplots(1, len(levels), squeeze=False)[0], levels):
            own = [r for r in rows if r['model'] == name and r['level'] == lv]
            grid = torch.full((L, H), math.nan)
            grid[[r['layer'] for r in own], [r['head'] for r in own]] = torch.tensor([r['routing_erank'] for r in own])
            fig.colorbar(ax.imshow(grid.numpy(), aspect='auto', interpolation='nearest'), ax=ax, label='routing erank')
            ax.set(xlabel='head', ylabel='layer', title=LEVELS[lv])
            ax.locator_params(integer=True)
    return figs


def suggest_config(name, m, allocate='rank'):
    """A train.py config for an S−D model of the shape of model `name` (m: its summary) that follows its routing cascade
    (on text where measured, else of the weight kernel): per layer, its S−D rotation planes (rank) or head width."""
    level = 'data' if 'data' in m else 'weight'
    eranks = [round(e, 2) for e in m[level]['routing_erank']['mean']]   # as printed: 2.0000001 asks for 1 plane, not 2
    if allocate == 'rank':   # S = U V^T − V U^T has rank 2 sd_rank
        rule = 'sd_rank[l] = ceil(routing erank of layer l / 2), in [1, head_dim // 2]'
        values = [min(max(math.ceil(e / 2), 1), d // 2) for e, d in zip(eranks, m['head_dim'])]
    else:   # the layer that routes most keeps its width
        rule = 'head_dim[l] = head_dim * erank[l] / max(erank), a multiple of 8 (>= 8)'
        values = [max(8, 8 * round(d * e / max(eranks) / 8)) for e, d in zip(eranks, m['head_dim'])]
    lines = [f"# S-D config suggested by analyze.py --allocate {allocate} from the routing cascade of {name}",
             f"# ({m['source']}): {rule}.", f"# Routing erank, mean over heads of the {LEVELS[level]}, per layer:",
             f"# {eranks}", f"n_layer = {m['n_layer']}", f"n_head = {m['n_head']}", f"n_embd = {m['n_embd']}"]
    if allocate == 'rank' and any(d != m['n_embd'] // m['n_head'] for d in m['head_dim']):
        lines.append(f"head_dim = {m['head_dim']}")
    return '\n'.join(lines + ["attn = 'sd'", f"norm = {m['norm']!r}", f"{rule.split('[')[0]} = {values}"]) + '\n'


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.error = lambda msg: sys.exit(f"error: {msg} (see python analyze.py --help)")
    p.add_argument('--ckpt', nargs='+', default=[], metavar='PATH', help='train.py checkpoints (ckpt.pt or out_dir)')
    p.add_argument('--hf', nargs='+', default=[], metavar='NAME', help='transformers GPT-2 / BERT: hub names or dirs')
    p.add_argument('--text_file', help='data level on this UTF-8 text, one sequence per line')
    p.add_argument('--dataset', help="data level on windows of this prepared dataset's val split")
    p.add_argument('--data_root', default='data')
    p.add_argument('--num_seqs', type=int, default=16)
    p.add_argument('--seq_len', type=int, default=256, help='tokens per sequence (at most)')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--out_dir', default='out/analysis')
    p.add_argument('--suggest', metavar='FILE', help='write an S−D train.py config that follows the cascade')
    p.add_argument('--allocate', choices=('rank', 'width'), default='rank', help='--suggest: S−D rank or head width')
    args = p.parse_args(argv)
    n = len(args.ckpt) + len(args.hf)
    for bad, msg in ((n == 0, 'nothing to analyse: give --ckpt and/or --hf'),
                     (args.text_file and args.dataset, 'give --text_file or --dataset, not both'),
                     (args.suggest and n != 1, f'--suggest derives a config from one model, got {n}'),
                     (args.suggest and not os.path.isdir(os.path.dirname(os.path.abspath(args.suggest))),
                      f'the directory of --suggest {args.suggest} does not exist')):
        if bad:
            p.error(msg)
    try:
        os.makedirs(args.out_dir, exist_ok=True)
        lines = [x.strip() for x in open(args.text_file, encoding='utf-8') if x.strip()] if args.text_file else None
    except (OSError, UnicodeDecodeError) as e:
        p.error(f'cannot create --out_dir {args.out_dir} or read --text_file {args.text_file} ({e})')
    texts = {}   # --dataset: {its tokenizer: sequences}
    if args.dataset:
        val = data.open_split(args.data_root, args.dataset, 'val')
        if len(val) <= args.seq_len + 1:
            p.error(f"{args.dataset}'s val split has {len(val)} tokens, not enough for --seq_len {args.seq_len}")
        tok = ('codec', data.read_meta(args.data_root, args.dataset).get('chars'))
        texts[tok] = list(data.get_batch(val, args.num_seqs, args.seq_len, seed=0)[0])

    rows, models = [], {}
    for i, source in enumerate(args.ckpt + args.hf):
        module, info = load_model(source, i >= len(args.ckpt), args.device)
        name = run_name(source) + (f'_{i + 1}' if run_name(source) in models else '')
        seqs = tokenize(lines, info['tok'], args.num_seqs, args.seq_len, info['vocab']) if lines else \
            texts.get(info['tok'])
        if (lines or texts) and not seqs:
            print(f"warning: no local tokenizer for {name} that reads the text: no data level", file=sys.stderr)
        seqs = [t[:info['max_len']].to(args.device) for t in seqs or []]
        if seqs and max(t.max().item() for t in seqs) >= info['vocab']:
            raise SystemExit(f"error: the text has token ids beyond {name}'s vocabulary: give text in its tokenizer")
        layers = gpt_layers(module) if isinstance(module, GPT) else hf_layers(module)
        L, (H, _, n_embd) = len(layers), layers[0]['W_q'].shape
        own = [r for j, (m, w) in enumerate(zip(map_layers(layer_metrics, layers), layers))
               for r in weight_rows(name, w, j, m)]
        if seqs:
            with tqdm(total=L * len(seqs), desc=f'{name} on text', unit='layer', dynamic_ncols=True) as bar:
                own += data_rows(name, [w['kind'] for w in layers], module, seqs, bar)
        m = models[name] = dict(source=source, n_layer=L, n_head=H, n_embd=n_embd, norm=info['norm'], heads=L * H,
                                head_dim=[w['W_q'].shape[1] for w in layers], attn=[w['kind'] for w in layers],
                                num_seqs=len(seqs))
        for lv, k in product(LEVELS, METRICS):   # per layer, mean and std over heads
            v = [[r[k] for r in own if r['level'] == lv and r['layer'] == j and r.get(k) is not None] for j in range(L)]
            if any(v):
                v = [torch.tensor(x or [math.nan], dtype=torch.float64) for x in v]
                m.setdefault(lv, {})[k] = dict(mean=finite([x.mean().item() for x in v]),
                                               std=finite([x.std(correction=0).item() for x in v]))
        rows += own
        del module, layers   # one model in memory at a time

    arms = {}   # of several seeds (models NAME_s<seed>): per layer, mean and std over seeds of their mean over heads
    for arm in dict.fromkeys(map(arm_of, models)):
        names = [name for name in models if arm_of(name) == arm]
        for lv, k in product(LEVELS, METRICS):
            per_seed = [models[name].get(lv, {}).get(k, {}).get('mean') for name in names]
            if len(names) > 1 and None not in per_seed:
                v = [mean_std(x) if None not in x else (None, None) for x in zip(*per_seed)]
                st = arms.setdefault(arm, dict(seeds=names)).setdefault(lv, {})
                st[k] = dict(mean=finite([a for a, _ in v]), std=finite([s for _, s in v]))
    summary = dict(total_heads=sum(m['heads'] for m in models.values()), metrics=METRICS, rel_tol=REL_TOL,
                   models=models, arms=arms)
    outputs = {'heads.csv': data.csv_text(rows, COLUMNS), 'summary.json': json.dumps(summary, indent=1)}
    outputs |= {f: lambda file, fig=fig: fig.savefig(file, format='png', dpi=130)
                for f, fig in make_figures(rows, summary).items()}
    data.write_files({os.path.join(args.out_dir, f): out for f, out in outputs.items()}
                     | ({args.suggest: suggest_config(name, models[name], args.allocate)} if args.suggest else {}))

    for name, m in models.items():   # per layer, the columns of TABLE that the model has
        cols = [(h, m[lv][k]['mean']) for lv, t in TABLE.items() for h, k in t.items() if k in m.get(lv, {})]
        print(f"\n{name}: {m['n_layer']} layers x {m['n_head']} heads, d_model {m['n_embd']}, norm {m['norm']}\n"
              f"layer     attn  d_h " + ' '.join(f'{h:>10}' for h, _ in cols))
        for i in range(m['n_layer']):
            print(f"{i:5d} {m['attn'][i]:>8} {m['head_dim'][i]:4d} " +
                  ' '.join(f"{'-' if v[i] is None else f'{v[i]:.4g}':>10}" for _, v in cols))
    for arm, st in arms.items():
        print(f"\n{arm}: mean ± std over the seeds {', '.join(st['seeds'])} of the per-layer mean over heads")
        for lv in LEVELS:
            for k, v in st.get(lv, {}).items():
                print(f"{lv:>6} {k:<16} " + ' '.join('-' if x is None else f'{x:.3g}±{s:.2g}'
                                                     for x, s in zip(v['mean'], v['std'])))
    print(f"\n{summary['total_heads']} heads -> {args.out_dir}/ ({', '.join(outputs)})" +
          (f"; config -> {args.suggest}" if args.suggest else ''))


if __name__ == '__main__':
    main()
