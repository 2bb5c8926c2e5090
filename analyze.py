"""
Routing and filtering structure of attention heads (README: the idea). Two levels per head:
  weight  the kernel M = W_q^T W_k (d_model x d_model), and for S−D heads the generator S − D;
  data    the interaction matrix A = Q K^T / sqrt(d_h) (T x T, pre-softmax, biases included, unmasked)
          on real sequences, averaged over the sequences.
Each is split into its symmetric (filtering) and skew-symmetric (routing) parts.

    python analyze.py --ckpt out/sd_7m/ckpt.pt
    python analyze.py --hf gpt2 gpt2-medium gpt2-large bert-base-uncased bert-large-uncased \\
                      --text_file wiki.txt --num_seqs 16 --seq_len 256
    python analyze.py --ckpt out/sd_125m out/std_nonorm_125m out/sd_layernorm_125m --compare --dataset openwebtext
    python analyze.py --ckpt out/std_125m --dataset openwebtext --suggest config/cascade_125m.py

Writes OUT_DIR/heads.csv (one row per model, level, layer, head), summary.json (per-layer mean and std of
every metric), cascade.png, rho.png, heatmap_<model>.png, and compare.png with --compare. Nothing is
written unless every model was analysed.
"""
import argparse
import csv
import io
import json
import math
import os
import re
import sys
from concurrent.futures import ThreadPoolExecutor

import torch
from tqdm import tqdm

import data
from model import GPT
from runs import arm_of, mean_std

# Singular values below REL_TOL * ||M||_F count as zero: float32 weights and activations resolve M only to about
# 1e-7 of its norm, and the float64 computation below resolves it to ~1e-8 or better.
REL_TOL = 1e-6
METRICS = ('routing_erank', 'filtering_erank', 'routing_capacity', 'rho', 'routing_fraction', 'max_re_eig',
           'erank_S', 'd_scalarness', 'score_rms')
COLUMNS = ('model', 'level', 'layer', 'head', 'kind', 'head_dim', 'n') + METRICS + ('rotation_freqs',)
ARM_METRICS = ('routing_erank', 'rho', 'max_re_eig', 'erank_S', 'd_scalarness', 'score_rms')   # aggregated over seeds
LEVELS = {'weight': 'weight kernel M = W_q^T W_k', 'data': 'interaction A = QK^T/sqrt(d_h) on text'}


# -----------------------------------------------------------------------------
# metrics (README: the idea): one definition each, used by every level, model family and plot

def erank(s, ref=None):
    """Effective rank exp(H(p)), p = s / sum(s), of singular values s (..., k) (Roy & Vetterli 2007).
    Values <= REL_TOL * ref count as zero (ref: a norm (...) of the matrix, default sqrt(sum s^2));
    the zero matrix has erank 0."""
    if ref is None:
        ref = s.square().sum(-1).sqrt()
    s = torch.where(s > REL_TOL * ref.unsqueeze(-1), s, 0.0)
    total = s.sum(-1, keepdim=True)
    p = s / total.clamp_min(torch.finfo(s.dtype).tiny)
    return torch.where(total.squeeze(-1) > 0, torch.exp(-torch.xlogy(p, p).sum(-1)), 0.0)


def routing_capacity(n, d_h=None):
    """The largest rank the skew part of an n x n matrix can have (skew ranks are even), and of a weight kernel
    of a d_h-wide head when d_h is given: min(2 d_h, n)."""
    cap = min(n, 2 * d_h) if d_h else n
    return cap - cap % 2


def kernel_metrics(W_q, W_k, eig=True):
    """Routing/filtering metrics of the kernels M = W_q^T W_k for W_q, W_k (..., d_h, n), batched over the
    leading dims, in float64, with no n x n matrix formed. Returns a dict of (...) float64 tensors.

    With B = [W_q^T, W_k^T] = Q R (Q: n x 2d_h, orthonormal columns; R = [R_q, R_k]), M = Q (R_q R_k^T) Q^T:
    M, its symmetric and its skew part have the singular values, norms and nonzero eigenvalues of the
    2d_h x 2d_h matrix K = R_q R_k^T and its parts. Any R with R^T R = G = B^T B will do,
    so R is the Cholesky factor of the Gram matrix (3 n d_h^2 multiply-adds, several times faster than a QR
    of B), and comes from a QR of B only where G is (nearly) singular: S−D heads, where W_q = L^T W lies in
    the span of W_k = W; n < 2d_h; W_q = W_k, whose skew part then comes out ~1e-16 rather than ~1e-8."""
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
    out = dict(
        # singular values of a symmetric matrix are |eigenvalues|; of any matrix A, sqrt(eig(A^T A))
        routing_erank=erank(torch.linalg.eigvalsh(skew.mT @ skew).clamp_min(0).sqrt(), norm),
        filtering_erank=erank(torch.linalg.eigvalsh(sym).abs(), norm),
        routing_capacity=torch.full_like(norm, routing_capacity(n, d)),
        rho=(skew2 / sym2).sqrt(),
        routing_fraction=skew2 / norm.square(),
    )
    if eig:  # the nonzero eigenvalues of W_q^T W_k are those of the d x d matrix W_k W_q^T
        out['max_re_eig'] = torch.linalg.eigvals(XY.mT).real.amax(-1)
    return out


def kernel_metrics_naive(W_q, W_k):
    """Reference for kernel_metrics: the same metrics from the full n x n float64 M (for tests and the bench)."""
    d, n = W_q.shape[-2:]
    M = W_q.double().mT @ W_k.double()
    sym, skew = (M + M.mT) / 2, (M - M.mT) / 2
    norm = torch.linalg.matrix_norm(M)
    lam = torch.linalg.eigvals(M)
    lam_re = torch.where(lam.abs() > REL_TOL * norm.unsqueeze(-1), lam.real, -math.inf)  # nonzero eigenvalues
    return dict(
        routing_erank=erank(torch.linalg.svdvals(skew), norm),
        filtering_erank=erank(torch.linalg.svdvals(sym), norm),
        routing_capacity=torch.full_like(norm, routing_capacity(n, d)),
        rho=torch.linalg.matrix_norm(skew) / torch.linalg.matrix_norm(sym),
        routing_fraction=torch.linalg.matrix_norm(skew).square() / norm.square(),
        max_re_eig=lam_re.amax(-1),
    )


def interaction_metrics(q, k):
    """Metrics of A = q k^T / sqrt(d_h) for q, k (..., T, d_h): the kernel of W_q = q^T / sqrt(d_h), W_k = k^T,
    with the routing capacity of a T x T matrix."""
    T, d = q.shape[-2:]
    m = kernel_metrics(q.double().mT / math.sqrt(d), k.double().mT, eig=False)
    m['routing_capacity'].fill_(routing_capacity(T))
    m['score_rms'] = (q.double() @ k.double().mT / math.sqrt(d)).square().mean((-2, -1)).sqrt()   # logit scale
    return m


def sd_metrics(S, D):
    """S−D heads: erank of S (H, d, d), its rotation frequencies |Im eig(S)| (H, d//2), one per
    +-i w pair, descending (a skew matrix's singular values are those |eigenvalues|, in equal pairs), and
    D's (H, d) scalar-ness std/mean (0: one scalar per head)."""
    s = torch.linalg.svdvals(S.double())
    s = torch.where(s > REL_TOL * s.norm(dim=-1, keepdim=True), s, 0.0)   # zero as in erank
    pairs = 2 * (s.shape[-1] // 2)
    D = D.double()
    return dict(erank_S=erank(s), rotation_freqs=(s[..., 0:pairs:2] + s[..., 1:pairs:2]) / 2,
                d_scalarness=D.std(-1, correction=0) / D.mean(-1))


# -----------------------------------------------------------------------------
# heads of our GPTs and of transformers' GPT-2 / BERT: per layer W_q, W_k (H, d, n) with M = W_q^T W_k

def gpt_layers(model):
    """Per layer of one of our GPTs: dict(kind, W_q, W_k[, S, D]) in float64."""
    layers = []
    for a in model.attention_layers():
        w = {k: v.detach().double() for k, v in a.head_weights().items()}
        if a.kind == 'sd':  # W_q = L^T W again, in float64: the kernel's symmetric part is exactly -W^T D W
            w['W_q'] = (w['S'] - torch.diag_embed(w['D'])).mT @ w['W_k']
        layers.append(dict(kind=a.kind, **w))
    return layers


def hf_layers(hf):
    """Per layer of a transformers GPT-2 or BERT model: dict(kind, W_q, W_k, b_q, b_k)."""
    c, base = hf.config, hf.base_model
    H, n = c.num_attention_heads, c.hidden_size
    d = n // H
    layers = []
    if c.model_type == 'gpt2':
        for block in base.h:
            W = block.attn.c_attn.weight.detach().t().reshape(3, H, d, n)    # Conv1D stores (in, out)
            b = block.attn.c_attn.bias.detach().view(3, H, d)
            layers.append(dict(kind='standard', W_q=W[0], W_k=W[1], b_q=b[0], b_k=b[1]))
    else:
        for layer in base.encoder.layer:
            sa = layer.attention.self                                        # Linear stores (out, in)
            layers.append(dict(kind='standard', W_q=sa.query.weight.detach().view(H, d, n),
                               W_k=sa.key.weight.detach().view(H, d, n),
                               b_q=sa.query.bias.detach().view(H, d), b_k=sa.key.bias.detach().view(H, d)))
    return layers


@torch.no_grad()
def layer_qk(module, idx):
    """q, k (B, H, T, d) of every layer on token ids idx (B, T), scores q·k / sqrt(d) as the layer computes
    them. Our GPT: each layer's own qkv on its attention input; GPT-2 / BERT: the layer's weights and biases
    on its input hidden state (after ln_1 for GPT-2; BERT normalizes after attention)."""
    if isinstance(module, GPT):
        qk = []
        hooks = [a.register_forward_pre_hook(lambda a, args: qk.append(a.qkv(args[0])[:2]))
                 for a in module.attention_layers()]
        try:
            module(idx)
        finally:
            for h in hooks:
                h.remove()
        return qk
    hidden = module.base_model(idx, output_hidden_states=True).hidden_states   # [i]: the input of layer i
    qk = []
    for i, w in enumerate(hf_layers(module)):
        x = module.base_model.h[i].ln_1(hidden[i]) if module.config.model_type == 'gpt2' else hidden[i]
        q, k = (torch.einsum('btn,hdn->bhtd', x, w[f'W_{p}']) + w[f'b_{p}'][:, None] for p in 'qk')
        qk.append((q, k))
    return qk


def map_layers(fn, layers):
    """fn(layer) for each of the layers, in order, spread over torch's CPU threads with each worker
    single-threaded: batched small LAPACK calls (eigvalsh, eigvals) go one matrix at a time, so intra-op
    threads do not help them, and on a busy machine their spinning makes them several times slower."""
    n = torch.get_num_threads()
    if n == 1:
        yield from map(fn, layers)
        return
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


# -----------------------------------------------------------------------------
# analysis of one model: rows of heads.csv

def layer_metrics(w):
    """Weight-level metrics of one layer's heads (w: a gpt_layers / hf_layers entry)."""
    m = kernel_metrics(w['W_q'], w['W_k'])
    return m | sd_metrics(w['S'], w['D']) if 'S' in w else m


def weight_rows(name, w, layer, m=None):
    """heads.csv rows of the weight level of one layer, from its layer_metrics m (computed if not given)."""
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
    rows = []
    T = sum(len(s) for s in seqs) / len(seqs)
    for layer, (m, (q, _)) in enumerate(zip(sums, qk)):
        rows += [dict(model=name, level='data', layer=layer, head=h, kind=kinds[layer], head_dim=q.shape[-1], n=T,
                      **{key: v[h].item() / len(seqs) for key, v in m.items()}) for h in range(q.shape[1])]
    return rows


# -----------------------------------------------------------------------------
# inputs: checkpoints, transformers models, text

def load_ckpt(path, label, device):
    if os.path.isdir(path):
        path = os.path.join(path, 'ckpt.pt')
    model, ckpt = GPT.from_checkpoint(path, device)
    c = model.config
    return dict(name=label, source=path, family=family(ckpt.get('chars')), module=model.eval(), n_layer=c.n_layer,
                n_head=c.n_head, n_embd=c.n_embd, norm=c.norm, head_dim=c.head_dim,
                head_dims=[c.layer(i)['head_dim'] for i in range(c.n_layer)], max_len=c.block_size,
                vocab_size=c.vocab_size)


def one_line(e):
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"


def quiet_transformers():
    import huggingface_hub
    import transformers
    transformers.utils.logging.set_verbosity_error()
    huggingface_hub.utils.logging.set_verbosity_error()


def hf_config(name, label):
    """A transformers model's description (its weights are loaded later, one model at a time)."""
    from transformers import AutoConfig
    quiet_transformers()
    try:
        c = AutoConfig.from_pretrained(name)
    except Exception as e:
        raise SystemExit(f"error: cannot load {name!r} ({one_line(e)}); give a local model directory or a hub "
                         f"name that is online or in the local cache")
    if c.model_type not in ('gpt2', 'bert'):
        raise SystemExit(f"error: {name} is a {c.model_type!r} model; --hf takes GPT-2 and BERT models")
    n_layer, H, n = c.num_hidden_layers, c.num_attention_heads, c.hidden_size
    return dict(name=label, source=name, family='gpt2-bpe' if c.model_type == 'gpt2' else name, module=None,
                n_layer=n_layer, n_head=H, n_embd=n, norm='layernorm', head_dim=None, head_dims=[n // H] * n_layer,
                max_len=c.max_position_embeddings, vocab_size=c.vocab_size, hf_type=c.model_type)


def load_hf(name, model_type, device):
    from transformers import BertModel, GPT2Model
    quiet_transformers()
    try:
        if model_type == 'gpt2':
            return GPT2Model.from_pretrained(name).to(device).eval()
        return BertModel.from_pretrained(name, add_pooling_layer=False).to(device).eval()
    except Exception as e:
        raise SystemExit(f"error: cannot load the weights of {name} ({one_line(e)})")


def read_lines(path):
    try:
        with open(path, encoding='utf-8') as f:
            lines = [line.strip() for line in f]
    except (OSError, UnicodeDecodeError) as e:
        raise SystemExit(f"error: cannot read --text_file {path} ({e}); give a UTF-8 text file, one sequence a line")
    lines = [line for line in lines if line]
    if not lines:
        raise SystemExit(f"error: --text_file {path} has no text; give one sequence per line")
    return lines


def family(chars):
    """The tokenizer family of a checkpoint or dataset: its characters, or GPT-2 BPE."""
    return 'chars:' + chars if chars else 'gpt2-bpe'


def tokenize(lines, family, num_seqs, seq_len, vocab_size):
    """Up to num_seqs sequences (1-D LongTensors of 2..seq_len ids) of the lines, with GPT-2 BPE, the model's
    characters, or the BERT tokenizer of the model `family`; None if that BERT model has no local tokenizer of
    its vocabulary size (transformers makes an empty one for a directory without vocabulary files)."""
    if family == 'gpt2-bpe' or family.startswith('chars:'):
        from prepare import codec
        enc = codec(family[len('chars:'):] if family.startswith('chars:') else None)[0]
        encode = lambda line: enc(line)[:seq_len]
    else:
        from transformers import AutoTokenizer
        try:
            tok = AutoTokenizer.from_pretrained(family)
        except Exception:
            return None
        if len(tok) != vocab_size:
            return None
        encode = lambda line: tok(line, truncation=True, max_length=seq_len)['input_ids']
    seqs = [torch.tensor(ids) for ids in map(encode, lines) if len(ids) >= 2]
    return seqs[:num_seqs] or None


def dataset_seqs(data_root, dataset, num_seqs, seq_len):
    val = data.open_split(data_root, dataset, 'val')
    if len(val) <= seq_len + 1:
        raise SystemExit(f"error: {dataset}'s val split has {len(val)} tokens, not enough for --seq_len {seq_len}")
    x, _ = data.get_batch(val, num_seqs, seq_len, seed=0)
    return list(x), family(data.read_meta(data_root, dataset).get('chars'))


def unique_labels(labels):
    out = []
    for label in labels:
        name, i = label, 1
        while name in out:
            i += 1
            name = f"{label}_{i}"
        out.append(name)
    return out


# -----------------------------------------------------------------------------
# outputs

def layer_stats(rows, model, level, metric, n_layer):
    """Per-layer mean and std over heads of one metric (nan for layers without it), or None if no layer has it."""
    vals = [[] for _ in range(n_layer)]
    for r in rows:
        if r['model'] == model and r['level'] == level and r.get(metric) is not None:
            vals[r['layer']].append(r[metric])
    if not any(vals):
        return None
    t = [torch.tensor(v, dtype=torch.float64) for v in vals]
    return ([v.mean().item() if len(v) else math.nan for v in t],
            [v.std(correction=0).item() if len(v) else math.nan for v in t])


def arms(subjects):
    """{arm: [model names]}: models named NAME_s<seed> are seeds of arm NAME (runs.arm_of)."""
    out = {}
    for s in subjects:
        out.setdefault(arm_of(s['name']), []).append(s['name'])
    return out


def arm_stats(rows, members, level, metric, n_layer):
    """Per-layer mean and std over an arm's seeds of each seed's mean over heads, or None."""
    per_seed = [layer_stats(rows, m, level, metric, n_layer) for m in members]
    if any(p is None for p in per_seed):
        return None
    layers = [mean_std([p[0][i] for p in per_seed]) for i in range(n_layer)]
    return [m for m, _ in layers], [sd for _, sd in layers]


def finite(values):
    return [v if math.isfinite(v) else None for v in values]   # JSON has no nan / inf


def summarize(subjects, rows):
    models = {}
    for s in subjects:
        levels = {}
        for level in LEVELS:
            stats = {m: layer_stats(rows, s['name'], level, m, s['n_layer']) for m in METRICS}
            stats = {m: dict(mean=finite(v[0]), std=finite(v[1])) for m, v in stats.items() if v is not None}
            if stats:
                levels[level] = stats
        per_layer = [[r['rotation_freqs'] for r in rows if r['model'] == s['name'] and r['layer'] == i
                      and r.get('rotation_freqs') is not None] for i in range(s['n_layer'])]
        if any(per_layer):  # S−D: mean rotation frequencies of S per layer
            levels['weight']['rotation_freqs'] = dict(mean=[torch.tensor(f).mean(0).tolist() if f else None
                                                            for f in per_layer])
        models[s['name']] = dict(source=s['source'], n_layer=s['n_layer'], n_head=s['n_head'], n_embd=s['n_embd'],
                                 head_dim=s['head_dims'], attn=s['kinds'], norm=s['norm'],
                                 heads=s['n_layer'] * s['n_head'], num_seqs=s.get('num_seqs', 0), **levels)
    by_arm = {}
    for arm, members in arms(subjects).items():
        n_layer = models[members[0]]['n_layer']
        if len(members) > 1 and all(models[m]['n_layer'] == n_layer for m in members):
            stats = {lv: {m: arm_stats(rows, members, lv, m, n_layer) for m in ARM_METRICS} for lv in LEVELS}
            by_arm[arm] = dict(seeds=members, **{lv: {m: dict(mean=finite(v[0]), std=finite(v[1]))
                                                     for m, v in st.items() if v} for lv, st in stats.items()})
    return dict(total_heads=sum(m['heads'] for m in models.values()), metrics=list(METRICS),
                rel_tol=REL_TOL, models=models, arms=by_arm)


def csv_text(rows):
    buf = io.StringIO()
    w = csv.DictWriter(buf, COLUMNS, lineterminator='\n')
    w.writeheader()
    for r in rows:
        r = {k: '' if r.get(k) is None else r[k] for k in COLUMNS}
        r = {k: f'{v:.8g}' if isinstance(v, float) else v for k, v in r.items()}
        if isinstance(r['rotation_freqs'], list):
            r['rotation_freqs'] = ' '.join(f'{f:.6g}' for f in r['rotation_freqs'])
        w.writerow(r)
    return buf.getvalue()


def depth(n_layer):
    return [i / max(n_layer - 1, 1) for i in range(n_layer)]


def plot_metric(ax, subjects, rows, level, metric, colors, capacity=False):
    """One line per model: the per-layer mean of `metric` over heads vs relative depth, a +-std band. When
    some arm has several seeds, one line per arm instead: the mean over seeds, a +-std band over seeds."""
    groups = arms(subjects)
    seeded = any(len(m) > 1 for m in groups.values())
    for s in subjects:
        members = groups[arm_of(s['name'])]
        if seeded and s['name'] != members[0]:
            continue
        stats = arm_stats(rows, members, level, metric, s['n_layer']) if seeded else \
            layer_stats(rows, s['name'], level, metric, s['n_layer'])
        if stats is None:
            continue
        x, (mean, std), c = depth(s['n_layer']), stats, colors[s['name']]
        label = f"{arm_of(s['name'])} ({len(members)} seeds)" if seeded else s['name']
        ax.plot(x, mean, 'o-', ms=3, color=c, label=label)
        ax.fill_between(x, [m - e for m, e in zip(mean, std)], [m + e for m, e in zip(mean, std)],
                        color=c, alpha=0.12, lw=0)
        if capacity:
            ax.plot(x, layer_stats(rows, s['name'], level, 'routing_capacity', s['n_layer'])[0], '--', lw=1,
                    color=c, alpha=0.7)
    ax.set_xlabel('relative depth  layer / (n_layer - 1)')
    ax.grid(alpha=0.3)


def make_figures(subjects, rows, compare):
    """{filename: matplotlib Figure} of every plot."""
    import matplotlib
    matplotlib.use('Agg')
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import ScalarFormatter
    cycle = matplotlib.rcParams['axes.prop_cycle'].by_key()['color']
    colors = {s['name']: cycle[i % len(cycle)] for i, s in enumerate(subjects)}
    levels = [lv for lv in LEVELS if any(r['level'] == lv for r in rows)]
    titles = {'weight': r'weight kernel $M = W_q^\top W_k$', 'data': r'on text: $A = QK^\top/\sqrt{d_h}$'}
    figs = {}

    fig = Figure(figsize=(6.5 * len(levels), 4.8), layout='constrained')
    for ax, level in zip(fig.subplots(1, len(levels), squeeze=False)[0], levels):
        plot_metric(ax, subjects, rows, level, 'routing_erank', colors, capacity=True)
        ax.set_yscale('log', base=2)
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.set_ylabel('routing erank (skew part), mean over heads')
        ax.set_title(titles[level])
        handles, labels = ax.get_legend_handles_labels()
        ax.legend(handles + [Line2D([], [], ls='--', color='gray')], labels + ['routing capacity'], fontsize=8)
    seeded = any(len(m) > 1 for m in arms(subjects).values())
    fig.suptitle('Routing cascade: effective rank of the skew-symmetric (routing) part per layer' +
                 ('\n(mean over heads, then over seeds; band: ± std over seeds)' if seeded else ''))
    figs['cascade.png'] = fig

    fig = Figure(figsize=(6.5 * len(levels), 4.5), layout='constrained')
    for ax, level in zip(fig.subplots(1, len(levels), squeeze=False)[0], levels):
        plot_metric(ax, subjects, rows, level, 'rho', colors)
        ax.set_ylabel(r'$\rho = \|skew\|_F / \|sym\|_F$, mean over heads')
        ax.set_title(titles[level])
        ax.legend(fontsize=8)
    fig.suptitle('Routing vs filtering strength per layer')
    figs['rho.png'] = fig

    for s in subjects:
        L, H = s['n_layer'], s['n_head']
        fig = Figure(figsize=(max(4.5, 0.3 * H + 2.5) * len(levels), max(3.5, 0.25 * L + 1.5)), layout='constrained')
        for ax, level in zip(fig.subplots(1, len(levels), squeeze=False)[0], levels):
            grid = torch.full((L, H), math.nan)
            for r in rows:
                if r['model'] == s['name'] and r['level'] == level:
                    grid[r['layer'], r['head']] = r['routing_erank']
            im = ax.imshow(grid.numpy(), aspect='auto', cmap='viridis', interpolation='nearest')
            if L * H <= 256:  # small enough to print the values
                mid = (grid.nan_to_num(math.inf).min() + grid.nan_to_num(-math.inf).max()) / 2
                for i in range(L):
                    for j in range(H):
                        ax.text(j, i, f'{grid[i, j]:.{1 if L * H <= 64 else 0}f}', ha='center', va='center',
                                fontsize=7, color='w' if grid[i, j] < mid else 'k')
            fig.colorbar(im, ax=ax, label='routing erank')
            ax.set_xticks(range(0, H, max(1, H // 12)))
            ax.set_yticks(range(0, L, max(1, L // 12)))
            ax.set_xlabel('head')
            ax.set_ylabel('layer')
            ax.set_title(titles[level])
        fig.suptitle(f"{s['name']}: routing erank per head")
        figs[f"heatmap_{re.sub(r'[^A-Za-z0-9_.-]', '_', s['name'])}.png"] = fig

    if compare:
        fig = Figure(figsize=(12, 8.5), layout='constrained')
        panels = (('routing_erank', 'routing erank (skew part)'), ('filtering_erank', 'filtering erank (sym part)'),
                  ('rho', r'$\rho = \|skew\|_F / \|sym\|_F$'),
                  ('routing_fraction', r'routing fraction $\|skew\|_F^2 / \|M\|_F^2$'))
        for ax, (metric, label) in zip(fig.subplots(2, 2).flat, panels):
            for level, ls in zip(levels, ('-', ':')):
                for s in subjects:
                    stats = layer_stats(rows, s['name'], level, metric, s['n_layer'])
                    if stats:
                        ax.plot(depth(s['n_layer']), stats[0], ls, marker='o', ms=3, color=colors[s['name']])
            ax.set_title(label)
            ax.set_xlabel('relative depth  layer / (n_layer - 1)')
            ax.grid(alpha=0.3)
        handles = [Line2D([], [], color=colors[s['name']], label=s['name']) for s in subjects]
        handles += [Line2D([], [], ls=ls, color='gray', label=titles[lv]) for lv, ls in zip(levels, ('-', ':'))]
        fig.legend(handles=handles, loc='outside lower center', ncol=min(len(handles), 4), fontsize=8)
        fig.suptitle('Routing and filtering per layer, mean over heads')
        figs['compare.png'] = fig
    return figs


def suggest_config(s, rows, allocate='rank'):
    """A train.py config (plain assignments) for an S−D model of s's shape whose attention follows s's measured
    routing cascade (the data level where measured, else the weight kernel), per layer:
      rank:  sd_rank = ceil(erank / 2) rotation planes (S = U V^T − V U^T has rank 2 sd_rank), in [1, d_h // 2];
      width: head_dim = d_h · erank / max(erank), rounded to a multiple of 8 (at least 8): the layer that
             routes most keeps its width (ours)."""
    level = 'data' if any(r['model'] == s['name'] and r['level'] == 'data' for r in rows) else 'weight'
    eranks = [round(e, 2) for e in layer_stats(rows, s['name'], level, 'routing_erank', s['n_layer'])[0]]
    # rounded to the printed precision first, so that an erank of 2.0000001 asks for 1 plane, not 2
    if allocate == 'rank':
        knob, rule = 'sd_rank', "sd_rank[l] = ceil(routing erank of layer l / 2), in [1, head_dim // 2]"
        values = [min(max(math.ceil(e / 2), 1), hd // 2) for e, hd in zip(eranks, s['head_dims'])]
    else:
        knob, rule = 'head_dim', "head_dim[l] = head_dim * erank[l] / max(erank), a multiple of 8 (>= 8)"
        values = [max(8, 8 * round(hd * e / max(eranks) / 8)) for e, hd in zip(eranks, s['head_dims'])]
    lines = [f"# S-D config suggested by analyze.py --allocate {allocate} from the routing cascade of {s['name']}",
             f"# ({s['source']}): {rule}.",
             f"# Routing erank, mean over heads of the {LEVELS[level]}, per layer:", f"# {eranks}",
             f"n_layer = {s['n_layer']}", f"n_head = {s['n_head']}", f"n_embd = {s['n_embd']}"]
    if s['head_dim'] is not None and knob != 'head_dim':
        lines.append(f"head_dim = {s['head_dim']!r}")
    lines += ["attn = 'sd'", f"norm = {s['norm']!r}", f"{knob} = {values}"]
    return '\n'.join(lines) + '\n'


def print_table(subjects, rows, summary):
    for arm, a in summary['arms'].items():
        print(f"\n{arm}: mean ± std over {len(a['seeds'])} seeds ({', '.join(a['seeds'])}) "
              f"of the per-layer mean over heads")
        for level in LEVELS:
            for m, v in a.get(level, {}).items():
                if any(x is not None for x in v['mean']):
                    cells = ' '.join('-' if x is None else f"{x:.3g}±{sd:.2g}" for x, sd in zip(v['mean'], v['std']))
                    print(f"  {level:<6} {m:<14} {cells}")
    for s in subjects:
        print(f"\n{s['name']}: {s['n_layer']} layers x {s['n_head']} heads, d_model {s['n_embd']}, norm {s['norm']}")
        w = {m: layer_stats(rows, s['name'], 'weight', m, s['n_layer']) for m in METRICS}
        dl = {m: layer_stats(rows, s['name'], 'data', m, s['n_layer']) for m in ('routing_erank', 'rho')}
        head = f"{'layer':>5} {'attn':>8} {'d_h':>4} {'cap':>4} {'routing':>8} {'filter':>8} {'rho':>6} " \
               f"{'skew^2':>6} {'maxRe(eig)':>10}"
        head += f" {'erank(S)':>8} {'D cv':>5}" if w['erank_S'] else ''
        head += f" | {'data routing':>12} {'data rho':>8}" if dl['rho'] else ''
        print(head)
        for i in range(s['n_layer']):
            line = (f"{i:5d} {s['kinds'][i]:>8} {s['head_dims'][i]:4d} {w['routing_capacity'][0][i]:4.0f} "
                    f"{w['routing_erank'][0][i]:8.2f} {w['filtering_erank'][0][i]:8.2f} {w['rho'][0][i]:6.3f} "
                    f"{w['routing_fraction'][0][i]:6.3f} {w['max_re_eig'][0][i]:10.3g}")
            if w['erank_S']:
                e, cv = w['erank_S'][0][i], w['d_scalarness'][0][i]
                line += f" {e:8.2f} {cv:5.2f}" if not math.isnan(e) else f" {'':>8} {'':>5}"
            if dl['rho']:
                line += f" | {dl['routing_erank'][0][i]:12.2f} {dl['rho'][0][i]:8.3f}"
            print(line)


# -----------------------------------------------------------------------------

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.error = lambda msg: sys.exit(f"error: {msg} (see python analyze.py --help)")
    p.add_argument('--ckpt', nargs='+', default=[], metavar='PATH',
                   help='train.py checkpoints (ckpt.pt or its out_dir)')
    p.add_argument('--hf', nargs='+', default=[], metavar='NAME_OR_DIR',
                   help='transformers GPT-2 / BERT models: hub names (gpt2, bert-base-uncased, ...) or local dirs')
    p.add_argument('--out_dir', default='out/analysis')
    p.add_argument('--text_file', help='data level on this UTF-8 text, one sequence per line')
    p.add_argument('--dataset', help='data level on sequences of this prepared dataset\'s val split')
    p.add_argument('--data_root', default='data')
    p.add_argument('--num_seqs', type=int, default=16)
    p.add_argument('--seq_len', type=int, default=256, help='tokens per sequence (at most; text lines are cut)')
    p.add_argument('--device', default='cpu')
    p.add_argument('--compare', action='store_true', help='also write compare.png: every metric of every model')
    p.add_argument('--suggest', metavar='FILE', help='write a cascade-allocated S−D train.py config from ONE model')
    p.add_argument('--allocate', choices=('rank', 'width'), default='rank',
                   help="what --suggest allocates by the cascade: S−D routing rank, or head width")
    args = p.parse_args(argv)
    if not args.ckpt and not args.hf:
        p.error('nothing to analyse: give --ckpt and/or --hf')
    if args.text_file and args.dataset:
        p.error('give --text_file or --dataset, not both')
    if args.num_seqs < 1 or args.seq_len < 2:
        p.error('--num_seqs must be >= 1 and --seq_len >= 2')
    n_models = len(args.ckpt) + len(args.hf)
    if args.suggest and n_models != 1:
        p.error(f'--suggest derives a config from one model, got {n_models}')
    if args.compare and n_models < 2:
        p.error('--compare overlays several models: give at least two')
    if args.suggest and not os.path.isdir(os.path.dirname(os.path.abspath(args.suggest))):
        p.error(f'the directory of --suggest {args.suggest} does not exist')
    try:
        os.makedirs(args.out_dir, exist_ok=True)
    except OSError as e:
        p.error(f'cannot create --out_dir {args.out_dir} ({e.strerror})')

    # resolve every input before any work, so that bad input fails at once with a one-line error
    ckpt_labels = [os.path.basename(os.path.dirname(os.path.abspath(c))) if os.path.basename(c) == 'ckpt.pt'
                   else os.path.splitext(os.path.basename(os.path.normpath(c)))[0] for c in args.ckpt]
    hf_labels = [os.path.basename(os.path.normpath(h)) for h in args.hf]
    labels = unique_labels(ckpt_labels + hf_labels)
    subjects = [load_ckpt(c, label, args.device) for c, label in zip(args.ckpt, labels)]
    subjects += [hf_config(h, label) for h, label in zip(args.hf, labels[len(args.ckpt):])]
    lines = read_lines(args.text_file) if args.text_file else None
    tokens, tokens_family = dataset_seqs(args.data_root, args.dataset, args.num_seqs, args.seq_len) if args.dataset \
        else (None, None)
    seqs_by_family = {}
    for s in subjects:
        if lines is not None and s['family'] not in seqs_by_family:
            seqs_by_family[s['family']] = tokenize(lines, s['family'], args.num_seqs, args.seq_len, s['vocab_size'])
        seqs = seqs_by_family.get(s['family']) if lines is not None else \
            (tokens if tokens is not None and s['family'] == tokens_family else None)
        if lines is not None and seqs is None:
            print(f"warning: no local tokenizer for {s['name']} (or no line of 2+ tokens); skipping its data level",
                  file=sys.stderr)
        if tokens is not None and seqs is None:
            print(f"warning: {args.dataset} has another tokenizer than {s['name']}; skipping its data level",
                  file=sys.stderr)
        if seqs is not None:
            seqs = [t[:s['max_len']] for t in seqs]
            if max(t.max().item() for t in seqs) >= s['vocab_size']:
                raise SystemExit(f"error: the text has token ids beyond {s['name']}'s vocabulary "
                                 f"({s['vocab_size']}); was it trained on another tokenizer?")
        s['seqs'], s['num_seqs'] = seqs, len(seqs or [])

    rows = []
    total = sum(s['n_layer'] * (1 + s['num_seqs']) for s in subjects)
    with torch.no_grad(), tqdm(total=total, desc='analysis', unit='layer', dynamic_ncols=True) as bar:
        for s in subjects:
            bar.set_description(s['name'])
            if s['module'] is None:
                s['module'] = load_hf(s['source'], s['hf_type'], args.device)
            layers = gpt_layers(s['module']) if isinstance(s['module'], GPT) else hf_layers(s['module'])
            s['kinds'] = [w['kind'] for w in layers]
            for i, (m, w) in enumerate(zip(map_layers(layer_metrics, layers), layers)):   # runs map_layers out
                rows += weight_rows(s['name'], w, i, m)
                bar.update()
            if s['seqs']:
                rows += data_rows(s['name'], s['kinds'], s['module'], [t.to(args.device) for t in s['seqs']], bar)
            s['module'] = None   # free the weights before the next model

    # everything is computed and rendered before the first file is written
    summary = summarize(subjects, rows)
    outputs = {'heads.csv': csv_text(rows), 'summary.json': json.dumps(summary, indent=1)}
    for name, fig in make_figures(subjects, rows, args.compare).items():
        buf = io.BytesIO()
        fig.savefig(buf, format='png', dpi=130)
        outputs[name] = buf.getvalue()
    paths = {os.path.join(args.out_dir, name): out for name, out in outputs.items()}
    if args.suggest:
        paths[args.suggest] = suggest_config(subjects[0], rows, args.allocate)
    for path, out in paths.items():
        tmp = path + '.tmp'
        with open(tmp, 'wb' if isinstance(out, bytes) else 'w') as f:
            f.write(out)
        os.replace(tmp, path)
    print_table(subjects, rows, summary)
    print(f"\n{sum(s['n_layer'] * s['n_head'] for s in subjects)} heads of {len(subjects)} models -> "
          f"{args.out_dir}/ ({', '.join(outputs)})" + (f"; config -> {args.suggest}" if args.suggest else ''))


if __name__ == '__main__':
    main()
