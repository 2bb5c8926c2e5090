"""Several seeds of one arm (folders NAME_s<seed>): runs.py, analyze.py and linearize.py report mean ± std
over seeds, computed from the per-seed numbers they also report."""
import csv
import json
import math
import os
import statistics
from dataclasses import asdict

import numpy as np
import pytest
import torch

import analyze
import data
import linearize
import runs
from conftest import write_dataset
from model import GPT, GPTConfig


def save(path, config, seed):
    os.makedirs(path, exist_ok=True)
    torch.manual_seed(seed)
    model = GPT(config)
    torch.save({'model': model.state_dict(), 'model_args': asdict(config), 'iter_num': 0,
                'best_val_loss': 9.9, 'config': {'dataset': 'tiny'}}, os.path.join(path, 'ckpt.pt'))
    return model


@pytest.fixture(scope='module')
def seeds(tmp_path_factory):
    """Three seeds of arm 'sd' and one of arm 'std' (tiny, random weights), and a dataset they read."""
    tmp = tmp_path_factory.mktemp('seeds')
    config = dict(block_size=16, vocab_size=64, n_layer=3, n_head=2, n_embd=32)
    for seed in (1, 2, 3):
        save(tmp / f'sd_s{seed}', GPTConfig(**config, attn='sd', norm='none'), seed)
    save(tmp / 'std_s1', GPTConfig(**config), 9)
    write_dataset(str(tmp / 'data'), 'tiny', np.random.default_rng(0).integers(0, 64, 3000), 64)
    return tmp


def test_arm_of():
    assert data.arm_of('sd_none_s12') == 'sd_none' and data.arm_of('sd_s1x') == 'sd_s1x' \
        and data.arm_of('a') == 'a'


def test_labels_in_words():
    assert data.label('d6_sd_emb1_s2') == data.label('sub12_sd_emb1') == 'S−D, no LN, GPT-2 init'
    assert data.label('all_std_s3') == 'standard + LN'
    assert data.label('stab_std_lr8e-3') == 'standard + LN, lr 8e-3'
    assert data.label('mine_s1') == 'mine'   # unknown arms keep their name


def test_mean_std_nan_in_nan_out():
    assert data.mean_std([1.0, 3.0]) == (2.0, statistics.stdev([1.0, 3.0])) \
        and math.isnan(data.mean_std([2.0])[1])
    assert all(math.isnan(v) for xs in ([1.0, math.nan], [math.nan], []) for v in data.mean_std(xs))


def test_runs_table_is_mean_and_std_over_finished_seeds(tmp_path):
    finals = {'a_s1': 1.50, 'a_s2': 1.60, 'a_s3': 1.55, 'b_s1': 2.0, 'b_s2': 9.0}
    for name, final in finals.items():
        os.makedirs(tmp_path / name)
        last = 100 if name != 'b_s2' else 50   # b_s2 did not finish: left out of the mean
        lines = [{'iter': 0, 'val_loss': 4.0}, {'iter': 9, 'loss': 3.0, 'tokens_per_s': 1000.0},
                 {'iter': last, 'val_loss': final}]   # a log from before the parameter counts
        (tmp_path / name / 'log.jsonl').write_text(''.join(json.dumps(x) + '\n' for x in lines))
    rows = {r['arm']: r
            for r in runs.main([str(tmp_path / n) for n in finals] + ['--out_dir', str(tmp_path / 'o')])}
    assert rows['a']['seeds'] == 3 and rows['a']['val_loss'] == pytest.approx(1.55)
    assert rows['a']['std'] == pytest.approx(statistics.stdev([1.50, 1.60, 1.55]))
    assert rows['b']['seeds'] == 1 and rows['b']['val_loss'] == 2.0
    assert (tmp_path / 'o' / 'runs.png').read_bytes()[:4] == b'\x89PNG'
    assert (tmp_path / 'o' / 'runs.csv').read_text().splitlines()[1].startswith('a,3,3,0,1.55,')
    assert rows['a']['params'] is None and rows['a']['tokens_per_s'] == 1000.0


def test_tradeoff_is_attention_share_and_ppl_change_against_the_baseline(tmp_path):
    config = dict(block_size=16, vocab_size=64, n_layer=2, n_head=2, n_embd=32, attn='sd', norm='none')
    finals = {'base_s1': 1.5, 'base_s2': 1.6, 'small_s1': 1.6, 'small_s2': 1.7}
    for name, final in finals.items():   # the counts as train.py logs them, before the first iteration
        model = save(tmp_path / name, GPTConfig(**config, head_dim=8 if 'small' in name else None), 0)
        counts = {'iter': -1, 'params': model.num_params(), 'attn_params': model.num_attention_params()}
        (tmp_path / name / 'log.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in
                                                           (counts, {'iter': 10, 'val_loss': final})))
    rows = {r['arm']: r for r in runs.main([str(tmp_path / n) for n in finals] +
                                           ['--out_dir', str(tmp_path / 'o'), '--vs', 'small=base'])}
    small, base = rows['small'], rows['base']
    assert small['attn_params'] < base['attn_params'] and small['params'] < base['params']
    assert small['attn_pct'] == pytest.approx(100 * small['attn_params'] / base['attn_params'])
    deltas = [100 * (math.exp(f - 1.55) - 1) for f in (1.6, 1.7)]
    assert small['dppl'] == pytest.approx(statistics.mean(deltas))
    assert small['dppl_std'] == pytest.approx(statistics.stdev(deltas))
    assert 'vs' not in base
    assert small['base_std'] == pytest.approx(100 * (math.exp(statistics.stdev([1.5, 1.6])) - 1))
    with pytest.raises(SystemExit, match='not among the runs'):
        runs.main([str(tmp_path / 'base_s1'), '--vs', 'small=base'])


def test_analyze_arms_are_mean_and_std_of_the_seeds(seeds):
    out = seeds / 'an'
    analyze.main(['--ckpt', *(str(seeds / n) for n in ('sd_s1', 'sd_s2', 'sd_s3', 'std_s1')),
                  '--out_dir', str(out)])
    summary = json.loads((out / 'summary.json').read_text())
    assert list(summary['arms']) == ['sd']   # std has one seed: no arm entry
    arm = summary['arms']['sd']
    assert arm['seeds'] == ['sd_s1', 'sd_s2', 'sd_s3']
    with open(out / 'heads.csv') as f:
        rows = [r for r in csv.DictReader(f) if r['level'] == 'weight']
    for metric in ('routing_erank', 'd_scalarness'):
        for layer in range(3):
            per_seed = [statistics.mean(float(r[metric]) for r in rows
                                        if r['model'] == m and int(r['layer']) == layer)
                        for m in arm['seeds']]
            # heads.csv keeps 8 digits
            assert arm['weight'][metric]['mean'][layer] == pytest.approx(statistics.mean(per_seed), rel=1e-5)
            assert arm['weight'][metric]['std'][layer] == pytest.approx(statistics.stdev(per_seed), rel=1e-4)


def test_linearize_arms_are_mean_and_std_of_the_seeds(seeds, capsys):
    out = seeds / 'lin'
    rows = linearize.main(['--ckpt',
                           *(str(seeds / n / 'ckpt.pt') for n in ('sd_s1', 'sd_s2', 'sd_s3', 'std_s1')),
                           '--data_root', str(seeds / 'data'), '--num_batches', '2', '--batch_size', '4',
                           '--device', 'cpu', '--out_dir', str(out)])
    with open(out / 'linearize_arms.csv') as f:
        arms = list(csv.DictReader(f))
    assert {(a['arm'], a['n']) for a in arms} == {('sd', '3'), ('std', '1')}
    for a in arms:
        if a['arm'] == 'sd':
            per_seed = [r['delta_pct'] for r in rows if '/sd_s' in r['ckpt'] and r['k'] == int(a['k'])]
            assert len(per_seed) == 3
            assert float(a['delta_pct']) == pytest.approx(statistics.mean(per_seed), abs=1e-5)
            assert float(a['delta_pct_std']) == pytest.approx(statistics.stdev(per_seed), abs=1e-5)
    assert 'mean ± std over seeds' in capsys.readouterr().out


def test_fisher_exact_test_matches_known_values():
    assert runs.fisher(1, 9, 11, 3) == pytest.approx(0.0027594562, rel=1e-7)   # R: fisher.test
    assert runs.fisher(8, 0, 0, 8) == pytest.approx(2 / math.comb(16, 8))
    assert runs.fisher(3, 5, 3, 5) == 1.0 and runs.fisher(0, 8, 0, 8) == 1.0


def test_spike_rates_and_the_spike_figure(tmp_path):
    """Arm a: 3 of 4 runs spiked, 2 of them stopped; arm b: none of 4. The table counts them, --vs tests the
    rates (Fisher: p = 0.143), the figure draws a's first traced spike."""
    def stats(it, loss):
        return {'iter': it, 'loss': loss, 'score_max': [1.0, 2.0 * loss], 'resid_rms': [1, 1, 2],
                'logit_rms': 3.0, 'logit_max': 9.0 * loss}

    for arm, seed in [(a, s) for a in 'ab' for s in range(4)]:
        spiked, stopped = arm == 'a' and seed > 0, arm == 'a' and seed > 1
        lines = [{'iter': 0, 'val_loss': 4.0}] + [stats(it, 2.0) for it in range(10, 100, 10)]
        if spiked:
            lines.append(stats(90, 2.0) | {'spike_iter': 125, 'spike_loss': 'inf' if seed == 2 else 20.0,
                                           'trace': [stats(100, 2.5), stats(110, 4.0)]})
        lines += [] if stopped else [{'iter': 200, 'val_loss': 1.5 + seed / 100}]
        os.makedirs(tmp_path / f'{arm}_s{seed}')
        (tmp_path / f'{arm}_s{seed}' / 'log.jsonl').write_text(''.join(json.dumps(x) + '\n' for x in lines))
    rows = {r['arm']: r for r in runs.main([str(p) for p in sorted(tmp_path.glob('*_s*'))] +
                                           ['--out_dir', str(tmp_path / 'o'), '--vs', 'a=b'])}
    assert (rows['a']['n'], rows['a']['spiked'], rows['a']['seeds']) == (4, 3, 2)
    assert (rows['b']['n'], rows['b']['spiked'], rows['b']['seeds']) == (4, 0, 4)
    assert rows['a']['p_spiked'] == pytest.approx(runs.fisher(3, 1, 0, 4)) == pytest.approx(1 / 7)
    assert (tmp_path / 'o' / 'spikes.png').read_bytes()[:4] == b'\x89PNG'
