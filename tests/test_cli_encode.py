"""`python -m tokenizer encode`: the array of encode_file, and one clear error line for bad input."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gpt2_reference import EOT, ours_gpt2

from tokenizer.cli_encode import main
from tokenizer.tokenizer import Tokenizer

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def tiny_dir(tmp_path):
    vocab = {i: bytes([i]) for i in range(256)} | {256: b"he", 257: b"hel", 258: EOT.encode()}
    return Tokenizer(vocab, [(b"h", b"e"), (b"he", b"l")], [EOT]).save(tmp_path / "tok")


def _run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_encodes_a_file(tmp_path, tiny_dir, capsys):
    src = tmp_path / "in.txt"
    src.write_text(f"hello help\n{EOT}\nshell\n" * 50, encoding="utf-8")
    code, out, err = _run(
        ["--tokenizer", tiny_dir, "--input", src, "--output", tmp_path / "o.npy", "--quiet"], capsys
    )
    assert code == 0, err
    tok = Tokenizer.from_dir(tiny_dir)
    assert np.load(tmp_path / "o.npy").tolist() == tok.encode(src.read_text(encoding="utf-8"))
    assert "tokens" in out and "o.meta.json" in out
    assert json.loads((tmp_path / "o.meta.json").read_text())["tokenizer_hash"] == tok.fingerprint


def test_module_entry_point_with_workers(tmp_path, fixture_file):
    tok_dir = ours_gpt2().save(tmp_path / "gpt2")
    src = fixture_file("tinystories_sample.txt")
    cmd = [sys.executable, "-m", "tokenizer", "encode", "--tokenizer", tok_dir, "--input", src]
    cmd += ["--output", tmp_path / "s.npy", "--workers", "2", "--chunk-mb", "0.001"]
    done = subprocess.run([str(c) for c in cmd], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    # The progress bar was drawn; not its speed's unit, which depends on the machine (a slow one: kB/s).
    assert f"encoding {src.name}" in done.stderr
    assert np.load(tmp_path / "s.npy").tolist() == ours_gpt2().encode(src.read_text(encoding="utf-8"))


@pytest.mark.parametrize(
    ("case", "message", "code"),
    [
        ("no_tokenizer", r"meta.json not found", 1),
        ("no_input", r"input file .*absent.txt not found", 1),
        ("no_output_dir", r"output folder .*nowhere does not exist", 1),
        ("bad_merges", r"merges.txt:3: expected two tokens separated by one space", 1),
        ("unknown_special", r"vocab.json: special token '<\|pad\|>' is not in the vocabulary", 1),
        ("bad_workers", r"--workers 0: expected at least 1", 2),
    ],
)
def test_bad_input_gives_one_error_line(tmp_path, tiny_dir, capsys, case, message, code):
    src = tmp_path / "in.txt"
    src.write_text("hello\n", encoding="utf-8")
    args = {"--tokenizer": tiny_dir, "--input": src, "--output": tmp_path / "o.npy"}
    extra = []
    if case == "no_tokenizer":
        args["--tokenizer"] = tmp_path / "nothing"
    elif case == "no_input":
        args["--input"] = tmp_path / "absent.txt"
    elif case == "no_output_dir":
        args["--output"] = tmp_path / "nowhere" / "o.npy"
    elif case == "bad_merges":
        (tiny_dir / "merges.txt").write_text("#version: 0.2\nh e\nhel\n", encoding="utf-8")
    elif case == "unknown_special":
        (tiny_dir / "meta.json").write_text(
            json.dumps({"special_tokens": [EOT, "<|pad|>"]}), encoding="utf-8"
        )
    elif case == "bad_workers":
        extra = ["--workers", "0"]
    code_got, out, err = _run([x for kv in args.items() for x in kv] + extra, capsys)
    assert code_got == code
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert re.search(message, lines[0]), lines[0]
    assert not (tmp_path / "o.npy").exists()


def test_usage_errors_exit_2(capsys):
    code, _, err = _run([], capsys)
    assert code == 2 and "required" in err
