"""Shared test fixtures: a tiny prepared dataset (real text, small vocabulary)."""
import json
import os
import sys

import numpy as np
import pytest

# Tiny models on a busy 2-core machine: one intra-op thread per process is many times faster than two
# threads fighting over the cores (set before torch is imported here or in any subprocess).
os.environ.setdefault('OMP_NUM_THREADS', '1')

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
SHARED_TEXT = os.path.join(REPO, '..', 'shared', 'data', 'tinyshakespeare.txt')
if not os.path.exists(SHARED_TEXT):
    SHARED_TEXT = '/work/shared/data/tinyshakespeare.txt'


def tokenize(text):
    """GPT-2 BPE ids via data.load_encoding, renumbered densely (0..n-1 in order of id) so the model's
    vocabulary stays small; byte ids (vocab 256) if prepare.py or its tokenizer is unavailable.
    Returns (ids as uint16, vocab_size)."""
    try:
        from data import load_encoding
        ids = np.array(load_encoding()[0].encode_ordinary(text))
    except (ImportError, OSError, SystemExit, RuntimeError, AttributeError):
        return np.frombuffer(text.encode('utf-8'), dtype=np.uint8).astype(np.uint16), 256
    used, ids = np.unique(ids, return_inverse=True)
    return ids.astype(np.uint16), len(used)


def write_dataset(root, name, ids, vocab_size, max_token_id=None, val_fraction=0.1):
    """root/name/{train,val}.bin + meta.json, as prepare.py writes them; returns the directory."""
    d = os.path.join(root, name)
    os.makedirs(d, exist_ok=True)
    n = len(ids) - int(val_fraction * len(ids))
    np.asarray(ids[:n], dtype=np.uint16).tofile(os.path.join(d, 'train.bin'))
    np.asarray(ids[n:], dtype=np.uint16).tofile(os.path.join(d, 'val.bin'))
    meta = {'vocab_size': int(vocab_size),
            'max_token_id': int(ids.max()) if max_token_id is None else max_token_id,
            'train_tokens': n, 'val_tokens': len(ids) - n}
    with open(os.path.join(d, 'meta.json'), 'w') as f:
        json.dump(meta, f)
    return d


@pytest.fixture(scope='session')
def tiny_text():
    """The first 100 KB of tiny shakespeare."""
    if not os.path.exists(SHARED_TEXT):
        pytest.skip(f'{SHARED_TEXT} not available')
    with open(SHARED_TEXT, 'rb') as f:
        return f.read(100_000).decode('utf-8', errors='ignore')


@pytest.fixture(scope='session')
def tiny_data(tmp_path_factory, tiny_text):
    """A data_root holding dataset 'tiny' (~30k tokens, 90% train) for train.py --data_root=...
    --dataset=tiny."""
    root = str(tmp_path_factory.mktemp('data'))
    ids, vocab = tokenize(tiny_text)
    write_dataset(root, 'tiny', ids, vocab)
    return root


def train_defaults():
    """train.py's defaults, the dict its configurator checks config files against: GPTConfig's fields
    (train.py takes them all but vocab_size, block_size) and its literal assignments."""
    import ast
    from dataclasses import fields

    from model import GPTConfig
    with open(os.path.join(REPO, 'train.py')) as f:
        tree = ast.parse(f.read())
    out = {f.name: f.default for f in fields(GPTConfig) if f.name not in ('vocab_size', 'block_size')}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                out[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
    return out


# Runs scripts one after another in one Python process, each as `python SCRIPT ARGS` would: an uncaught
# SystemExit's message goes to stderr with status 1, any other exception prints its traceback (status 1).
# One torch import for many runs of the scripts' argument checks, which end before any training.
DRIVER = '''
import contextlib, io, json, runpy, sys, traceback
results = []
for argv in json.loads(sys.argv[1]):
    sys.argv, out, err, code = argv, io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            runpy.run_path(argv[0], run_name='__main__')
        except SystemExit as e:
            code = e.code
            if not (code is None or isinstance(code, int)):
                print(code, file=sys.stderr)
                code = 1
        except BaseException:
            traceback.print_exc()
            code = 1
    results.append((code or 0, out.getvalue(), err.getvalue()))
print(json.dumps(results))
'''


def run_scripts(argvs, cwd=REPO, env=None, timeout=600):
    """subprocess.CompletedProcess-like results of `python *argv` for each argv ([script, *args], the script
    relative to cwd), all run in one process in cwd (the repository: its modules), env added to its own."""
    import subprocess
    from types import SimpleNamespace
    r = subprocess.run([sys.executable, '-c', DRIVER, json.dumps([[str(a) for a in argv] for argv in argvs])],
                       cwd=cwd, env=os.environ | (env or {}), capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads(r.stdout.splitlines()[-1])
    return [SimpleNamespace(returncode=code, stdout=out, stderr=err) for code, out, err in results]
