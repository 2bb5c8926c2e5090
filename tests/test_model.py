"""model.py: the three attention types against naive references, causality, the post-hoc switch,
GPT-2 weight loading, cached generation, parameter and FLOP counts, config errors."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from model import GPT, GPTConfig, elu_linear_attention, elu_linear_step

torch.manual_seed(0)


def tiny(**kw):
    args = dict(block_size=64, vocab_size=96, n_layer=3, n_head=2, n_embd=32, bias=True, linear_chunk=8)
    return GPTConfig(**(args | kw))


ATTNS = ['standard', 'sd', 'linear', ['linear', 'sd', 'standard']]


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
    attn = GPT(tiny(attn='sd', sd_rank=rank, sd_filter=filt)).attention_layers()[0]
    with torch.no_grad():
        attn.sd_delta.normal_()   # away from the initial all-equal filter
    S, D = attn.sd_generator()
    assert torch.equal(S, -S.transpose(1, 2))
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
    torch.testing.assert_close((M + M.transpose(1, 2)) / 2, -W.transpose(1, 2) @ torch.diag_embed(D).double() @ W)
    assert torch.linalg.eigvals(M).real.max() <= 1e-9


def test_sd_folded_sdpa_equals_explicit_scores():
    config = tiny(attn='sd', sd_rank=[None, 2, None])
    for attn in GPT(config).attention_layers():
        x = torch.randn(2, 19, 32)
        B, T, _ = x.shape
        u, v = attn.c_attn(x).view(B, T, 2, attn.n_head, attn.head_dim).permute(2, 0, 3, 1, 4)
        S, D = attn.sd_generator()
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
        y_t, state = elu_linear_attention(q[:, :, t:t + 1], k[:, :, t:t + 1], v[:, :, t:t + 1], 8, state)
        steps.append(y_t)
    assert state[0].shape == (2, 3, 8, 8) and state[0].dtype == torch.float32
    torch.testing.assert_close(torch.cat(steps, 2).double(), expected, rtol=1e-5, atol=1e-6)
    if T > 1:   # prefill, then continue from the state
        head, state = elu_linear_attention(q[:, :, :T // 2], k[:, :, :T // 2], v[:, :, :T // 2], 4)
        tail, _ = elu_linear_attention(q[:, :, T // 2:], k[:, :, T // 2:], v[:, :, T // 2:], 4, state)
        torch.testing.assert_close(torch.cat([head, tail], 2).double(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('kind', ['standard', 'sd'])
def test_post_hoc_linearization_reuses_the_layers_own_q_and_k(kind):
    model = GPT(tiny(attn=kind)).eval()
    idx = torch.randint(0, 96, (2, 21))
    before, _ = model(idx, idx)
    model.linearize([0, 2])
    assert [a.linear for a in model.attention_layers()] == [True, False, True]
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
    model = GPT(tiny(attn=['linear', 'sd', 'standard']))
    model.linearize([2])
    assert [a.linear for a in model.attention_layers()] == [True, False, True]


@pytest.mark.parametrize('attn', ATTNS, ids=str)
def test_cached_generation_equals_full_recompute(attn):
    model = GPT(tiny(attn=attn, block_size=24)).eval()
    prompt = torch.randint(0, 96, (2, 5))
    out = model.generate(prompt, 40, top_k=1)   # greedy; runs past block_size (sliding window)
    idx = prompt
    for _ in range(40):
        logits, _ = model(idx[:, -24:])
        idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, idx)


@pytest.mark.parametrize('attn', ATTNS, ids=str)
@pytest.mark.parametrize('prompt_len', [1, 5])
def test_generated_logits_equal_a_full_forward(attn, prompt_len):
    """Every logit generate() samples from equals a full forward of the window it saw: the prompt, the
    one-token steps (k/v cache, ELU+1 state), and the re-encoded window past block_size."""
    model = GPT(tiny(attn=attn, block_size=24)).eval()
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
        inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        new = [t.numel() for t in tree_leaves(out)
               if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs]
        self.ops.append((func.overloadpacket.__name__, max(new, default=0)))
        return out


def decode_step(model, context):
    """(ops of one decode step after `context` tokens, the cache)."""
    cache = [dict(size=context + 1) for _ in range(model.config.n_layer)]
    idx = torch.randint(0, 96, (1, context + 1))
    with torch.no_grad():
        model(idx[:, :-1], cache=cache)
        with NewTensors() as log:
            model(idx[:, -1:], cache=cache, pos=context)
    return log.ops, cache


@pytest.mark.parametrize('attn', ATTNS, ids=str)
def test_a_decode_step_copies_nothing_that_grows_with_the_context(attn):
    model = GPT(tiny(attn=attn)).eval()
    short, _ = decode_step(model, 8)
    ops, cache = decode_step(model, 48)
    assert ops == short   # the same ops and new tensors at context 8 and 48: only the attention's read grows
    names = {name for name, _ in ops}
    assert 'cat' not in names and max(n for _, n in ops) < 48 * 32   # smaller than one layer's k cache
    for c, a in zip(cache, model.attention_layers()):
        if a.linear:   # the recurrent step, not the chunked kernel
            assert not names & {'cumsum', 'constant_pad_nd', 'tril'} and 'k' not in c
            assert c['state'][0].shape == (1, 2, 16, 16)
        else:          # the new token went into the preallocated buffer
            assert c['n'] == 49 and c['k'].shape == (1, 2, 49, 16) and 'state' not in c


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


def test_from_hf_gpt2_gives_the_same_logits():
    transformers = pytest.importorskip('transformers')
    hf_config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=40, vocab_size=100)
    hf = transformers.GPT2LMHeadModel(hf_config).eval()
    model = GPT.from_hf(hf).eval()
    idx = torch.randint(0, 100, (2, 40))
    with torch.no_grad():
        expected = hf(idx).logits
    logits, _ = model(idx, idx)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)


def test_from_pretrained_that_cannot_load_is_one_line(tmp_path):
    pytest.importorskip('transformers')
    with pytest.raises(SystemExit) as e:   # an empty folder: no config.json, and no network asked
        GPT.from_pretrained(str(tmp_path))
    assert str(e.value.code).startswith("error: no GPT-2 ") and '\n' not in str(e.value.code)


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


@pytest.mark.parametrize('kw,message', [
    (dict(attn='softmax'), "attn='softmax' is not one of"),
    (dict(attn=['sd', 'sd']), 'attn has 2 entries but n_layer=3'),
    (dict(sd_rank=[1, 2]), 'sd_rank has 2 entries'),
    (dict(sd_filter='full'), "sd_filter='full'"),
    (dict(norm='rms'), "norm='rms'"),
    (dict(head_dim=0), 'head_dim entries must be positive'),
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
