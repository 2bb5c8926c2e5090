"""Loading a checkpoint never runs code: a pickle that would is refused by every entry point with a one-line
error, and the code it carries never runs."""
import os
import subprocess
import sys
from dataclasses import asdict

import pytest
import torch

from conftest import REPO
from model import GPT, GPTConfig


class Payload:
    """Unpickling this runs `touch marker`."""
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}',))


@pytest.fixture
def evil(tmp_path):
    """(out_dir holding a ckpt.pt whose pickle would create `marker`, marker path)."""
    config = GPTConfig(block_size=32, vocab_size=64, n_layer=1, n_head=2, n_embd=16)
    out, marker = tmp_path / 'evil', tmp_path / 'marker'
    out.mkdir()
    torch.save({'model': GPT(config).state_dict(), 'model_args': asdict(config), 'iter_num': 1,
                'best_val_loss': 9.0, 'optimizer': {}, 'config': {}, 'note': Payload(marker)},
               out / 'ckpt.pt')
    return out, marker


@pytest.mark.parametrize('entry', ['train', 'sample', 'analyze', 'linearize'])
def test_every_entry_point_refuses_a_code_carrying_checkpoint(entry, evil, tiny_data, tmp_path):
    out, marker = evil
    ckpt = str(out / 'ckpt.pt')
    args = {'train': ['train.py', f'--out_dir={out}', f'--data_root={tiny_data}', '--dataset=tiny',
                      '--init_from=resume', '--n_layer=1', '--n_head=2', '--n_embd=16', '--block_size=32',
                      '--device=cpu', '--compile=False'],
            'sample': ['sample.py', f'--out_dir={out}', '--device=cpu'],
            'analyze': ['analyze.py', '--ckpt', ckpt, '--out_dir', str(tmp_path / 'an')],
            'linearize': ['linearize.py', '--ckpt', ckpt, '--data_root', tiny_data, '--dataset=tiny',
                          '--device=cpu', '--out_dir', str(tmp_path / 'lin')]}[entry]
    r = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and r.stderr.startswith('error:'), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and 'can run code' in r.stderr, r.stderr
    assert not marker.exists()


def test_the_payload_is_real(evil):
    out, marker = evil   # the same file opened unsafely does run the code: the test above can fail
    torch.load(out / 'ckpt.pt', weights_only=False)
    assert marker.exists()
