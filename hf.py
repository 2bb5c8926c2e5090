"""Reading transformers models of the FAMILIES for analyze.py: per layer the heads' W_q, W_k as the layer
projects x, with RoPE its rotations R_Δ (hf_layers), and on text the q, k each layer computes (hf_qk)."""
import math
import os
import sys

import torch

OFFSETS = (1, 4, 16, 64, 256, 1024, 4096)   # the rotary level's Δ (those within the model's context)
FAMILIES = ('gpt2', 'bert', 'roberta', 'gpt_neox', 'llama', 'mistral', 'mixtral', 'qwen2', 'qwen2_moe',
            'qwen3', 'qwen3_moe', 'gemma', 'gemma2', 'phi', 'phi3', 'olmo2', 'granite', 'starcoder2',
            'stablelm')


def load_hf(source, device):
    """(module, info: norm, max_len, vocab, tok) of a transformers model of FAMILIES (float32, eager)."""
    os.environ.setdefault('HF_HUB_VERBOSITY', 'error')   # no retry chatter offline
    import transformers
    transformers.utils.logging.set_verbosity_error()
    try:   # the family is checked before any weights are read
        c = transformers.AutoConfig.from_pretrained(source)
        module = c.model_type in FAMILIES and transformers.AutoModel.from_pretrained(
            source, dtype=torch.float32, attn_implementation='eager').to(device).eval()   # LlamaModel, ...
    except Exception as e:
        raise SystemExit(f"error: cannot load {source!r} ({type(e).__name__}: "
                         f"{(str(e).strip() or '-').splitlines()[0]}); give a local model directory or a hub "
                         f"name that is online or in the local cache")
    if not module:
        raise SystemExit(f"error: {source} is a {c.model_type!r} model, a family --hf does not read; it "
                         f"reads {', '.join(FAMILIES)}")
    return module, dict(norm='layernorm', max_len=c.max_position_embeddings, vocab=c.vocab_size,
                        tok=('gpt2', None) if c.model_type == 'gpt2' else ('hf', source))


def hf_encoder(path, vocab, seq_len):
    """The model's own tokenizer (with special tokens): text -> up to seq_len ids; None if none reads text"""
    from transformers import AutoTokenizer
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except Exception:
        return None
    if len(tok) >= vocab // 2:   # a directory without vocabulary files gives special tokens alone
        return lambda line: tok(line, truncation=True, max_length=seq_len)['input_ids']


def rms_gain(norm, family):
    """The gain g of a q/k norm that is an RMS norm, norm(v) = g v / rms(v) (Qwen3, OLMo2), else a one-line
    error: the kernel takes g, the data level the model's normalised q, k."""
    w = getattr(norm, 'weight', None)
    if w is not None and getattr(norm, 'bias', None) is None:   # two vectors of ±1 (rms 1) must give one g
        v = torch.randint(0, 2, (2, w.numel()), generator=torch.Generator().manual_seed(0)).to(w) * 2 - 1
        g = norm(v).double() * v * math.sqrt(1 + getattr(norm, 'variance_epsilon', getattr(norm, 'eps', 0.0)))
        if torch.allclose(g[0], g[1], rtol=1e-4, atol=1e-6 * g.abs().max().item()):
            return g[0].cpu()
    raise SystemExit(f"error: a {family} model whose q/k norm ({type(norm).__name__}) is not an RMS norm "
                     f"with a gain: not readable as a kernel W_q^T W_k")


@torch.no_grad()
def hf_layers(hf):
    """Per layer of a transformers model of FAMILIES: dict(kind, W_q, W_k (H, d, n) as the layer projects x,
    biases aside, query head h with key head h // (H / H_kv) as transformers' repeat_kv, an RMS q/k norm's
    gain folded in[, rot (offsets, d, d): R_Δ at OFFSETS from the model's own rotary cos, sin, rotate_half]"""
    c, base = hf.config, hf.base_model
    H, n, layers = c.num_attention_heads, c.hidden_size, []
    kv = getattr(c, 'num_key_value_heads', None) or H
    projections = ('c_attn', 'query', 'q_proj', 'qkv_proj', 'query_key_value')
    for a in (a for a in base.modules() if any(hasattr(a, p) for p in projections)):
        if hasattr(a, 'c_attn'):                     # GPT-2: Conv1D stores (in, out), [q; k; v]
            Wq, Wk, _ = a.c_attn.weight.t().chunk(3)
        elif hasattr(a, 'query_key_value'):          # GPT-NeoX: [q; k; v] per head
            Wq, Wk, _ = a.query_key_value.weight.view(H, 3, -1, n).unbind(1)
        elif hasattr(a, 'qkv_proj'):                 # Phi-3: [q of H heads; k of H_kv; v of H_kv]
            Wq, Wk, _ = a.qkv_proj.weight.unflatten(0, (H + 2 * kv, -1)).split([H, kv, kv])
        else:                                        # Linear (out, in): q_proj, k_proj or BERT's query, key
            Wq, Wk = ((getattr(a, p + '_proj', None) or getattr(a, p_bert)).weight
                      for p, p_bert in (('q', 'query'), ('k', 'key')))
        d, W = Wq.numel() // (H * n), {}
        for p, w, heads in (('q', Wq, H), ('k', Wk, kv)):
            norm = getattr(a, f'{p}_norm', getattr(a, f'{p}_layernorm', None))
            w = w.double().cpu().reshape(heads, d, n)
            W[p] = w if norm is None else w * rms_gain(norm, c.model_type).view(-1, d, 1)
        layers.append(dict(kind='standard', W_q=W['q'], W_k=W['k'].repeat_interleave(H // kv, 0)))
    if len(layers) != c.num_hidden_layers:
        raise SystemExit(f"error: {len(layers)} attention layers found in a {c.model_type} model of "
                         f"{c.num_hidden_layers}: its q/k projections not read")
    if getattr(base, 'rotary_emb', None) is not None:   # R_Δ on the first r dims of a head (partial: r < d)
        offs = torch.tensor([[o for o in OFFSETS if o < c.max_position_embeddings]])
        cos, sin = (t[0].double().cpu() for t in base.rotary_emb(torch.zeros(1, device=Wq.device), offs))
        E, r = torch.eye(cos.shape[-1], dtype=torch.float64), cos.shape[-1]
        rot = torch.eye(d, dtype=torch.float64).repeat(offs.shape[1], 1, 1)
        rotate_half = sys.modules[type(a).__module__].rotate_half   # on the rows of E: R^T
        rot[:, :r, :r] = (E * cos[:, None] + rotate_half(E) * sin[:, None]).mT
        layers = [w | {'rot': rot} for w in layers]
    return layers


@torch.no_grad()
def hf_qk(module, idx):
    """analyze.layer_qk of a transformers model: per attention call, as its own eager attention runs, the
    post-rotary (q with the scaling folded in, k of each query head as repeat_kv pairs them, soft-cap)"""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS as masks
    captured, c, impl = [], module.config, module.config._attn_implementation

    def capture(attn, q, k, v, mask, scaling=None, softcap=None, **kw):
        scaling = q.shape[-1] ** -0.5 if scaling is None else scaling
        captured.append((q.double() * scaling, k.double().repeat_interleave(q.shape[1] // k.shape[1], 1),
                         softcap))
        return sys.modules[type(attn).__module__].eager_attention_forward(
            attn, q, k, v, mask, scaling=scaling, **kw, **({'softcap': softcap} if softcap else {}))

    AttentionInterface.register('analyze', capture)
    masks.register('analyze', masks['eager'])
    c._attn_implementation = 'analyze'
    try:
        module.base_model(idx)
    finally:
        c._attn_implementation = impl
    return captured
