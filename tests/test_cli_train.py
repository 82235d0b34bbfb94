"""`python -m tokenizer train`: the folder it writes loads back as the tokenizer ``train_bpe`` learned,
and every bad input gets one ``error:`` line, a non-zero exit and no file written."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest

from tokenizer import cli_train, train_bpe
from tokenizer.tokenizer import Tokenizer

EOT = "<|endoftext|>"
FILES = {"vocab.json", "merges.txt", "tokenizer.json", "meta.json"}


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli_train.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_train_saves_what_train_bpe_learned(fixture_file, tmp_path, capsys):
    path = fixture_file("tinystories_sample.txt")
    out = tmp_path / "tok"
    code, stdout, stderr = run(
        capsys, "--input", path, "--vocab-size", 400, "--special-token", EOT, "--out", out
    )
    assert code == 0, stderr
    assert {p.name for p in out.iterdir()} == FILES

    tok = Tokenizer.from_dir(out)
    vocab, merges = train_bpe(path, 400, [EOT])
    assert tok.vocab == vocab and tok.merges == merges and tok.special_tokens == [EOT]

    meta = json.loads((out / "meta.json").read_text())
    data = path.read_bytes()
    assert meta["corpus_path"] == str(path.resolve())
    assert meta["corpus_bytes"] == len(data)
    assert meta["corpus_sha256"] == hashlib.sha256(data).hexdigest()
    assert meta["vocab_size"] == 400 and meta["special_tokens"] == [EOT]
    assert meta["num_merges"] == len(merges) and meta["training_seconds"] > 0
    # The corpus length in tokens comes from training; the encoder, run independently, agrees.
    n_tokens = len(tok.encode(data.decode("utf-8")))
    assert meta["corpus_tokens"] == n_tokens
    assert f"bytes per token on the corpus: {len(data) / n_tokens:.3f}" in stdout

    longest = max(vocab.values(), key=len)
    assert f"longest token: id {list(vocab.values()).index(longest)}, {len(longest)} bytes" in stdout
    assert "peak memory:" in stdout and "trained 400 tokens" in stdout
    assert "pre-tokenizing" in stderr and "merging" in stderr  # the progress display's final state


def test_python_m_tokenizer_train(fixture_file, tmp_path):
    out = tmp_path / "tok"
    args = ["--input", fixture_file("german.txt"), "--vocab-size", "300", "--out", out, "--workers", "1"]
    proc = subprocess.run(
        [sys.executable, "-m", "tokenizer", "train", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"wrote vocab.json, merges.txt, tokenizer.json, meta.json to {out}" in proc.stdout
    assert Tokenizer.from_dir(out).vocab_size == 300


def test_stopping_early_is_reported(tmp_path, capsys):
    path = tmp_path / "tiny.txt"
    path.write_text("ab ab")
    code, stdout, _ = run(capsys, "--input", path, "--vocab-size", 1000, "--out", tmp_path / "tok")
    assert code == 0
    assert "stopped early: no pair left after 2 merges (vocab 258)" in stdout
    assert json.loads((tmp_path / "tok" / "meta.json").read_text())["stopped_early"] is True


def test_invalid_utf8_is_refused_unless_errors_replace(tmp_path, capsys):
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"caf\xe9 au lait, caf\xe9 noir\n" * 10)
    code, _, stderr = run(capsys, "--input", path, "--vocab-size", 300, "--out", tmp_path / "tok")
    assert (code, stderr.strip()) == (1, f"error: {path}: invalid UTF-8 at byte 3")
    assert not (tmp_path / "tok").exists()
    args = ("--input", path, "--vocab-size", 300, "--out", tmp_path / "tok", "--errors", "replace")
    code, _, stderr = run(capsys, *args)
    assert code == 0
    assert f"warning: {path}: replaced 20 invalid UTF-8 sequence(s) with U+FFFD" in stderr
    assert json.loads((tmp_path / "tok" / "meta.json").read_text())["invalid_utf8_replaced"] == 20


def _bad(tmp_path, case: str) -> list:
    text = tmp_path / "text.txt"
    text.write_text("some text to train on\n")
    out = tmp_path / "out"
    base = ["--input", text, "--vocab-size", 300, "--out", out]
    if case == "missing":
        return ["--input", tmp_path / "nope.txt", "--vocab-size", 300, "--out", out]
    if case == "directory":
        return ["--input", tmp_path, "--vocab-size", 300, "--out", out]
    if case == "empty":
        (tmp_path / "empty.txt").write_bytes(b"")
        return ["--input", tmp_path / "empty.txt", "--vocab-size", 300, "--out", out]
    if case == "small vocab":
        return ["--input", text, "--vocab-size", 256, "--special-token", EOT, "--out", out]
    if case == "workers":
        return [*base, "--workers", 0]
    if case == "one-byte special":
        return [*base, "--special-token", "a"]
    if case == "out is a file":
        out.write_text("not a folder")
        return base
    if case == "out holds other files":
        out.mkdir()
        (out / "notes.txt").write_text("mine")  # --out is replaced whole: this would be lost
        return [*base, "--force"]
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "does not exist"),
        ("directory", "is a directory"),
        ("empty", "is empty"),
        ("small vocab", "vocab_size=256 is too small: expected at least 257"),
        ("workers", "--workers 0: expected at least 1"),
        ("one-byte special", "is a single byte"),
        ("out is a file", "exists and is not a folder"),
        ("out holds other files", "holds other files (notes.txt)"),
    ],
)
def test_bad_input_one_line_nothing_written(tmp_path, capsys, case, message):
    code, stdout, stderr = run(capsys, *_bad(tmp_path, case))
    assert code != 0
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], stderr
    assert stdout == ""
    out = tmp_path / "out"
    assert not out.is_dir() or [p.name for p in out.iterdir()] == ["notes.txt"]


def test_refuses_to_overwrite_a_tokenizer_unless_forced(tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_text("the quick brown fox jumps over the lazy dog\n" * 20)  # room for ~30 merges
    out = tmp_path / "tok"
    assert run(capsys, "--input", text, "--vocab-size", 270, "--out", out)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    code, _, stderr = run(capsys, "--input", text, "--vocab-size", 280, "--out", out)
    assert code != 0
    assert stderr.strip() == f"error: --out {out} already holds a tokenizer (vocab.json, merges.txt, " + (
        "tokenizer.json, meta.json); add --force"
    )
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before

    assert run(capsys, "--input", text, "--vocab-size", 280, "--out", out, "--force")[0] == 0
    assert Tokenizer.from_dir(out).vocab_size == 280


def test_failure_while_saving_leaves_nothing(tmp_path, capsys, monkeypatch):
    text = tmp_path / "text.txt"
    text.write_text("the cat sat on the mat\n" * 20)
    real_save = Tokenizer.save

    def save_then_fail(self, out_dir, extra_meta=None):
        real_save(self, out_dir, extra_meta)
        raise OSError("No space left on device")

    monkeypatch.setattr(Tokenizer, "save", save_then_fail)
    out = tmp_path / "deep" / "tok"
    code, _, stderr = run(capsys, "--input", text, "--vocab-size", 270, "--out", out)
    assert code == 1 and stderr.strip().splitlines()[-1] == "error: No space left on device"
    assert not out.exists()
    assert list((tmp_path / "deep").iterdir()) == []  # the temporary folder is gone too


def test_interrupt_writes_nothing(tmp_path, capsys, monkeypatch):
    text = tmp_path / "text.txt"
    text.write_text("the cat sat on the mat\n")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_train, "train", interrupted)
    code, _, stderr = run(capsys, "--input", text, "--vocab-size", 270, "--out", tmp_path / "tok")
    assert code == 130 and "interrupted; nothing was written" in stderr
    assert not (tmp_path / "tok").exists()
