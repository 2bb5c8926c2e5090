"""A GPT whose attention is, per layer, a projection ('standard' q, k; 'sd': scores u_i^T (S − D) u_j / √d_h,
u = W x, S skew-symmetric, D positive diagonal) times a mixer ('softmax'; 'elu': ELU+1 linear attention,
Katharopoulos et al. 2020, optionally beside a softmax window of the last w tokens); attn='linear' is standard
q, k with ELU+1. LayerNorm is optional."""
import math
import os
import pickle
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

ATTN_TYPES = ('standard', 'sd', 'linear')
NORMS = ('layernorm', 'none', 'final')
SD_FILTERS = ('diag', 'scalar')
MIXERS = ('softmax', 'elu')


@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50304      # GPT-2's 50257 padded up to a multiple of 64
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True            # biases in Linear layers and LayerNorms
    norm: str = 'layernorm'      # 'layernorm' | 'none' | 'final' (LayerNorm before the output layer only)
    # per-layer knobs: one value for every layer, or a list with one entry per layer
    attn: str | list = 'standard'        # 'standard' | 'sd' | 'linear'
    head_dim: int | None | list = None   # attention width per head; None = n_embd // n_head
    sd_rank: int | None | list = None    # S−D routing rank r (S = U V^T − V U^T); None = full
    sd_filter: str | list = 'diag'       # S−D filter D: 'diag' (d_h values) | 'scalar' (one per head)
    linear_window: int | list = 0        # ELU+1 layers: softmax on the last w tokens, ELU+1 before (0: none)
    linear_chunk: int = 64               # chunk length of the chunkwise-parallel ELU+1 form
    emb_scale: float | None = None       # input embedding multiplier; None: 1 with LayerNorm, else √n_embd
    logit_softcap: float = 0.0           # ours (issue #25): logits = c·tanh(logits / c) if c > 0; 0: off

    def __post_init__(self):
        if self.norm not in NORMS:
            raise ValueError(f"norm={self.norm!r} is not one of {NORMS}")
        if self.emb_scale is None:
            self.emb_scale = 1.0 if self.norm == 'layernorm' else math.sqrt(self.n_embd)
        if isinstance(self.emb_scale, bool) or not isinstance(self.emb_scale, (int, float)) \
                or self.emb_scale <= 0:
            raise ValueError(f"emb_scale={self.emb_scale!r} must be a positive number (or None)")
        if self.head_dim is None and self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}; set head_dim")
        for name, allowed in (('attn', ATTN_TYPES), ('sd_filter', SD_FILTERS)):
            if bad := [v for v in self.per_layer(name) if v not in allowed]:
                raise ValueError(f"{name}={bad[0]!r} is not one of {allowed}")
        for name in ('head_dim', 'sd_rank'):
            if bad := [v for v in self.per_layer(name)
                       if v is not None and (not isinstance(v, int) or v < 1)]:
                raise ValueError(f"{name} entries must be positive ints or None, got {bad[0]!r}")
        if bad := [w for w in self.per_layer('linear_window') if not is_window(w)]:
            raise ValueError(f"linear_window entries must be ints >= 0, got {bad[0]!r}")

    def per_layer(self, name):
        """The knob `name` as a list with one entry per layer."""
        v = getattr(self, name)
        v = list(v) if isinstance(v, (list, tuple)) else [v] * self.n_layer
        if len(v) != self.n_layer:
            raise ValueError(f"{name} has {len(v)} entries but n_layer={self.n_layer}: give one value or one "
                             f"per layer")
        return v

    def layer(self, i):
        """The resolved settings of layer i."""
        hd = self.per_layer('head_dim')[i] or self.n_embd // self.n_head
        return dict(attn=self.per_layer('attn')[i], head_dim=hd, sd_rank=self.per_layer('sd_rank')[i],
                    sd_filter=self.per_layer('sd_filter')[i],
                    linear_window=self.per_layer('linear_window')[i])


def is_window(w):
    return isinstance(w, int) and not isinstance(w, bool) and w >= 0


def phi(x):   # the ELU+1 feature map, positive everywhere: the one every ELU+1 path uses
    return F.elu(x) + 1


def hi(t):   # the ELU+1 forms compute in fp32, or in float64 when given it (the tests' references)
    return t if t.dtype == torch.float64 else t.float()


def linear_parts(fq, fk, v, chunk, state=None):
    """Causal linear attention on features fq, fk (B, H, T, d), chunkwise: quadratic inside a chunk, a state
    (sum fk^T v, sum fk) across chunks and from `state`. Returns (numerator, denominator, new state)."""
    T = fq.size(2)
    C = min(chunk, T)
    if pad := (-T) % C:   # padded queries read 1s (their rows are dropped), padded keys 0 (they add nothing)
        fq, fk, v = F.pad(fq, (0, 0, 0, pad), value=1.0), F.pad(fk, (0, 0, 0, pad)), F.pad(v, (0, 0, 0, pad))
    fq, fk, v = (t.unflatten(2, (-1, C)) for t in (fq, fk, v))   # (B, H, n, C, d): n chunks of length C
    scores = (fq @ fk.transpose(-1, -2)).tril()              # (B, H, n, C, C) causal within a chunk
    kv, ksum = fk.transpose(-1, -2) @ v, fk.sum(3)           # (B, H, n, d, dv), (B, H, n, d): each chunk's
    kv_past, ksum_past = kv.cumsum(2) - kv, ksum.cumsum(2) - ksum   # exclusive prefix over chunks
    if state is not None:
        kv_past, ksum_past = kv_past + state[0].unsqueeze(2), ksum_past + state[1].unsqueeze(2)
    num = scores @ v + fq @ kv_past
    den = scores.sum(-1) + (fq * ksum_past.unsqueeze(3)).sum(-1)
    return (num.flatten(2, 3)[:, :, :T], den.flatten(2, 3)[:, :, :T],
            (kv_past[:, :, -1] + kv[:, :, -1], ksum_past[:, :, -1] + ksum[:, :, -1]))


def elu_linear_attention(q, k, v, chunk=64, state=None):
    """Causal normalized ELU+1 attention on q, k, v (B, H, T, d), chunkwise, from `state`: (y, new state)."""
    num, den, state = linear_parts(phi(hi(q)), phi(hi(k)), hi(v), chunk, state)
    return (num / den.unsqueeze(-1)).to(v.dtype), state


def elu_linear_step(q, k, v, state=None):
    """elu_linear_attention for one token, O(1) (decoding): its own key enters the state before the read."""
    dtype, q, k, v = v.dtype, phi(hi(q)), phi(hi(k)), hi(v)
    k = k.transpose(-1, -2)                                  # (B, H, d, 1): k^T v is an outer product
    kv, ksum = (k * v, k[..., 0]) if state is None else (torch.addcmul(state[0], k, v), state[1] + k[..., 0])
    return ((q @ kv) / (q @ ksum.unsqueeze(-1))).to(dtype), (kv, ksum)


def window_mix(s, v, num_past, den_past):
    """(Σ e^s v + num_past) / (Σ e^s + den_past) over window scores s (..., L), stabilised by m = max(max s,
    log den_past), detached: m cancels in the ratio, so the gradients are exact."""
    m = torch.maximum(s.amax(-1), den_past.log()).detach()
    e, r = (s - m.unsqueeze(-1)).exp(), (-m).exp()
    return (e @ v + num_past * r.unsqueeze(-1)) / (e.sum(-1) + den_past * r).unsqueeze(-1)


def window_linear_attention(q, k, v, window, gain, chunk=64, fq=None, fk=None):
    """Token t attends with softmax to the last `window` tokens (t − w < s ≤ t), with ELU+1 to every earlier
    one, one normaliser: y_t = (Σ_win e^{q·k/√d} v + g Σ_past φ(fq_t)·φ(fk_s) v) / (the same without v), gain
    g (H,); fq, fk: what φ sees (default q, k). Chunkwise, O(T (C + w) d): the window a band of C + w − 1 keys
    per chunk of C queries, the past ELU+1 on keys delayed by w. Returns (y, the ELU+1 state of the past)."""
    T, d, w, dtype = q.size(2), q.size(3), window, v.dtype
    q, k, v = hi(q), hi(k), hi(v)
    fq, fk = phi(q if fq is None else hi(fq)), phi(k if fk is None else hi(fk))
    late = lambda t: F.pad(t, (0, 0, w, 0))[:, :, :T]   # delayed by w tokens (φ-space zeros add nothing)
    num_p, den_p, state = linear_parts(fq, late(fk), late(v), chunk)
    C = min(chunk, T)
    n, L, g = -(-T // C), C + w - 1, gain.to(q.dtype).view(-1, 1)
    pad = n * C - T
    chunks = lambda t: F.pad(t, (0, 0) * (t.dim() - 3) + (0, pad)).unflatten(2, (n, C))
    kb, vb = (F.pad(t, (0, 0, w - 1, pad)).unfold(2, L, C).transpose(-1, -2) for t in (k, v))   # (B,H,n,L,d)
    i, j = torch.arange(C, device=q.device).unsqueeze(1), torch.arange(L, device=q.device)
    start = torch.arange(n, device=q.device).view(n, 1, 1) * C - (w - 1)   # the position of key j: start + j
    keep = (j >= i) & (j < i + w) & (start + j >= 0)                      # (n, C, L): t − w < s ≤ t, s ≥ 0
    s = (chunks(q) @ kb.transpose(-1, -2) / math.sqrt(d)).masked_fill(~keep, float('-inf'))
    y = window_mix(s, vb, chunks(g.unsqueeze(-1) * num_p), chunks(g * den_p))
    return y.flatten(2, 3)[:, :, :T].to(dtype), state


class Cache:
    """Decode cache of one attention layer. Protocol: one forward of the prompt (any length) into an empty
    cache, then forwards of one token each; `n` counts the tokens seen, `size` (default: the prompt's) bounds
    them. The mixer keeps what it needs: softmax, k/v buffers of `size` positions, written in place; ELU+1,
    `state` (Σ φ(k)ᵀv, Σ φ(k), fp32) of the tokens before its window and, for a window w, k/v ring buffers of
    the last w tokens (position p in slot p mod w)."""

    def __init__(self, size=None):
        self.size, self.n, self.k, self.v, self.state = size, 0, None, None, None


class Softmax(nn.Module):
    """Causal softmax attention (SDPA); decoding reads a preallocated k/v cache."""
    name = 'softmax'

    def __init__(self, dropout=0.0):
        super().__init__()
        self.dropout = dropout

    def forward(self, q, k, v, cache=None):
        T = q.size(2)
        if cache is not None:
            if cache.k is None:   # allocated once: a new token is written in place, the past never copied
                shape = (*k.shape[:2], cache.size or T, k.size(3))
                cache.k, cache.v = k.new_empty(shape), v.new_empty(shape)
            n = cache.n + T
            cache.k[:, :, n - T:n], cache.v[:, :, n - T:n] = k, v
            if n > T:
                k, v = cache.k[:, :, :n], cache.v[:, :, :n]
        return F.scaled_dot_product_attention(q, k, v, is_causal=k.size(2) == T,   # not over a cached past
                                              dropout_p=self.dropout if self.training else 0.0)

    def flops(self, T, d):   # forward, per token and head: scores and values
        return 4 * T * d


class ELU(nn.Module):
    """ELU+1 linear attention. window w > 0: softmax over the last w tokens, ELU+1 before them, one
    normaliser, ELU+1 weighed by a gain per head (init 1/d_h: for small q, k, e^{q·k/√d} ≈ 1
    and φ(q)·φ(k) ≈ d_h).
    learned: per-head maps on q and k before φ, identity at first (what attention transfer trains)."""
    name = 'elu'

    def __init__(self, n_head, head_dim, chunk, window=0, learned=False):
        super().__init__()
        self.window, self.chunk = window, chunk
        if window:
            self.log_gain = nn.Parameter(torch.full((n_head,), -math.log(head_dim)))
        eye = torch.eye(head_dim).repeat(n_head, 1, 1)
        self.map_q, self.map_k = (nn.Parameter(eye.clone()) if learned else None for _ in range(2))

    def features(self, x, m):   # what φ sees
        return x if m is None else x @ m.to(x.dtype)

    def forward(self, q, k, v, cache=None):
        w, T, fq, fk = self.window, q.size(2), self.features(q, self.map_q), self.features(k, self.map_k)
        if not w:
            state = None if cache is None else cache.state
            y, state = elu_linear_step(fq, fk, v, state) if T == 1 else \
                elu_linear_attention(fq, fk, v, self.chunk, state)
        elif cache is None or not cache.n:   # a sequence: training or a prompt (then the ring: its end)
            y, state = window_linear_attention(q, k, v, w, self.log_gain.exp(), self.chunk, fq, fk)
            if cache is not None:
                cache.k, cache.v = (t.new_zeros(*t.shape[:2], w, t.size(3)) for t in (k, v))
                slots = torch.arange(max(T - w, 0), T, device=k.device)
                cache.k[:, :, slots % w], cache.v[:, :, slots % w] = k[:, :, slots], v[:, :, slots]
        else:
            y, state = self.step(q, k, v, fq, cache)
        if cache is not None:
            cache.state = state
        return y

    def step(self, q, k, v, fq, cache):
        """One token after cache.n: the token leaving the window enters the state, the new one its slot."""
        w, p, (kv, ksum) = self.window, cache.n, cache.state
        slot = slice(p % w, p % w + 1)
        if p >= w:
            old = phi(hi(self.features(cache.k[:, :, slot], self.map_k))).transpose(-1, -2)   # (B, H, d, 1)
            kv, ksum = torch.addcmul(kv, old, hi(cache.v[:, :, slot])), ksum + old[..., 0]
        cache.k[:, :, slot], cache.v[:, :, slot] = k, v
        kw, vw = cache.k[:, :, :min(p + 1, w)], cache.v[:, :, :min(p + 1, w)]
        g, fq = self.log_gain.exp().view(-1, 1, 1), phi(hi(fq))
        s = hi(q) @ hi(kw).transpose(-1, -2) / math.sqrt(q.size(-1))
        y = window_mix(s, hi(vw), g * (fq @ kv), g[..., 0] * (fq @ ksum.unsqueeze(-1))[..., 0])
        return y.to(v.dtype), (kv, ksum)

    def flops(self, T, d):   # as computed: intra-chunk scores and values, state update and read, the band
        C = min(self.chunk, T)
        return 4 * C * d + 4 * d * d + (4 * (C + self.window - 1) * d if self.window else 0)


class Attention(nn.Module):
    """Causal self-attention: a projection (q, k; S−D: u and S − D), then a mixer chosen by name."""

    def __init__(self, config, layer):
        super().__init__()
        c = config.layer(layer)
        self.kind, self.n_head, self.head_dim = c['attn'], config.n_head, c['head_dim']
        self.chunk, self.dropout = config.linear_chunk, config.dropout
        width = self.n_head * self.head_dim
        self.n_proj = 2 if self.kind == 'sd' else 3   # S−D has no key projection: k = u
        self.c_attn = nn.Linear(config.n_embd, self.n_proj * width, bias=config.bias)
        self.c_proj = nn.Linear(width, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        if self.kind == 'sd':
            H, d, r = self.n_head, self.head_dim, c['sd_rank']
            std = 0.5 / math.sqrt(d)   # u @ S then has about the scale of u
            if r is None:
                self.sd_P = nn.Parameter(torch.randn(H, d, d) * std)          # S = P − P^T
            else:
                self.sd_U = nn.Parameter(torch.randn(H, d, r) * std)          # S = U V^T − V U^T
                self.sd_V = nn.Parameter(torch.randn(H, d, r) * std)
            self.sd_delta = nn.Parameter(torch.zeros(H, d if c['sd_filter'] == 'diag' else 1))
        self.set_mixer('elu' if self.kind == 'linear' else 'softmax', c['linear_window'])

    def set_mixer(self, name, window=0, learned=False):
        """The mixer by name: 'softmax' | 'elu' (window: its softmax window; learned: maps to train)."""
        if name not in MIXERS or not is_window(window):
            raise ValueError(f"mixer {name!r}, window {window!r}: the mixer is one of {MIXERS}, "
                             f"the window an int >= 0")
        mixer = Softmax(self.dropout) if name == 'softmax' else \
            ELU(self.n_head, self.head_dim, self.chunk, window, learned)
        self.mixer = mixer.to(self.c_attn.weight.device)

    def sd_generator(self):
        """Per head: S (H, d, d) skew-symmetric, D (H, d) positive diagonal."""
        P = self.sd_P if hasattr(self, 'sd_P') else self.sd_U @ self.sd_V.transpose(1, 2)
        S = P - P.transpose(1, 2)
        D = F.softplus(self.sd_delta).expand(self.n_head, self.head_dim)
        return S, D

    def qkv(self, x):
        """q, k, v of shape (B, H, T, d) such that the pre-softmax scores are q·k / sqrt(d)."""
        parts = self.c_attn(x).unflatten(-1, (self.n_proj, self.n_head, self.head_dim)).permute(2, 0, 3, 1, 4)
        if self.kind != 'sd':
            return parts.unbind()
        S, D = self.sd_generator()
        L = S - torch.diag_embed(D)                 # u_i^T L u_j = (u_i L) · u_j: fold L into the query
        return parts[0] @ L.to(parts.dtype), parts[0], parts[1]

    def forward(self, x, cache=None):
        """cache: None (training), or this layer's Cache (incremental decoding; see its protocol)."""
        B, T, _ = x.shape
        if cache is not None and ((cache.n and T != 1) or cache.n + T > (cache.size or T)):
            raise ValueError(f"a cache takes one prompt, then one token at a time, within size={cache.size}: "
                             f"got {T} tokens after {cache.n}")
        y = self.mixer(*self.qkv(x), cache)
        if cache is not None:
            cache.n += T
        y = y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim)
        return self.resid_dropout(self.c_proj(y))

    def head_weights(self):
        """Per head W_q, W_k (H, d, n_embd) with kernel M = W_q^T W_k; for S−D also S and D,
        W_q = L^T W, W_k = W."""
        W = self.c_attn.weight.view(self.n_proj, self.n_head, self.head_dim, -1)
        if self.kind != 'sd':
            return dict(W_q=W[0], W_k=W[1])
        S, D = self.sd_generator()
        return dict(W_q=(S - torch.diag_embed(D)).transpose(1, 2) @ W[0], W_k=W[0], S=S, D=D)

    def flops_per_token(self, T):
        """Forward+backward FLOPs per token of the token mixing (the projections are counted as params)."""
        d = self.head_dim
        return 3 * self.n_head * (self.mixer.flops(T, d) + (2 * d * d if self.kind == 'sd' else 0))   # uL


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate='tanh')))


def make_norm(config, final=False):
    on = config.norm == 'layernorm' or (final and config.norm == 'final')
    return nn.LayerNorm(config.n_embd, bias=config.bias) if on else nn.Identity()


class Block(nn.Module):
    def __init__(self, config, layer):
        super().__init__()
        self.ln_1, self.attn = make_norm(config), Attention(config, layer)
        self.ln_2, self.mlp = make_norm(config), MLP(config)

    def forward(self, x, cache=None):
        x = x + self.attn(self.ln_1(x), cache)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
            ln_f=make_norm(config, final=True),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight   # weight tying
        for m in self.modules():                             # GPT-2 init, residual projections scaled
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
                if getattr(m, 'bias', None) is not None:
                    nn.init.zeros_(m.bias)
        for name, p in self.named_parameters():
            if name.endswith('c_proj.weight'):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * config.n_layer))

    def attention_layers(self):
        return [block.attn for block in self.transformer.h]

    def num_params(self, non_embedding=True):
        """Parameter count; by default without the position embeddings (the tied token embedding counts)."""
        return sum(p.numel() for p in self.parameters()) - \
            (self.transformer.wpe.weight.numel() if non_embedding else 0)

    def num_attention_params(self):
        return sum(p.numel() for a in self.attention_layers() for p in a.parameters())

    def forward(self, idx, targets=None, cache=None, pos=0):
        """idx (B, T) -> (logits, mean cross-entropy); without targets (last position's logits, None)."""
        B, T = idx.shape
        if pos + T > self.config.block_size:
            raise ValueError(f"sequence of length {pos + T} is longer than "
                             f"block_size={self.config.block_size}")
        positions = torch.arange(pos, pos + T, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.config.emb_scale *
                                  (self.transformer.wte(idx) + self.transformer.wpe(positions)))
        for i, block in enumerate(self.transformer.h):
            x = block(x, None if cache is None else cache[i])
        x = self.transformer.ln_f(x)
        logits = self.lm_head(x if targets is not None else x[:, [-1], :])
        if c := self.config.logit_softcap:   # bounded logits, |logits| < c, against output-logit growth
            logits = c * torch.tanh(logits / c)
        if targets is None:
            return logits, None
        return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)

    def linearize(self, layers, window=0):
        """Post hoc: the softmax layers `layers` (indices) to ELU+1 on their trained q, k, beside a softmax
        window of `window` tokens (an int, or {layer: int}), with fresh identity feature maps (attention
        transfer trains them); every other softmax layer back to softmax; trained ELU+1 layers stay.
        """
        layers = set(layers)
        for i, a in enumerate(self.attention_layers()):
            if a.kind != 'linear':
                w = window.get(i, 0) if isinstance(window, dict) else window
                a.set_mixer('elu', w, learned=True) if i in layers else a.set_mixer('softmax')

    def crop_block_size(self, block_size):
        assert block_size <= self.config.block_size
        self.config.block_size = block_size
        self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size])

    @classmethod
    def from_checkpoint(cls, path, device='cpu'):
        """(model, checkpoint dict) from a train.py ckpt.pt or its out_dir, read with torch's safe loader
        (weights_only: tensors and plain values, never code); anything else is a one-line error."""
        path = os.path.join(path, 'ckpt.pt') if os.path.isdir(path) else path
        try:
            ckpt = torch.load(path, map_location=device, weights_only=True)
            # {'emb_scale': 1.0}: checkpoints from before emb_scale
            model = cls(GPTConfig(**({'emb_scale': 1.0} | ckpt['model_args'])))
            model.load_state_dict(ckpt['model'])
        except FileNotFoundError:
            raise SystemExit(f"error: no checkpoint at {path}") from None
        except Exception as e:
            if isinstance(e, pickle.UnpicklingError) and 'global' in str(e).lower():
                raise SystemExit(f"error: {path} holds Python objects beyond tensors and plain values; "
                                 f"we do not load them, since unpickling them can run code: use a checkpoint "
                                 f"written by train.py") from None
            reason = 'damaged: its pickle does not parse' if isinstance(e, pickle.UnpicklingError) else \
                f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            raise SystemExit(f"error: {path} is not a readable train.py checkpoint ({reason}); "
                             f"point to an out_dir/ckpt.pt") from None
        return model.to(device), ckpt

    @classmethod
    def from_hf(cls, hf, dropout=0.0):
        """A standard-attention GPT with the weights of a transformers GPT2LMHeadModel."""
        c = hf.config
        model = cls(GPTConfig(block_size=c.n_positions, vocab_size=c.vocab_size, n_layer=c.n_layer,
                              n_head=c.n_head, n_embd=c.n_embd, dropout=dropout, bias=True))
        sd, sd_hf = model.state_dict(), hf.state_dict()
        keys = [k for k in sd if k in sd_hf]
        if set(sd) - set(keys) - {'lm_head.weight'}:
            raise ValueError(f"not a GPT-2 checkpoint: missing {sorted(set(sd) - set(keys))[:3]}")
        # GPT-2's Conv1D is (in, out), Linear (out, in)
        transposed = ('c_attn.weight', 'c_proj.weight', 'c_fc.weight')
        for k in keys:   # state_dict() tensors are detached views of the parameters
            sd[k].copy_(sd_hf[k].t() if k.endswith(transposed) else sd_hf[k])
        return model

    @classmethod
    def from_pretrained(cls, name, dropout=0.0):
        """'gpt2' | 'gpt2-medium' | 'gpt2-large' | 'gpt2-xl' (or a local directory) via transformers."""
        os.environ.setdefault('HF_HUB_VERBOSITY', 'error')   # no retry chatter offline
        from transformers import GPT2LMHeadModel
        try:
            hf = GPT2LMHeadModel.from_pretrained(name)
        except Exception as e:
            raise SystemExit(f"error: no GPT-2 {name!r} ({type(e).__name__}): go online or give its "
                             f"folder") from None
        return cls.from_hf(hf, dropout)

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        """AdamW; weight decay on matrices (and the S−D generators), not on biases, norms, the filter."""
        groups = [{'params': [], 'weight_decay': weight_decay}, {'params': [], 'weight_decay': 0.0}]
        for name, p in self.named_parameters():
            if p.requires_grad:
                groups[p.dim() < 2 or name.endswith('sd_delta')]['params'].append(p)
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=device_type == 'cuda')

    def flops_per_token(self, T):
        """Forward+backward FLOPs per token: 6 per matmul parameter (PaLM appendix B) plus mixing (and the
        S−D fold)."""
        sd_params = sum(p.numel() for n, p in self.named_parameters() if '.sd_' in n)
        return 6 * (self.num_params() - sd_params) + \
            sum(a.flops_per_token(T) for a in self.attention_layers())

    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None):
        """Sample max_new_tokens after idx (B, T) with a k/v cache (softmax) or recurrent state (ELU+1) per
        layer. Past block_size the window slides, which for learned absolute positions means re-encoding
        it."""
        bs = self.config.block_size
        cache, pos, size = None, 0, min(bs, idx.size(1) + max_new_tokens)
        with torch.inference_mode():   # lighter than no_grad per op, and a decode step is many small ops
            for _ in range(max_new_tokens):
                if cache is None or pos >= bs:   # (re-)encode the window
                    cache, pos = [Cache(size) for _ in range(self.config.n_layer)], 0
                x = idx[:, -bs:] if pos == 0 else idx[:, -1:]
                logits, _ = self(x, cache=cache, pos=pos)
                pos += x.size(1)
                logits = logits[:, -1, :] / temperature
                if top_k is not None:
                    v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                    logits[logits < v[:, [-1]]] = -float('Inf')
                idx = torch.cat((idx, torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)), dim=1)
        return idx.clone()   # out of inference mode: a normal tensor, usable with autograd
