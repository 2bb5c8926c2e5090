"""Sample from a trained checkpoint (its vocabulary travels in it):
    python sample.py --out_dir=out/quick_sd --start="ROMEO:" [--num_samples=3]"""
import os

import torch

from configurator import configure
from data import codec, tokenizer_of
from model import GPT

out_dir = 'out'           # out_dir/ckpt.pt
start = '\n'              # prompt text, or "FILE:path" to read it from a file
num_samples = 3
max_new_tokens = 200
temperature = 0.8
top_k = 200
seed = 1337
device = 'cuda' if torch.cuda.is_available() else 'cpu'
globals().update(configure({k: v for k, v in globals().items()
                            if k[0] != '_' and isinstance(v, (int, float, str))}))

torch.manual_seed(seed)
model, ckpt = GPT.from_checkpoint(os.path.join(out_dir, 'ckpt.pt'), device)
model.eval()
encode, decode = codec(tokenizer_of(ckpt))
if start.startswith('FILE:'):
    with open(start[5:], encoding='utf-8') as f:
        start = f.read()
ids = encode(start) or encode('<|endoftext|>' if tokenizer_of(ckpt)[0] == 'gpt2' else '\n')
if max(ids) >= model.config.vocab_size:
    raise SystemExit(f"error: the prompt has token ids beyond this model's vocabulary "
                     f"({model.config.vocab_size})")
x = torch.tensor(ids, dtype=torch.long, device=device)[None, -model.config.block_size:]
for _ in range(num_samples):
    print(decode(model.generate(x, max_new_tokens, temperature=temperature, top_k=top_k)[0].tolist()))
    print('---------------')
