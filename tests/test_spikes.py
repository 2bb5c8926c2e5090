"""Issue #25: training that survives a loss spike, the per-layer statistics in log.jsonl, the logit soft-cap
(ours), one-line errors for numeric knobs out of range. A poisoned batch comes from a test-only wrapper
around train.py (train.py has no test hook): a training forward on that batch returns its loss times a factor
(NaN, or 1000 for a finite spike), so a run that did not skip the batch would meet it again."""
import json
import math
import os
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from test_train import EXACT, TRAIN, N, command, finish, read_log, train_lines, trajectory

import data
from conftest import REPO, run_scripts
from model import GPT, Cache, GPTConfig

WRAPPER = '''import json, os, runpy, sys
sys.path.insert(0, {repo!r})
import model
rows, factor = json.loads(os.environ['POISON_ROWS']), float(os.environ['POISON_FACTOR'])
forward = model.GPT.forward


def poisoned(self, idx, targets=None, **kw):
    logits, loss = forward(self, idx, targets, **kw)
    if self.training and targets is not None and idx[0].tolist() in rows:
        loss = loss * factor
    return logits, loss


model.GPT.forward = poisoned
sys.argv[0] = {train!r}
runpy.run_path(sys.argv[0], run_name='__main__')
'''
P = 6   # the poisoned iteration: after the checkpoint at 4 (the last good state), before the one at 8
EVENT = {'iter': 4, 'spike_iter': P, 'skipped': P - 4 + 1, 'in_a_row': 1}
SLOW = 600   # seconds for a run of a few seconds: the tests share the CPU with long training runs


@pytest.fixture(scope='module')
def wrapper(tmp_path_factory):
    path = tmp_path_factory.mktemp('poison') / 'poisoned_train.py'
    path.write_text(WRAPPER.format(repo=REPO, train=TRAIN))
    return str(path)


def first_row(data_root, it, micro=0):
    """The first sequence of micro-batch `micro` of data iteration `it` as train.get_batch draws it (TINY)."""
    tokens = np.memmap(os.path.join(data_root, 'tiny', 'train.bin'), dtype=np.uint16, mode='r')
    return data.get_batch(tokens, 4, 32, [1337, False, it + 1, micro])[0][0].tolist()


def poisoned(wrapper, data_root, out_dir, *args, rows, factor='nan', nproc=1):
    """Run train.py with the batches whose first row is in `rows` poisoned; returns the CompletedProcess."""
    cmd = command(data_root, out_dir, *args)
    cmd[1] = wrapper
    if nproc > 1:
        cmd[1:1] = ['-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={nproc}']
    env = os.environ | {'POISON_ROWS': json.dumps(rows), 'POISON_FACTOR': factor}
    p = subprocess.Popen(cmd, cwd=REPO, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return finish(p, timeout=SLOW)


def events(out_dir):
    return [{k: r[k] for k in EVENT} for r in read_log(out_dir) if 'spike_iter' in r]


def state(out_dir):
    return torch.load(os.path.join(out_dir, 'ckpt.pt'), weights_only=True)


def same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope='module')
def runs(wrapper, tiny_data, tmp_path_factory):
    """{name: (out_dir, stdout)}: 2N iterations with batch P poisoned, twice for NaN, twice for a spike."""
    root, rows = tmp_path_factory.mktemp('runs'), [first_row(tiny_data, P)]
    names = [f'{kind}{i}' for kind in ('nan', 'spike') for i in (1, 2)]

    def run(name):
        return poisoned(wrapper, tiny_data, root / name, *EXACT, f'--max_iters={2 * N}', rows=rows,
                        factor='nan' if name.startswith('nan') else '1000')

    with ThreadPoolExecutor(2) as pool:
        return {name: (str(root / name), r.stdout) for name, r in zip(names, pool.map(run, names))}


@pytest.mark.parametrize('kind', ['nan', 'spike'])
def test_a_poisoned_batch_is_skipped_and_runs_are_bitwise_equal(runs, kind):
    out, stdout = runs[f'{kind}1']
    assert events(out) == [EVENT]   # back to the checkpoint at 4, batches 4..P skipped, once
    spike = next(r for r in read_log(out) if 'spike_iter' in r)   # what led to it, and the model it left
    assert [r['iter'] for r in spike['trace'] if 'loss' in r] == list(range(4, P))
    assert len(spike['score_max']) == 2 and len(spike['resid_rms']) == 3 and 'logit_max' in spike
    what = r'NaN/inf loss/grad' if kind == 'nan' else r'loss [\d.e+]+ > 2 x mean [\d.]+'
    back = rf'^spike at iteration {P} \({what}\): back to iteration 4, skipping 3 batches \(1 in a row\)$'
    assert len(re.findall(back, stdout, re.M)) == 1, stdout
    assert [r['iter'] for r in train_lines(out)] == list(range(2 * N))   # each iteration once: the replay
    assert all(math.isfinite(r['loss']) for r in train_lines(out))
    a, b = state(out), state(runs[f'{kind}2'][0])
    assert a['iter_num'] == 2 * N and a['skips'] == [[4, 3]] and a['strikes'] == 0
    assert a['good']['iter'] == 8   # 2N is no multiple of eval_interval: it carries the last good state
    assert same_weights(a['model'], b['model']) and trajectory(out) == trajectory(runs[f'{kind}2'][0])
    assert all(torch.isfinite(v).all() for v in a['model'].values())


def test_the_skip_survives_resume(runs, wrapper, tiny_data, tmp_path):
    """Stopped after the spike (the checkpoint holds the skip), or between the last good state and the spike
    (the checkpoint carries that state): either resumed run equals the uninterrupted one, bitwise."""
    straight, rows = runs['nan1'][0], [first_row(tiny_data, P)]

    def stop_and_resume(stop):
        out = tmp_path / f'stop{stop}'
        poisoned(wrapper, tiny_data, out, *EXACT, f'--max_iters={stop}', rows=rows)
        first = state(out)
        poisoned(wrapper, tiny_data, out, *EXACT, f'--max_iters={2 * N}', '--init_from=resume', rows=rows)
        return first, out

    with ThreadPoolExecutor(2) as pool:
        for stop, (first, out) in zip((P + 1, P - 1), pool.map(stop_and_resume, (P + 1, P - 1))):
            assert first['iter_num'] == stop and first['skips'] == ([[4, 3]] if stop > P else [])
            assert first['good']['iter'] == 4
            assert events(out) == [EVENT] and trajectory(out) == trajectory(straight)
            assert same_weights(state(out)['model'], state(straight)['model'])


def test_ddp_processes_agree_on_the_skip(wrapper, tiny_data, tmp_path):
    """Only process 1's micro-batch is poisoned (a spike): both processes go back and skip together, as one
    process with the same two micro-batches does."""
    args = ['--gradient_accumulation_steps=2', f'--max_iters={2 * N}', f'--lr_decay_iters={2 * N}',
            '--eval_interval=4']
    rows = [first_row(tiny_data, P, micro=1)]
    with ThreadPoolExecutor(2) as pool:
        runs = [pool.submit(poisoned, wrapper, tiny_data, tmp_path / name, *args, rows=rows, factor='1000',
                            nproc=nproc) for name, nproc in (('one', 1), ('ddp', 2))]
        [r.result() for r in runs]
    assert events(tmp_path / 'ddp') == events(tmp_path / 'one') == [EVENT]
    a, b = trajectory(tmp_path / 'ddp'), trajectory(tmp_path / 'one')
    assert [r['iter'] for r in a] == [r['iter'] for r in b]
    for ra, rb in zip(a, b):
        assert all(ra[k] == pytest.approx(rb[k], rel=1e-4) for k in rb if k != 'iter'), (ra, rb)
    assert state(tmp_path / 'ddp')['skips'] == [[4, 3]]


def test_layer_statistics_are_those_of_the_last_batch(runs, tiny_data):
    """The last log line's statistics, recomputed from the final checkpoint on the batch of the last iteration
    (its data iteration is 3 later: the skip)."""
    out = runs['spike1'][0]
    last = train_lines(out)[-1]
    model = GPT.from_checkpoint(out)[0].eval()
    tokens = np.memmap(os.path.join(tiny_data, 'tiny', 'train.bin'), dtype=np.uint16, mode='r')
    x, y = data.get_batch(tokens, 4, 32, [1337, False, last['iter'] + 3 + 1, 0])
    t, causal, rms = model.transformer, torch.ones(32, 32).tril() > 0, lambda v: v.pow(2).mean().sqrt().item()
    with torch.no_grad():
        h = model.config.emb_scale * (t.wte(x) + t.wpe(torch.arange(32)))
        resid, scores = [], []
        for block in t.h:
            resid.append(rms(h))
            q, k, _ = block.attn.qkv(block.ln_1(h))
            scores.append((q @ k.mT / math.sqrt(q.size(-1))).masked_fill(~causal, 0).abs().max().item())
            h = block(h)
        resid.append(rms(h))
        logits = model.lm_head(t.ln_f(h))
        torch.testing.assert_close(logits, model(x, y)[0])   # the reference is the model's forward
    assert len(last['score_max']) == 2 and len(last['resid_rms']) == 3
    assert last['score_max'] == pytest.approx(scores, rel=1e-4)
    assert last['resid_rms'] == pytest.approx(resid, rel=1e-4)
    assert last['logit_rms'] == pytest.approx(rms(logits), rel=1e-4)
    assert last['logit_max'] == pytest.approx(logits.abs().max().item(), rel=1e-4)


@pytest.mark.parametrize('cap', [0.0, 30.0])
def test_logit_softcap_bounds_the_logits_and_keeps_gradients(cap):
    """cap 0 (the default): the output layer's logits, unchanged; cap c: c·tanh(logits / c), below c."""
    torch.manual_seed(0)
    config = GPTConfig(block_size=16, vocab_size=50, n_layer=2, n_head=2, n_embd=32, norm='none', attn='sd',
                       logit_softcap=cap)
    model = GPT(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(50)   # logits far beyond the cap
    head = []
    model.lm_head.register_forward_hook(lambda module, args, out: head.append(out))   # before the cap
    idx = torch.randint(0, 50, (2, 16))
    logits, loss = model(idx, idx)
    assert GPTConfig().logit_softcap == 0 and head[0].abs().max() > 100
    assert torch.equal(logits, 30 * torch.tanh(head[0] / 30) if cap else head[0])
    assert not cap or logits.abs().max() < cap
    torch.testing.assert_close(model(idx)[0], logits[:, [-1]])   # generation sees the same logits
    loss.backward()
    assert all(torch.isfinite(p.grad).all() and p.grad.any() for p in model.parameters())


def test_attn_softcap_is_capped_softmax_attention():
    """attn_softcap c: softmax over c·tanh(q·k/√d / c) (a naive reference), SDPA's output when c is far above
    the scores; cached decoding equals the full forward; the gradients reach every parameter."""
    torch.manual_seed(0)
    config = dict(block_size=16, vocab_size=50, n_layer=2, n_head=2, n_embd=32, norm='none', attn='sd')
    capped, plain = GPT(GPTConfig(**config, attn_softcap=0.5)), GPT(GPTConfig(**config))
    plain.load_state_dict(capped.state_dict())
    attn, x = capped.transformer.h[0].attn, torch.randn(2, 16, 32)
    q, k, v = attn.qkv(x)
    q = 30 * q   # scores well beyond the cap
    s = 0.5 * torch.tanh(q @ k.mT / math.sqrt(q.size(-1)) / 0.5)
    s = s.masked_fill(torch.ones(16, 16, dtype=torch.bool).triu(1), -math.inf)
    torch.testing.assert_close(attn.mixer(q, k, v), s.softmax(-1) @ v)
    assert not torch.allclose(attn.mixer(q, k, v), plain.transformer.h[0].attn.mixer(q, k, v), atol=1e-3)
    attn.mixer.softcap = 1e6
    torch.testing.assert_close(attn.mixer(q, k, v), plain.transformer.h[0].attn.mixer(q, k, v))
    attn.mixer.softcap = 0.5
    idx = torch.randint(0, 50, (2, 16))
    full, loss = capped(idx, idx)
    cache = [Cache(16) for _ in range(2)]
    steps = [capped(idx[:, :8], cache=cache)[0]]
    steps += [capped(idx[:, [t]], cache=cache, pos=t)[0] for t in range(8, 16)]
    torch.testing.assert_close(torch.cat(steps, 1), full[:, 7:], atol=1e-5, rtol=1e-5)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() and p.grad.any() for p in capped.parameters())


KNOBS = [
    ('--learning_rate=-1', 'learning_rate=-1.0 must be above 0'),
    ('--learning_rate=1e999', 'learning_rate=inf must be above 0'),
    ('--min_lr=-1e-4', 'min_lr=-0.0001 must be at least 0'),
    ('--beta2=1', r'beta2=1.0 must be in \[0, 1\)'),
    ('--weight_decay=-0.1', 'weight_decay=-0.1 must be at least 0'),
    ('--grad_clip=-1', 'grad_clip=-1.0 must be at least 0'),
    ('--warmup_iters=-5', 'warmup_iters=-5 must be at least 0'),
    ('--spike_factor=0.5', r'spike_factor=0.5 must be 0 \(off\) or above 1'),
    ('--max_spikes=0', 'max_spikes=0 must be at least 1'),
    ('--logit_softcap=-30', 'logit_softcap=-30.0 must be at least 0'),
    ('--attn_softcap=-50', 'attn_softcap=-50.0 must be at least 0'),
]


@pytest.fixture(scope='module')
def knob_runs(tmp_path_factory):
    """{arg: (train.py's result, its out_dir)}: each knob of KNOBS out of range, all runs in one process."""
    tmp = tmp_path_factory.mktemp('knobs')
    outs = {arg: tmp / f'out{i}' for i, (arg, _) in enumerate(KNOBS)}
    runs = run_scripts([[TRAIN, 'config/quick_sd.py', arg, f'--out_dir={out}', f'--data_root={tmp}']
                        for arg, out in outs.items()])
    return {arg: (r, outs[arg]) for arg, r in zip(outs, runs)}


@pytest.mark.parametrize('arg, message', KNOBS)
def test_a_knob_out_of_range_is_one_line(arg, message, knob_runs):
    r, out = knob_runs[arg]
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0 and len(lines) == 1 and re.fullmatch(f'error: {message}', lines[0]), r.stderr
    assert not out.exists()
