"""The no-LayerNorm path (README: training without LayerNorm): the embedding multiplier, the 'final'
reading."""
import math
from dataclasses import asdict

import pytest
import torch
import torch.nn as nn

from model import GPT, GPTConfig


def tiny(**kw):
    return GPTConfig(**(dict(block_size=16, vocab_size=65, n_layer=2, n_head=2, n_embd=32, attn='sd') | kw))


@pytest.mark.parametrize('norm, scale', [('none', math.sqrt(32)), ('final', math.sqrt(32)),
                                         ('layernorm', 1.0)])
def test_embedding_enters_the_residual_stream_scaled(norm, scale):
    model = GPT(tiny(norm=norm)).eval()
    assert model.config.emb_scale == scale
    seen = []
    model.transformer.h[0].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    idx = torch.randint(65, (2, 16))
    model(idx)
    t = model.transformer
    assert torch.allclose(seen[0], scale * (t.wte(idx) + t.wpe(torch.arange(16))), atol=1e-6)


def test_final_norm_only_before_the_output():
    model = GPT(tiny(norm='final'))
    assert all(isinstance(m, nn.Identity) for b in model.transformer.h for m in (b.ln_1, b.ln_2))
    assert isinstance(model.transformer.ln_f, nn.LayerNorm)


def test_an_explicit_scale_wins_and_is_saved(tmp_path):
    model = GPT(tiny(norm='none', emb_scale=1.0))
    assert model.config.emb_scale == 1.0
    torch.save({'model': model.state_dict(), 'model_args': asdict(model.config)}, tmp_path / 'a.pt')
    assert GPT.from_checkpoint(str(tmp_path / 'a.pt'))[0].config.emb_scale == 1.0


def test_checkpoints_from_before_the_multiplier_load_unscaled(tmp_path):
    model = GPT(tiny(norm='none', emb_scale=1.0)).eval()
    # as saved before emb_scale existed
    args = {k: v for k, v in asdict(model.config).items() if k != 'emb_scale'}
    torch.save({'model': model.state_dict(), 'model_args': args}, tmp_path / 'old.pt')
    loaded = GPT.from_checkpoint(str(tmp_path / 'old.pt'))[0].eval()
    idx = torch.randint(65, (1, 16))
    assert loaded.config.emb_scale == 1.0 and torch.equal(loaded(idx)[0], model(idx)[0])


@pytest.mark.parametrize('bad', [0.0, -1.0, 'big', True])
def test_a_bad_scale_is_refused(bad):
    with pytest.raises(ValueError, match='emb_scale'):
        GPTConfig(emb_scale=bad)
