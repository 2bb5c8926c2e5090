"""Files on disk: the token files prepare.py writes (data/<dataset>/{train,val}.bin, uint16, and meta.json),
and the one way every script writes its outputs (csv_text, write_files: all or nothing)."""
import csv
import io
import json
import os

import numpy as np
import torch


def open_split(data_root, dataset, split):
    """The token ids of one split as a read-only memmap; a missing file is a one-line error."""
    path = os.path.join(data_root, dataset, f'{split}.bin')
    if not os.path.exists(path):
        raise SystemExit(f"error: {path} not found: run `python prepare.py {dataset}` (or `python prepare.py "
                         f"--input FILE --name {dataset}`), or set --data_root")
    if os.path.getsize(path) == 0:   # np.memmap cannot map an empty file
        return np.zeros(0, dtype=np.uint16)
    try:
        return np.memmap(path, dtype=np.uint16, mode='r')
    except ValueError as e:   # e.g. an odd number of bytes
        raise SystemExit(f"error: {path} is not a uint16 token file ({e}): run prepare.py again")


def read_meta(data_root, dataset):
    path = os.path.join(data_root, dataset, 'meta.json')
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: cannot read {path} ({e}): run prepare.py again")


def tokenizer_of(d):
    """The tokenizer recorded in a meta.json or checkpoint dict: ('char', characters), ('bpe', our BPE as JSON)
    or ('gpt2', None)."""
    return ('char', d['chars']) if d.get('chars') else ('bpe', d['bpe']) if d.get('bpe') else ('gpt2', None)


def get_batch(data, batch_size, block_size, seed):
    """batch_size random windows x and y = x shifted by one, drawn by an RNG seeded with `seed` (ints) alone."""
    ix = np.random.default_rng(seed).integers(0, len(data) - block_size, size=batch_size)   # every window
    w = torch.from_numpy(np.stack([data[i:i + block_size + 1] for i in ix]).astype(np.int64))
    return w[:, :-1].contiguous(), w[:, 1:].contiguous()


def csv_text(rows, columns):
    """The rows (dicts) as CSV text: these columns, floats to 8 significant digits, lists space-separated."""
    def cell(v):
        return f'{v:.8g}' if isinstance(v, float) else ' '.join(map(cell, v)) if isinstance(v, list) else v
    buf = io.StringIO()
    csv.writer(buf, lineterminator='\n').writerows([columns] + [[cell(r.get(c)) for c in columns] for r in rows])
    return buf.getvalue()


def write_files(outputs):
    """Write {path: content} all or nothing: each to path.tmp, flushed to disk, then each renamed over its path;
    on any error no .tmp is left. content: str, bytes, or a function that writes to a binary file object
    (e.g. lambda f: torch.save(obj, f), or lambda f: fig.savefig(f, format='png'))."""
    tmps = {path: path + '.tmp' for path in outputs}
    try:
        for path, content in outputs.items():
            with open(tmps[path], 'wb') as f:
                if callable(content):
                    content(f)
                else:
                    f.write(content.encode() if isinstance(content, str) else content)
                f.flush()
                os.fsync(f.fileno())
        for path, tmp in tmps.items():
            os.replace(tmp, path)
    finally:
        for tmp in tmps.values():
            if os.path.exists(tmp):
                os.remove(tmp)
