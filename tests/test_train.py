"""Tests for train.py (issue #6, and the training part of #2): tiny CPU runs in subprocesses.
Smoke runs of every attention kind, exact resume, SIGKILL safety, SIGINT/SIGTERM, spikes in a row, one-line
errors on bad input, DDP (gloo) against one process, deterministic evaluation, the 125M parameter count."""
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import data
from conftest import REPO, run_scripts, write_dataset
from model import GPT, GPTConfig

TRAIN = os.path.join(REPO, 'train.py')
TINY = ['--n_layer=2', '--n_head=2', '--n_embd=32', '--block_size=32', '--batch_size=4',
        '--gradient_accumulation_steps=1', '--eval_iters=2', '--log_interval=1', '--compile=False',
        '--device=cpu', '--dtype=float32', '--warmup_iters=2', '--learning_rate=1e-2']
N = 5   # the exact-resume tests stop at N and go on to 2N; eval_interval 4 makes N a non-multiple
EXACT = ['--dropout=0.1', '--deterministic=True', f'--lr_decay_iters={2 * N}', '--eval_interval=4']
VALUES = ('loss', 'lr', 'train_loss', 'val_loss')   # what must match between runs (not timings)


def command(data_root, out_dir, *args, dataset='tiny'):
    return [sys.executable, TRAIN, f'--data_root={data_root}', f'--dataset={dataset}', f'--out_dir={out_dir}',
            *TINY, *args]


def start(data_root, out_dir, *args, **kw):
    return subprocess.Popen(command(data_root, out_dir, *args, **kw), cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(p, ok=True, timeout=180):
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        raise
    if ok:
        assert p.returncode == 0, f"train.py failed ({p.returncode}):\n{err[-3000:]}"
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def train(data_root, out_dir, *args, ok=True, timeout=180, **kw):
    return finish(start(data_root, out_dir, *args, **kw), ok, timeout)


def read_log(out_dir):
    with open(os.path.join(out_dir, 'log.jsonl')) as f:
        return [json.loads(line) for line in f]


def trajectory(out_dir, below=None):
    """The log's records without timings, in order (only iterations < below if given)."""
    return [{k: r[k] for k in ('iter',) + VALUES if k in r} for r in read_log(out_dir)
            if below is None or r['iter'] < below]


def evals(out_dir):
    return [r for r in read_log(out_dir) if 'val_loss' in r]


def ckpt_iter(out_dir):
    return GPT.from_checkpoint(os.path.join(out_dir, 'ckpt.pt'))[1]['iter_num']


def snapshot(out_dir):
    """{file name: bytes} of out_dir, or None if it does not exist."""
    if not os.path.isdir(out_dir):
        return None
    return {n: (out_dir / n).read_bytes() for n in sorted(os.listdir(out_dir))}


def wait_for(p, cond, interval=0.02, timeout=120):
    """Poll until cond() holds; fail if the process ends first (or kill it after timeout seconds)."""
    t = time.time()
    while not cond():
        if p.poll() is not None:
            pytest.fail(f"train.py ended early: {p.communicate()[1][-2000:]}")
        if time.time() - t > timeout:
            p.kill()
            pytest.fail('timed out')
        time.sleep(interval)


def train_lines(out_dir):
    try:
        return [r for r in read_log(out_dir) if 'loss' in r]
    except (OSError, ValueError):   # not there yet, or a line being written
        return []


# ------------------------------------------------------------------------------ smoke runs

SMOKE = {'standard': [], 'sd': ['--attn=sd', '--norm=none'], 'linear': ['--attn=linear', '--linear_chunk=8'],
         'mixed': ["--attn=['linear','sd']", '--linear_chunk=8']}


@pytest.fixture(scope='module')
def smoke(tiny_data, tmp_path_factory):
    """{name: (out_dir, stdout)}: 2N iterations of each attention kind, run side by side. 'standard' is
    the reference straight run of the resume tests."""
    root = tmp_path_factory.mktemp('smoke')
    procs = {name: start(tiny_data, root / name, *EXACT, f'--max_iters={2 * N}', *extra)
             for name, extra in SMOKE.items()}
    return {name: (str(root / name), finish(p).stdout) for name, p in procs.items()}


@pytest.mark.parametrize('name', SMOKE)
def test_training_smoke_loss_falls(smoke, name):
    out_dir, stdout = smoke[name]
    assert 'parameters:' in stdout
    ev = evals(out_dir)
    assert [r['iter'] for r in ev] == [0, 4, 8, 2 * N]
    assert ev[-1]['val_loss'] < ev[0]['val_loss'] - 0.1, ev
    assert all(np.isfinite(r['loss']) for r in train_lines(out_dir))
    assert [r['iter'] for r in train_lines(out_dir)] == list(range(2 * N))   # every iteration, the last too
    # stdout is a pipe, not a terminal: no progress bar, one line per log_interval instead
    logged = r'^iter (\d+): loss [\d.]+, lr [\d.e-]+, [\d,]+ tokens/s'
    assert [int(i) for i in re.findall(logged, stdout, re.M)] \
        == list(range(2 * N))
    assert ckpt_iter(out_dir) == 2 * N


# ------------------------------------------------------------------------------ exact resume

def test_exact_resume_and_deterministic_evaluation(smoke, tiny_data, tmp_path):
    out = tmp_path / 'out'
    train(tiny_data, out, *EXACT, f'--max_iters={N}')
    assert ckpt_iter(out) == N
    # evaluation is deterministic: evaluating the checkpoint (at N, not a multiple of eval_interval) gives
    # the val loss the run logged at N; eval_only trains and saves nothing
    ckpt, first = (out / 'ckpt.pt').read_bytes(), trajectory(out)
    train(tiny_data, out, *EXACT, f'--max_iters={2 * N}', '--init_from=resume', '--eval_only=True')
    assert trajectory(out) == first and first[-1]['iter'] == N and 'val_loss' in first[-1]
    assert (out / 'ckpt.pt').read_bytes() == ckpt
    train(tiny_data, out, *EXACT, f'--max_iters={2 * N}', '--init_from=resume')
    straight = smoke['standard'][0]
    assert trajectory(out) == trajectory(straight)   # losses, LR and evaluations, bitwise
    a = torch.load(out / 'ckpt.pt', weights_only=True)   # a real checkpoint needs nothing but the safe loader
    b = torch.load(os.path.join(straight, 'ckpt.pt'), weights_only=True)
    assert a['iter_num'] == b['iter_num'] == 2 * N and a['chars'] is None   # GPT-2 BPE: no characters
    assert all(torch.equal(a['model'][k], b['model'][k]) for k in b['model'])


# ------------------------------------------------------------------------------ SIGINT / SIGTERM

def test_sigint_sigterm_save_and_resume_exactly(smoke, tiny_data, tmp_path):
    out = tmp_path / 'out'
    long = [*EXACT, '--max_iters=100000']   # lr_decay_iters=2N: the same schedule as the straight run
    stops = [0]
    for sig, init in ((signal.SIGINT, 'scratch'), (signal.SIGTERM, 'resume')):
        p = start(tiny_data, out, *long, f'--init_from={init}')
        wait_for(p, lambda: any(r['iter'] >= stops[-1] for r in train_lines(out)))   # in the loop
        p.send_signal(sig)
        r = finish(p)
        m = re.search(r'stopped by signal at iteration (\d+); checkpoint saved to (\S+), continue with '
                      r'--init_from=resume', r.stdout)
        assert m, r.stdout
        stop = int(m.group(1))
        assert stop > stops[-1] and ckpt_iter(out) == stop
        assert train_lines(out)[-1]['iter'] == stop - 1
        stops.append(stop)
    if stops[-1] < 2 * N:   # usually: finish the run and compare everything with the straight one
        train(tiny_data, out, *EXACT, f'--max_iters={2 * N}', '--init_from=resume')
        assert trajectory(out) == trajectory(smoke['standard'][0])
    else:                    # a slow machine: compare what both have
        assert trajectory(out, below=2 * N) == trajectory(smoke['standard'][0], below=2 * N)


# ------------------------------------------------------------------------------ SIGKILL safety

def test_sigkill_at_random_moments_and_during_saves(tiny_data, tmp_path):
    """Kill -9 training (a model big enough that saves take a while, saving every 2 iterations) right after
    ckpt.pt.tmp appears, or at a random moment; the last checkpoint always loads and resume works."""
    out = tmp_path / 'out'
    ckpt, tmp = out / 'ckpt.pt', out / 'ckpt.pt.tmp'
    big = ['--n_layer=4', '--n_head=4', '--n_embd=128', '--eval_interval=2', '--eval_iters=1']
    rng = random.Random(0)
    last, last_mtime, mid_save = 0, 0, 0
    for round, how in enumerate(('save', 'random', 'save')):
        init = 'resume' if round else 'scratch'
        p = start(tiny_data, out, *big, '--max_iters=100000', f'--init_from={init}')
        if how == 'save':   # a save of this run has finished (so no stale .tmp is left); kill in the next one
            wait_for(p, lambda: mtime(ckpt) > last_mtime)
            wait_for(p, tmp.exists, interval=0.001)
        else:
            time.sleep(rng.uniform(1.0, 5.0))   # in the start-up, the log truncation or training
        p.kill()
        p.wait()
        mid_save += how == 'save' and tmp.exists()
        it = ckpt_iter(out)   # the last good checkpoint loads
        assert it >= last and it % 2 == 0
        last, last_mtime = it, mtime(ckpt)
    assert mid_save >= 1   # at least one kill landed inside a save
    train(tiny_data, out, *big, f'--max_iters={last + 3}', '--init_from=resume')
    assert ckpt_iter(out) == last + 3
    assert [r['iter'] for r in train_lines(out)] == list(range(last + 3))   # each iteration once, in order
    assert [r['iter'] for r in evals(out)] == list(range(0, last + 3, 2)) + [last + 3]


def mtime(path):
    try:
        return os.stat(path).st_mtime_ns
    except FileNotFoundError:
        return 0


# ------------------------------------------------------------------------------ NaN: spikes in a row

def test_spikes_in_a_row_stop_and_keep_the_good_checkpoint(smoke, tiny_data, tmp_path):
    """Resumed with a huge learning rate, every try from the last good state diverges: two go back to it
    (skipping the batches), the third (max_spikes) stops with one line; the checkpoint is the one resumed
    from, byte for byte, and the log holds the three spikes."""
    out = tmp_path / 'out'
    shutil.copytree(smoke['standard'][0], out)
    before = (out / 'ckpt.pt').read_bytes()
    # the first check of the losses is at the end (no log line or evaluation before it)
    r = train(tiny_data, out, *EXACT, '--init_from=resume', f'--max_iters={4 * N}', '--log_interval=100',
              '--eval_interval=100', '--warmup_iters=0', '--learning_rate=1e6', '--min_lr=1e6', ok=False,
              timeout=600)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    m = re.fullmatch(r'error: 3 loss spikes in a row, the last at iteration (\d+) \(.+\): lower '
                     r'learning_rate \(now 1e\+06\); (\S+) keeps the last good state \(iteration 10\)',
                     lines[-1])   # with LayerNorm: no advice to use it
    assert len(lines) == 1 and m, r.stderr
    assert 2 * N <= int(m.group(1)) < 4 * N and m.group(2) == str(out / 'ckpt.pt')
    # back to the last good state the checkpoint carries (at or before the iteration it was written at)
    back = r'^spike at iteration \d+ \(.+\): back to iteration (\d+), skipping \d+ batches \(\d in a row\)'
    good = re.findall(back, r.stdout, re.M)
    assert len(good) == 2 and good[0] == good[1] and 0 < int(good[0]) <= 2 * N, r.stdout
    spikes = [(e['iter'], e['in_a_row']) for e in read_log(out) if 'spike_iter' in e]
    assert spikes == [(int(good[0]), 1), (int(good[0]), 2), (int(good[0]), 3)]
    assert (out / 'ckpt.pt').read_bytes() == before
    assert not (out / 'ckpt.pt.tmp').exists()


# ------------------------------------------------------------------------------ bad input

@pytest.fixture(scope='module')
def bad_data(tiny_data, tmp_path_factory):
    """A data_root with 'tiny' plus 'outside' (meta.json: a token id beyond the vocabulary)."""
    root = tmp_path_factory.mktemp('bad_data')
    shutil.copytree(os.path.join(tiny_data, 'tiny'), root / 'tiny')
    ids = np.fromfile(root / 'tiny' / 'train.bin', dtype=np.uint16)
    write_dataset(str(root), 'outside', ids, vocab_size=int(ids.max()) + 1, max_token_id=int(ids.max()) + 1)
    return str(root)


def corrupt(ckpt):
    ckpt.write_bytes(np.random.default_rng(0).bytes(ckpt.stat().st_size))


def truncate(ckpt):
    ckpt.write_bytes(ckpt.read_bytes()[:ckpt.stat().st_size // 2])


# (name, args, expected text in the error, function applied to a copy of a trained out_dir to resume from)
BAD = [
    ('unknown key', ['--n_layers=2'], "unknown config key 'n_layers'.*valid keys: ", None),
    ('wrong type', ['--batch_size=four'], "batch_size expects int", None),
    ('missing dataset', ['--dataset=nope'], r"not found: run `python prepare.py nope`", None),
    ('block_size too long', ['--block_size=100000'], "lower --block_size or prepare more data", None),
    ('token id outside vocab', ['--dataset=outside'], "outside its vocabulary.*prepare", None),
    ('unknown attention', ['--attn=softmax'], "attn='softmax' is not one of", None),
    ('per-layer list length', ["--attn=['sd','sd','linear']"], "attn has 3 entries but n_layer=2", None),
    ('config file missing', ['config/nope.py'], "cannot read config file config/nope.py.*config/", None),
    ('resume other shape', ['--init_from=resume', '--n_embd=64'], "settings differ.*n_embd=64 vs saved 32",
     'copy'),
    ('resume bad attention', ['--init_from=resume', '--attn=fast'], "attn='fast' is not one of", 'copy'),
    ('truncated checkpoint', ['--init_from=resume'], "not a readable train.py checkpoint", truncate),
    ('corrupt checkpoint', ['--init_from=resume'], "not a readable train.py checkpoint", corrupt),
]


def test_bad_input_one_line_errors(smoke, bad_data, tmp_path):
    outs = [tmp_path / f'out{i}' for i in range(len(BAD))]
    for out, (_, _, _, prep) in zip(outs, BAD):
        if prep:
            shutil.copytree(smoke['standard'][0], out)
            if callable(prep):
                prep(out / 'ckpt.pt')
    before = [snapshot(out) for out in outs]
    runs = run_scripts([command(bad_data, out, *args)[1:] for out, (_, args, _, _) in zip(outs, BAD)])
    for (name, _, expect, _), r, was, out in zip(BAD, runs, before, outs):
        after = snapshot(out)
        lines = r.stderr.strip().splitlines()
        assert r.returncode != 0, name
        assert len(lines) == 1 and lines[0].startswith('error: '), f"{name}: {r.stderr[-2000:]}"
        assert re.search(expect, lines[0]), f"{name}: {lines[0]}"
        assert after == was, f"{name}: out_dir changed"   # nothing created, nothing half-written


# ------------------------------------------------------------------------------ DDP

def torchrun(data_root, out_dir, *args):
    r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                        *command(data_root, out_dir, *args)[1:]], cwd=REPO, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    return r


def test_ddp_matches_one_process_and_resumes(tiny_data, tmp_path):
    args = ['--gradient_accumulation_steps=2', '--dropout=0.0', f'--lr_decay_iters={2 * N}',
            '--eval_interval=4']
    single = start(tiny_data, tmp_path / 'single', *args, f'--max_iters={2 * N}')
    torchrun(tiny_data, tmp_path / 'ddp', *args, f'--max_iters={N}')
    assert ckpt_iter(tmp_path / 'ddp') == N
    torchrun(tiny_data, tmp_path / 'ddp', *args, f'--max_iters={2 * N}', '--init_from=resume')
    finish(single)
    a, b = trajectory(tmp_path / 'ddp'), trajectory(tmp_path / 'single')
    assert [r.keys() for r in a] == [r.keys() for r in b] and [r['iter'] for r in a] == [r['iter'] for r in b]
    for ra, rb in zip(a, b):
        for k in VALUES:
            if k in rb:
                assert ra[k] == pytest.approx(rb[k], rel=1e-4), (ra, rb)


# ------------------------------------------------------------------------------ the 125M config

def test_sd_125m_config_builds_and_counts_parameters_and_a_partial_interval_is_logged(tiny_data, tiny_text,
                                                                                      tmp_path):
    # GPT-2's vocabulary (padded to 50304), as for OpenWebText; the tiny dataset's ids are all below it
    ids = np.frombuffer(tiny_text[:20_000].encode(), dtype=np.uint8).astype(np.uint16)
    write_dataset(str(tmp_path), 'gpt2vocab', ids, vocab_size=50257)
    big, tiny = tmp_path / 'big', tmp_path / 'tiny'   # both runs in one process
    r, partial = run_scripts([[TRAIN, 'config/sd_125m.py', '--device=cpu', '--compile=False',
                               '--eval_only=True', f'--data_root={tmp_path}', '--dataset=gpt2vocab',
                               f'--out_dir={big}', '--eval_iters=1', '--gradient_accumulation_steps=1',
                               '--batch_size=1', '--block_size=64', '--dtype=float32'],
                              command(tiny_data, tiny, '--max_iters=1', '--log_interval=10')[1:]])
    assert r.returncode == 0 and partial.returncode == 0, r.stderr[-3000:] + partial.stderr[-3000:]
    with torch.device('meta'):   # the count from the model code: S−D, no LayerNorm, 12 x 768
        model = GPT(GPTConfig(n_layer=12, n_head=12, n_embd=768, attn='sd', norm='none', bias=False,
                              vocab_size=50304, block_size=64))
    assert f"{model.num_params() / 1e6:.2f}M" == '117.09M'
    assert re.search(r'^parameters: 117\.09M ', r.stdout, re.M), r.stdout
    counts, evaluation = read_log(big)   # eval_only: the counts, one evaluation, no checkpoint
    assert counts == {'iter': -1, 'params': model.num_params(), 'attn_params': model.num_attention_params()}
    assert evaluation['iter'] == 0 and not (big / 'ckpt.pt').exists()
    # log_interval 10, one iteration: it is still logged, as a partial interval
    assert [r['iter'] for r in read_log(tiny) if 'loss' in r] == [0] and ckpt_iter(tiny) == 1


# ------------------------------------------------------------------------------ data.py

def test_get_batch_uses_every_window(tmp_path):
    tokens = np.arange(9, dtype=np.uint16)   # block_size 8: exactly one window
    x, y = data.get_batch(tokens, 3, 8, [0])
    assert x.tolist() == [list(range(8))] * 3 and y.tolist() == [list(range(1, 9))] * 3
    seen = {int(data.get_batch(np.arange(12, dtype=np.uint16), 1, 8, [i])[0][0, 0]) for i in range(200)}
    assert seen == {0, 1, 2, 3}   # the last window (3..11) too
    (tmp_path / 'd').mkdir()
    (tmp_path / 'd' / 'train.bin').write_bytes(b'')
    assert len(data.open_split(str(tmp_path), 'd', 'train')) == 0   # empty: train.py then names block_size
    (tmp_path / 'd' / 'val.bin').write_bytes(b'\x00\x01\x02')
    with pytest.raises(SystemExit, match='error: .*val.bin is not a uint16 token file'):
        data.open_split(str(tmp_path), 'd', 'val')
