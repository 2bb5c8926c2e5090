"""A new attention type is one edit of model.py: the README's "Add your own attention" block, appended to a
copy of model.py (read from the README, so the two cannot drift apart), gives a type that the unchanged
train.py, sample.py, analyze.py, linearize.py and bench.py train, sample, analyse, linearize and benchmark."""
import csv
import importlib.util
import json
import math
import os
import re
import shutil
import sys

import pytest
import torch

from conftest import REPO, run_scripts

TRAIN = ['--attn=sigmoid', '--dataset=chars', '--n_layer=2', '--n_head=2', '--n_embd=32', '--block_size=32',
         '--batch_size=8', '--gradient_accumulation_steps=1', '--max_iters=60', '--eval_interval=30',
         '--eval_iters=2', '--log_interval=10', '--learning_rate=1e-2', '--warmup_iters=5', '--min_lr=1e-3',
         '--compile=False', '--device=cpu', '--dtype=float32']


def readme_block():
    """The Python block between the README's add-your-own-attention markers."""
    with open(os.path.join(REPO, 'README.md'), encoding='utf-8') as f:
        block = re.search(r'<!-- add-your-own-attention -->\n```python\n(.*?)```\n<!-- /add', f.read(), re.S)
    assert block, 'README.md has no add-your-own-attention block'
    return block.group(1)


@pytest.fixture(scope='module')
def copy(tmp_path_factory, tiny_text):
    """(a copy of the repository's scripts with the README's block appended to model.py, {script: its
    result}): one process in the copy prepares 20 KB of tiny shakespeare at character level, trains a sigmoid
    model on it for 60 iterations, samples, analyses and linearizes it, and benchmarks the type."""
    root = tmp_path_factory.mktemp('extend')
    for f in os.listdir(REPO):
        if f.endswith('.py'):
            shutil.copy(os.path.join(REPO, f), root)
    with open(root / 'model.py', 'a', encoding='utf-8') as f:
        f.write('\n\n' + readme_block())
    (root / 'input.txt').write_text(tiny_text[:20_000], encoding='utf-8')
    argvs = [['prepare.py', '--input', 'input.txt', '--name', 'chars', '--char'],
             ['train.py', '--out_dir=out', *TRAIN],
             ['sample.py', '--out_dir=out', '--start=First', '--num_samples=1', '--max_new_tokens=20',
              '--device=cpu'],
             ['analyze.py', '--ckpt', 'out', '--dataset', 'chars', '--num_seqs', '2', '--seq_len', '32',
              '--out_dir', 'an'],
             ['linearize.py', '--ckpt', 'out', '--num_batches', '2', '--batch_size', '8', '--out_dir', 'lin'],
             ['bench.py', '--quick', '--device', 'cpu', '--attn', 'sigmoid', '--json', 'bench.json']]
    results = dict(zip([argv[0] for argv in argvs], run_scripts(argvs, cwd=root, timeout=900)))
    for script, r in results.items():
        assert r.returncode == 0, f"{script} failed:\n{r.stderr[-3000:]}"
    return root, results


def test_the_edit_is_small_and_lives_in_model_py_alone(copy):
    copy, _ = copy
    assert len(readme_block().strip().splitlines()) <= 25
    changed = [f for f in os.listdir(REPO) if f.endswith('.py')
               and (copy / f).read_bytes() != open(os.path.join(REPO, f), 'rb').read()]
    assert changed == ['model.py']


def test_sigmoid_attention_is_what_it_says(copy):
    copy, _ = copy
    spec = importlib.util.spec_from_file_location('model_with_sigmoid', copy / 'model.py')
    m = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    torch.manual_seed(0)
    config = m.GPTConfig(block_size=16, vocab_size=50, n_layer=2, n_head=2, n_embd=32, attn='sigmoid')
    model = m.GPT(config).eval()
    attn, x = model.attention_layers()[0], torch.randn(2, 16, 32)
    q, k, v = attn.qkv(x)
    weights = torch.sigmoid(q @ k.transpose(-1, -2) / math.sqrt(16) - math.log(16)).tril()   # naive
    torch.testing.assert_close(attn.mixer(q, k, v), weights @ v)
    soft = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert (attn.mixer(q, k, v) - soft).abs().max() > 1e-2   # not softmax
    idx = torch.randint(0, 50, (1, 16))   # decoding through the k/v cache == the full forward
    cache = [m.Cache(16) for _ in range(2)]
    steps = [model(idx[:, :10], cache=cache)[0]] + [model(idx[:, t:t + 1], cache=cache, pos=t)[0]
                                                    for t in range(10, 16)]
    full = model(idx)[0]   # the last position's logits
    torch.testing.assert_close(steps[-1], full, rtol=1e-5, atol=1e-5)


def test_it_trains_and_samples(copy):
    copy, results = copy
    log = [json.loads(line) for line in (copy / 'out' / 'log.jsonl').read_text().splitlines()]
    evals = [r['val_loss'] for r in log if 'val_loss' in r]
    unigram = json.loads((copy / 'data' / 'chars' / 'meta.json').read_text())['val_unigram_entropy']
    assert log[0]['iter'] == -1 and log[0]['attn_params'] > 0   # the parameter counts come first
    assert len(evals) == 3 and evals[-1] < evals[0] and evals[-1] < unigram, (evals, unigram)
    out = results['sample.py'].stdout
    assert out.startswith('First') and len(out.split('---------------\n')[0]) == len('First') + 20 + 1


def test_it_is_analysed_and_linearized(copy):
    copy, _ = copy
    rows = list(csv.DictReader(open(copy / 'an' / 'heads.csv')))
    assert {(r['level'], r['kind']) for r in rows} == {('weight', 'sigmoid'), ('data', 'sigmoid')}
    assert len(rows) == 2 * 2 * 2   # two levels, layers and heads
    rows = list(csv.DictReader(open(copy / 'lin' / 'linearize.csv')))
    logged = [json.loads(line) for line in (copy / 'out' / 'log.jsonl').read_text().splitlines()][-1]
    assert [r['layers'] for r in rows] == ['', '0', '0;1']   # both sigmoid layers switch to ELU+1
    assert float(rows[0]['val_loss']) == pytest.approx(logged['val_loss'], abs=1e-5)   # k = 0: train.py's
    assert float(rows[2]['val_loss']) != pytest.approx(logged['val_loss'], abs=1e-3)


def test_it_is_benchmarked(copy):
    copy, results = copy
    out = results['bench.py'].stdout
    res = json.loads((copy / 'bench.json').read_text())
    assert [(r['attn'], r['compiled']) for r in res['train']] == [('sigmoid', False), ('sigmoid', True)]
    assert all(math.isfinite(r['loss']) and r['tokens_per_s'] > 0 for r in res['train'])
    assert [r['context'] for r in res['decode']] == list(res['settings']['contexts'])
    assert all(r['sigmoid'] > 0 and r['sigmoid bytes'] > 0 for r in res['decode'])
    assert 'analysis' not in res and 'sigmoid' in out
