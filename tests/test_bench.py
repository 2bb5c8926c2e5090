"""bench.py --tiny on CPU: the whole script runs in seconds and writes a complete, finite JSON."""
import json
import math
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ATTNS = ('standard', 'sd', 'linear')


def positive(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


@pytest.fixture(scope='module')
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp('bench') / 'tmp.json'
    p = subprocess.run([sys.executable, os.path.join(REPO, 'bench.py'), '--tiny', '--device', 'cpu', '--out', str(out)],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    with open(out) as f:
        return json.load(f), p.stdout


def test_meta(result):
    res, stdout = result
    meta = res['meta']
    assert meta['command'].startswith('python bench.py') and '--tiny' in meta['command']
    assert meta['date'] and meta['env']['device'] == 'cpu' and meta['env']['name']
    assert meta['env']['torch'] and meta['shape']['name'] == 'tiny'
    assert set(meta['sections']) == {'train', 'micro'}
    assert positive(res['peak']['flops']) and res['peak']['dtype'] == 'float32'
    assert 'wrote' in stdout and 'training step' in stdout and 'targets' in stdout


def test_train(result):
    res, _ = result
    runs = {r['attn']: r for r in res['train']}
    assert set(runs) == set(ATTNS)
    for r in runs.values():
        assert r['ok'] and r['block_size'] == 64 and r['tokens_per_step'] == r['batch_size'] * 64
        for k in ('ms_median', 'ms_mean', 'tokens_per_s', 'tflops', 'mfu', 'flops_per_token', 'params',
                  'peak_mem_bytes', 'loss', 'first_step_s'):
            assert positive(r[k]), (r['attn'], k, r[k])
        assert r['mfu'] < 5   # a fraction of the measured peak, not a percentage
        assert abs(r['tokens_per_s'] - r['tokens_per_step'] / (r['ms_median'] / 1e3)) < 1e-6 * r['tokens_per_s']
    assert runs['sd']['norm'] == 'none' and runs['standard']['norm'] == 'layernorm'
    assert runs['sd']['params'] < runs['standard']['params']   # S−D has no key projection


def test_micro_and_generation(result):
    res, _ = result
    cases = {(r['level'], r['kind'], r['head_dim'], r['T']) for r in res['micro']}
    assert cases == {(lv, k, d, T) for lv in ('mixer', 'layer') for k in ATTNS for d in (16, 32) for T in (64, 128)}
    for r in res['micro'] + res['chunk_sweep']:
        assert r['ok'] and positive(r['ms_median']) and positive(r['tokens_per_s'])
    assert {r['chunk'] for r in res['chunk_sweep']} == {8, 16, 32}
    assert all(positive(r['tflops']) for r in res['chunk_sweep'])
    kinds = {r['kind'] for r in res['generation']}
    assert kinds == {'softmax_cat', 'softmax_prealloc', 'linear_state'}
    assert {r['context'] for r in res['generation']} == {64, 256, 1024}
    assert all(r['ok'] and positive(r['ms_median']) for r in res['generation'])


def test_targets_not_claimed_on_cpu(result):
    res, _ = result
    assert len(res['targets']) >= 4
    for t in res['targets']:
        assert t['met'] is None and t['note'].startswith('not measured')
