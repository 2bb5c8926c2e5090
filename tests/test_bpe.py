"""Our byte-level BPE (prepare.py --bpe N): exact round trips of any UTF-8, a tokenizer trained on the train
split only, checkpoints that carry it (sample.py and analyze.py need no data folder), one-line errors."""
import json
import os
import shutil

import numpy as np
import pytest
from test_char import TINY, one_line_error, run

import data
import prepare
from conftest import SHARED_TEXT, run_scripts
from model import GPT

ODD = ["", "a", "naïve café — 日本語 😀 \u0301e\u0301", "\x00\x01\t\r\n  \n\n\n   x", "<|endoftext|> 𝔘𝔫𝔦",
       "ǅ" * 7 + "\n"]


@pytest.fixture(scope='module')
def bpe_run(tmp_path_factory, tiny_text):
    """(tmp, data_root, out_dir, meta): 100 KB of tiny shakespeare, a BPE of 300 tokens and a 6-iteration
    run."""
    tmp = tmp_path_factory.mktemp('bpe')
    (tmp / 'input.txt').write_text(tiny_text, encoding='utf-8')
    r = run('prepare.py', '--input', tmp / 'input.txt', '--name', 'sub', '--bpe', 300,
            '--data_root', tmp / 'data')
    assert r.returncode == 0, r.stderr
    r = run('train.py', f'--data_root={tmp / "data"}', '--dataset=sub', f'--out_dir={tmp / "out"}', *TINY)
    assert r.returncode == 0, r.stderr
    return tmp, tmp / 'data', tmp / 'out', json.loads((tmp / 'data' / 'sub' / 'meta.json').read_text())


def test_bpe_files_decode_to_the_text_and_any_utf8_round_trips(bpe_run, tiny_text):
    _, root, _, meta = bpe_run
    encode, decode = data.codec(data.tokenizer_of(meta))
    train, val = (np.fromfile(root / 'sub' / f'{s}.bin', np.uint16).tolist() for s in ('train', 'val'))
    assert meta['vocab_size'] == 300 and max(train + val) == meta['max_token_id'] < 300
    assert decode(train) + decode(val) == tiny_text and len(val) == meta['val_tokens'] > 0
    assert abs(len(decode(val)) / len(tiny_text) - 0.1) < 0.01   # the last tenth, from a line start
    for text in ODD:   # characters the tokenizer never saw are bytes
        assert decode(encode(text)) == text
    ids, n = np.bincount(val, minlength=300), len(val)
    p = ids[ids > 0] / n
    assert meta['val_unigram_entropy'] == pytest.approx(-(p * np.log(p)).sum(), rel=1e-9)
    t, v = np.array(train), np.array(val)   # the bigram reference against a dense count table
    u = np.bincount(t, minlength=300) + 1.0
    u /= u.sum()
    big = np.zeros((300, 300))
    np.add.at(big, (t[:-1], t[1:]), 1)
    prob = (big + 0.1 * 300 * u) / (big.sum(1, keepdims=True) + 0.1 * 300)
    assert meta['val_bigram_loss'] == pytest.approx(-np.log(prob[v[:-1], v[1:]]).mean(), rel=1e-9)
    assert meta['val_bigram_loss'] < meta['val_unigram_entropy']


def test_the_tokenizer_never_sees_the_val_text(tmp_path):
    """A word that occurs only in the val split gets no token of its own; placed in the train split, it
    does."""
    with open(SHARED_TEXT, encoding='utf-8') as f:
        english = f.read(40_000)
    (tmp_path / 'en.txt').write_text(english, encoding='utf-8')
    (tmp_path / 'zq.txt').write_text('zqxv zqxv zqxv\n' * 200, encoding='utf-8')   # ~7% of the joined text
    vocabs = {}
    for order in (['en.txt', 'zq.txt'], ['zq.txt', 'en.txt']):
        meta = prepare.main(['--input', *(str(tmp_path / f) for f in order), '--name', order[0][:2],
                             '--bpe', '400', '--data_root', str(tmp_path / 'data'), '--val_fraction', '0.1'])
        vocabs[order[0]] = json.loads(meta['bpe'])['model']['vocab']
    assert not any('zq' in t for t in vocabs['en.txt'])   # zq.txt is val: unseen
    assert any('zqxv' in t for t in vocabs['zq.txt'])     # control: as train text it is merged at once


def test_bpe_checkpoint_needs_no_data_folder(bpe_run, tmp_path):
    tmp, _, out, meta = bpe_run
    alone = tmp_path / 'alone'
    shutil.copytree(out, alone)   # the checkpoint alone, far from any data folder
    model, ckpt = GPT.from_checkpoint(str(alone / 'ckpt.pt'))
    assert ckpt['bpe'] == meta['bpe'] and model.config.vocab_size == 300   # not padded to a multiple of 64
    r = run('sample.py', f'--out_dir={alone}', '--start=ROMEO: ¿qué? 😀', '--num_samples=2',
            '--max_new_tokens=20', '--device=cpu')
    assert r.returncode == 0, r.stderr
    assert all(s.startswith('ROMEO: ¿qué? 😀') for s in r.stdout.split('---------------\n')[:2])
    (tmp_path / 'lines.txt').write_text('First Citizen: ¿qué? 😀\nBefore we proceed any further, hear me.\n',
                                        encoding='utf-8')
    r = run('analyze.py', '--ckpt', alone, '--text_file', tmp_path / 'lines.txt', '--num_seqs=2',
            '--seq_len=16', '--out_dir', tmp_path / 'an')
    assert r.returncode == 0, r.stderr
    assert {line.split(',')[1] for line in (tmp_path / 'an' / 'heads.csv').read_text().splitlines()[1:]} == \
        {'weight', 'data'}


def test_resume_on_another_bpe_is_refused(bpe_run, tmp_path, tiny_text):
    tmp, _, out, _ = bpe_run
    (tmp_path / 'other.txt').write_text(tiny_text.upper(), encoding='utf-8')   # the same size, other merges
    resumed = tmp_path / 'resumed'
    shutil.copytree(out, resumed)
    prepared, r = run_scripts([['prepare.py', '--input', tmp_path / 'other.txt', '--name', 'sub', '--bpe',
                                300, '--data_root', tmp_path],
                               ['train.py', f'--data_root={tmp_path}', '--dataset=sub',
                                f'--out_dir={resumed}', *TINY, '--init_from=resume', '--max_iters=9']])
    assert prepared.returncode == 0, prepared.stderr
    one_line_error(r, 'vocabulary')


BAD = [
    (['--bpe', '100'], ['--bpe 100', '257']),
    (['--bpe', '70000'], ['65,536']),
    (['--bpe', 'many'], ['--bpe', 'int']),
    (['--bpe', '300', '--char'], ['--char or --bpe']),
    (['--bpe', '5000'], ['supports only', 'smaller --bpe']),   # more tokens than 3 KB of text can merge
]


@pytest.fixture(scope='module')
def bad_runs(tmp_path_factory):
    """[(prepare.py's result, its folder)] for each case of BAD, all in one process."""
    dirs = [tmp_path_factory.mktemp('bad_bpe') for _ in BAD]
    for d in dirs:
        (d / 'a.txt').write_text('To be, or not to be, that is the question.\n' * 70, encoding='utf-8')
    runs = run_scripts([['prepare.py', '--input', d / 'a.txt', '--name', 'x', '--data_root', d / 'data',
                         *args] for d, (args, _) in zip(dirs, BAD)])
    return list(zip(runs, dirs))


@pytest.mark.parametrize('case', range(len(BAD)))
def test_bad_bpe_is_one_line_and_writes_nothing(bad_runs, case):
    (r, tmp_path), words = bad_runs[case], BAD[case][1]
    one_line_error(r, *words)
    assert (not os.path.exists(tmp_path / 'data' / 'x')
            and not [p for p in os.listdir(tmp_path) if 'prepare' in p])
