"""Character-level data end to end: prepare.py --char / shakespeare_char, train.py, a checkpoint that carries
its vocabulary (sample.py needs no data folder), analyze.py and linearize.py on it, one-line errors."""
import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import data
import prepare
from conftest import REPO, run_scripts
from model import GPT

TINY = ['--n_layer=2', '--n_head=2', '--n_embd=32', '--block_size=32', '--batch_size=4', '--max_iters=6',
        '--eval_interval=3', '--eval_iters=2', '--gradient_accumulation_steps=1', '--compile=False',
        '--device=cpu', '--dtype=float32', '--warmup_iters=2', '--learning_rate=1e-2']


def run(script, *args):
    return subprocess.run([sys.executable, os.path.join(REPO, script), *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def one_line_error(r, *words):
    assert r.returncode != 0 and r.stderr.startswith('error:') \
        and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert all(w in r.stderr for w in words), r.stderr


@pytest.fixture(scope='module')
def char_run(tmp_path_factory, tiny_text):
    """(tmp dir, data_root, out_dir): 100 KB of tiny shakespeare at character level and a 6-iteration run on
    it."""
    tmp = tmp_path_factory.mktemp('char')
    (tmp / 'input.txt').write_text(tiny_text, encoding='utf-8')
    r = run('prepare.py', '--input', tmp / 'input.txt', '--name', 'chars', '--char',
            '--data_root', tmp / 'data')
    assert r.returncode == 0, r.stderr
    r = run('train.py', f'--data_root={tmp / "data"}', '--dataset=chars', f'--out_dir={tmp / "out"}', *TINY)
    assert r.returncode == 0, r.stderr
    return tmp, tmp / 'data', tmp / 'out'


def test_prepare_char_round_trips(char_run, tiny_text):
    _, root, _ = char_run
    meta = json.loads((root / 'chars' / 'meta.json').read_text())
    chars = ''.join(sorted(set(tiny_text)))
    assert meta['chars'] == chars and meta['vocab_size'] == len(chars) and meta['tokenizer'] == 'char'
    ids = np.concatenate([np.fromfile(root / 'chars' / f'{s}.bin', dtype=np.uint16)
                          for s in ('train', 'val')])
    encode, decode = data.codec(('char', meta['chars']))
    assert decode(ids.tolist()) == tiny_text and encode(tiny_text) == ids.tolist()
    assert meta['val_tokens'] == int(0.1 * len(tiny_text)) and meta['max_token_id'] == len(chars) - 1


def test_several_files_are_joined_by_a_newline(tmp_path):
    (tmp_path / 'a.txt').write_text('abc' * 10, encoding='utf-8')
    (tmp_path / 'b.txt').write_text('xyz' * 10, encoding='utf-8')
    meta = prepare.main(['--input', str(tmp_path / 'a.txt'), str(tmp_path / 'b.txt'), '--name', 'ab',
                         '--char', '--data_root', str(tmp_path)])
    ids = np.concatenate([np.fromfile(tmp_path / 'ab' / f'{s}.bin', dtype=np.uint16)
                          for s in ('train', 'val')])
    assert meta['chars'] == '\nabcxyz'
    assert data.codec(('char', meta['chars']))[1](ids.tolist()) == 'abc' * 10 + '\n' + 'xyz' * 10


def test_shakespeare_char_download_failure_names_the_offline_form(tmp_path, monkeypatch):
    monkeypatch.setattr(prepare, 'SHAKESPEARE_URL', 'http://127.0.0.1:9/input.txt')   # nothing listens there
    with pytest.raises(SystemExit) as e:
        prepare.main(['shakespeare_char', '--data_root', str(tmp_path / 'out')])
    msg = str(e.value.code)
    assert msg.startswith('error:') and '--input FILE --name shakespeare_char --char' in msg \
        and '\n' not in msg
    assert not (tmp_path / 'out').exists()


def test_char_prepare_bad_utf8_leaves_nothing(tmp_path):
    (tmp_path / 'bad.txt').write_bytes(b'good text \xff more')
    r = run('prepare.py', '--input', tmp_path / 'bad.txt', '--name', 'x', '--char',
            '--data_root', tmp_path / 'out')
    one_line_error(r, 'UTF-8')
    assert not (tmp_path / 'out').exists()


def test_checkpoint_carries_the_vocabulary_unpadded(char_run, tiny_text):
    _, root, out = char_run
    model, ckpt = GPT.from_checkpoint(str(out / 'ckpt.pt'))   # the safe loader
    chars = json.loads((root / 'chars' / 'meta.json').read_text())['chars']
    assert ckpt['chars'] == chars and model.config.vocab_size == len(chars)


def test_sample_needs_no_data_folder(char_run, tmp_path):
    _, _, out = char_run
    alone = tmp_path / 'alone'
    shutil.copytree(out, alone)   # the checkpoint alone, far from any data folder
    r, bad = run_scripts([['sample.py', f'--out_dir={alone}', '--start=ROMEO:', '--num_samples=2',
                           '--max_new_tokens=50', '--device=cpu'],
                          ['sample.py', f'--out_dir={alone}', '--start=ROMEO: ¿qué?', '--device=cpu']])
    assert r.returncode == 0, r.stderr
    samples = r.stdout.split('---------------\n')[:2]
    chars = GPT.from_checkpoint(str(alone / 'ckpt.pt'))[1]['chars']
    # + 1: print's newline
    assert all(s.startswith('ROMEO:') and len(s) == len('ROMEO:') + 50 + 1 for s in samples)
    assert set(''.join(samples)) <= set(chars)
    one_line_error(bad, "'¿'", 'vocabulary')


def test_resume_on_another_vocabulary_is_refused(char_run, tmp_path):
    tmp, _, out = char_run
    (tmp_path / 'other.txt').write_text('only these letters ' * 400, encoding='utf-8')
    resumed = tmp_path / 'resumed'
    shutil.copytree(out, resumed)
    prepared, r = run_scripts([['prepare.py', '--input', tmp_path / 'other.txt', '--name', 'other', '--char',
                                '--data_root', tmp_path],
                               ['train.py', f'--data_root={tmp_path}', '--dataset=other',
                                f'--out_dir={resumed}', *TINY, '--init_from=resume', '--max_iters=9']])
    assert prepared.returncode == 0, prepared.stderr
    one_line_error(r, 'vocabulary')


def test_linearize_k0_reproduces_the_logged_val_loss(char_run):
    tmp, root, out = char_run
    r = run('linearize.py', '--ckpt', out / 'ckpt.pt', '--data_root', root, '--num_batches=2',
            '--batch_size=4', '--out_dir', tmp / 'lin', '--device=cpu')
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(open(tmp / 'lin' / 'linearize.csv')))
    k0 = float(rows[0]['val_loss'])
    logged = [json.loads(line) for line in (out / 'log.jsonl').read_text().splitlines()][-1]['val_loss']
    # k = 0, 1, 2; the very batches train.py evaluated on
    assert len(rows) == 3 and abs(k0 - logged) < 1e-5


def test_linearize_refuses_another_vocabulary(char_run, tiny_data):
    tmp, _, out = char_run   # tiny_data: the same text as GPT-2 BPE ids
    one_line_error(run('linearize.py', '--ckpt', out / 'ckpt.pt', '--data_root', tiny_data, '--dataset=tiny',
                       '--num_batches=1', '--out_dir', tmp / 'lin2', '--device=cpu'), 'vocabulary')


def test_analyze_data_level_on_chars(char_run):
    tmp, root, out = char_run
    (tmp / 'lines.txt').write_text('First Citizen:\nBefore we proceed any further, hear me speak.\n',
                                   encoding='utf-8')
    (tmp / 'bad.txt').write_text('Now is the winter of our discontent — said he\n', encoding='utf-8')
    sources = (['--dataset', 'chars', '--data_root', root], ['--text_file', tmp / 'lines.txt'])
    argvs = [['analyze.py', '--ckpt', out, *source, '--num_seqs=2', '--seq_len=16',
              '--out_dir', tmp / f'an{i}'] for i, source in enumerate(sources)]
    argvs.append(['analyze.py', '--ckpt', out, '--text_file', tmp / 'bad.txt', '--out_dir', tmp / 'an'])
    *runs, bad = run_scripts(argvs)   # all three in one process
    for i, r in enumerate(runs):
        assert r.returncode == 0, r.stderr
        levels = {line.split(',')[1] for line in (tmp / f'an{i}' / 'heads.csv').read_text().splitlines()[1:]}
        assert levels == {'weight', 'data'}, levels
    one_line_error(bad, "'—'")
