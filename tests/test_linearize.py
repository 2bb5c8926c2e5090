"""Tests for linearize.py and the hybrid / cascade configs: CPU, tiny models, real GPT-2 tokens."""
import csv
import json
import math
import os
import subprocess
import sys
import types
from dataclasses import asdict

import numpy as np
import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import data  # noqa: E402
import linearize  # noqa: E402
import prepare  # noqa: E402
from configurator import configure  # noqa: E402
from conftest import train_defaults  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402

TEXT = os.path.join(REPO, '..', 'shared', 'data', 'tinyshakespeare.txt')
if not os.path.exists(TEXT):
    TEXT = '/work/shared/data/tinyshakespeare.txt'
FAST = ['--max_iters=3', '--eval_interval=3', '--eval_iters=1', '--batch_size=2', '--block_size=64',
        '--log_interval=1']   # quick configs: their shape, fewer and smaller batches

# Parameter counts as stated in the README: (non-embedding params as train.py prints them, attention
# params) for config/A.py config/B.py ... (NAME = 'A+B+...'), with GPT-2's padded vocabulary 50304 or tiny
# shakespeare's 65 characters.
COUNTS = {
    'sd_7m': (7_176_704, 213_504), 'sd_7m+std': (7_226_496, 262_144),
    'sd_20m': (18_778_112, 1_705_984), 'sd_20m+std': (19_173_632, 2_097_152),
    'sd_45m': (44_904_832, 6_312_320), 'sd_45m+std': (46_630_080, 8_028_160),
    'sd_85m': (86_760_960, 15_244_800), 'sd_85m+std': (91_192_960, 19_660_800),
    'sd_125m': (117_089_280, 21_832_704), 'sd_125m+std': (123_587_328, 28_311_552),
    'sd_355m': (329_932_800, 77_094_912), 'sd_355m+std': (353_551_360, 100_663_296),
    'quick_sd': (746_112, 213_504), 'quick_sd+std': (795_904, 262_144),
    'sd_125m+hybrid_third': (119_248_896, 23_992_320), 'sd_125m+std+hybrid_third': (123_587_328, 28_311_552),
    'quick_sd+hybrid_third': (758_272, 225_664), 'quick_sd+std+hybrid_third': (795_904, 262_144),
    'quick_sd+deep': (1_115_008, 320_256),
    'quick_sd+cascade_width_char': (1_059_072, 264_320),   # 82.5% of quick_sd+deep's attention
    'quick_sd+cascade_rank_char': (1_093_504, 298_752),    # 93.3%
}
CASCADE_PCT = {'quick_sd+cascade_width_char': 82.5, 'quick_sd+cascade_rank_char': 93.3}
MODEL_KEYS = ('n_layer', 'n_head', 'n_embd', 'block_size', 'bias', 'dropout', 'norm', 'attn', 'head_dim',
              'sd_rank', 'sd_filter', 'linear_chunk', 'emb_scale')


def model_args(name):
    """The GPTConfig arguments train.py builds from config/A.py config/B.py ... for NAME = 'A+B+...': its
    literal defaults (read from train.py) updated by the config files."""
    defaults = train_defaults() | {'device': 'cpu', 'dtype': 'float32'}
    configure(defaults, [os.path.join(REPO, 'config', part + '.py') for part in name.split('+')])
    return {k: defaults[k] for k in MODEL_KEYS} | {'vocab_size': 65 if 'quick' in name else 50304}


ENV = os.environ | {'OMP_NUM_THREADS': '1'}   # tiny models: threads only contend on a shared CPU
QUICK = ('quick_sd+hybrid_third', 'quick_sd+std+hybrid_third', 'quick_sd+cascade_rank_char')


@pytest.fixture(scope='module', autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    """data_root with dataset 'tiny': ~25k GPT-2 tokens of tiny shakespeare (random ids if unavailable)."""
    root = tmp_path_factory.mktemp('data')
    try:
        from data import load_encoding
        with open(TEXT, encoding='utf-8') as f:
            ids = np.array(load_encoding()[0].encode_ordinary(f.read(100_000)), dtype=np.uint16)
    except (ImportError, OSError, SystemExit):
        ids = np.random.default_rng(0).integers(0, 50257, 25_000).astype(np.uint16)
    os.makedirs(root / 'tiny')
    n = int(0.9 * len(ids))
    ids[:n].tofile(root / 'tiny' / 'train.bin')
    ids[n:].tofile(root / 'tiny' / 'val.bin')
    (root / 'tiny' / 'meta.json').write_text(json.dumps({'vocab_size': 50257,
                                                         'max_token_id': int(ids.max())}))
    prepare.main(['--input', TEXT, '--name', 'tiny_char', '--char', '--data_root', str(root)])   # 65 chars
    return str(root)


@pytest.fixture(scope='module')
def ckpts(data_root, tmp_path_factory):
    """Two tiny checkpoints, trained 6 steps and saved like train.py does: S−D without LayerNorm and
    standard attention with LayerNorm (2 layers, block_size 32)."""
    out = tmp_path_factory.mktemp('ckpts')
    train = data.open_split(data_root, 'tiny', 'train')
    paths = {}
    for seed, (name, attn, norm) in enumerate((('sd', 'sd', 'none'), ('std', 'standard', 'layernorm'))):
        torch.manual_seed(seed)
        config = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=50304, bias=False,
                           attn=attn, norm=norm)
        model = GPT(config)
        optimizer = model.configure_optimizers(0.0, 1e-2, (0.9, 0.95), 'cpu')
        for it in range(6):
            model(*data.get_batch(train, 4, 32, [seed, 0, it]))[1].backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        os.makedirs(out / name)
        paths[name] = str(out / name / 'ckpt.pt')
        torch.save({'model': model.state_dict(), 'optimizer': optimizer.state_dict(),
                    'model_args': asdict(config), 'iter_num': 6, 'best_val_loss': 1e9,
                    'config': {'dataset': 'tiny', 'data_root': data_root, 'block_size': 32, 'seed': 1337}},
                   paths[name])
    return paths


@pytest.fixture(scope='module')
def quick_runs(data_root, tmp_path_factory):
    """The quick hybrid / cascade configs, 3 iterations each through train.py on the tiny dataset:
    {name: (out_dir, stdout)}. One process runs train.py once per config, so torch is imported once."""
    out = tmp_path_factory.mktemp('quick')
    argv = {name: ['train.py', *(f'config/{p}.py' for p in name.split('+')), *FAST,
                   f'--data_root={data_root}', '--dataset=tiny_char', f'--out_dir={out / name}']
            for name in QUICK}
    driver = ("import runpy, sys\n"
              f"for name, argv in {argv!r}.items():\n"
              "    print('=== ' + name, flush=True)\n"
              "    sys.argv = argv\n"
              "    runpy.run_path('train.py', run_name='__main__')\n")
    r = subprocess.run([sys.executable, '-c', driver], cwd=REPO, env=ENV, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-1000:] + r.stderr[-2000:]
    outputs = dict(part.split('\n', 1) for part in r.stdout.split('=== ')[1:])
    return {name: (out / name, outputs[name]) for name in QUICK}


def run(tmp_path, data_root, *args):
    return linearize.main(['--data_root', data_root, '--dataset', 'tiny', '--num_batches', '2',
                           '--batch_size', '4', '--device', 'cpu', '--out_dir', str(tmp_path / 'lin'), *args])


def read_csv(tmp_path):
    with open(tmp_path / 'lin' / 'linearize.csv') as f:
        return list(csv.DictReader(f))


@pytest.fixture
def fake_erank(monkeypatch):
    """Install a stand-in analyze module whose layer_routing_erank returns ERANK[n_layer]."""
    table = {}
    module = types.ModuleType('analyze')
    module.layer_routing_erank = lambda model: table[model.config.n_layer]
    monkeypatch.setitem(sys.modules, 'analyze', module)
    return table


# ---------------------------------------------------------------- linearize.py

def test_k0_reproduces_val_loss_and_k_max_is_all_linear(tmp_path, data_root, ckpts):
    rows = run(tmp_path, data_root, '--ckpt', ckpts['sd'], ckpts['std'], '--order', 'first', 'last')
    val = data.open_split(data_root, 'tiny', 'val')
    batches = [data.get_batch(val, 4, 32, [0, 1, 0, i]) for i in range(2)]   # train.py's eval batches
    for path in ckpts.values():
        model, _ = GPT.from_checkpoint(path)
        model.eval()
        with torch.no_grad():
            own = sum(model(x, y)[1].item() for x, y in batches) / 2
            model.linearize(range(2))
            assert all(a.mixer.name == 'elu' for a in model.attention_layers())
            all_linear = sum(model(x, y)[1].item() for x, y in batches) / 2
            for a in model.attention_layers():   # attention removed: every output projection zeroed
                torch.nn.init.zeros_(a.c_proj.weight)
            no_attn = sum(model(x, y)[1].item() for x, y in batches) / 2
        for order in ('first', 'last'):
            rs = [r for r in rows if r['ckpt'] == path and r['order'] == order]
            assert [r['k'] for r in rs] == [0, 1, 2]
            assert rs[0]['val_loss'] == own and rs[0]['delta_pct'] == 0.0 and rs[0]['layers'] == ''
            assert rs[2]['val_loss'] == all_linear and rs[2]['layers'] == '0;1'
            assert rs[1]['layers'] == ('0' if order == 'first' else '1')
            assert all(abs(r["no_attn_loss"] - no_attn) < 1e-6 for r in rs) and no_attn != own
        assert own != all_linear
    table = read_csv(tmp_path)
    assert len(table) == 2 * 2 * 3   # ckpts x orders x k
    assert list(table[0]) == ['ckpt', 'order', 'k', 'layers', 'windows', 'val_loss', 'ppl', 'delta_pct',
                              'no_attn_loss']
    assert [r['windows'] for r in table[:3]] == ['', '0', '0;0']
    for r in table:
        assert math.isclose(float(r['ppl']), math.exp(float(r['val_loss'])), rel_tol=1e-5)
    with open(tmp_path / 'lin' / 'linearize.png', 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'
    assert sorted(os.listdir(tmp_path / 'lin')) == ['linearize.csv', 'linearize.png', 'linearize_arms.csv']
    some = run(tmp_path, data_root, '--ckpt', ckpts['sd'], '--order', 'last', '--k', '2')   # k = 0 always
    assert [(r['k'], r['val_loss']) for r in some] == [(r['k'], r['val_loss']) for r in rows
                                                       if r['ckpt'] == ckpts['sd'] and r['order'] == 'last'
                                                       and r['k'] != 1]


def test_orders_pick_the_layers_they_say(tmp_path, data_root, ckpts, fake_erank):
    model = GPT(GPTConfig(n_layer=4, n_head=2, n_embd=16, block_size=8, vocab_size=64, attn='sd'))
    erank = [5.0, 1.0, 3.0, 2.0]
    assert linearize.pick_layers(model, 'first', 2) == [0, 1]
    assert linearize.pick_layers(model, 'last', 2) == [2, 3]
    assert linearize.pick_layers(model, 'cascade', 2, erank) == [1, 3]
    assert linearize.pick_layers(model, 'cascade', 4, erank) == [1, 3, 2, 0]
    hybrid = GPT(GPTConfig(n_layer=4, n_head=2, n_embd=16, block_size=8, vocab_size=64,
                           attn=['linear', 'sd', 'sd', 'sd']))
    assert linearize.pick_layers(hybrid, 'first', 1) == [1]           # layer 0 is linear already
    assert linearize.pick_layers(hybrid, 'last', 3) == [1, 2, 3]
    assert linearize.pick_layers(hybrid, 'cascade', 1, [0.0, 5.0, 1.0, 3.0]) == [2]

    fake_erank[2] = [7.0, 2.0]   # layer 1 routes at lower rank: the cascade order switches it first
    rows = run(tmp_path, data_root, '--ckpt', ckpts['sd'], '--order', 'cascade', 'first')
    table = read_csv(tmp_path)
    assert len(table) == len(rows) == 2 * 3
    assert [r['layers'] for r in table if r['order'] == 'cascade'] == ['', '1', '0;1']
    assert [r['layers'] for r in table if r['order'] == 'first'] == ['', '0', '0;1']
    cascade1 = next(r for r in rows if r['order'] == 'cascade' and r['k'] == 1)
    last1 = run(tmp_path, data_root, '--ckpt', ckpts['sd'], '--order', 'last')[1]
    assert cascade1['val_loss'] == last1['val_loss']   # same layer, same batches


def test_real_layer_routing_erank(tmp_path, data_root, ckpts):
    if not os.path.exists(os.path.join(REPO, 'analyze.py')):
        pytest.skip('analyze.py not written yet')
    from analyze import layer_routing_erank
    model, _ = GPT.from_checkpoint(ckpts['sd'])
    erank = [float(e) for e in layer_routing_erank(model)]
    assert len(erank) == 2 and all(math.isfinite(e) and e >= 1 for e in erank)
    rows = run(tmp_path, data_root, '--ckpt', ckpts['sd'], '--order', 'cascade')
    lowest = min(range(2), key=lambda i: (erank[i], i))
    assert [r['layers'] for r in rows] == ['', str(lowest), '0;1']


def test_trained_linear_layers_count_as_linear(tmp_path, data_root, quick_runs):
    out_dir = quick_runs['quick_sd+hybrid_third'][0]
    ckpt = str(out_dir / 'ckpt.pt')
    # train.py's val batches with its batch_size, block_size and eval_iters: k = 0 is its logged val loss
    rows = run(tmp_path, data_root, '--ckpt', ckpt, '--order', 'first', 'last', '--batch_size', '2',
               '--num_batches', '1', '--dataset', 'tiny_char')
    with open(out_dir / 'log.jsonl') as f:
        logged = [json.loads(line) for line in f if 'val_loss' in line][-1]['val_loss']
    assert rows[0]['val_loss'] == pytest.approx(logged, rel=1e-6)
    first = [r for r in rows if r['order'] == 'first']
    assert [r['k'] for r in first] == [0, 1, 2, 3]   # three softmax layers to switch
    assert [r['layers'] for r in first] == ['0', '0;1', '0;1;2', '0;1;2;3']
    assert [r['layers'] for r in rows if r['order'] == 'last'] == ['0', '0;3', '0;2;3', '0;1;2;3']


def test_finetune_heals_and_restores_weights(tmp_path, data_root, ckpts):
    plain = run(tmp_path, data_root, '--ckpt', ckpts['std'], '--order', 'last')
    healed = run(tmp_path, data_root, '--ckpt', ckpts['std'], '--order', 'last', '--finetune_iters', '2')
    assert [r['val_loss'] for r in healed] == [r['val_loss'] for r in plain]   # weights restored each time
    table = read_csv(tmp_path)
    assert list(table[0])[-4:-1] == ['ft_val_loss', 'ft_ppl', 'ft_delta_pct']
    assert all(math.isfinite(float(r['ft_val_loss'])) for r in table)
    assert healed[0]['ft_val_loss'] != healed[0]['val_loss'] and healed[0]['ft_delta_pct'] == 0.0


def test_bad_input(tmp_path, data_root, ckpts):
    junk = tmp_path / 'junk.pt'
    junk.write_text('not a checkpoint')
    out = tmp_path / 'out'
    r = subprocess.run([sys.executable, os.path.join(REPO, 'linearize.py'), '--ckpt', str(junk), '--dataset',
                        'tiny', '--data_root', data_root, '--out_dir', str(out)], cwd=REPO, env=ENV,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert r.stderr.startswith('error:') and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not out.exists()
    for args, msg in ((['--ckpt', str(tmp_path / 'missing.pt')], 'no checkpoint'),
                      (['--ckpt', ckpts['sd'], '--block_size', '33'], 'block_size'),
                      (['--ckpt', ckpts['sd'], '--dataset', 'nope'], 'not found'),
                      (['--ckpt', ckpts['sd'], ckpts['sd']], 'twice'),
                      (['--ckpt', ckpts['sd'], '--num_batches', '0'], 'num_batches'),
                      (['--ckpt', ckpts['sd'], '--window', '-1'], '--window must be >= 0, got -1'),
                      (['--ckpt', ckpts['sd'], '--k', '-1'], '--k must be >= 0, got -1'),
                      (['--ckpt', ckpts['sd'], '--k', '3'], '--k 3 is more than the 2 switchable layers'),
                      (['--ckpt', ckpts['sd'], '--transfer_iters', '-1'], 'transfer_iters')):
        with pytest.raises(SystemExit, match=msg):
            linearize.main(['--data_root', data_root, '--dataset', 'tiny', '--out_dir', str(out), *args])
    assert not out.exists()


def test_window_flag_and_a_window_of_the_whole_block_costs_nothing(tmp_path, data_root, ckpts):
    rows = run(tmp_path, data_root, '--ckpt', ckpts['std'], '--order', 'first', '--window', '4')
    model, _ = GPT.from_checkpoint(ckpts['std'])
    val = data.open_split(data_root, 'tiny', 'val')
    batches = [data.get_batch(val, 4, 32, [0, 1, 0, i]) for i in range(2)]
    model.linearize([0], window=4)
    assert rows[1]['val_loss'] == linearize.evaluate(model, batches)
    assert [r['windows'] for r in read_csv(tmp_path)] == ['', '4', '4;4']
    rows = run(tmp_path, data_root, '--ckpt', ckpts['std'], '--order', 'first', '--window', '32')   # = T
    assert all(abs(r['delta_pct']) < 1e-3 for r in rows)


def test_attention_transfer_lowers_the_matching_loss_and_trains_only_what_the_switch_added(data_root, ckpts):
    model, _ = GPT.from_checkpoint(ckpts['std'])
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    train, val = (data.open_split(data_root, 'tiny', split) for split in ('train', 'val'))
    x = data.get_batch(val, 4, 32, [0, 1, 0, 0])[0]   # held out: not a transfer batch
    args = types.SimpleNamespace(seed=0, transfer_iters=30, transfer_lr=1e-2, batch_size=4, device='cpu')
    for window in (0, 4):
        model.linearize([0, 1], window)
        with torch.no_grad():
            before = linearize.match_loss(model, [0, 1], x).item()
        linearize.transfer(model, [0, 1], train, args, 32)
        with torch.no_grad():
            after = linearize.match_loss(model, [0, 1], x).item()
        assert after < 0.8 * before, (window, before, after)
        changed = {k for k, v in model.state_dict().items()
                   if k not in trained or not torch.equal(v, trained[k])}
        assert changed == {f'transformer.h.{i}.attn.mixer.{p}' for i in (0, 1)
                           for p in ('map_q', 'map_k', 'log_gain')[:3 if window else 2]}
    # the loss against a reference: the unswitched model's attention inputs, softmax's outputs, the mixers'
    inputs = []
    hooks = [a.register_forward_pre_hook(lambda m, a: inputs.append(a[0])) for a in model.attention_layers()]
    mixers = [a.mixer for a in model.attention_layers()]
    model.linearize(())
    with torch.no_grad():
        model(x)
        expected = 0.0
        for a, mixer, h in zip(model.attention_layers(), mixers, inputs):
            q, k, v = a.qkv(h)
            soft = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            expected += ((mixer(q, k, v) - soft) ** 2).mean().item()
    for hook in hooks:
        hook.remove()
    for a, mixer in zip(model.attention_layers(), mixers):
        a.mixer = mixer
    with torch.no_grad():
        assert linearize.match_loss(model, [0, 1], x).item() == pytest.approx(expected, rel=1e-5)
        model.linearize([0, 1], window=32)   # the whole block in the window: softmax itself
        assert linearize.match_loss(model, [0, 1], x).item() < 1e-10


def test_cheapest_is_the_smallest_window_under_budget_else_the_lowest_cost():
    costs = {('a', 0): (40, 9, 4, 6, 1, 0), ('a', 1): (90, 30, 8, 12, 7, 9), ('b', 0): (3, 9, 4, 6, 1, 0)}
    arms = [dict(arm=arm, layer=layer, window=w, delta_pct=d)
            for (arm, layer), ds in costs.items() for w, d in zip(linearize.WINDOWS, ds)]
    assert linearize.cheapest(arms[::-1], '') == {('a', 0): 4, ('a', 1): 16, ('b', 0): 0}


def test_sweep_figure_has_a_panel_per_order_and_a_line_per_arm_and_stage():
    arms = [dict(arm=arm, order=order, k=k, n=3, delta_pct=float(k), delta_pct_std=0.5, ft_delta_pct=k / 2,
                 ft_delta_pct_std=0.1) for arm in ('d6_sd', 'd6_std') for order in ('cascade', 'first')
            for k in range(3)]
    args = linearize.parse_args(['--ckpt', 'x', '--finetune_iters', '5', '--dataset', 'd'])
    axes = linearize.plot(arms, args, 64, ['', 'ft_']).axes
    assert [ax.get_title() for ax in axes] == ['order: first', 'order: cascade']   # ORDERS' order
    for ax in axes:
        names = [line.get_label() for line in ax.get_lines()][:4]
        assert names == ['S−D, no LN (×√d), n=3', 'S−D, no LN (×√d), healed 5 it, n=3',
                         'standard + LN, n=3', 'standard + LN, healed 5 it, n=3']


def test_per_layer_table_and_the_sweep_with_the_cheapest_fixes(tmp_path, data_root, ckpts, fake_erank):
    paths = []
    for seed in (1, 2):   # two seeds of one arm: the S−D checkpoint and a perturbed copy
        ckpt = torch.load(ckpts['sd'], weights_only=True)
        torch.manual_seed(seed)
        for v in ckpt['model'].values():
            v.add_(0.05 * (seed - 1) * torch.randn_like(v))
        os.makedirs(tmp_path / f'arm_s{seed}')
        paths.append(str(tmp_path / f'arm_s{seed}' / 'ckpt.pt'))
        torch.save(ckpt, paths[-1])
    fake_erank[2] = [3.0, 1.0]   # cascade order: layer 1 first
    run(tmp_path, data_root, '--ckpt', *paths, '--per_layer', '--transfer_iters', '3', '--order', 'cascade')
    out = tmp_path / 'lin'
    assert sorted(os.listdir(out)) == ['cheapest.csv', 'linearize.csv', 'linearize.png', 'linearize_arms.csv',
                                       'per_layer.csv', 'per_layer.png', 'per_layer_arms.csv']
    read = lambda f: list(csv.DictReader(open(out / f)))
    table, arms, fixes, sweep = (read(f) for f in ('per_layer.csv', 'per_layer_arms.csv', 'cheapest.csv',
                                                   'linearize.csv'))
    assert len(table) == 2 * 2 * len(linearize.WINDOWS) and len(arms) == 2 * len(linearize.WINDOWS)
    assert list(table[0]) == ['ckpt', 'layer', 'window', 'val_loss', 'ppl', 'delta_pct', 'at_val_loss',
                              'at_ppl', 'at_delta_pct', 'erank']
    model, _ = GPT.from_checkpoint(paths[1])   # one layer switched alone, as measured directly
    val = data.open_split(data_root, 'tiny', 'val')
    batches = [data.get_batch(val, 4, 32, [0, 1, 0, i]) for i in range(2)]
    model.linearize([1], window=2)
    assert float(next(r for r in table if r['ckpt'] == paths[1] and r['layer'] == '1' and r['window'] == '2')[
        'val_loss']) == pytest.approx(linearize.evaluate(model, batches), rel=1e-7)
    for r in table:
        if r['window'] == '32':   # = block_size: softmax itself, as switched and after transfer
            assert abs(float(r['delta_pct'])) < 1e-3 and abs(float(r['at_delta_pct'])) < 1e-3
    for a in arms:   # mean and std over the two seeds
        ds = [float(r['at_delta_pct']) for r in table
              if (r['layer'], r['window']) == (a['layer'], a['window'])]
        assert a['n'] == '2' and float(a['at_delta_pct']) == pytest.approx(np.mean(ds), rel=1e-6, abs=1e-9)
        assert float(a['at_delta_pct_std']) == pytest.approx(np.std(ds, ddof=1), rel=1e-5, abs=1e-9)
    assert [(f['arm'], f['layer'], f['erank']) for f in fixes] == [('arm', '0', '3'), ('arm', '1', '1')]
    for f in fixes:
        for p in ('', 'at_'):
            costs = {int(a['window']): float(a[p + 'delta_pct']) for a in arms if a['layer'] == f['layer']}
            under = [w for w in linearize.WINDOWS if costs[w] < linearize.BUDGET]
            assert int(f[p + 'window']) == (under[0] if under else min(costs, key=costs.get))
    w = {f['layer']: f['at_window'] for f in fixes}   # the sweep: cascade order, each layer at its fix
    assert [(r['layers'], r['windows']) for r in sweep if r['ckpt'] == paths[0]] == [
        ('', ''), ('1', w['1']), ('0;1', f"{w['0']};{w['1']}")]


# ---------------------------------------------------------------- configs

@pytest.mark.parametrize('name', sorted(COUNTS))
def test_config_parameter_counts(name):
    args = model_args(name)
    with torch.device('meta'):
        model = GPT(GPTConfig(**args))
    assert (model.num_params(), model.num_attention_params()) == COUNTS[name]
    layers = model.attention_layers()
    if 'hybrid' in name:   # the first third of the layers ELU+1, at the full head width
        k = len(layers) // 3
        rest = 'standard' if '+std' in name else 'sd'
        assert [a.kind for a in layers] == ['linear'] * k + [rest] * (len(layers) - k)
        assert all(a.head_dim == args['n_embd'] // args['n_head'] for a in layers)
        assert args['norm'] == ('layernorm' if rest == 'standard' else 'none')
    if name in CASCADE_PCT:   # against the uniform S−D model of the same depth
        assert round(100 * COUNTS[name][1] / COUNTS['quick_sd+deep'][1], 1) == CASCADE_PCT[name]
        ranks = args['sd_rank'] if isinstance(args['sd_rank'], list) else [0] * len(layers)
        assert all(2 * r <= a.head_dim for r, a in zip(ranks, layers))


def test_quick_configs_train(quick_runs):
    for name, (out_dir, stdout) in quick_runs.items():
        n, n_attn = COUNTS[name]
        line = f"parameters: {n / 1e6:.2f}M (non-embedding counts the tied token embedding); " \
               f"attention: {n_attn / 1e6:.2f}M;"
        assert line in stdout, stdout
        with open(out_dir / 'log.jsonl') as f:
            losses = [json.loads(line)['val_loss'] for line in f if 'val_loss' in line]
        assert losses and all(math.isfinite(v) for v in losses)
        model, ckpt = GPT.from_checkpoint(str(out_dir / 'ckpt.pt'))
        assert ckpt['iter_num'] == 3 and model.num_attention_params() == n_attn
