"""bench.py --quick on the CPU: runs in seconds, prints both tables, and every number is finite and positive
(no speed is asserted: the machine is shared)."""
import json
import math
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ATTNS = ('standard', 'sd', 'linear')
DECODE = ('softmax, torch.cat cache (before)', 'softmax, preallocated cache', 'ELU+1, chunked kernel (before)',
          'ELU+1, recurrent step')


def positive(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


@pytest.fixture(scope='module')
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp('bench') / 'bench.json'
    cmd = [sys.executable, os.path.join(REPO, 'bench.py'), '--quick', '--device', 'cpu', '--json', str(out)]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    with open(out) as f:
        return json.load(f), p.stdout


def test_header_and_tables_printed(result):
    res, stdout = result
    assert res['quick'] and res['device'].startswith('cpu') and positive(res['peak_flops'])
    lines = stdout.splitlines()
    assert lines[0].startswith('bench.py --quick | cpu, 1 thread')
    for header in ('compiled/eager', 'vs standard, eager', 'softmax before/now', 'softmax/ELU+1', *DECODE):
        assert header in stdout, header
    assert any(line.split()[:1] == [a] for a in ATTNS for line in lines)


def test_training_rows(result):
    res, _ = result
    rows = {(r['attn'], r['compiled']): r for r in res['train']}
    assert set(rows) == {(a, c) for a in ATTNS for c in (False, True)}
    for r in rows.values():
        for k in ('tokens_per_s', 'ms_per_step', 'mfu', 'first_step_s', 'loss', 'params'):
            assert positive(r[k]), (r['attn'], r['compiled'], k, r[k])
        tokens = res['settings']['train']['batch'] * res['settings']['train']['block_size']
        assert math.isclose(r['tokens_per_s'] * r['ms_per_step'] / 1e3, tokens, rel_tol=1e-9)
    for a in ATTNS:   # same weights, batch and number of steps; --quick compiles with the 'eager' backend
        assert math.isclose(rows[a, True]['loss'], rows[a, False]['loss'], rel_tol=1e-4)
    assert rows['sd', False]['params'] < rows['standard', False]['params']   # S−D has no key projection


def test_decode_rows(result):
    res, _ = result
    assert [r['context'] for r in res['decode']] == list(res['settings']['decode']['contexts'])
    for r in res['decode']:
        assert all(positive(r[name]) for name in DECODE), r
