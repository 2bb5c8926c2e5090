"""Offline tests for analyze.py: fast kernel metrics (also with rotations) vs the full-matrix computation,
GPT-2 / BERT weights, data level vs hooked q and k, S−D heads, the CLI end to end and its one-line errors
(every transformers family: test_hf_families.py)."""
import csv
import json
import math
import os
import subprocess
import sys
import types
from dataclasses import asdict

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import analyze  # noqa: E402
from configurator import configure  # noqa: E402
from conftest import run_scripts, train_defaults  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402

transformers = pytest.importorskip('transformers')
NO_BAR = types.SimpleNamespace(update=lambda n=1: None)
METRICS = ('routing_erank', 'filtering_erank', 'routing_capacity', 'rho', 'routing_fraction', 'max_re_eig')


def assert_metrics_close(a, b, rtol=1e-9, atol=1e-9):
    for k in b:
        torch.testing.assert_close(a[k], b[k], rtol=rtol, atol=atol, msg=lambda m: f"{k}: {m}")


@pytest.fixture(scope='module')
def tiny_gpt2():
    torch.manual_seed(0)
    c = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64)   # GPT-2's vocabulary
    return transformers.GPT2LMHeadModel(c).eval()


@pytest.fixture(scope='module')
def tiny_bert():
    torch.manual_seed(0)
    c = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=64, vocab_size=96, max_position_embeddings=64)
    return transformers.BertModel(c, add_pooling_layer=False).eval()


def gpt_of(hf):
    """Our standard GPT with the weights of a transformers GPT2LMHeadModel (its Conv1D weights: (in, out))."""
    c = hf.config
    model = GPT(GPTConfig(block_size=c.n_positions, vocab_size=c.vocab_size, n_layer=c.n_layer,
                          n_head=c.n_head, n_embd=c.n_embd, bias=True))
    sd, sd_hf = model.state_dict(), hf.state_dict()
    assert set(sd) <= set(sd_hf)
    transposed = ('c_attn.weight', 'c_proj.weight', 'c_fc.weight')
    with torch.no_grad():
        for k in sd:
            sd[k].copy_(sd_hf[k].t() if k.endswith(transposed) else sd_hf[k])
    return model.eval()


def sd_model():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=32, vocab_size=64, n_layer=3, n_head=2, n_embd=32, attn='sd',
                          norm='none', sd_rank=[1, None, 3]))
    with torch.no_grad():
        for a in model.attention_layers():
            a.sd_delta.normal_()   # a non-scalar filter D
    return model.eval()


def explicit_erank(s, ref):
    s = [x for x in s.tolist() if x > analyze.REL_TOL * ref]
    p = [x / sum(s) for x in s]
    return math.exp(-sum(x * math.log(x) for x in p)) if s else 0.0


# -----------------------------------------------------------------------------
# metrics

def test_erank_definition():
    assert analyze.erank(torch.tensor([1.0, 1.0])).item() == pytest.approx(2.0)
    assert analyze.erank(torch.tensor([3.0, 0.0, 0.0])).item() == pytest.approx(1.0)
    assert analyze.erank(torch.zeros(4)).item() == 0.0
    s = torch.tensor([4.0, 2.0, 1.0, 1.0])
    assert analyze.erank(s).item() == pytest.approx(explicit_erank(s, s.norm().item()))
    assert analyze.routing_capacity(768, 64) == 128 and analyze.routing_capacity(32, 64) == 32
    assert analyze.routing_capacity(7) == 6 and analyze.routing_capacity(8) == 8


def test_rank2_skew_and_symmetric_kernels():
    torch.manual_seed(0)
    H, d, n = 5, 8, 40
    a, b, C = torch.randn(H, 1, n), torch.randn(H, 1, n), torch.randn(H, d - 2, n)
    # M = a^T b - b^T a + C^T C: the skew part is exactly the rotation plane (a, b)
    m = analyze.kernel_metrics(torch.cat([a, b, C], 1), torch.cat([b, -a, C], 1))
    assert torch.allclose(m['routing_erank'], torch.full((H,), 2.0, dtype=torch.float64), atol=1e-9)
    assert [f'{e:.2f}' for e in m['routing_erank'].tolist()] == ['2.00'] * H
    W = torch.randn(H, d, n)
    m = analyze.kernel_metrics(W, W)                                  # symmetric kernel W^T W
    assert m['rho'].abs().max() < 1e-12 and m['routing_fraction'].max() < 1e-20
    assert (m['routing_erank'] == 0).all()
    zero = torch.zeros(H, dtype=torch.float64)
    assert_metrics_close(m, analyze.kernel_metrics_naive(W, W) | {'rho': zero, 'routing_fraction': zero},
                         atol=1e-12)


@pytest.mark.parametrize('d, n', [(8, 40), (16, 24), (4, 5)])   # n > 2d, d < n < 2d, n ~ d
def test_kernel_metrics_match_naive_random(d, n):
    torch.manual_seed(d * n)
    W_q, W_k = torch.randn(3, d, n), torch.randn(3, d, n)
    assert_metrics_close(analyze.kernel_metrics(W_q, W_k), analyze.kernel_metrics_naive(W_q, W_k))
    rot = torch.linalg.qr(torch.randn(2, 1, d, d, dtype=torch.float64)).Q   # rotations (any d x d will do)
    assert_metrics_close(analyze.kernel_metrics(W_q, W_k, rot=rot),
                         analyze.kernel_metrics_naive(W_q, W_k, rot=rot))
    for W in (W_q, torch.cat([W_q[:, :1]] * d, 1)):   # W_q = W_k (full rank, rank 1): no routing at any rot
        assert analyze.kernel_metrics(W, W, rot=rot)['routing_fraction'].max() < 1e-20


def test_kernel_metrics_match_naive_hf(tiny_gpt2, tiny_bert):
    for hf in (tiny_gpt2, tiny_bert):
        layers = analyze.hf_layers(hf)
        assert len(layers) == 2 and layers[0]['W_q'].shape == (2, 16, 32)
        for w in layers:
            assert_metrics_close(analyze.kernel_metrics(w['W_q'], w['W_k']),
                                 analyze.kernel_metrics_naive(w['W_q'], w['W_k']))


def test_our_gpt_from_hf_matches_hf(tiny_gpt2):
    ours = gpt_of(tiny_gpt2)
    rows_ours = [r for i, w in enumerate(analyze.gpt_layers(ours)) for r in analyze.weight_rows('m', w, i)]
    rows_hf = [r for i, w in enumerate(analyze.hf_layers(tiny_gpt2)) for r in analyze.weight_rows('m', w, i)]
    assert len(rows_ours) == len(rows_hf) == 4
    for a, b in zip(rows_ours, rows_hf):
        for k in METRICS:
            assert a[k] == pytest.approx(b[k], rel=1e-9, abs=1e-12), k   # the same weights, transposed
    seqs = [torch.randint(0, 96, (12,)), torch.randint(0, 96, (7,))]
    with torch.no_grad():   # the copy is right: the same logits
        torch.testing.assert_close(ours(seqs[0][None], seqs[0][None])[0], tiny_gpt2(seqs[0][None]).logits,
                                   rtol=1e-4, atol=1e-4)
    for qk_o, qk_h in zip(analyze.layer_qk(ours, seqs[0][None]), analyze.layer_qk(tiny_gpt2, seqs[0][None])):
        torch.testing.assert_close(qk_o, qk_h, rtol=1e-4, atol=1e-5)   # q (scaled), k, cap None
    kinds = ['standard'] * 2
    data_ours, data_hf = (analyze.data_rows('m', kinds, m, seqs, NO_BAR) for m in (ours, tiny_gpt2))
    assert len(data_ours) == len(data_hf) == 4
    for a, b in zip(data_ours, data_hf):
        for k in ('routing_erank', 'filtering_erank', 'rho', 'routing_fraction', 'routing_capacity'):
            assert a[k] == pytest.approx(b[k], rel=1e-4), k
    assert analyze.layer_routing_erank(ours) == pytest.approx(
        [sum(r['routing_erank'] for r in rows_hf if r['layer'] == i) / 2 for i in range(2)], rel=1e-9)


@pytest.mark.parametrize('make', ['standard', 'sd'])
def test_data_level_equals_explicit_computation(make):
    if make == 'sd':
        model = sd_model()
    else:
        torch.manual_seed(1)
        model = GPT(GPTConfig(block_size=32, vocab_size=64, n_layer=2, n_head=2, n_embd=32)).eval()
    seqs = [torch.randint(0, 64, (20,)), torch.randint(0, 64, (9,))]
    rows = analyze.data_rows('m', [a.kind for a in model.attention_layers()], model, seqs, NO_BAR)
    # explicit: hook each attention input, A = q k^T / sqrt(d) in float64, sym/skew, svdvals
    sums = {}
    for seq in seqs:
        inputs = []
        hooks = [a.register_forward_pre_hook(lambda mod, args: inputs.append(args[0]))
                 for a in model.attention_layers()]
        with torch.no_grad():
            model(seq[None])
        for h in hooks:
            h.remove()
        for layer, (a, x) in enumerate(zip(model.attention_layers(), inputs)):
            with torch.no_grad():
                q, k, _ = a.qkv(x)
            A = (q[0].double() @ k[0].double().mT) / math.sqrt(q.shape[-1])
            for h in range(A.shape[0]):
                sym, skew = (A[h] + A[h].T) / 2, (A[h] - A[h].T) / 2
                ref = torch.linalg.matrix_norm(A[h]).item()
                vals = dict(routing_erank=explicit_erank(torch.linalg.svdvals(skew), ref),
                            filtering_erank=explicit_erank(torch.linalg.svdvals(sym), ref),
                            rho=(skew.norm() / sym.norm()).item(),
                            routing_fraction=(skew.norm() ** 2 / ref ** 2).item(),
                            routing_capacity=len(seq) - len(seq) % 2)
                for key, v in vals.items():
                    sums[layer, h, key] = sums.get((layer, h, key), 0.0) + v / len(seqs)
    assert len(rows) == len(model.attention_layers()) * 2
    for r in rows:
        assert r['level'] == 'data' and r['n'] == pytest.approx(14.5)
        for key in ('routing_erank', 'filtering_erank', 'rho', 'routing_fraction', 'routing_capacity'):
            assert r[key] == pytest.approx(sums[r['layer'], r['head'], key], rel=1e-7, abs=1e-9), key


def test_sd_heads():
    model = sd_model()
    layers = analyze.gpt_layers(model)
    rows = [r for i, w in enumerate(layers) for r in analyze.weight_rows('sd', w, i)]
    assert len(rows) == 6
    for r in rows:
        assert r['kind'] == 'sd' and r['max_re_eig'] <= 1e-9       # Re(lambda) <= 0 by construction
        assert r['erank_S'] > 0 and r['d_scalarness'] > 0.1 and len(r['rotation_freqs']) == 8
    for i, (w, rank) in enumerate(zip(layers, [1, None, 3])):
        assert_metrics_close(analyze.kernel_metrics(w['W_q'], w['W_k']),
                             analyze.kernel_metrics_naive(w['W_q'], w['W_k']))
        for h in range(2):
            r = rows[2 * i + h]
            lam = torch.linalg.eigvals(w['S'][h]).imag.abs().sort(descending=True).values[::2]   # +-i w pairs
            # (frequencies below 1e-6 of ||S|| are float32 rounding of a low-rank S, reported as 0)
            assert r['rotation_freqs'] == pytest.approx(lam.tolist(), abs=1e-6 * w['S'][h].norm().item())
            D = w['D'][h]
            assert r['d_scalarness'] == pytest.approx((D.std(correction=0) / D.mean()).item())
            if rank:   # S = U V^T - V U^T has rank 2r: routing lives in r planes
                assert r['erank_S'] <= 2 * rank + 1e-9 and r['routing_erank'] <= 2 * rank + 1e-9
                assert sum(f > 0 for f in r['rotation_freqs']) == rank


# -----------------------------------------------------------------------------
# CLI

def save_ckpt(path, config):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.manual_seed(0)
    model = GPT(config)
    torch.save({'model': model.state_dict(), 'model_args': asdict(config), 'iter_num': 0,
                'best_val_loss': 9.9}, path)


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, os.path.join(REPO, 'analyze.py'), *args], capture_output=True,
                          text=True, cwd=REPO, env=(os.environ | (env or {})), timeout=300)


def test_cli_end_to_end(tmp_path):
    config = GPTConfig(block_size=64, vocab_size=50304, n_layer=3, n_head=2, n_embd=32, attn='sd',
                       norm='none')
    save_ckpt(str(tmp_path / 'sd_tiny' / 'ckpt.pt'), config)
    text = tmp_path / 'text.txt'
    text.write_text("The quick brown fox jumps over the lazy dog, again and again.\n\n"
                    "Attention routes information from one token to another.\nA short line here.\n")
    out = tmp_path / 'analysis'
    r = run_cli('--ckpt', str(tmp_path / 'sd_tiny'), '--text_file', str(text), '--num_seqs', '2',
                '--seq_len', '12', '--out_dir', str(out))
    assert r.returncode == 0, r.stderr
    with open(out / 'heads.csv') as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 3 * 2                                    # (weight + data) x layers x heads
    assert {r['level'] for r in rows} == {'weight', 'data'} and all(r['model'] == 'sd_tiny' for r in rows)
    assert all(float(r['max_re_eig']) <= 1e-9 for r in rows if r['level'] == 'weight')
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['total_heads'] == 6
    m = summary['models']['sd_tiny']
    assert len(m['weight']['routing_erank']['mean']) == 3 and m['num_seqs'] == 2 and 'erank_S' in m['weight']
    for png in ('cascade.png', 'rho.png'):
        assert (out / png).stat().st_size > 1000
    assert not list(out.glob('*.tmp'))
    assert 'sd_tiny' in r.stdout and 'routing' in r.stdout            # the per-layer table


def test_main_hf_dirs(tmp_path, tiny_gpt2, tiny_bert, capsys):
    """--hf local dirs: GPT-2, BERT with its tokenizer (data level), BERT without one (skipped)."""
    tiny_gpt2.save_pretrained(tmp_path / 'gpt2-tiny')
    tiny_bert.save_pretrained(tmp_path / 'bert-tiny')
    tiny_bert.save_pretrained(tmp_path / 'bert-notok')
    words = 'hello world this is a test of attention routing and filtering in small models'.split()
    vocab = tmp_path / 'vocab.txt'
    vocab.write_text('\n'.join(['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]'] + words
                               + [f'w{i}' for i in range(96 - 5 - len(words))]) + '\n')
    transformers.BertTokenizer(str(vocab)).save_pretrained(tmp_path / 'bert-tiny')
    save_ckpt(str(tmp_path / 'std' / 'ckpt.pt'), GPTConfig(block_size=64, vocab_size=50304, n_layer=2,
                                                           n_head=2, n_embd=32, norm='none'))
    text = tmp_path / 'text.txt'
    text.write_text('hello world this is a test\nattention routing and filtering in small models\n')
    out = tmp_path / 'cmp'
    analyze.main(['--ckpt', str(tmp_path / 'std'), '--hf', str(tmp_path / 'gpt2-tiny'),
                  str(tmp_path / 'bert-tiny'), str(tmp_path / 'bert-notok'), '--text_file', str(text),
                  '--out_dir', str(out)])
    assert 'warning: no local tokenizer for bert-notok' in capsys.readouterr().err
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['total_heads'] == 16
    assert list(summary['models']) == ['std', 'gpt2-tiny', 'bert-tiny', 'bert-notok']
    with open(out / 'heads.csv') as f:
        levels = {(r['model'], r['level']) for r in csv.DictReader(f)}
    assert levels == {(m, lv) for m in ('std', 'gpt2-tiny', 'bert-tiny') for lv in ('weight', 'data')} | \
        {('bert-notok', 'weight')}
    save_ckpt(str(tmp_path / 'small_vocab' / 'ckpt.pt'), GPTConfig(block_size=64, vocab_size=64, n_layer=1,
                                                                   n_head=2, n_embd=32))
    with pytest.raises(SystemExit, match='vocabulary'):    # GPT-2 BPE ids do not fit 64 tokens
        analyze.main(['--ckpt', str(tmp_path / 'small_vocab'), '--text_file', str(text), '--out_dir',
                      str(out)])


def test_main_dataset(tmp_path):
    """--dataset: sequences from a prepared val split (uint16 ids), cut to the model's block_size."""
    import numpy as np
    os.makedirs(tmp_path / 'data' / 'tiny')
    np.random.default_rng(0).integers(0, 64, 500).astype(np.uint16).tofile(tmp_path / 'data' / 'tiny' /
                                                                           'val.bin')
    save_ckpt(str(tmp_path / 'm' / 'ckpt.pt'), GPTConfig(block_size=16, vocab_size=64, n_layer=2, n_head=2,
                                                         n_embd=32))
    args = ['--ckpt', str(tmp_path / 'm'), '--dataset', 'tiny', '--data_root', str(tmp_path / 'data'),
            '--num_seqs', '3', '--seq_len', '24', '--out_dir', str(tmp_path / 'o')]
    analyze.main(args)
    with open(tmp_path / 'o' / 'heads.csv') as f:
        data_rows = [r for r in csv.DictReader(f) if r['level'] == 'data']
    assert len(data_rows) == 4 and all(float(r['n']) == 16 for r in data_rows)   # cut to block_size
    with pytest.raises(SystemExit, match='not enough'):
        analyze.main(args + ['--seq_len', '600'])


def test_cli_one_line_errors(tmp_path):   # an unknown hub name (offline) and a random file, in one process
    (tmp_path / 'ckpt.pt').write_bytes(os.urandom(1000))
    runs = run_scripts([['analyze.py', '--hf', 'no-such-org/no-such-model', '--out_dir', tmp_path / 'o'],
                        ['analyze.py', '--ckpt', tmp_path / 'ckpt.pt', '--out_dir', tmp_path / 'o']],
                       env={'HF_HUB_OFFLINE': '1'})
    for r in runs:
        assert r.returncode != 0
        assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith('error:'), r.stderr
    assert not (tmp_path / 'o' / 'heads.csv').exists()


@pytest.mark.parametrize('argv', [[], ['--ckpt', 'a', '--out_dir', '/proc/no/such/dir'],
                                  ['--ckpt', 'a', '--text_file', 't', '--dataset', 'd'],
                                  ['--ckpt', 'a', '--bogus']])
def test_bad_arguments_are_one_line_errors(argv):
    with pytest.raises(SystemExit) as e:
        analyze.main(argv)
    assert str(e.value.code).startswith('error:') and '\n' not in str(e.value.code)


def test_config_files_compose():
    """Variant files see the values set before them: the 6-layer hybrid of the S−D quickstart, a referee
    control."""
    C = lambda name: os.path.join(REPO, 'config', name)   # noqa: E731
    defaults = train_defaults() | {'device': 'cpu', 'dtype': 'float32'}
    config = dict(defaults)
    overrides = configure(config, [C('quick_sd.py'), C('deep.py'), C('hybrid_third.py'), '--seed=2'])
    assert overrides['attn'] == ['linear'] * 2 + ['sd'] * 4 and config['n_layer'] == 6 and config['seed'] == 2
    overrides = configure(dict(defaults), [C('quick_sd.py'), C('hybrid_third.py')])
    assert overrides['attn'] == ['linear'] + ['sd'] * 3
    config = dict(defaults)
    configure(config, [C('quick_sd.py'), C('std.py'), C('nonorm.py')])
    assert (config['attn'], config['norm'], config['dataset']) == ('standard', 'none', 'shakespeare_char')
    assert config['out_dir'] == 'out/quick_sd_std_nonorm'   # each variant appends its name
    assert 'norm' not in configure(dict(defaults), [C('deep.py')])   # only what a file assigns is an override
    assert configure(dict(defaults), [C('quick_sd.py'), C('gpt2_init.py')])['emb_scale'] == 1.0
