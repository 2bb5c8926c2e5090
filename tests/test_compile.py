"""torch.compile (inductor) of one small model that has every projection and mixer: softmax (standard, S−D),
ELU+1, a trained softmax window beside ELU+1 and a post-hoc one with feature maps: no graph break in its
forward (fullgraph=True), and the eager loss, gradients and evaluation logits. Compiled once for training
and once for evaluation (a few minutes on a busy 2-core CPU with a cold inductor cache)."""
import torch

from model import GPT, GPTConfig


def test_compiled_equals_eager_for_a_model_with_every_mixer():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=32, vocab_size=65, n_layer=5, n_head=2, n_embd=32, bias=False,
                          norm="none", attn=['standard', 'sd', 'linear', 'linear', 'standard'],
                          linear_window=[0, 0, 0, 5, 0], linear_chunk=8))
    model.linearize([4], window=3)   # layer 4: ELU+1 beside a 3-token softmax window, post hoc
    with torch.no_grad():
        model.attention_layers()[1].sd_delta.normal_()   # an S−D filter away from its all-equal init
        for name, p in model.named_parameters():
            if '.mixer.' in name:   # the gains and feature maps away from their init
                p.add_(0.2 * torch.randn_like(p))
    x, y = torch.randint(0, 65, (2, 30)), torch.randint(0, 65, (2, 30))   # 30: the last ELU+1 chunk is padded
    compiled = torch.compile(model, fullgraph=True)   # a graph break is an error

    loss = compiled(x, y)[1]
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    expected = model(x, y)[1]
    expected.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)
    assert {n.split('.')[-1] for n in grads if '.mixer.' in n} == {'log_gain', 'map_q', 'map_k'}
    for n, p in model.named_parameters():
        assert grads[n] is not None and grads[n].abs().sum() > 0, n
        torch.testing.assert_close(grads[n], p.grad, rtol=1e-5, atol=1e-7, msg=n)

    model.eval()
    with torch.no_grad():
        logits = compiled(x)[0]   # evaluation / generation: the last position's logits
        torch.testing.assert_close(logits, model(x)[0], rtol=1e-5, atol=1e-6)
    assert logits.shape == (2, 1, 65)
