"""bench.py --quick on the CPU: runs in seconds, prints its three tables, and every number it prints or
writes is finite and positive (no speed is asserted: the machine is shared)."""
import json
import math
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ATTNS = ('standard', 'sd', 'linear')
DECODE = ('softmax, k/v cache', 'ELU+1, recurrent state', 'ELU+1 + 32-token softmax window')


def positive(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def numbers(x):
    """Every number in a JSON value, bools excluded."""
    if isinstance(x, dict):
        return [n for v in x.values() for n in numbers(v)]
    if isinstance(x, list):
        return [n for v in x for n in numbers(v)]
    return [x] if isinstance(x, (int, float)) and not isinstance(x, bool) else []


@pytest.fixture(scope='module')
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp('bench') / 'bench.json'
    cmd = [sys.executable, os.path.join(REPO, 'bench.py'), '--quick', '--device', 'cpu', '--json', str(out)]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    with open(out) as f:
        return json.load(f), p.stdout


def test_every_number_finite_and_positive(result):
    res, stdout = result
    values = numbers(res)
    assert len(values) > 50 and all(positive(v) for v in values), [v for v in values if not positive(v)]
    assert not re.search(r'\b(nan|inf)\b', stdout, re.I)
    printed = re.findall(r'(?<![\w.])-?\d[\d,]*(?:\.\d+)?(?:e[-+]\d+)?', stdout)
    assert len(printed) > 50 and all(float(v.replace(',', '')) > 0 for v in printed), printed


def test_header_and_tables_printed(result):
    res, stdout = result
    assert res['quick'] and res['device'].startswith('cpu')
    lines = stdout.splitlines()
    assert lines[0].startswith('bench.py --quick | cpu, 1 thread')
    for header in ('compiled/eager', 'vs standard, eager', 'MFU compiled', 'softmax/ELU+1', 'softmax/window',
                   *DECODE,
                   'analyze.py s', 'naive s', 'speedup', 'max relative difference'):
        assert header in stdout, header
    for first in (*ATTNS, *(str(L) for L in res['settings']['contexts']),
                  *res['settings']['analysis']['shapes'], 'total'):
        assert any(line.split()[:1] == [first] for line in lines), first


def test_training_rows(result):
    res, _ = result
    rows = {(r['attn'], r['compiled']): r for r in res['train']}
    assert set(rows) == {(a, c) for a in ATTNS for c in (False, True)}
    tokens = res['settings']['batch'] * res['settings']['train']['block_size']
    for r in rows.values():
        assert all(k in r for k in ('tokens_per_s', 'ms_per_step', 'mfu', 'first_step_s', 'loss', 'params'))
        assert math.isclose(r['tokens_per_s'] * r['ms_per_step'] / 1e3, tokens, rel_tol=1e-9)
    for a in ATTNS:   # same weights, batch and number of steps; --quick compiles with the 'eager' backend
        assert math.isclose(rows[a, True]['loss'], rows[a, False]['loss'], rel_tol=1e-4)
    assert rows['sd', False]['params'] < rows['standard', False]['params']   # S−D has no key projection


def test_decode_rows(result):
    res, _ = result
    assert [r['context'] for r in res['decode']] == list(res['settings']['contexts'])
    assert all(set(r) == {'context', *DECODE, *(f'{n} bytes' for n in DECODE)} for r in res['decode'])
    c = res['settings']['decode']   # float32 caches: k and v per position; the states d x d + d per head
    L, H, d = c['n_layer'], c['n_head'], c['n_embd'] // c['n_head']
    state = 4 * L * H * (d * d + d)
    for r in res['decode']:
        T = r['context']
        assert r['softmax, k/v cache bytes'] == 4 * L * 2 * T * H * d
        assert r['ELU+1, recurrent state bytes'] == state
        ring = 4 * L * 2 * 32 * H * d   # 32 slots of k and v
        assert r['ELU+1 + 32-token softmax window bytes'] == state + ring


def test_analysis(result):
    res, _ = result
    a, shapes = res['analysis'], res['settings']['analysis']['shapes']
    assert [r['model'] for r in a['shapes']] == list(shapes)
    assert a['heads'] == sum(L * H for L, H, _ in shapes.values()) == sum(r['heads'] for r in a['shapes'])
    assert math.isclose(a['fast_s'], sum(r['fast_s'] for r in a['shapes']))
    assert math.isclose(a['speedup'], a['naive_s'] / a['fast_s'])
    assert a['max_rel_diff'] < 1e-9   # the fast path computes the naive one's metrics


def test_importing_bench_runs_nothing(capsys):   # another module (or a test) may import it
    import bench
    assert callable(bench.main) and capsys.readouterr() == ('', '')
