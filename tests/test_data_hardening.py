"""Issue 12: workers die with their parent, no partial cache validates, one invalid-UTF-8 policy, temps swept.

(Kill -9 of the command lines themselves, at chosen points: tests/test_crash.py.)
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from lit_llm.data import synthetic
from lit_llm.data.prepare import DataSpec, prepare, text_files
from tokenizer.cli_encode import main as encode_main
from tokenizer.cli_train import main as train_main
from tokenizer.files import InvalidUTF8Error, check_utf8, scan_file, sweep_stale_temps, temp_path
from tokenizer.tokenizer import Tokenizer

REPO_ROOT = Path(__file__).resolve().parent.parent
EOT = "<|endoftext|>"
BAD_TEXT = b"hello world\n" * 50 + "caf\u00e9 ".encode() + b"\xff\xfe bad" + b" more text\n" * 20
BAD_AT = len(b"hello world\n" * 50 + "caf\u00e9 ".encode())


def wait_gone(procs: list[psutil.Process], attempts: int = 200) -> list[psutil.Process]:
    """The processes of ``procs`` still alive after a bounded wait (reaped zombies count as gone)."""
    alive = procs
    for _ in range(attempts):
        alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if not alive:
            break
        time.sleep(0.05)
    return alive


def children_of(pid: int, at_least: int, attempts: int = 400) -> list[psutil.Process]:
    parent = psutil.Process(pid)
    for _ in range(attempts):
        kids = parent.children()
        if len(kids) >= at_least:
            return kids
        time.sleep(0.025)
    raise AssertionError(f"process {pid} never had {at_least} children")


# ----- 2: workers die with their parent -----------------------------------------------------------

POOL_SCRIPT = """
import os, sys, time
from tokenizer.pretokenize import Workers

mode = sys.argv[1]

def work(i, send):
    if mode == "compute":  # busy far longer than the test waits, never touching its pipe
        time.sleep(3600)
    else:  # blocked writing: the parent never reads, so the pipe fills and send() waits
        while True:
            send(b"x" * 65536)

with Workers(2, work) as pool:
    print("ready", flush=True)
    time.sleep(3600)
"""


@pytest.mark.parametrize("mode", ["compute", "write"])
def test_pool_workers_die_with_a_killed_parent(tmp_path, mode):
    script = tmp_path / "pool.py"
    script.write_text(POOL_SCRIPT)
    proc = subprocess.Popen(
        [sys.executable, str(script), mode], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        kids = children_of(proc.pid, 2)
        proc.kill()
        proc.wait()
        assert wait_gone(kids) == [], "pool workers outlived their killed parent"
    finally:
        proc.kill()
        proc.wait()


# ----- 3: a partly written cache never validates ----------------------------------------------------


def test_quickstart_corpus_killed_while_writing_valid_is_regenerated(tmp_path, monkeypatch, caplog):
    old = DataSpec(data_dir=str(tmp_path / "data"), synthetic_stories=30, synthetic_val_stories=5)
    new = DataSpec(data_dir=str(tmp_path / "data"), synthetic_stories=40, synthetic_val_stories=5)
    train, valid = text_files(old)
    old_train, old_valid = train.read_bytes(), valid.read_bytes()

    real = synthetic.write_corpus

    def failing(path, n_stories, seed=0):  # the valid.txt writer fails midway (a kill, a full disk)
        if Path(path).name == "valid.txt":
            raise OSError("No space left on device")
        return real(path, n_stories, seed)

    monkeypatch.setattr(synthetic, "write_corpus", failing)
    with pytest.raises(OSError, match="No space"):
        text_files(new)
    assert train.read_bytes() != old_train  # the new train.txt is in place, corpus.json is not
    monkeypatch.setattr(synthetic, "write_corpus", real)

    with caplog.at_level(logging.INFO, logger="lit_llm.data.prepare"):
        train, valid = text_files(old)
    assert "corpus quickstart: reused" not in caplog.text
    assert "corpus quickstart: built" in caplog.text
    assert (train.read_bytes(), valid.read_bytes()) == (old_train, old_valid)
    assert not [p for p in train.parent.iterdir() if ".tmp-" in p.name]


# ----- 8: invalid UTF-8, one policy ---------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 1 << 20])
def test_scan_file_gives_the_absolute_offset_across_chunks(tmp_path, chunk):
    path = tmp_path / "t.txt"
    path.write_bytes(BAD_TEXT)
    assert scan_file(path, chunk_bytes=chunk)[1] == BAD_AT
    path.write_bytes("\u00e9".encode() * 9 + b"\xc3")  # a character cut off by the end of the file
    assert scan_file(path, chunk_bytes=chunk)[1] == 18
    path.write_bytes("ok \u20ac\U0001f600\n".encode() * 100)
    assert scan_file(path, chunk_bytes=chunk)[1] is None
    with pytest.raises(InvalidUTF8Error, match=rf"^{path}: invalid UTF-8 at byte 18$"):
        path.write_bytes("\u00e9".encode() * 9 + b"\xc3")
        check_utf8(path)


def test_tokenizer_train_refuses_invalid_utf8_before_any_work(tmp_path, capsys):
    bad = tmp_path / "bad.bin"
    bad.write_bytes(os.urandom(1 << 16))
    out = tmp_path / "tok"
    args = ["--input", str(bad), "--vocab-size", "300", "--out", str(out), "--workers", "1"]
    assert train_main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {bad}: invalid UTF-8 at byte "), err
    assert not out.exists() and list(tmp_path.iterdir()) == [bad]
    assert train_main([*args, "--errors", "replace"]) == 0
    assert Tokenizer.from_dir(out).vocab_size == 300


def test_tokenizer_encode_refuses_invalid_utf8_before_any_work(tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(BAD_TEXT)
    tok = Tokenizer({i: bytes([i]) for i in range(256)}, [], []).save(tmp_path / "tok")
    out = tmp_path / "out" / "bad.npy"
    out.parent.mkdir()
    args = ["--tokenizer", str(tok), "--input", str(bad), "--output", str(out), "--quiet", "--workers", "1"]
    assert encode_main(args) == 1
    assert capsys.readouterr().err.strip() == f"error: {bad}: invalid UTF-8 at byte {BAD_AT}"
    assert list(out.parent.iterdir()) == []
    assert encode_main([*args, "--errors", "replace"]) == 0
    ids = np.load(out)
    assert Tokenizer.from_dir(tok).decode(ids.tolist()) == BAD_TEXT.decode("utf-8", errors="replace")


@pytest.mark.filterwarnings("ignore:.*replaced 2 invalid UTF-8")
def test_training_data_refuses_invalid_utf8_naming_the_users_file(tmp_path):
    bad = tmp_path / "mine.txt"
    bad.write_bytes(BAD_TEXT)
    spec = DataSpec(
        dataset="local", train_file=str(bad), vocab_size=260, artifacts_dir=str(tmp_path / "art"),
        tokenizer_workers=1,
    )  # fmt: skip
    with pytest.raises(InvalidUTF8Error, match=rf"^{bad}: invalid UTF-8 at byte {BAD_AT}$"):
        prepare(spec)
    art = tmp_path / "art"
    assert not (art / "tokenizers").exists() and not (art / "splits").exists()
    prepared = prepare(DataSpec(**{**spec.__dict__, "errors": "replace"}))
    assert np.load(prepared.train_tokens).size > 0
    assert "data.errors='bogus'" in DataSpec(errors="bogus").problems()[0]


# ----- 10: stale temporaries are swept ----------------------------------------------------------------


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _stale(folder: Path, name: str, is_dir: bool = False) -> Path:
    """A temporary name (``temp_path``'s scheme) whose writer is dead."""
    live = temp_path(folder / name)
    stale = live.with_name(live.name.replace(f"-{os.getpid()}-", f"-{_dead_pid()}-"))
    folder.mkdir(parents=True, exist_ok=True)
    stale.mkdir() if is_dir else stale.write_bytes(b"partial")
    return stale


def test_stale_temps_are_swept_where_we_write(tmp_path):
    out = tmp_path / "tokenizers" / "mine"
    stale_dir = _stale(out.parent, "mine", is_dir=True)
    live = temp_path(out.parent / "other")  # a live writer's temporary is left alone
    live.write_bytes(b"")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("hello world, hello there\n" * 200)
    assert (
        train_main(["--input", str(corpus), "--vocab-size", "270", "--out", str(out), "--workers", "1"]) == 0
    )
    assert not stale_dir.exists() and live.exists()

    npy_dir = tmp_path / "npy"
    stale_npy = _stale(npy_dir, "c.npy")
    assert encode_main(["--tokenizer", str(out), "--input", str(corpus), "--output", str(npy_dir / "c.npy"),
                        "--quiet", "--workers", "1"]) == 0  # fmt: skip
    assert not stale_npy.exists()

    spec = DataSpec(
        dataset="local", train_file=str(corpus), vocab_size=270, artifacts_dir=str(tmp_path / "art"),
        tokenizer_workers=1, data_dir=str(tmp_path / "data"),
    )  # fmt: skip
    prepare(spec)  # everything built; now leave stale temporaries beside each cache and re-run
    art = tmp_path / "art"
    stale = [
        _stale(art / sub, "x", is_dir=sub != "hashes") for sub in ("hashes", "splits", "tokenizers", "tokens")
    ]
    prepare(spec)  # every step a cache hit, and still swept
    assert [p for p in stale if p.exists()] == []
    assert sweep_stale_temps(art / "tokens") == []


def test_no_temp_name_scheme_but_temp_path():
    """Every temporary name in the code goes through ``temp_path`` (the sweep knows no other scheme)."""
    offenders = []
    for path in [
        *REPO_ROOT.joinpath("tokenizer").glob("*.py"),
        *REPO_ROOT.joinpath("lit_llm/data").glob("*.py"),
    ]:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if any(s in code for s in ("mkstemp", "mkdtemp", "NamedTemporaryFile", '".tmp', "'.tmp")):
                offenders.append(f"{path.name}:{n}: {line.strip()}")
    assert offenders == []


def test_crash_at_rename_hook(tmp_path):
    code = "from tokenizer.files import write_text as w; w('a.txt', 'a'); w('b.txt', 'b'); print('done')"
    env = {**os.environ, "LIT_LLM_CRASH_AT_RENAME": "2", "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 137 and "done" not in proc.stdout
    assert (tmp_path / "a.txt").read_text() == "a" and not (tmp_path / "b.txt").exists()
    assert [p.name for p in tmp_path.glob(".b.txt.tmp-*")]  # the kill left its temporary behind
    assert len(sweep_stale_temps(tmp_path)) == 1
