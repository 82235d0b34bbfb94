"""encode_file: the ids of ``encode(whole file)`` for any number of workers, a loadable .npy, meta.json."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from gpt2_reference import EOT, ours_gpt2

from tokenizer.encode_to_npy import encode_file, meta_path_for
from tokenizer.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def markov_1mb():
    from benchmarks.markov_corpus import markov_corpus_path

    return markov_corpus_path(1)


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_equals_encode_for_any_number_of_workers(tmp_path, markov_1mb, workers):
    tok = ours_gpt2()
    out = tmp_path / "train.npy"
    # 16 KiB chunks: ~60 ranges, cut both at <|endoftext|> and at white space.
    n = encode_file(markov_1mb, out, tok, num_workers=workers, chunk_bytes=1 << 14, progress=False)
    ids = np.load(out, mmap_mode="r")
    assert isinstance(ids, np.memmap) and ids.dtype == np.uint16 and ids.shape == (n,)
    assert ids.tolist() == tok.encode(markov_1mb.read_text(encoding="utf-8"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.meta.json", "train.npy"]


@pytest.mark.parametrize("name", ["tinystories_sample.txt", "german.txt", "tinyshakespeare.txt"])
def test_equals_encode_on_real_text_with_tiny_chunks(tmp_path, fixture_file, name):
    tok = ours_gpt2()
    path = fixture_file(name)
    chunk = 256 if path.stat().st_size < 10_000 else 1 << 15
    n = encode_file(path, tmp_path / "x.npy", tok, num_workers=2, chunk_bytes=chunk, progress=False)
    assert np.load(tmp_path / "x.npy").tolist() == tok.encode(path.read_text(encoding="utf-8"))
    assert n > 0


def test_meta_json_describes_the_array_and_its_source(tmp_path, fixture_file):
    tok = ours_gpt2()
    src = fixture_file("tinystories_sample.txt")
    n = encode_file(src, tmp_path / "valid.npy", tok, num_workers=1, progress=True)
    meta = json.loads(meta_path_for(tmp_path / "valid.npy").read_text())
    size = src.stat().st_size
    assert meta_path_for(tmp_path / "valid.npy").name == "valid.meta.json"
    assert meta["n_tokens"] == n == len(tok.encode(src.read_text(encoding="utf-8")))
    assert meta["n_bytes"] == meta["source_size"] == size
    assert meta["bytes_per_token"] == pytest.approx(size / n)
    assert meta["tokenizer_hash"] == tok.fingerprint
    assert meta["source_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert meta["source_mtime_ns"] == src.stat().st_mtime_ns
    assert meta["dtype"] == "uint16" and meta["vocab_size"] == 50257


def test_uint32_when_the_vocabulary_exceeds_uint16(tmp_path):
    vocab = {i: bytes([i]) for i in range(256)}
    vocab |= {i: f"<unused{i}>".encode() for i in range(256, 70_000)}
    vocab[70_000] = b"<|big|>"
    tok = Tokenizer(vocab, [], ["<|big|>"])
    src = tmp_path / "in.txt"
    src.write_text("a<|big|>b " * 100, encoding="utf-8")
    n = encode_file(src, tmp_path / "out.npy", tok, num_workers=2, chunk_bytes=64, progress=False)
    ids = np.load(tmp_path / "out.npy")
    assert ids.dtype == np.uint32 and n == 400
    assert ids.tolist() == tok.encode(src.read_text(encoding="utf-8")) and ids.max() == 70_000


def test_empty_input_gives_an_empty_array(tmp_path):
    tok = Tokenizer({i: bytes([i]) for i in range(256)}, [])
    (tmp_path / "empty.txt").write_bytes(b"")
    assert encode_file(tmp_path / "empty.txt", tmp_path / "e.npy", tok, progress=False) == 0
    assert np.load(tmp_path / "e.npy").shape == (0,)
    assert json.loads((tmp_path / "e.meta.json").read_text())["bytes_per_token"] is None


def test_bad_arguments_write_nothing(tmp_path):
    tok = Tokenizer({i: bytes([i]) for i in range(256)}, [])
    src = tmp_path / "in.txt"
    src.write_text("hello", encoding="utf-8")
    with pytest.raises(FileNotFoundError, match="input file .*missing.txt not found"):
        encode_file(tmp_path / "missing.txt", tmp_path / "o.npy", tok)
    with pytest.raises(FileNotFoundError, match="output folder .*no_such_dir does not exist"):
        encode_file(src, tmp_path / "no_such_dir" / "o.npy", tok)
    with pytest.raises(ValueError, match="expected a file name ending in .npy"):
        encode_file(src, tmp_path / "o.bin", tok)
    (tmp_path / "d.npy").mkdir()
    with pytest.raises(IsADirectoryError, match="d.npy is a folder"):
        encode_file(src, tmp_path / "d.npy", tok)
    (tmp_path / "d.npy").rmdir()
    with pytest.raises(ValueError, match="num_workers=0"):
        encode_file(src, tmp_path / "o.npy", tok, num_workers=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt"]


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_invalid_utf8_names_the_first_bad_byte_and_leaves_nothing_behind(tmp_path, workers):
    """The error names the file's first bad byte (not a later one), whatever the number of workers."""
    tok = Tokenizer({i: bytes([i]) for i in range(256)}, [])
    src = tmp_path / "in.txt"
    src.write_bytes(b"good line\n" * 300 + b"bad \xff byte\n" + b"more\n" * 300 + b"\xfe\n" + b"end\n")
    with pytest.raises(ValueError, match=r"in.txt: invalid UTF-8 at byte 3004$"):
        encode_file(src, tmp_path / "o.npy", tok, num_workers=workers, chunk_bytes=256, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt"]


def test_slow_ranges_change_nothing_but_who_encodes_what(tmp_path, fixture_file, monkeypatch):
    """Workers take the next range when free (``Tickets``): with every third range slow, the worker
    holding one falls behind while the others take the next ones, so the ranges arrive out of order,
    and they are still written in file order."""
    import time

    from tokenizer import encode_to_npy

    tok = ours_gpt2()
    path = fixture_file("tinystories_sample.txt")
    encode_range = encode_to_npy._encode_range

    def uneven(path, start, end, tokenizer, errors="strict"):
        if start % 3 == 0:  # a fixed third-or-so of the ranges, by their offsets
            time.sleep(0.02)
        return encode_range(path, start, end, tokenizer, errors)

    monkeypatch.setattr(encode_to_npy, "_encode_range", uneven)
    for workers in (2, 3):
        out = tmp_path / f"w{workers}.npy"
        encode_file(path, out, tok, num_workers=workers, chunk_bytes=256, progress=False)
        assert np.load(out).tolist() == tok.encode(path.read_text(encoding="utf-8"))


def test_replaces_an_existing_output_atomically(tmp_path, fixture_file):
    tok = ours_gpt2()
    out = tmp_path / "t.npy"
    np.save(out, np.arange(5, dtype=np.uint16))
    meta_path_for(out).write_text('{"n_tokens": 5}')
    n = encode_file(fixture_file("german.txt"), out, tok, num_workers=1, progress=False)
    assert np.load(out).shape == (n,)
    assert json.loads(meta_path_for(out).read_text())["n_tokens"] == n
    assert EOT not in fixture_file("german.txt").read_text(encoding="utf-8")
