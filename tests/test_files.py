"""tokenizer.files: the one set of atomic-write, JSON, hash and temp-sweep primitives."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pytest

from tokenizer.files import (
    atomic_write,
    building_dir,
    copy_file,
    read_json,
    sha256_file,
    sweep_stale_temps,
    temp_path,
    write_json,
    write_text,
)


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    path = tmp_path / "a.txt"
    write_text(path, "old")
    with pytest.raises(RuntimeError), atomic_write(path, "w", encoding="utf-8") as f:
        f.write("new, half")
        raise RuntimeError("crash mid-write")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"], "the temp file was left behind"
    write_text(path, "new")
    assert path.read_text() == "new"


def test_json_round_trip_and_one_line_errors(tmp_path):
    write_json(tmp_path / "x.json", {"b": 1, "a": ["é"]})
    assert read_json(tmp_path / "x.json") == {"b": 1, "a": ["é"]}
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(ValueError, match=r"meta file .*bad.json: not valid JSON"):
        read_json(tmp_path / "bad.json", "meta file")
    with pytest.raises(FileNotFoundError, match=r"meta file .*none.json not found"):
        read_json(tmp_path / "none.json", "meta file")


def test_sha256_file_equals_hashlib(tmp_path):
    data = os.urandom(3_000_000)
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f", chunk_bytes=4096) == hashlib.sha256(data).hexdigest()


def test_copy_file_survives_a_later_replace_of_its_source(tmp_path):
    write_text(tmp_path / "last", "one")
    copy_file(tmp_path / "last", tmp_path / "best")
    write_text(tmp_path / "last", "two")
    assert (tmp_path / "best").read_text() == "one"


def test_building_dir_is_complete_or_absent(tmp_path):
    out = tmp_path / "tok"
    with pytest.raises(KeyboardInterrupt), building_dir(out) as tmp:
        (tmp / "vocab.json").write_text("{}")
        raise KeyboardInterrupt
    assert not out.exists() and list(tmp_path.iterdir()) == []
    with building_dir(out) as tmp:
        (tmp / "vocab.json").write_text("{}")
    with building_dir(out) as tmp:  # replaces the old folder whole
        (tmp / "merges.txt").write_text("")
    assert sorted(p.name for p in out.iterdir()) == ["merges.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["tok"]


def test_sweep_removes_only_temps_of_dead_processes(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(dead.stdout)  # that process has exited: its pid names no live writer (or a reused one)
    stale = tmp_path / f".last.ckpt.tmp-{dead_pid}-0123abcd"
    stale.write_bytes(b"half")
    stale_dir = tmp_path / f".tok.tmp-{dead_pid}-89abcdef"
    stale_dir.mkdir()
    live = temp_path(tmp_path / "last.ckpt")  # ours: alive
    live.write_bytes(b"writing")
    keep = tmp_path / "last.ckpt"
    keep.write_bytes(b"good")
    removed = sweep_stale_temps(tmp_path)
    if not _alive(dead_pid):  # the pid was not reused in between
        assert set(removed) == {stale, stale_dir}
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, keep.name])
    assert live.exists() and keep.exists()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
