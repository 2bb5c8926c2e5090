"""A GPT whose attention is, per layer, a projection ('standard' q, k; 'sd': u = W x, scores u_i^T(S − D)u_j)
times a mixer (MIXERS: softmax, ELU+1 alone or beside a softmax window); LayerNorm optional (README)."""
import math
import os
import pickle
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from linear import elu_linear_attention, elu_linear_step, hi, phi, window_linear_attention, window_mix

ATTN_TYPES = {'standard': 'softmax', 'sd': 'softmax', 'linear': 'elu'}   # attn: the mixer it trains with
NORMS = ('layernorm', 'none', 'final')


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
    attn: str | list = 'standard'        # one of ATTN_TYPES: 'standard' | 'sd' | 'linear'
    head_dim: int | None | list = None   # attention width per head; None = n_embd // n_head
    sd_rank: int | None | list = None    # S−D routing rank r (S = U V^T − V U^T); None = full
    sd_filter: str | list = 'diag'       # S−D filter D: 'diag' (d_h values) | 'scalar' (one per head)
    linear_window: int | list = 0        # ELU+1 layers: softmax on the last w tokens, ELU+1 before (0: none)
    linear_chunk: int = 64               # chunk length of the chunkwise-parallel ELU+1 form
    emb_scale: float | None = None       # input embedding multiplier; None: 1 with LayerNorm, else √n_embd
    logit_softcap: float = 0.0           # ours (issue #25): logits = c·tanh(logits / c) if c > 0; 0: off
    attn_softcap: float = 0.0            # ours (issue #25): softmax scores s = c·tanh(s / c) if c > 0; 0: off

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
        for name, allowed in (('attn', tuple(ATTN_TYPES)), ('sd_filter', ('diag', 'scalar'))):
            if bad := [v for v in self.per_layer(name) if v not in allowed]:
                raise ValueError(f"{name}={bad[0]!r} is not one of {allowed}")
        for name, low, none in (('head_dim', 1, True), ('sd_rank', 1, True), ('linear_window', 0, False)):
            if bad := [v for v in self.per_layer(name) if not is_int(v, low, none)]:
                raise ValueError(f"{name} entries must be ints >= {low}{' or None' * none}, got {bad[0]!r}")

    def per_layer(self, name):
        v = getattr(self, name)
        v = list(v) if isinstance(v, (list, tuple)) else [v] * self.n_layer
        if len(v) != self.n_layer:
            raise ValueError(f"{name} has {len(v)} entries but n_layer={self.n_layer}: give one value or one "
                             f"per layer")
        return v

    def layer(self, i):
        c = {k: self.per_layer(k)[i] for k in ('attn', 'head_dim', 'sd_rank', 'sd_filter', 'linear_window')}
        return c | {'head_dim': c['head_dim'] or self.n_embd // self.n_head}


def is_int(v, low=0, none=False):   # an int >= low (a window: >= 0), or None where allowed
    return (none and v is None) or (isinstance(v, int) and not isinstance(v, bool) and v >= low)


class Cache:
    """Decode cache of one attention layer: one forward of the prompt into an empty cache, then one token at
    a time; `n` counts the tokens seen, `size` (default: the prompt's) bounds them. The mixer keeps what it
    needs (softmax: k/v buffers of `size`; ELU+1: its state and, beside a window w, k/v rings of w slots)."""

    def __init__(self, size=None):
        self.size, self.n, self.k, self.v, self.state = size, 0, None, None, None


class Softmax(nn.Module):
    """Causal softmax attention (SDPA; soft-capped scores c·tanh(s/c) in the open); a preallocated cache."""
    name = 'softmax'

    def __init__(self, config, layer):
        super().__init__()
        self.dropout, self.softcap = config.dropout, config.attn_softcap

    def forward(self, q, k, v, cache=None):
        T = q.size(2)
        if cache is not None:
            if cache.k is None:   # allocated once: a new token is written in place, the past never copied
                cache.k, cache.v = (t.new_empty(*t.shape[:2], cache.size or T, t.size(3)) for t in (k, v))
            n = cache.n + T
            cache.k[:, :, n - T:n], cache.v[:, :, n - T:n] = k, v
            if n > T:
                k, v = cache.k[:, :, :n], cache.v[:, :, :n]
        return self.attend(q, k, v)

    def attend(self, q, k, v):   # the queries q (B, H, T, d) are the last T of the keys k (B, H, S, d)
        T, p = q.size(2), self.dropout if self.training else 0.0
        if not self.softcap:   # S > T: a cached past, no mask
            return F.scaled_dot_product_attention(q, k, v, is_causal=k.size(2) == T, dropout_p=p)
        s = self.softcap * torch.tanh(q @ k.transpose(-1, -2) / (self.softcap * math.sqrt(q.size(-1))))
        if k.size(2) == T:
            s = s.masked_fill(torch.ones(T, T, dtype=torch.bool, device=s.device).triu(1), float('-inf'))
        return F.dropout(s.softmax(-1), p) @ v

    def flops(self, T, d):   # forward, per token and head: scores and values
        return 4 * T * d


class ELU(nn.Module):
    """ELU+1 linear attention. window w > 0: softmax over the last w tokens, ELU+1 before them, one
    normaliser, ELU+1 weighed by a gain per head (init 1/d_h: for small q, k, e^{q·k/√d} ≈ 1, φ(q)·φ(k) ≈ d).
    learned: per-head maps on q and k before φ, identity at first (what attention transfer trains)."""
    name = 'elu'

    def __init__(self, config, layer, window=None, learned=False):   # window None: the config's
        super().__init__()
        c = config.layer(layer)
        self.window, self.chunk = c['linear_window'] if window is None else window, config.linear_chunk
        if self.window:
            self.log_gain = nn.Parameter(torch.full((config.n_head,), -math.log(c['head_dim'])))
        eye = torch.eye(c['head_dim']).repeat(config.n_head, 1, 1)
        self.map_q, self.map_k = (nn.Parameter(eye.clone()) if learned else None for _ in range(2))

    def features(self, x, m):   # what φ sees
        return x if m is None else x @ m.to(x.dtype)

    def forward(self, q, k, v, cache=None):
        w, T, fq, fk = self.window, q.size(2), self.features(q, self.map_q), self.features(k, self.map_k)
        if not w:
            y, state = elu_linear_step(fq, fk, v, None if cache is None else cache.state) if T == 1 else \
                elu_linear_attention(fq, fk, v, self.chunk)   # a sequence: no past (a prompt: an empty cache)
        elif cache is None or not cache.n:   # a sequence: training or a prompt (then the ring: its end)
            y, state = window_linear_attention(q, k, v, w, self.log_gain.exp(), self.chunk, fq, fk)
            if cache is not None:
                cache.k, cache.v = (t.new_zeros(*t.shape[:2], w, t.size(3)) for t in (k, v))
                slots = torch.arange(max(T - w, 0), T, device=k.device)
                cache.k[:, :, slots % w], cache.v[:, :, slots % w] = k[:, :, slots], v[:, :, slots]
        else:   # one token after cache.n: the token leaving the window enters the state, the new one its slot
            p, (kv, ksum) = cache.n, cache.state
            slot = slice(p % w, p % w + 1)
            if p >= w:
                old = phi(hi(self.features(cache.k[:, :, slot], self.map_k))).transpose(-1, -2)   # (B,H,d,1)
                kv, ksum = torch.addcmul(kv, old, hi(cache.v[:, :, slot])), ksum + old[..., 0]
            cache.k[:, :, slot], cache.v[:, :, slot] = k, v
            kw, vw = cache.k[:, :, :min(p + 1, w)], cache.v[:, :, :min(p + 1, w)]
            g, fq = self.log_gain.exp().view(-1, 1, 1), phi(hi(fq))
            s = hi(q) @ hi(kw).transpose(-1, -2) / math.sqrt(q.size(-1))
            y = window_mix(s, hi(vw), g * (fq @ kv), g[..., 0] * (fq @ ksum.unsqueeze(-1))[..., 0])
            y, state = y.to(v.dtype), (kv, ksum)
        if cache is not None:
            cache.state = state
        return y

    def flops(self, T, d):   # as computed: intra-chunk scores and values, state update and read, the band
        C = min(self.chunk, T)
        return 4 * C * d + 4 * d * d + (4 * (C + self.window - 1) * d if self.window else 0)


# A mixer: Mixer(config, layer, **options), an nn.Module; forward(q, k, v, cache=None) -> (B, H, T, d) from
# the projection's q, k, v (B, H, T, d) (scores q·k/√d), keeping what decoding needs in `cache` (a Cache);
# flops(T, d): forward FLOPs per token and head.
MIXERS = {'softmax': Softmax, 'elu': ELU}


class Attention(nn.Module):
    """Causal self-attention: a projection (q, k; S−D: u and S − D), then a mixer chosen by name."""

    def __init__(self, config, layer):
        super().__init__()
        c = config.layer(layer)
        self.config, self.layer, self.kind = config, layer, c['attn']
        self.n_head, self.head_dim = config.n_head, c['head_dim']
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
        self.set_mixer(ATTN_TYPES[self.kind])

    def set_mixer(self, name, **options):   # by name (MIXERS), e.g. set_mixer('elu', window=4, learned=True)
        if name not in MIXERS or not is_int(options.get('window', 0)):
            raise ValueError(f"mixer {name!r} with {options}: the mixer is one of {tuple(MIXERS)}, "
                             f"the window an int >= 0")
        self.mixer = MIXERS[name](self.config, self.layer, **options).to(self.c_attn.weight.device)
        self.mixer.train(self.training)

    def sd_generator(self, dtype=None):
        """Per head: S (H, d, d) skew-symmetric, D (H, d) positive diagonal, L = S − diag(D), in dtype."""
        P = self.sd_P if hasattr(self, 'sd_P') else self.sd_U @ self.sd_V.transpose(1, 2)
        S, D = P - P.transpose(1, 2), F.softplus(self.sd_delta).expand(self.n_head, self.head_dim)
        S, D = S.to(dtype), D.to(dtype)   # exact: S's diagonal is 0, so L's entries are S's or −D's
        return S, D, S - torch.diag_embed(D)

    def qkv(self, x):
        """q, k, v of shape (B, H, T, d) such that the pre-softmax scores are q·k / sqrt(d)."""
        parts = self.c_attn(x).unflatten(-1, (self.n_proj, self.n_head, self.head_dim)).permute(2, 0, 3, 1, 4)
        if self.kind != 'sd':
            return parts.unbind()
        L = self.sd_generator(parts.dtype)[2]   # u_i^T L u_j = (u_i L) · u_j: fold L into the query
        return parts[0] @ L, parts[0], parts[1]

    def forward(self, x, cache=None):
        T = x.size(1)
        if cache is not None and ((cache.n and T != 1) or cache.n + T > (cache.size or T)):
            raise ValueError(f"a cache takes one prompt, then one token at a time, within size={cache.size}: "
                             f"got {T} tokens after {cache.n}")
        y = self.mixer(*self.qkv(x), cache)
        if cache is not None:
            cache.n += T
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).flatten(2)))

    def head_weights(self, dtype=None):
        """Per head W_q, W_k (H, d, n_embd) with kernel M = W_q^T W_k, in dtype (the analysis: float64); for
        S−D also S and D, W_q = L^T W, W_k = W."""
        W = self.c_attn.weight.view(self.n_proj, self.n_head, self.head_dim, -1).to(dtype)
        if self.kind != 'sd':
            return dict(W_q=W[0], W_k=W[1])
        S, D, L = self.sd_generator(dtype)
        return dict(W_q=L.transpose(1, 2) @ W[0], W_k=W[0], S=S, D=D)

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
        end = pos + idx.size(1)
        if end > self.config.block_size:
            raise ValueError(f"sequence of length {end} is longer than block_size={self.config.block_size}")
        x = self.transformer.wte(idx) + self.transformer.wpe(torch.arange(pos, end, device=idx.device))
        x = self.transformer.drop(self.config.emb_scale * x)
        for i, block in enumerate(self.transformer.h):
            x = block(x, None if cache is None else cache[i])
        x = self.transformer.ln_f(x)
        logits = self.lm_head(x if targets is not None else x[:, [-1], :])
        if c := self.config.logit_softcap:   # bounded logits, |logits| < c, against output-logit growth
            logits = c * torch.tanh(logits / c)
        if targets is None:
            return logits, None
        return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)

    def switchable(self):   # the layers `linearize` can switch
        return [i for i, a in enumerate(self.attention_layers()) if ATTN_TYPES[a.kind] != 'elu']

    def linearize(self, layers, window=0):
        """Post hoc: the switchable layers `layers` (indices) to ELU+1 on their trained q, k, beside a softmax
        window of `window` tokens (an int, or {layer: int}), with fresh identity feature maps (attention
        transfer trains them); every other switchable layer back to the mixer it was trained with."""
        for i in self.switchable():
            a, w = self.attention_layers()[i], window.get(i, 0) if isinstance(window, dict) else window
            a.set_mixer('elu', window=w, learned=True) if i in layers else a.set_mixer(ATTN_TYPES[a.kind])

    @classmethod
    def from_checkpoint(cls, path, device='cpu'):
        """(model, checkpoint dict) from a train.py ckpt.pt or its out_dir, read with torch's safe loader
        (weights_only: tensors and plain values, never code); anything else is a one-line error."""
        path = os.path.join(path, 'ckpt.pt') if os.path.isdir(path) else path
        try:
            ckpt = torch.load(path, map_location=device, weights_only=True)
            model = cls(GPTConfig(**({'emb_scale': 1.0} | ckpt['model_args'])))   # 1.0: from before emb_scale
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

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        groups = [{'params': [], 'weight_decay': weight_decay}, {'params': [], 'weight_decay': 0.0}]
        for name, p in self.named_parameters():   # no weight decay on 1-D (biases, norms) and the S−D filter
            if p.requires_grad:
                groups[p.dim() < 2 or name.endswith('sd_delta')]['params'].append(p)
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=device_type == 'cuda')

    def flops_per_token(self, T):
        """Forward+backward FLOPs per token: 6 per matmul parameter (PaLM appendix B), mixing, S−D fold."""
        matmul_params = self.num_params() - sum(p.numel() for n, p in self.named_parameters() if '.sd_' in n)
        return 6 * matmul_params + sum(a.flops_per_token(T) for a in self.attention_layers())

    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None):
        """Sample max_new_tokens after idx (B, T) with a decode Cache per layer. Past block_size the window
        slides, which for learned absolute positions means re-encoding it."""
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
