"""
A GPT whose attention is, per layer, 'standard' softmax (q, k, v projections, SDPA / flash), 'sd' (scores
u_i^T (S − D) u_j / sqrt(d_h) with one projection u = W x, S skew-symmetric: routing, D positive diagonal:
filtering) or 'linear' (ELU+1, Katharopoulos et al. 2020). One class, `Attention`: a projection, then a mixer
(softmax or ELU+1); `GPT.linearize` switches softmax layers to ELU+1 post hoc. LayerNorm is optional.
"""
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
    linear_chunk: int = 64               # chunk length of the chunkwise-parallel ELU+1 form
    emb_scale: float | None = None       # multiplier of the input embedding; None: sqrt(n_embd) when the
                                         # blocks have no LayerNorm (README: training without LayerNorm), else 1

    def __post_init__(self):
        if self.norm not in NORMS:
            raise ValueError(f"norm={self.norm!r} is not one of {NORMS}")
        if self.emb_scale is None:
            self.emb_scale = 1.0 if self.norm == 'layernorm' else math.sqrt(self.n_embd)
        if isinstance(self.emb_scale, bool) or not isinstance(self.emb_scale, (int, float)) or self.emb_scale <= 0:
            raise ValueError(f"emb_scale={self.emb_scale!r} must be a positive number (or None)")
        if self.head_dim is None and self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}; set head_dim")
        for name, allowed in (('attn', ATTN_TYPES), ('sd_filter', SD_FILTERS)):
            if bad := [v for v in self.per_layer(name) if v not in allowed]:
                raise ValueError(f"{name}={bad[0]!r} is not one of {allowed}")
        for name in ('head_dim', 'sd_rank'):
            if bad := [v for v in self.per_layer(name) if v is not None and (not isinstance(v, int) or v < 1)]:
                raise ValueError(f"{name} entries must be positive ints or None, got {bad[0]!r}")

    def per_layer(self, name):
        """The knob `name` as a list with one entry per layer."""
        v = getattr(self, name)
        v = list(v) if isinstance(v, (list, tuple)) else [v] * self.n_layer
        if len(v) != self.n_layer:
            raise ValueError(f"{name} has {len(v)} entries but n_layer={self.n_layer}: give one value or one per layer")
        return v

    def layer(self, i):
        """The resolved settings of layer i."""
        hd = self.per_layer('head_dim')[i] or self.n_embd // self.n_head
        return dict(attn=self.per_layer('attn')[i], head_dim=hd,
                    sd_rank=self.per_layer('sd_rank')[i], sd_filter=self.per_layer('sd_filter')[i])


def elu_linear_attention(q, k, v, chunk=64, state=None):
    """Causal, normalized ELU+1 linear attention, chunkwise parallel.

    q, k, v: (B, H, T, d). Inside a chunk of length C the causal quadratic form is used; across chunks
    a running state (sum phi(k)^T v, sum phi(k)), kept in fp32, carries the past: O(T C d + T d^2).
    `state` continues from an earlier call, so with T = 1 this is the O(1)-per-token recurrent form.
    Returns (output in v's dtype, new state).
    """
    B, H, T, d = q.shape
    dtype, C = v.dtype, min(chunk, T)
    pad = (-T) % C
    q, k, v = (t.float() for t in (q, k, v))
    if pad:
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
    q, k = F.elu(q) + 1, F.elu(k) + 1
    if pad:  # padded keys must contribute nothing (phi(0) = 1, so zero them after phi)
        k[:, :, T:] = 0
    n = (T + pad) // C
    q, k, v = (t.view(B, H, n, C, -1) for t in (q, k, v))
    scores = (q @ k.transpose(-1, -2)).tril()              # (B, H, n, C, C) causal within a chunk
    kv = k.transpose(-1, -2) @ v                           # (B, H, n, d, dv) each chunk's contribution
    ksum = k.sum(3)                                        # (B, H, n, d)
    kv_past, ksum_past = kv.cumsum(2) - kv, ksum.cumsum(2) - ksum   # exclusive prefix over chunks
    if state is not None:
        kv_past, ksum_past = kv_past + state[0].unsqueeze(2), ksum_past + state[1].unsqueeze(2)
    num = scores @ v + q @ kv_past
    den = scores.sum(-1) + (q * ksum_past.unsqueeze(3)).sum(-1)
    y = (num / den.unsqueeze(-1)).view(B, H, n * C, -1)[:, :, :T]
    new_state = (kv_past[:, :, -1] + kv[:, :, -1], ksum_past[:, :, -1] + ksum[:, :, -1])
    return y.to(dtype), new_state


def elu_linear_step(q, k, v, state=None):
    """elu_linear_attention for one token (T = 1) without the chunking: the O(1) recurrent form that
    decoding runs. The token's own key enters the state before the read, as in the causal form."""
    dtype = v.dtype
    q, k, v = F.elu(q.float()) + 1, F.elu(k.float()) + 1, v.float()
    k = k.transpose(-1, -2)                                  # (B, H, d, 1): k^T v is an outer product
    if state is None:
        kv, ksum = k * v, k[..., 0]
    else:
        kv, ksum = torch.addcmul(state[0], k, v), state[1] + k[..., 0]   # (B, H, d, dv), (B, H, d)
    y = (q @ kv) / (q @ ksum.unsqueeze(-1))
    return y.to(dtype), (kv, ksum)


class Attention(nn.Module):
    """Causal self-attention of one layer: projection ('standard'/'linear': q, k; 'sd': u and S − D)
    then mixer (softmax through SDPA, or ELU+1 when `self.linear`)."""

    def __init__(self, config, layer):
        super().__init__()
        c = config.layer(layer)
        self.kind, self.n_head, self.head_dim = c['attn'], config.n_head, c['head_dim']
        self.linear = self.kind == 'linear'     # the mixer; GPT.linearize flips it post hoc
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

    def sd_generator(self):
        """Per head: S (H, d, d) skew-symmetric, D (H, d) positive diagonal."""
        if hasattr(self, 'sd_P'):
            S = self.sd_P - self.sd_P.transpose(1, 2)
        else:
            UV = self.sd_U @ self.sd_V.transpose(1, 2)
            S = UV - UV.transpose(1, 2)
        D = F.softplus(self.sd_delta).expand(self.n_head, self.head_dim)
        return S, D

    def qkv(self, x):
        """q, k, v of shape (B, H, T, d) such that the pre-softmax scores are q·k / sqrt(d)."""
        B, T, _ = x.shape
        parts = self.c_attn(x).view(B, T, self.n_proj, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
        if self.kind != 'sd':
            return parts[0], parts[1], parts[2]
        u, v = parts[0], parts[1]
        S, D = self.sd_generator()
        L = S - torch.diag_embed(D)                 # u_i^T L u_j = (u_i L) · u_j: fold L into the query
        return u @ L.to(u.dtype), u, v

    def forward(self, x, cache=None):
        """cache: None (training), or a dict this layer fills and reuses for incremental decoding: the
        ELU+1 state, or k/v buffers of cache['size'] positions (default: the prompt's), cache['n'] filled."""
        B, T, _ = x.shape
        q, k, v = self.qkv(x)
        if self.linear:
            state = None if cache is None else cache.get('state')
            if T == 1:
                y, state = elu_linear_step(q, k, v, state)
            else:
                y, state = elu_linear_attention(q, k, v, self.chunk, state)
            if cache is not None:
                cache['state'] = state
        else:
            causal = True
            if cache is not None:
                if 'k' not in cache:   # allocated once: a new token is written in place, the past never copied
                    shape = (B, self.n_head, cache.get('size', T), self.head_dim)
                    cache['k'], cache['v'], cache['n'] = k.new_empty(shape), v.new_empty(shape), 0
                n = cache['n'] + T
                assert (n == T or T == 1) and n <= cache['k'].size(2), "decode one token at a time, within 'size'"
                cache['k'][:, :, n - T:n], cache['v'][:, :, n - T:n], cache['n'] = k, v, n
                if n > T:
                    k, v, causal = cache['k'][:, :, :n], cache['v'][:, :, :n], False
            y = F.scaled_dot_product_attention(q, k, v, is_causal=causal,
                                               dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim)
        return self.resid_dropout(self.c_proj(y))

    def head_weights(self):
        """Per head x-space projections W_q, W_k (H, d, n_embd) with weight kernel M = W_q^T W_k
        (README: the idea). For S−D, W_q = L^T W and W_k = W, so M = W^T (S − D) W; S and D are included."""
        W = self.c_attn.weight.view(self.n_proj, self.n_head, self.head_dim, -1)
        if self.kind != 'sd':
            return dict(W_q=W[0], W_k=W[1])
        S, D = self.sd_generator()
        L = S - torch.diag_embed(D)
        return dict(W_q=L.transpose(1, 2) @ W[0], W_k=W[0], S=S, D=D)

    def flops_per_token(self, T):
        """Forward+backward FLOPs per token of the token mixing (the projections are counted as params)."""
        H, d = self.n_head, self.head_dim
        sd_fold = 3 * H * 2 * d * d if self.kind == 'sd' else 0     # q = u @ L
        if self.linear:   # intra-chunk scores and values, plus state update and read-out
            return 3 * H * (4 * min(self.chunk, T) * d + 4 * d * d) + sd_fold
        return 3 * H * 4 * T * d + sd_fold


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate='tanh')))


def make_norm(config, final=False):
    if config.norm == 'none' or (config.norm == 'final' and not final):
        return nn.Identity()
    return nn.LayerNorm(config.n_embd, bias=config.bias)


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
        self.apply(self._init_weights)
        for name, p in self.named_parameters():             # GPT-2: scaled init of residual projections
            if name.endswith('c_proj.weight'):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def attention_layers(self):
        return [block.attn for block in self.transformer.h]

    def num_params(self, non_embedding=True):
        """Parameter count; by default without the position embeddings (the token embedding is tied
        to the output layer, so it counts)."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    def num_attention_params(self):
        return sum(p.numel() for a in self.attention_layers() for p in a.parameters())

    def forward(self, idx, targets=None, cache=None, pos=0):
        """idx (B, T) token ids. With targets: (logits, mean cross-entropy). Without: logits of the last
        position only (generation). cache/pos: incremental decoding, see generate()."""
        B, T = idx.shape
        if pos + T > self.config.block_size:
            raise ValueError(f"sequence of length {pos + T} is longer than block_size={self.config.block_size}")
        positions = torch.arange(pos, pos + T, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.config.emb_scale * (self.transformer.wte(idx) + self.transformer.wpe(positions)))
        for i, block in enumerate(self.transformer.h):
            x = block(x, None if cache is None else cache[i])
        x = self.transformer.ln_f(x)
        if targets is None:
            return self.lm_head(x[:, [-1], :]), None
        logits = self.lm_head(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        return logits, loss

    def linearize(self, layers):
        """Post hoc: switch the softmax attention of `layers` (indices) to ELU+1 linear attention that
        reuses each layer's own q and k; every other layer goes back to its trained mixer."""
        layers = set(layers)
        for i, a in enumerate(self.attention_layers()):
            a.linear = i in layers or a.kind == 'linear'

    def crop_block_size(self, block_size):
        assert block_size <= self.config.block_size
        self.config.block_size = block_size
        self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size])

    @classmethod
    def from_checkpoint(cls, path, device='cpu'):
        """(model, checkpoint dict) from a train.py ckpt.pt or its out_dir; anything else is a one-line error. The
        file is read with torch's safe loader (weights_only): tensors and plain Python values only, never code."""
        path = os.path.join(path, 'ckpt.pt') if os.path.isdir(path) else path
        try:
            ckpt = torch.load(path, map_location=device, weights_only=True)
            model = cls(GPTConfig(**({'emb_scale': 1.0} | ckpt['model_args'])))   # checkpoints from before emb_scale
            model.load_state_dict(ckpt['model'])
        except FileNotFoundError:
            raise SystemExit(f"error: no checkpoint at {path}") from None
        except Exception as e:
            if isinstance(e, pickle.UnpicklingError) and 'global' in str(e).lower():
                raise SystemExit(f"error: {path} holds Python objects beyond tensors and plain values; we do not "
                                 f"load them, since unpickling them can run code: use a checkpoint written by "
                                 f"train.py") from None
            reason = 'damaged: its pickle does not parse' if isinstance(e, pickle.UnpicklingError) else \
                f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            raise SystemExit(f"error: {path} is not a readable train.py checkpoint ({reason}); "
                             f"point to an out_dir/ckpt.pt") from None
        return model.to(device), ckpt

    @classmethod
    def from_hf(cls, hf, dropout=0.0):
        """A standard-attention GPT with the weights of a transformers GPT2LMHeadModel."""
        c = hf.config
        model = cls(GPTConfig(block_size=c.n_positions, vocab_size=c.vocab_size, n_layer=c.n_layer, n_head=c.n_head,
                              n_embd=c.n_embd, dropout=dropout, bias=True))
        sd, sd_hf = model.state_dict(), hf.state_dict()
        keys = [k for k in sd if k in sd_hf]
        if set(sd) - set(keys) - {'lm_head.weight'}:
            raise ValueError(f"not a GPT-2 checkpoint: missing {sorted(set(sd) - set(keys))[:3]}")
        # GPT-2 uses Conv1D (in, out) where we use Linear (out, in)
        transposed = ('attn.c_attn.weight', 'attn.c_proj.weight', 'mlp.c_fc.weight', 'mlp.c_proj.weight')
        with torch.no_grad():
            for k in keys:
                sd[k].copy_(sd_hf[k].t() if k.endswith(transposed) else sd_hf[k])
        return model

    @classmethod
    def from_pretrained(cls, name, dropout=0.0):
        """'gpt2' | 'gpt2-medium' | 'gpt2-large' | 'gpt2-xl' (or a local directory) via transformers."""
        from transformers import GPT2LMHeadModel
        return cls.from_hf(GPT2LMHeadModel.from_pretrained(name), dropout)

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        """AdamW; weight decay on matrices (and the S−D generators), not on biases, norms, the filter."""
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if p.requires_grad:
                (decay if p.dim() >= 2 and not name.endswith('sd_delta') else no_decay).append(p)
        groups = [{'params': decay, 'weight_decay': weight_decay}, {'params': no_decay, 'weight_decay': 0.0}]
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=device_type == 'cuda')

    def flops_per_token(self, T):
        """Forward+backward FLOPs per token: 6 per matmul parameter (PaLM appendix B) plus token mixing.
        The S−D generator is not a per-token matmul parameter; its fold is counted in the mixing."""
        sd_params = sum(p.numel() for n, p in self.named_parameters() if '.sd_' in n)
        return 6 * (self.num_params() - sd_params) + sum(a.flops_per_token(T) for a in self.attention_layers())

    def estimate_mfu(self, tokens_per_iter, dt, peak_flops):
        """Model FLOPs utilization: achieved FLOP/s over `peak_flops` (e.g. the device's bf16 peak)."""
        return self.flops_per_token(self.config.block_size) * tokens_per_iter / dt / peak_flops

    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None):
        """Sample max_new_tokens after idx (B, T). Softmax layers keep a k/v cache and ELU+1 layers a
        fixed-size recurrent state, so a new token costs O(1) for linear layers; the k/v cache is
        allocated once for every position it will hold. Past block_size the window slides, which for
        learned absolute positions means re-encoding it."""
        cache, pos, size = None, 0, min(self.config.block_size, idx.size(1) + max_new_tokens)
        with torch.inference_mode():   # lighter than no_grad per op, and a decode step is many small ops
            for _ in range(max_new_tokens):
                if cache is None or pos >= self.config.block_size:
                    context = idx[:, -self.config.block_size:]
                    cache = [dict(size=size) for _ in range(self.config.n_layer)]
                    logits, _ = self(context, cache=cache)
                    pos = context.size(1)
                else:
                    logits, _ = self(idx[:, -1:], cache=cache, pos=pos)
                    pos += 1
                logits = logits[:, -1, :] / temperature
                if top_k is not None:
                    v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                    logits[logits < v[:, [-1]]] = -float('Inf')
                idx_next = torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)
                idx = torch.cat((idx, idx_next), dim=1)
        return idx.clone()   # out of inference mode: a normal tensor, usable with autograd
