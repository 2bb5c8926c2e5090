"""ELU+1 linear attention (Katharopoulos et al. 2020) in fp32: chunkwise, one token at a time, windowed."""
import math

import torch
import torch.nn.functional as F

TINY = 1e-6   # the least ELU+1 normaliser: where every φ(q)·φ(k) underflows (|q|, |k| in the hundreds), y = 0


def phi(x):   # the ELU+1 feature map, positive everywhere: the one every ELU+1 path uses
    return F.elu(x) + 1


def hi(t):   # the ELU+1 forms compute in fp32, or in float64 when given it (the tests' references)
    return t if t.dtype == torch.float64 else t.float()


def linear_parts(fq, fk, v, chunk):
    """Causal linear attention on features fq, fk (B, H, T, d), chunkwise: quadratic inside a chunk, a state
    (sum fk^T v, sum fk) across chunks. Returns (numerator, denominator, the state after the last token)."""
    T = fq.size(2)
    C = min(chunk, T)
    if pad := (-T) % C:   # padded queries read 1s (their rows are dropped), padded keys 0 (they add nothing)
        fq, fk, v = F.pad(fq, (0, 0, 0, pad), value=1.0), F.pad(fk, (0, 0, 0, pad)), F.pad(v, (0, 0, 0, pad))
    fq, fk, v = (t.unflatten(2, (-1, C)) for t in (fq, fk, v))   # (B, H, n, C, d): n chunks of length C
    scores = (fq @ fk.transpose(-1, -2)).tril()              # (B, H, n, C, C) causal within a chunk
    kv, ksum = fk.transpose(-1, -2) @ v, fk.sum(3)           # (B, H, n, d, dv), (B, H, n, d): each chunk's
    kv_past, ksum_past = kv.cumsum(2) - kv, ksum.cumsum(2) - ksum   # exclusive prefix over chunks
    num = (scores @ v + fq @ kv_past).flatten(2, 3)[:, :, :T]
    den = (scores.sum(-1) + (fq * ksum_past.unsqueeze(3)).sum(-1)).flatten(2, 3)[:, :, :T]
    return num, den, (kv_past[:, :, -1] + kv[:, :, -1], ksum_past[:, :, -1] + ksum[:, :, -1])


def elu_linear_attention(q, k, v, chunk=64):
    """Causal normalized ELU+1 attention on q, k, v (B, H, T, d), chunkwise: (y, the state after it)."""
    num, den, state = linear_parts(phi(hi(q)), phi(hi(k)), hi(v), chunk)
    return (num / den.clamp_min(TINY).unsqueeze(-1)).to(v.dtype), state


def elu_linear_step(q, k, v, state=None):
    """elu_linear_attention for one token, O(1) (decoding): its own key enters the state before the read."""
    dtype, q, k, v = v.dtype, phi(hi(q)), phi(hi(k)), hi(v)
    k = k.transpose(-1, -2)                                  # (B, H, d, 1): k^T v is an outer product
    kv, ksum = (k * v, k[..., 0]) if state is None else (torch.addcmul(state[0], k, v), state[1] + k[..., 0])
    return ((q @ kv) / (q @ ksum.unsqueeze(-1)).clamp_min(TINY)).to(dtype), (kv, ksum)


def window_mix(s, v, num_past, den_past):
    """(Σ e^s v + num_past) / (Σ e^s + den_past) over window scores s (..., L), as (Σ e^{s−m} v + ȳ p) /
    (Σ e^{s−m} + p), p = e^{log den_past − m}, ȳ = num_past / den_past, m = max(max s, log den_past) detached
    (it cancels; gradients exact): nothing overflows, and no past (den_past = 0) adds exactly 0."""
    past = den_past > 0
    den = torch.where(past, den_past, 1.0)
    log_den = den.log().masked_fill(~past, float('-inf'))
    m = torch.maximum(s.amax(-1), log_den).detach()
    e, p = (s - m.unsqueeze(-1)).exp(), (log_den - m).exp()
    return (e @ v + num_past / den.unsqueeze(-1) * p.unsqueeze(-1)) / (e.sum(-1) + p).unsqueeze(-1)


def window_linear_attention(q, k, v, window, gain, chunk=64, fq=None, fk=None):
    """Token t attends with softmax to the last `window` tokens (t − w < s ≤ t), with ELU+1 to every earlier
    one, one normaliser: y_t = (Σ_win e^{q·k/√d} v + g Σ_past φ(fq_t)·φ(fk_s) v) / (the same without v), gain
    g (H,); φ sees fq, fk (default q, k). Chunkwise, O(T (C + w) d); returns (y, the past's ELU+1 state)."""
    T, d, w, dtype = q.size(2), q.size(3), window, v.dtype
    q, k, v = hi(q), hi(k), hi(v)
    fq, fk = phi(q if fq is None else hi(fq)), phi(k if fk is None else hi(fk))
    late = lambda t: F.pad(t, (0, 0, w, 0))[:, :, :T]   # delayed by w tokens (φ-space zeros add nothing)
    num_p, den_p, state = linear_parts(fq, late(fk), late(v), chunk)
    C = min(chunk, T)
    L, pad, g = C + w - 1, (-T) % C, gain.to(q.dtype).view(-1, 1)   # the window: a band of L keys per chunk
    chunks = lambda t: F.pad(t, (0, 0) * (t.dim() - 3) + (0, pad)).unflatten(2, (-1, C))
    kb, vb = (F.pad(t, (0, 0, w - 1, pad)).unfold(2, L, C).transpose(-1, -2) for t in (k, v))   # (B,H,n,L,d)
    i, j = torch.arange(C, device=q.device).unsqueeze(1), torch.arange(L, device=q.device)
    start = torch.arange(0, T, C, device=q.device).view(-1, 1, 1) - (w - 1)   # key j's position: start + j
    keep = (j >= i) & (j < i + w) & (start + j >= 0)                      # (n, C, L): t − w < s ≤ t, s ≥ 0
    s = (chunks(q) @ kb.transpose(-1, -2) / math.sqrt(d)).masked_fill(~keep, float('-inf'))
    y = window_mix(s, vb, chunks(g.unsqueeze(-1) * num_p), chunks(g * den_p))
    return y.flatten(2, 3)[:, :, :T].to(dtype), state
