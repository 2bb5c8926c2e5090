"""Loading a checkpoint never runs code: a pickle that would is refused by every entry point with a one-line
error, and the code it carries never runs."""
import os
from dataclasses import asdict

import pytest
import torch

from conftest import run_scripts
from model import GPT, GPTConfig


class Payload:
    """Unpickling this runs `touch marker`."""
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}',))


@pytest.fixture(scope='module')
def evil(tmp_path_factory):
    """(out_dir holding a ckpt.pt whose pickle would create `marker`, marker path)."""
    tmp = tmp_path_factory.mktemp('evil')
    config = GPTConfig(block_size=32, vocab_size=64, n_layer=1, n_head=2, n_embd=16)
    out, marker = tmp / 'evil', tmp / 'marker'
    out.mkdir()
    torch.save({'model': GPT(config).state_dict(), 'model_args': asdict(config), 'iter_num': 1,
                'best_val_loss': 9.0, 'optimizer': {}, 'config': {}, 'note': Payload(marker)},
               out / 'ckpt.pt')
    return out, marker


@pytest.fixture(scope='module')
def refusals(evil, tiny_data):
    """{entry point: its result on the code-carrying checkpoint}, all run in one process."""
    out, _ = evil
    ckpt = str(out / 'ckpt.pt')
    args = {'train': ['train.py', f'--out_dir={out}', f'--data_root={tiny_data}', '--dataset=tiny',
                      '--init_from=resume', '--n_layer=1', '--n_head=2', '--n_embd=16', '--block_size=32',
                      '--device=cpu', '--compile=False'],
            'sample': ['sample.py', f'--out_dir={out}', '--device=cpu'],
            'analyze': ['analyze.py', '--ckpt', ckpt, '--out_dir', str(out.parent / 'an')],
            'linearize': ['linearize.py', '--ckpt', ckpt, '--data_root', tiny_data, '--dataset=tiny',
                          '--device=cpu', '--out_dir', str(out.parent / 'lin')]}
    return dict(zip(args, run_scripts(list(args.values()))))


@pytest.mark.parametrize('entry', ['train', 'sample', 'analyze', 'linearize'])
def test_every_entry_point_refuses_a_code_carrying_checkpoint(entry, evil, refusals):
    r, marker = refusals[entry], evil[1]
    assert r.returncode != 0 and r.stderr.startswith('error:'), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and 'can run code' in r.stderr, r.stderr
    assert not marker.exists()


def test_the_payload_is_real(evil, refusals):   # after the refusals: the marker is made here
    out, marker = evil   # the same file opened unsafely does run the code: the test above can fail
    torch.load(out / 'ckpt.pt', weights_only=False)
    assert marker.exists()
