"""Token files DATA_ROOT/NAME/{train,val}.bin (uint16) and meta.json, all or nothing; see the README.
    python prepare.py shakespeare_char    # or shakespeare | openwebtext (downloads)
    python prepare.py --input a.txt b.txt --name mydata [--char | --bpe 2048] [--val_fraction 0.1]
"""
import argparse
import json
import os
import sys
import tempfile
import urllib.request

import numpy as np

from data import load_encoding

SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
OPENWEBTEXT = "Skylion007/openwebtext"
DATASETS = ["shakespeare_char", "shakespeare", "openwebtext"]
NPROC = os.cpu_count() or 1


def write_tokens(path, arrays):
    """Write token-id arrays to path as one flat uint16 file; returns (n_tokens, max_id)."""
    n, max_id = 0, 0
    with open(path, "wb") as f:
        for a in (np.asarray(x, dtype=np.uint16) for x in arrays):
            a.tofile(f)
            n, max_id = n + len(a), max(max_id, int(a.max(initial=0)))
    return n, max_id


def prepare_text(paths, tmp, val_fraction, enc, bpe=None):
    """Tokenize local UTF-8 files into tmp/{train,val}.bin: GPT-2's BPE (enc), our BPE (bpe: its vocabulary
    size) or one token per character (ids in sorted order); val: the last val_fraction of the tokens (our BPE:
    of the text, from a line start; the BPE is trained on the rest)."""
    texts, meta = [], {}
    for path in paths:
        try:
            with open(path, "rb") as f:
                texts.append(f.read().decode("utf-8"))
        except UnicodeDecodeError as e:
            raise SystemExit(f"error: {path} is not valid UTF-8 (bad byte at offset {e.start}); convert it "
                             "to UTF-8 first, e.g. with iconv") from None
    text = "\n".join(texts)
    if bpe:   # our byte-level BPE: GPT-2's pre-tokenizer, no special tokens (any UTF-8 text round-trips)
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
        cut = text.find("\n", int(len(text) * (1 - val_fraction))) + 1 or len(text)
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=bpe, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=False)
        lines = text[:cut].splitlines(keepends=True)   # pieces of 1,000 lines, counted in parallel
        tok.train_from_iterator(("".join(lines[i:i + 1000]) for i in range(0, len(lines), 1000)), trainer)
        if tok.get_vocab_size() < bpe:
            raise SystemExit(f"error: the train split supports only {tok.get_vocab_size():,} BPE tokens, "
                             f"fewer than --bpe {bpe:,}: give more text or a smaller --bpe")
        split = [tok.encode(t).ids for t in (text[:cut], text[cut:])]
        meta = {"vocab_size": tok.get_vocab_size(), "tokenizer": "bpe", "bpe": tok.to_str()}
    elif enc is None:
        codepoints, ids = np.unique(np.frombuffer(text.encode("utf-32-le"), np.uint32), return_inverse=True)
        if len(codepoints) > 65536:
            raise SystemExit(f"error: the text has {len(codepoints):,} distinct characters, more than uint16 "
                             f"ids hold")
        meta = {"vocab_size": len(codepoints), "tokenizer": "char", "chars": "".join(map(chr, codepoints))}
    else:   # one document per file, encoded in parallel, joined by <|endoftext|>
        parts = enc.encode_ordinary_batch(texts, num_threads=NPROC)
        ids = np.concatenate([np.array(([enc.eot_token] if k else []) + p, np.uint16)
                              for k, p in enumerate(parts)])
    if not bpe:
        split = np.split(ids, [len(ids) - int(len(ids) * val_fraction)])
    if min(map(len, split)) < 1:
        raise SystemExit(f"error: the input yields {len(split[0])} train and {len(split[1])} val tokens, too "
                         f"few for both splits; give more text or another --val_fraction")
    (n_train, max_train), (n_val, max_val) = (write_tokens(os.path.join(tmp, f"{name}.bin"), [ids])
                                              for name, ids in zip(("train", "val"), split))
    return meta | {"train_tokens": n_train, "val_tokens": n_val, "max_token_id": max(max_train, max_val)}


def prepare_openwebtext(tmp, enc):
    """Download OpenWebText, split off nanoGPT's val split, tokenize each document (then <|endoftext|>)."""
    os.environ.setdefault("HF_HUB_VERBOSITY", "error")  # no retry chatter offline
    from datasets import load_dataset
    try:
        ds = load_dataset(OPENWEBTEXT, num_proc=NPROC)
    except Exception as e:
        raise SystemExit(f"error: could not download {OPENWEBTEXT} ({type(e).__name__}: {e}); this needs "
                         "network access, or tokenize a local copy with --input FILE --name NAME"
                         .replace("\n", " ")) from None
    ds = ds["train"].train_test_split(0.0005, seed=2357, shuffle=True)
    meta, eot = {"source": OPENWEBTEXT, "max_token_id": 0}, [enc.eot_token]
    for split, dset in (("train", ds["train"]), ("val", ds["test"])):
        tok = dset.map(lambda b: {"ids": [x + eot
                                          for x in enc.encode_ordinary_batch(b["text"], num_threads=1)]},
                       batched=True, remove_columns=dset.column_names, num_proc=NPROC,
                       desc=f"tokenizing {split}")
        batches = (np.concatenate(b["ids"]) for b in tok.with_format("numpy").iter(batch_size=1024))
        n, max_id = write_tokens(os.path.join(tmp, f"{split}.bin"), batches)
        meta |= {f"{split}_tokens": n, "max_token_id": max(meta["max_token_id"], max_id)}
    return meta


def references(train, val, V, alpha=0.1):
    """How far below simple models a trained model got, in nats per val token: the unigram entropy of the
    val tokens, and (up to 100M train tokens) the val loss of a bigram model fit on train, smoothed toward the
    train unigram: p(b|a) = (n(a,b) + alpha V u(b)) / (n(a) + alpha V), u with add-one counts."""
    counts = np.bincount(val)
    p = counts[counts > 0] / counts.sum()
    out = {"val_unigram_entropy": float(-(p * np.log(p)).sum())}
    if len(train) > 100_000_000 or len(val) < 2:
        return out
    u = np.bincount(train, minlength=V) + 1.0
    u /= u.sum()
    pairs, n_pair = np.unique(train[:-1].astype(np.int64) * V + train[1:], return_counts=True)
    want = val[:-1].astype(np.int64) * V + val[1:]
    at = np.minimum(np.searchsorted(pairs, want), len(pairs) - 1)
    n_ab = np.where(pairs[at] == want, n_pair[at], 0)
    n_a = np.bincount(train[:-1], minlength=V)[val[:-1]]
    prob = (n_ab + alpha * V * u[val[1:]]) / (n_a + alpha * V)
    return out | {"val_bigram_loss": float(-np.log(prob).mean())}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.error = lambda msg: sys.exit(f"error: {msg} (see python prepare.py --help)")
    p.add_argument("dataset", nargs="?", choices=DATASETS, metavar="DATASET", help=", ".join(DATASETS))
    p.add_argument("--input", nargs="+", metavar="FILE", help="local UTF-8 text files instead of a download")
    p.add_argument("--name", help="output folder name (required with --input; default: the dataset's)")
    p.add_argument("--char", action="store_true", help="one token per character (with --input)")
    p.add_argument("--bpe", type=int, metavar="N", help="a byte-level BPE of N tokens from the train split")
    p.add_argument("--val_fraction", type=float, default=0.1, help="val share of --input or shakespeare")
    p.add_argument("--data_root", default="data", help="where NAME/ is written (default: data)")
    args = p.parse_args(argv)
    name, bpe = args.name or args.dataset, args.bpe is not None
    empty = [path for path in args.input or [] if not os.path.isfile(path) or os.path.getsize(path) == 0]
    for bad, msg in (((args.dataset is None) == (args.input is None),
                      "give either a dataset name or --input FILE ... --name NAME"),
                     (not name or name in (".", "..") or os.sep in name or (os.altsep and os.altsep in name),
                      "--name NAME is required with --input and must be a plain folder name"),
                     (args.char and args.dataset,
                      "--char goes with --input; the character-level tiny shakespeare is `shakespeare_char`"),
                     (bpe and not (args.input or args.dataset == "shakespeare"),
                      "--bpe N goes with --input FILE ... or the dataset shakespeare"),
                     (bpe and not 257 <= args.bpe <= 65536,
                      f"--bpe {args.bpe}: a byte-level BPE needs 257 to 65,536 tokens (bytes, uint16 files)"),
                     (args.char and bpe, "give --char or --bpe N, not both"),
                     (not 0 < args.val_fraction < 1, "--val_fraction must be between 0 and 1"),
                     (empty, f"input file {(empty or [''])[0]} not found or empty; give a file with text")):
        if bad:
            p.error(msg)
    char = args.char or args.dataset == "shakespeare_char"
    enc, source = (None, None) if char or args.bpe else load_encoding()
    meta = {"vocab_size": enc.n_vocab, "tokenizer": "gpt2", "tokenizer_source": source} if enc else {}
    dest = base = os.path.join(args.data_root, name)
    while not os.path.exists(base):  # work next to the output, creating no folder before everything succeeded
        base = os.path.dirname(os.path.abspath(base))
    with tempfile.TemporaryDirectory(prefix=".prepare-", dir=base) as tmp:
        if args.dataset in ("shakespeare", "shakespeare_char"):
            args.input = [os.path.join(tmp, "input.txt")]
            try:
                urllib.request.urlretrieve(SHAKESPEARE_URL, args.input[0])
            except Exception as e:
                flag = " --char" if char else f" --bpe {args.bpe}" if args.bpe else ""
                raise SystemExit(f"error: could not download {SHAKESPEARE_URL} ({e}); this needs network "
                                 f"access, or use a local copy of tiny shakespeare: python prepare.py "
                                 f"--input FILE --name {args.dataset}{flag}") from None
        if args.input:
            meta["source"] = SHAKESPEARE_URL if args.dataset else [os.path.abspath(p) for p in args.input]
            meta |= prepare_text(args.input, tmp, args.val_fraction, enc, args.bpe)
        else:
            meta |= prepare_openwebtext(tmp, enc)
        split = [np.memmap(os.path.join(tmp, f"{s}.bin"), np.uint16, mode="r") for s in ("train", "val")]
        meta |= references(*split, meta["vocab_size"])
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump(meta, f, indent=2)
        os.makedirs(dest, exist_ok=True)
        for file in ("train.bin", "val.bin", "meta.json"):  # meta.json last
            os.replace(os.path.join(tmp, file), os.path.join(dest, file))
    print(f"wrote {dest}/: {meta['train_tokens']:,} train + {meta['val_tokens']:,} val tokens, vocabulary "
          f"{meta['vocab_size']:,}; val loss of a unigram model {meta['val_unigram_entropy']:.3f}, "
          f"of a bigram model {meta.get('val_bigram_loss', float('nan')):.3f} nats")
    return meta


if __name__ == "__main__":
    try:
        main()
    except (KeyboardInterrupt, OSError) as e:  # disk full, permissions, a file where a folder should be, ...
        sys.exit(f"error: {str(e) or 'interrupted'}; nothing was written")
