"""The cached pipeline text -> tokenizer -> token arrays: reuse, rebuilds, splits and clear errors."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from lit_llm.data import prepare as prep
from lit_llm.data.prepare import DataSpec, file_digest, find_boundary, prepare, split_file
from lit_llm.data.synthetic import EOT, write_corpus
from tokenizer.tokenizer import Tokenizer


@pytest.fixture
def counted(monkeypatch):
    """Count the calls of train_bpe and encode_file made by the pipeline (the expensive steps)."""
    calls = {"train_bpe": [], "encode_file": []}
    real_train, real_encode = prep.train_bpe, prep.encode_file

    def train_bpe(path, *args, **kwargs):
        calls["train_bpe"].append(os.path.getsize(path))
        return real_train(path, *args, **kwargs)

    def encode_file(path, *args, **kwargs):
        calls["encode_file"].append(str(path))
        return real_encode(path, *args, **kwargs)

    monkeypatch.setattr(prep, "train_bpe", train_bpe)
    monkeypatch.setattr(prep, "encode_file", encode_file)
    return calls


@pytest.fixture
def corpus(tmp_path):
    return write_corpus(tmp_path / "in" / "stories.txt", 150, seed=5)


def _spec(tmp_path, **kw) -> DataSpec:
    base = dict(
        dataset="local",
        vocab_size=320,
        data_dir=str(tmp_path / "data"),
        artifacts_dir=str(tmp_path / "artifacts"),
        tokenizer_workers=1,
    )
    return DataSpec(**{**base, **kw})


def test_second_run_reuses_everything_and_a_new_vocab_rebuilds(tmp_path, corpus, counted):
    spec = _spec(tmp_path, train_file=str(corpus))
    first = prepare(spec)
    assert len(counted["train_bpe"]) == 1 and len(counted["encode_file"]) == 2
    again = prepare(spec)
    assert again == first  # same artifacts, found by their keys
    assert len(counted["train_bpe"]) == 1 and len(counted["encode_file"]) == 2  # no tokenization at all

    os.utime(corpus, ns=(1, 1))  # touched but unchanged: rehashed, still reused
    assert prepare(spec) == first and len(counted["train_bpe"]) == 1

    bigger = prepare(_spec(tmp_path, train_file=str(corpus), vocab_size=400))
    assert len(counted["train_bpe"]) == 2 and len(counted["encode_file"]) == 4
    assert bigger.tokenizer_dir != first.tokenizer_dir and bigger.train_tokens != first.train_tokens
    assert first.tokenizer_dir.is_dir()  # the old artifacts stay valid for the old config


def test_changed_corpus_rebuilds(tmp_path, corpus, counted):
    spec = _spec(tmp_path, train_file=str(corpus))
    first = prepare(spec)
    write_corpus(corpus, 150, seed=6)  # same path, new content
    second = prepare(spec)
    assert len(counted["train_bpe"]) == 2
    assert second.fingerprint["tokenizer"] != first.fingerprint["tokenizer"]
    assert second.fingerprint["tokens"] != first.fingerprint["tokens"]


def test_tokens_round_trip_and_bytes_per_token(tmp_path, corpus):
    spec = _spec(tmp_path, train_file=str(corpus), val_fraction=0.2)
    out = prepare(spec)
    tok = Tokenizer.from_dir(out.tokenizer_dir)
    train, valid = np.load(out.train_tokens), np.load(out.val_tokens)
    train_text, valid_text = prep.text_files(spec)
    assert tok.decode(train.tolist()) == train_text.read_text(encoding="utf-8")
    assert tok.decode(valid.tolist()) == valid_text.read_text(encoding="utf-8")
    assert (train_text.read_bytes() + valid_text.read_bytes()) == corpus.read_bytes()
    assert out.val_bytes_per_token == pytest.approx(len(valid_text.read_bytes()) / len(valid))
    assert out.fingerprint["train_tokens"] == len(train) and out.fingerprint["val_tokens"] == len(valid)
    meta = json.loads((out.train_tokens.parent / "meta.json").read_text())
    assert meta["valid"]["n_bytes"] == len(valid_text.read_bytes())


def test_separate_validation_file(tmp_path, counted):
    train = write_corpus(tmp_path / "t.txt", 100, seed=1)
    valid = write_corpus(tmp_path / "v.txt", 20, seed=2)
    out = prepare(_spec(tmp_path, train_file=str(train), val_file=str(valid)))
    assert counted["encode_file"] == [str(train), str(valid)]
    assert out.val_bytes_per_token == pytest.approx(valid.stat().st_size / len(np.load(out.val_tokens)))
    assert not (tmp_path / "artifacts" / "splits").exists()


def test_split_at_a_story_boundary(tmp_path, corpus):
    spec = _spec(tmp_path, train_file=str(corpus), val_fraction=0.3)
    train, valid = split_file(spec, corpus, file_digest(corpus, tmp_path / "h"), build=True)
    a, b = train.read_text(encoding="utf-8"), valid.read_text(encoding="utf-8")
    assert a.endswith(f"{EOT}\n") and not b.startswith("\n") and b.endswith(f"{EOT}\n")
    assert abs(len(b) / (len(a) + len(b)) - 0.3) < 0.02
    mtime = train.stat().st_mtime_ns
    assert split_file(spec, corpus, file_digest(corpus, tmp_path / "h"), build=True) == (train, valid)
    assert train.stat().st_mtime_ns == mtime  # written once


def test_find_boundary_story_then_line(tmp_path):
    stories = tmp_path / "s.txt"
    stories.write_text(f"one two\nthree\n{EOT}\nfour five\nsix\n{EOT}\nseven\n", encoding="utf-8")
    data = stories.read_bytes()
    cut = find_boundary(stories, 2, (EOT,))
    assert data[:cut].endswith(f"{EOT}\n".encode()) and data[cut:].startswith(b"four")
    lines = tmp_path / "l.txt"
    lines.write_text("first line\nsecond line\nthird", encoding="utf-8")
    assert find_boundary(lines, 3, ()) == len("first line\n")
    with pytest.raises(ValueError, match="no line break after byte"):
        find_boundary(lines, len("first line\nsecond line\n") + 1, ())


def test_tokenizer_trained_on_a_head_of_the_text(tmp_path, corpus, counted):
    prepare(_spec(tmp_path, train_file=str(corpus), tokenizer_train_bytes=20_000))
    (size,) = counted["train_bpe"]
    assert 20_000 <= size < 22_000  # cut at the next story end


def test_quickstart_corpus_is_generated_once(tmp_path, counted):
    spec = _spec(tmp_path, dataset="quickstart", synthetic_stories=120, synthetic_val_stories=20)
    out = prepare(spec)
    raw = tmp_path / "data" / "raw" / "quickstart"
    assert (raw / "train.txt").read_text().count(EOT) == 120 and (raw / "valid.txt").read_text().count(
        EOT
    ) == 20
    mtime = (raw / "train.txt").stat().st_mtime_ns
    assert prepare(spec) == out and (raw / "train.txt").stat().st_mtime_ns == mtime
    prepare(_spec(tmp_path, dataset="quickstart", synthetic_stories=130, synthetic_val_stories=20))
    assert (raw / "train.txt").read_text().count(EOT) == 130 and len(counted["train_bpe"]) == 2


def test_named_dataset_file_placed_by_hand_is_used_offline(tmp_path, monkeypatch):
    """A file placed at data/raw/shakespeare/input.txt is used as is (no download), split 90/10."""

    def no_network(*args, **kwargs):
        raise AssertionError("must not download a file that is in place")

    monkeypatch.setattr(prep.download, "_fetch", no_network)
    raw = tmp_path / "data" / "raw" / "shakespeare"
    raw.mkdir(parents=True)
    text = "".join(f"LINE {i}: to be or not to be.\n" for i in range(2000))
    (raw / "input.txt").write_text(text, encoding="utf-8")
    out = prepare(_spec(tmp_path, dataset="shakespeare", special_tokens=(), vocab_size=300))
    n_val_bytes = out.val_bytes_per_token * len(np.load(out.val_tokens))
    assert n_val_bytes == pytest.approx(0.1 * len(text), rel=0.01)


def test_locate_only_before_prepare_says_what_to_do(tmp_path, corpus):
    with pytest.raises(FileNotFoundError, match=r"run prepare_data\(\) first"):
        prepare(_spec(tmp_path, train_file=str(corpus)), build=False)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"dataset": "wikipedia"}, "data.dataset='wikipedia': expected one of quickstart, shakespeare"),
        ({"dataset": "local"}, "data.train_file is required when data.dataset=local"),
        (
            {"train_file": "x.txt", "val_fraction": 0.0},
            "data.val_fraction=0.0: expected a number strictly between",
        ),
        ({"train_file": "x.txt", "val_fraction": 1.5}, "data.val_fraction=1.5"),
        ({"dataset": "shakespeare", "val_fraction": 1}, "data.val_fraction=1:"),
        ({"vocab_size": 200}, "data.vocab_size=200: expected an integer >= 257"),
        ({"val_file": "v.txt"}, "data.val_file='v.txt' needs data.train_file too"),
        ({"special_tokens": ("<a>", "<a>")}, "data.special_tokens=\\['<a>', '<a>'\\]: expected distinct"),
        ({"tokenizer_workers": 0}, "data.tokenizer_workers=0"),
        ({"dataset": "quickstart", "synthetic_stories": 0}, "data.synthetic_stories=0"),
    ],
)
def test_bad_values_name_the_key(tmp_path, fields, message):
    with pytest.raises(ValueError, match=message):
        prepare(_spec(tmp_path, **{"dataset": "quickstart", **fields}))


def test_all_problems_reported_at_once(tmp_path):
    with pytest.raises(ValueError) as info:
        prepare(_spec(tmp_path, dataset="nope", vocab_size=3))
    assert "data.dataset='nope'" in str(info.value) and "data.vocab_size=3" in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data.train_file='.*nothere.txt': no such file"):
        prepare(_spec(tmp_path, train_file=str(tmp_path / "nothere.txt")))
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match=r"data.train_file='.*empty.txt': the file is empty"):
        prepare(_spec(tmp_path, train_file=str(empty)))
    ok = write_corpus(tmp_path / "ok.txt", 5)
    with pytest.raises(ValueError, match=r"data.val_file='.*empty.txt': the file is empty"):
        prepare(_spec(tmp_path, train_file=str(ok), val_file=str(empty)))


def test_no_boundary_in_the_validation_tail(tmp_path):
    one_line = tmp_path / "one.txt"
    one_line.write_text("a single line of text with no line break at all " * 20, encoding="utf-8")
    with pytest.raises(ValueError, match="no line break after byte"):
        prepare(_spec(tmp_path, train_file=str(one_line)))
