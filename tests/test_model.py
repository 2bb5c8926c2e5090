"""model.py: the projections and mixers against naive references (ELU+1 and its softmax window: float64,
values and gradients), causality, the post-hoc switch, cached generation, parameter and FLOP counts, config
errors."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from linear import elu_linear_attention, elu_linear_step, window_linear_attention
from model import ELU, GPT, Cache, GPTConfig

torch.manual_seed(0)


def tiny(**kw):
    args = dict(block_size=64, vocab_size=96, n_layer=3, n_head=2, n_embd=32, bias=True, linear_chunk=8)
    return GPTConfig(**(args | kw))


ATTNS = ['standard', 'sd', 'linear', ['linear', 'sd', 'standard']]
# every mixer: the trained types, trained windows (3; per layer 5, 0, 1), post-hoc windows with maps and gains
MODELS = [dict(attn=a) for a in ATTNS] + [dict(attn='linear', linear_window=3),
                                          dict(attn=['linear', 'sd', 'linear'], linear_window=[5, 0, 1]),
                                          dict(attn=['sd', 'standard', 'linear'], post={0: 4, 1: 0})]


def build(attn='standard', post=None, **kw):
    """A tiny GPT; post: {layer: window} switched post hoc, every mixer parameter moved away from its init."""
    model = GPT(tiny(attn=attn, **kw))
    if post:
        model.linearize(post, window=post)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if '.mixer.' in name:
                p.add_(0.2 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize('attn', ATTNS, ids=str)
@pytest.mark.parametrize('norm', ['layernorm', 'none'])
def test_shapes_and_causality(attn, norm):
    model = GPT(tiny(attn=attn, norm=norm)).eval()
    idx = torch.randint(0, 96, (2, 37))
    logits, loss = model(idx, idx)
    assert logits.shape == (2, 37, 96) and loss.ndim == 0 and torch.isfinite(loss)
    changed = idx.clone()
    changed[:, 20:] = (changed[:, 20:] + 1) % 96
    logits2, _ = model(changed, changed)
    torch.testing.assert_close(logits[:, :20], logits2[:, :20], rtol=0, atol=1e-5)
    assert (logits[:, 20:] - logits2[:, 20:]).abs().max() > 1e-3   # the future does matter later on
    last, _ = model(idx)
    torch.testing.assert_close(last[:, 0], logits[:, -1], rtol=1e-5, atol=1e-5)


def test_no_norm_path_has_no_layernorm():
    model = GPT(tiny(norm='none'))
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in model.modules())
    assert sum(isinstance(m, torch.nn.LayerNorm) for m in GPT(tiny()).modules()) == 2 * 3 + 1


@pytest.mark.parametrize('rank,filt', [(None, 'diag'), (3, 'diag'), (None, 'scalar')])
def test_sd_generator_structure(rank, filt):
    torch.manual_seed(0)
    attn = GPT(tiny(attn='sd', sd_rank=rank, sd_filter=filt)).attention_layers()[0]
    with torch.no_grad():
        attn.sd_delta.normal_()   # away from the initial all-equal filter
    S, D, L = attn.sd_generator()
    assert torch.equal(S, -S.transpose(1, 2)) and torch.equal(L, S - torch.diag_embed(D))
    assert (D > 0).all()
    if rank is not None:
        assert all(torch.linalg.matrix_rank(s, atol=1e-5) == 2 * rank for s in S)
    if filt == 'scalar':
        assert torch.equal(D, D[:, :1].expand_as(D))
    L = (S - torch.diag_embed(D)).double()
    assert torch.linalg.eigvals(L).real.max() <= 1e-12
    w = attn.head_weights()   # x-space kernel W^T (S - D) W: skew part W^T S W, symmetric part -W^T D W
    M = (w['W_q'].transpose(1, 2) @ w['W_k']).double()
    W = w['W_k'].double()
    torch.testing.assert_close((M - M.transpose(1, 2)) / 2, W.transpose(1, 2) @ S.double() @ W)
    torch.testing.assert_close((M + M.transpose(1, 2)) / 2,
                               -W.transpose(1, 2) @ torch.diag_embed(D).double() @ W)
    # Re(λ) ≤ 0 up to float32 rounding: M is a float32 product (rank ≤ d_h, the zero eigenvalues are noise)
    assert torch.linalg.eigvals(M).real.max() <= 1e-6 * M.abs().max()


def test_sd_folded_sdpa_equals_explicit_scores():
    config = tiny(attn='sd', sd_rank=[None, 2, None])
    for attn in GPT(config).attention_layers():
        x = torch.randn(2, 19, 32)
        B, T, _ = x.shape
        u, v = attn.c_attn(x).view(B, T, 2, attn.n_head, attn.head_dim).permute(2, 0, 3, 1, 4)
        S, D, _ = attn.sd_generator()
        scores = torch.einsum('bhid,hde,bhje->bhij', u, S - torch.diag_embed(D), u) / math.sqrt(attn.head_dim)
        scores = scores.masked_fill(torch.ones(T, T).triu(1).bool(), float('-inf'))
        y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, -1)
        torch.testing.assert_close(attn(x), attn.c_proj(y), rtol=1e-5, atol=1e-6)


def naive_linear_attention(q, k, v):
    phi_q, phi_k = F.elu(q.double()) + 1, F.elu(k.double()) + 1
    weights = (phi_q @ phi_k.transpose(-1, -2)).tril()
    return (weights / weights.sum(-1, keepdim=True)) @ v.double()


@pytest.mark.parametrize('T', [1, 7, 16, 29, 64])
def test_elu_linear_chunked_equals_naive_and_recurrent(T):
    q, k, v = (torch.randn(2, 3, T, 8) for _ in range(3))
    expected = naive_linear_attention(q, k, v)
    for chunk in (4, 8, 64):
        y, _ = elu_linear_attention(q, k, v, chunk)
        torch.testing.assert_close(y.double(), expected, rtol=1e-5, atol=1e-6)
    state, steps = None, []   # recurrent form: one token at a time, O(1) state
    for t in range(T):
        y_t, state = elu_linear_step(q[:, :, t:t + 1], k[:, :, t:t + 1], v[:, :, t:t + 1], state)
        steps.append(y_t)
    assert state[0].shape == (2, 3, 8, 8) and state[0].dtype == torch.float32
    torch.testing.assert_close(torch.cat(steps, 2).double(), expected, rtol=1e-5, atol=1e-6)
    if T > 1:   # a prompt, then one token at a time from its state
        head, state = elu_linear_attention(q[:, :, :T - 1], k[:, :, :T - 1], v[:, :, :T - 1], 4)
        tail, _ = elu_linear_step(q[:, :, T - 1:], k[:, :, T - 1:], v[:, :, T - 1:], state)
        torch.testing.assert_close(torch.cat([head, tail], 2).double(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('kind', ['standard', 'sd'])
def test_post_hoc_linearization_reuses_the_layers_own_q_and_k(kind):
    model = GPT(tiny(attn=kind)).eval()
    idx = torch.randint(0, 96, (2, 21))
    before, _ = model(idx, idx)
    model.linearize([0, 2])
    assert [a.mixer.name for a in model.attention_layers()] == ['elu', 'softmax', 'elu']
    attn = model.attention_layers()[0]
    x = torch.randn(2, 21, 32)
    q, k, v = attn.qkv(x)
    y, _ = elu_linear_attention(q, k, v, 8)
    torch.testing.assert_close(attn(x), attn.c_proj(y.transpose(1, 2).reshape(2, 21, -1)))
    after, _ = model(idx, idx)
    assert (before - after).abs().max() > 1e-3
    model.linearize([])
    torch.testing.assert_close(model(idx, idx)[0], before)


def test_linearize_keeps_trained_linear_layers_linear():
    model = GPT(tiny(attn=['linear', 'sd', 'standard'], linear_window=[2, 0, 0]))
    trained = model.attention_layers()[0].mixer
    model.linearize([0, 2], window={2: 5})
    assert [a.mixer.name for a in model.attention_layers()] == ['elu', 'softmax', 'elu']
    assert model.attention_layers()[0].mixer is trained and model.attention_layers()[2].mixer.window == 5
    assert trained.map_q is None and model.attention_layers()[2].mixer.map_q.shape == (2, 16, 16)
    model.linearize([])
    assert [a.mixer.name for a in model.attention_layers()] == ['elu', 'softmax', 'softmax']
    assert set(model.state_dict()) == set(GPT(model.config).state_dict())   # the switch's parameters are gone


@pytest.mark.parametrize('kw', MODELS, ids=str)
def test_cached_generation_equals_full_recompute(kw):
    model = build(**kw, block_size=24)
    prompt = torch.randint(0, 96, (2, 5))
    out = model.generate(prompt, 40, top_k=1)   # greedy; runs past block_size (sliding window)
    idx = prompt
    for _ in range(40):
        logits, _ = model(idx[:, -24:])
        idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, idx)


@pytest.mark.parametrize('kw', MODELS, ids=str)
@pytest.mark.parametrize('prompt_len', [1, 5])
def test_generated_logits_equal_a_full_forward(kw, prompt_len):
    """Every logit generate() samples from equals a full forward of the window it saw: the prompt, the
    one-token steps (k/v cache, ELU+1 state, window ring), and the re-encoded window past block_size."""
    model = build(**kw, block_size=24)
    seen = []
    hook = model.lm_head.register_forward_hook(lambda module, args, out: seen.append(out[:, -1].clone()))
    out = model.generate(torch.randint(0, 96, (2, prompt_len)), 40, temperature=2.0)   # sampled, not greedy
    hook.remove()
    assert len(seen) == 40 and out.shape == (2, prompt_len + 40) and not out.is_inference()
    with torch.no_grad():
        for i, logits in enumerate(seen):
            window = out[:, :prompt_len + i][:, -24:]
            torch.testing.assert_close(logits, model(window)[0][:, -1], rtol=1e-5, atol=1e-5)


class NewTensors(TorchDispatchMode):
    """Logs each aten op and the element count of its largest output that is new memory (not a view
    of, or written into, one of its inputs)."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs))
                  if isinstance(t, torch.Tensor)}
        new = [t.numel() for t in tree_leaves(out)
               if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs]
        self.ops.append((func.overloadpacket.__name__, max(new, default=0)))
        return out


def decode_step(model, context):
    """(ops of one decode step after `context` tokens, the cache)."""
    cache = [Cache(context + 1) for _ in range(model.config.n_layer)]
    idx = torch.randint(0, 96, (1, context + 1))
    with torch.no_grad():
        model(idx[:, :-1], cache=cache)
        with NewTensors() as log:
            model(idx[:, -1:], cache=cache, pos=context)
    return log.ops, cache


@pytest.mark.parametrize('kw', MODELS, ids=str)
def test_a_decode_step_copies_nothing_that_grows_with_the_context(kw):
    model = build(**kw)
    short, _ = decode_step(model, 8)
    ops, cache = decode_step(model, 48)
    assert ops == short   # the same ops and new tensors at context 8 and 48: only the attention's read grows
    names = {name for name, _ in ops}
    assert 'cat' not in names and max(n for _, n in ops) < 48 * 32   # smaller than one layer's k cache
    for c, a in zip(cache, model.attention_layers()):
        assert c.n == 49
        if a.mixer.name == 'elu':   # the recurrent step, not the chunked kernel; a ring of w keys
            assert not names & {'cumsum', 'constant_pad_nd', 'tril', 'unfold'}
            assert c.state[0].shape == (1, 2, 16, 16) and c.state[0].dtype == torch.float32
            assert (c.k is None) if not a.mixer.window else c.k.shape == (1, 2, a.mixer.window, 16)
        else:          # the new token went into the preallocated buffer
            assert c.k.shape == (1, 2, 49, 16) and c.state is None


def test_the_cache_protocol_is_one_prompt_then_one_token_at_a_time():
    model = build(attn='linear', linear_window=2)
    cache = [Cache(8) for _ in range(3)]
    model(torch.zeros(1, 5, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match='one prompt, then one token at a time'):
        model(torch.zeros(1, 2, dtype=torch.long), cache=cache, pos=5)
    for pos in (5, 6, 7):
        model(torch.zeros(1, 1, dtype=torch.long), cache=cache, pos=pos)
    with pytest.raises(ValueError, match='within size=8'):
        model(torch.zeros(1, 1, dtype=torch.long), cache=cache, pos=8)


def test_elu_linear_step_continues_the_chunked_form():
    q, k, v = (torch.randn(2, 3, 13, 8) for _ in range(3))
    expected = naive_linear_attention(q, k, v)
    y0, _ = elu_linear_step(q[:, :, :1], k[:, :, :1], v[:, :, :1])   # the first token, no state yet
    torch.testing.assert_close(y0.double(), expected[:, :, :1], rtol=1e-5, atol=1e-6)
    _, state = elu_linear_attention(q[:, :, :12], k[:, :, :12], v[:, :, :12], 4)
    y, new_state = elu_linear_step(q[:, :, 12:], k[:, :, 12:], v[:, :, 12:], state)
    torch.testing.assert_close(y.double(), expected[:, :, 12:], rtol=1e-5, atol=1e-6)
    for a, b in zip(new_state, elu_linear_attention(q, k, v, 4)[1]):
        torch.testing.assert_close(a, b)
    y16, state16 = elu_linear_step(*(t[:, :, 12:].bfloat16() for t in (q, k, v)), state)
    assert y16.dtype == torch.bfloat16 and state16[0].dtype == torch.float32   # the state stays fp32


def naive_window_attention(q, k, v, w, gain, fq=None, fk=None):
    """O(T^2) float64: weight e^{q.k/sqrt(d)} on the last w tokens (the token itself included),
    gain * phi(fq).phi(fk) on every earlier one, one normalisation."""
    q, k, v, gain = (t.double() for t in (q, k, v, gain))
    fq, fk = (q if fq is None else fq.double()), (k if fk is None else fk.double())
    dist = torch.arange(q.size(2)).unsqueeze(1) - torch.arange(q.size(2))   # query position - key position
    phi_q, phi_k = F.elu(fq) + 1, F.elu(fk) + 1
    weights = ((q @ k.transpose(-1, -2) / math.sqrt(q.size(-1))).exp() * ((dist >= 0) & (dist < w))
               + gain.view(-1, 1, 1) * (phi_q @ phi_k.transpose(-1, -2)) * (dist >= w))
    return weights / weights.sum(-1, keepdim=True) @ v


@pytest.mark.parametrize('T', [1, 7, 16, 29, 64])
def test_window_chunked_equals_naive(T):
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        q, k, v = (torch.randn(2, 3, T, 8, dtype=dtype) for _ in range(3))
        fq, fk = (t @ (torch.eye(8, dtype=dtype) + 0.3 * torch.randn(3, 8, 8, dtype=dtype)) for t in (q, k))
        gain = torch.rand(3, dtype=dtype) + 0.05
        for w in (1, 2, 5, T, T + 7):
            expected = naive_window_attention(q, k, v, w, gain, fq, fk)
            for chunk in (4, 8, 64):
                y, state = window_linear_attention(q, k, v, w, gain, chunk, fq, fk)
                assert y.dtype == dtype
                torch.testing.assert_close(y.double(), expected, rtol=tol, atol=tol)
            # the state is the ELU+1 state of every token before the last w
            _, past = elu_linear_attention(fq[:, :, :max(T - w, 1)], fk[:, :, :max(T - w, 1)],
                                           v[:, :, :max(T - w, 1)], 4)
            past = past[0] if T > w else torch.zeros_like(past[0])
            torch.testing.assert_close(state[0], past, rtol=tol, atol=tol)
        # without feature maps phi sees q and k; w = 1: the token itself by softmax, the earlier ones by ELU+1
        torch.testing.assert_close(window_linear_attention(q, k, v, 1, gain, 8)[0].double(),
                                   naive_window_attention(q, k, v, 1, gain), rtol=tol, atol=tol)


def test_window_gradients_equal_naive():
    q, k, v = (torch.randn(2, 3, 29, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    eye = torch.eye(8, dtype=torch.float64)
    maps = [(eye + 0.3 * torch.randn(3, 8, 8, dtype=torch.float64)).requires_grad_() for _ in range(2)]
    log_gain = torch.randn(3, dtype=torch.float64, requires_grad=True)
    r = torch.randn(2, 3, 29, 8, dtype=torch.float64)
    grads = []
    for f in (lambda *a: window_linear_attention(*a[:5], 8, *a[5:])[0], naive_window_attention):
        (f(q, k, v, 5, log_gain.exp(), q @ maps[0], k @ maps[1]) * r).sum().backward()
        grads.append([t.grad.clone() for t in (q, k, v, log_gain, *maps)])
        for t in (q, k, v, log_gain, *maps):
            t.grad = None
    for a, b in zip(*grads):
        assert b.abs().max() > 1e-3
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_scores_and_features_far_from_one_stay_finite():
    """Layers trained without LayerNorm can have |q|, |k| in the hundreds, where e^{q·k/√d} and φ(q)·φ(k)
    leave fp32's range: values and gradients stay finite, a token with no past is softmax over its window,
    and one whose every φ(q)·φ(k) underflows reads 0."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 29, 8, requires_grad=True) for _ in range(3))
    for w in (2, 5):
        y = window_linear_attention(60 * q, 60 * k, v, w, torch.full((2,), 1 / 8), 8)[0]
        y.sum().backward()
        assert y.isfinite().all() and all(t.grad.isfinite().all() for t in (q, k, v))
        s = (60 * q[:, :, :w]) @ (60 * k[:, :, :w]).transpose(-1, -2) / math.sqrt(8)
        causal = torch.ones(w, w, dtype=torch.bool).tril()
        first = torch.softmax(s.masked_fill(~causal, -math.inf), -1) @ v[:, :, :w]
        torch.testing.assert_close(y[:, :, :w], first)
        q.grad = k.grad = v.grad = None
    q0, k0 = torch.full((1, 1, 1, 8), -200.0), torch.ones(1, 1, 1, 8)   # φ(q0) = 0 in fp32
    v0 = torch.ones(1, 1, 1, 8)
    assert elu_linear_attention(q0, k0, v0)[0].eq(0).all() and elu_linear_step(q0, k0, v0)[0].eq(0).all()


def test_window_of_at_least_T_is_softmax_attention():
    torch.manual_seed(1)
    soft = GPT(tiny(attn='standard', block_size=40)).eval()
    idx = torch.randint(0, 96, (2, 40))
    expected, _ = soft(idx, idx)
    for w in (40, 1000):   # trained windowed ELU+1 layers with softmax's weights: every key is in the window
        windowed = GPT(tiny(attn='linear', block_size=40, linear_window=w)).eval()
        missing = windowed.load_state_dict(soft.state_dict(), strict=False).missing_keys
        assert missing == [f'transformer.h.{i}.attn.mixer.log_gain' for i in range(3)]
        torch.testing.assert_close(windowed(idx, idx)[0], expected, rtol=1e-5, atol=1e-5)
    soft.linearize([0, 1, 2], window=40)   # post hoc, the maps and gain away from their init: still softmax
    with torch.no_grad():
        for p in soft.parameters():
            if p.dim() == 1 and p.numel() == 2 or p.dim() == 3:
                p.add_(torch.randn_like(p))
    torch.testing.assert_close(soft(idx, idx)[0], expected, rtol=1e-5, atol=1e-5)
    soft.linearize([0, 1, 2], window=39)   # one key leaves the window of the last query: only that changes
    torch.testing.assert_close(soft(idx, idx)[0][:, :-1], expected[:, :-1], rtol=1e-5, atol=1e-5)
    assert (soft(idx, idx)[0][:, -1] - expected[:, -1]).abs().max() > 1e-6
    soft.linearize([0, 1, 2], window=20)
    assert (soft(idx, idx)[0] - expected).abs().max() > 1e-4   # 20 times the tolerance above


def test_window_mixer_errors():
    attn = GPT(tiny()).attention_layers()[0]
    for name, window in (('elu', -1), ('relu', 0), ('elu', 2.0)):
        with pytest.raises(ValueError, match='the mixer is one of'):
            attn.set_mixer(name, window=window)
    assert isinstance(attn.mixer, torch.nn.Module) and attn.mixer.name == 'softmax'
    with pytest.raises(ValueError, match='window'):
        GPT(tiny()).linearize([0], window=-2)
    assert ELU(tiny(), 0, window=3).log_gain.exp().allclose(torch.full((2,), 1 / 16))   # gain: 1/d_h


def test_parameter_counts():
    n, h, d, V, T, L = 32, 2, 16, 96, 64, 3
    mlp, ln = 8 * n * n + 5 * n, 2 * n
    std = GPT(tiny())
    attn_std = 3 * n * n + 3 * n + n * n + n
    assert std.num_attention_params() == L * attn_std
    assert std.num_params() == V * n + L * (attn_std + mlp + 2 * ln) + ln   # wpe excluded, wte tied
    assert std.num_params(non_embedding=False) == std.num_params() + T * n
    sd = GPT(tiny(attn='sd', norm='none'))
    attn_sd = 2 * n * n + 2 * n + n * n + n + h * d * d + h * d   # no key projection; P and delta per head
    assert sd.num_attention_params() == L * attn_sd
    low = GPT(tiny(attn='sd', sd_rank=2, sd_filter='scalar'))
    assert low.num_attention_params() == L * (attn_sd - h * d * d + 2 * h * d * 2 - h * d + h)
    windowed = GPT(tiny(attn='linear', linear_window=[4, 0, 1]))   # a gain per head in each windowed layer
    assert windowed.num_attention_params() == GPT(tiny(attn='linear')).num_attention_params() + 2 * h
    narrow = GPT(tiny(head_dim=[4, 8, 16]))
    assert narrow.num_attention_params() == sum(4 * n * (h * hd) + 3 * h * hd + n for hd in (4, 8, 16))


def test_flops_per_token_matches_nanogpt_formula_for_standard_attention():
    model = GPT(tiny())
    N, L, H, Q, T = model.num_params(), 3, 2, 16, 64
    assert model.flops_per_token(T) == 6 * N + 12 * L * H * Q * T
    sd = GPT(tiny(attn='sd'))
    assert sd.flops_per_token(T) < model.flops_per_token(T)   # no key projection
    linear = GPT(tiny(attn='linear', block_size=4096))
    assert linear.flops_per_token(4096) < GPT(tiny(block_size=4096)).flops_per_token(4096)
    windowed = GPT(tiny(attn='linear', block_size=4096, linear_window=32))   # band: 4 (C + w - 1) d
    gains = 6 * L * H   # the gains count as parameters
    band = 12 * L * H * (8 + 31) * Q
    assert windowed.flops_per_token(T) - GPT(tiny(attn='linear')).flops_per_token(T) == gains + band


@pytest.mark.parametrize('kw,message', [
    (dict(attn='softmax'), "attn='softmax' is not one of"),
    (dict(attn=['sd', 'sd']), 'attn has 2 entries but n_layer=3'),
    (dict(sd_rank=[1, 2]), 'sd_rank has 2 entries'),
    (dict(sd_filter='full'), "sd_filter='full'"),
    (dict(norm='rms'), "norm='rms'"),
    (dict(head_dim=0), 'head_dim entries must be ints >= 1'),
    (dict(linear_window=-1), 'linear_window entries must be ints >= 0, got -1'),
    (dict(linear_window=[0, 2.5, 0]), 'linear_window entries must be ints >= 0, got 2.5'),
    (dict(n_embd=31), 'not divisible'),
])
def test_config_errors(kw, message):
    with pytest.raises(ValueError, match=message):
        tiny(**kw)


def test_sequence_longer_than_block_size_is_an_error():
    with pytest.raises(ValueError, match='longer than block_size'):
        GPT(tiny(block_size=8))(torch.zeros(1, 9, dtype=torch.long))


def test_weight_decay_groups():
    model = GPT(tiny(attn='sd'))
    decay, no_decay = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), 'cpu').param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay['weight_decay'] == 0.1 and no_decay['weight_decay'] == 0.0
    assert {names[id(p)].split('.')[-1] for p in decay['params']} == {'weight', 'sd_P'}
    assert all(p.dim() == 1 or names[id(p)].endswith('sd_delta') for p in no_decay['params'])
    assert len(decay['params']) + len(no_decay['params']) == len(list(model.parameters()))
