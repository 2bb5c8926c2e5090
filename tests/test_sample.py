"""sample.py end to end on a tiny checkpoint saved the way train.py saves it."""
import os
import subprocess
import sys
from dataclasses import asdict

import torch

from conftest import run_scripts
from model import GPT, GPTConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_sample(*args):
    return subprocess.run([sys.executable, 'sample.py', *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


def test_sample_continues_the_prompt(tmp_path):
    config = GPTConfig(block_size=32, vocab_size=50304, n_layer=2, n_head=2, n_embd=16, attn=['linear', 'sd'])
    torch.save({'model': GPT(config).state_dict(), 'model_args': asdict(config)}, tmp_path / 'ckpt.pt')
    out = run_sample(f'--out_dir={tmp_path}', '--start=ROMEO:', '--num_samples=2', '--max_new_tokens=40',
                     '--device=cpu')
    assert out.returncode == 0, out.stderr
    samples = out.stdout.split('---------------\n')
    assert len(samples) == 3 and all(s.startswith('ROMEO:') for s in samples[:2])


def test_sample_errors_are_one_line():
    missing, out = run_scripts([['sample.py', '--out_dir=/nonexistent/dir'],
                                ['sample.py', '--temperatur=0.5']])   # both in one process
    assert missing.returncode != 0
    assert missing.stderr.strip() == 'error: no checkpoint at /nonexistent/dir/ckpt.pt'
    assert out.returncode != 0 and out.stderr.startswith("error: unknown config key 'temperatur'")
    assert len(out.stderr.strip().splitlines()) == 1
