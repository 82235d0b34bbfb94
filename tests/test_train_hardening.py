"""Issue 12: `python -m lit_llm.train` refuses or fails in one line naming the cause, and every run gets a
folder of its own: runs started in the same second, a bad resume file, a read-only or full disk, a refused
start (no empty run folder left), the headline command offline."""

from __future__ import annotations

import argparse
import errno
import os
import sys
from datetime import datetime
from pathlib import Path

import pytest
import torch

from lit_llm import cli, train
from tests.test_train_e2e import REPO, run_train


def assert_one_error_line(result, *needles: str) -> str:
    """rc 1, no traceback, the last stderr line ``error: ...`` holding every needle; returns that line."""
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: "), output[-3000:]
    for needle in needles:
        assert needle in line, line
    return line


def run_folders(cwd: Path, name: str = "debug") -> list[Path]:
    return sorted(p for p in (cwd / "logs" / name).glob("*") if p.is_dir())


# -- 1. one folder per run -------------------------------------------------------------------------------


class _FixedClock:
    @staticmethod
    def now() -> datetime:
        return datetime(2026, 1, 2, 3, 4, 5)


def test_run_dir_gives_runs_of_the_same_second_folders_of_their_own(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(train, "datetime", _FixedClock)
    monkeypatch.setattr(train, "_RUN_DIRS", {})
    first = train.run_dir(str(tmp_path / "logs" / "x"))
    assert train.run_dir(str(tmp_path / "logs" / "x")) == first  # Hydra asks again: the same answer
    monkeypatch.setattr(train, "_RUN_DIRS", {})  # another process, the same second
    second = train.run_dir(str(tmp_path / "logs" / "x"))
    monkeypatch.setattr(train, "_RUN_DIRS", {})
    sweep = train.run_dir(str(tmp_path / "logs" / "x"), "multirun_")
    assert Path(first).name == "2026-01-02_03-04-05"
    assert Path(second).name == "2026-01-02_03-04-05-1"
    assert Path(sweep).name == "multirun_2026-01-02_03-04-05"
    assert all(Path(p).is_dir() for p in (first, second, sweep))


def test_a_run_never_lands_in_an_existing_run_folder(tmp_path, session_data_paths) -> None:
    # Another run started in this second (and the next few) already owns logs/debug/<timestamp>/.
    now = datetime.now().timestamp()
    taken = []
    for dt in range(-1, 60):
        folder = tmp_path / "logs" / "debug" / datetime.fromtimestamp(now + dt).strftime("%Y-%m-%d_%H-%M-%S")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "theirs").write_text("another run's file")
        taken.append(folder)
    run_train(tmp_path, "debug=fast", *session_data_paths)
    ours = [p for p in run_folders(tmp_path) if (p / "checkpoints" / "last.ckpt").is_file()]
    assert len(ours) == 1 and ours[0] not in taken, ours
    assert ours[0].name.rsplit("-", 1)[0] in {p.name for p in taken}  # <timestamp>-1
    assert not any((p / "checkpoints").exists() or (p / ".hydra").exists() for p in taken)
    # ckpt_path=last finds it (and the resumed run gets yet another folder).
    resumed = run_train(tmp_path, "debug=fast", "ckpt_path=last", "trainer.max_steps=6", *session_data_paths)
    assert f"resuming {ours[0] / 'checkpoints' / 'last.ckpt'}" in resumed.stdout + resumed.stderr


# -- 4. a bad resume file ----------------------------------------------------------------------------------


def _bad_checkpoint(kind: str, path: Path) -> None:
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "random":
        path.write_bytes(os.urandom(4096))
    elif kind == "truncated":
        torch.save({"state_dict": {"w": torch.zeros(4096)}}, path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "refused":  # an object the weights-only unpickler will not build
        torch.save({"state_dict": {}, "args": argparse.Namespace(lr=1.0)}, path)
    elif kind == "weights only":  # readable, but no training state (e.g. a bare state_dict)
        torch.save({"w": torch.zeros(2)}, path)


@pytest.mark.parametrize("kind", ["empty", "random", "truncated", "refused", "weights only"])
def test_check_checkpoint_refuses_a_bad_file_in_one_line(tmp_path, kind) -> None:
    path = tmp_path / "bad.ckpt"
    _bad_checkpoint(kind, path)
    with pytest.raises(ValueError) as info:
        train.check_checkpoint(str(path))
    assert str(path) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("kind", ["truncated", "refused"])
def test_resuming_from_a_bad_file_is_one_line_before_any_work(tmp_path, kind, session_data_paths) -> None:
    path = tmp_path / "bad.ckpt"
    _bad_checkpoint(kind, path)
    result = run_train(tmp_path, "debug=fast", f"ckpt_path={path}", *session_data_paths, check=False)
    assert_one_error_line(result, str(path))
    assert "Restoring states" not in result.stdout + result.stderr  # refused before the Trainer ran
    assert run_folders(tmp_path) == []  # nothing of a run: no folder left (defect 11)


# -- 6. read-only or full disks ----------------------------------------------------------------------------


def test_check_writable_names_an_unwritable_folder(tmp_path, monkeypatch) -> None:
    real_open = os.open

    def read_only(path, flags, *args, **kwargs):
        if flags & os.O_CREAT:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(OSError) as info:
        train.check_writable(tmp_path / "ok", tmp_path / "ro")
    assert info.value.errno == errno.EROFS and info.value.filename == str(tmp_path / "ok")
    assert cli.message(info.value) == f"cannot write {tmp_path / 'ok'}: Read-only file system"
    monkeypatch.setattr(os, "open", real_open)
    train.check_writable(tmp_path / "ok")  # writable: no probe file left behind
    assert list((tmp_path / "ok").iterdir()) == []


def test_output_folders_are_every_place_a_run_writes() -> None:
    config = {
        "paths": {"output_dir": "/r", "data_dir": "/d", "artifacts_dir": "/a"},
        "callbacks": {"model_checkpoint": {"dirpath": "/r/checkpoints"}},
        "data": {"data_dir": "/d2", "artifacts_dir": "/a2"},
    }
    assert train.output_folders(config) == ["/r", "/r/checkpoints", "/d2", "/a2"]


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (errno.ENOSPC, "error: cannot write /x/y: No space left on device"),
        (errno.EROFS, "error: cannot write /x/y: Read-only file system"),
        (errno.EDQUOT, "error: cannot write /x/y: Disk quota exceeded"),
        (errno.EACCES, "error: cannot access /x/y: Permission denied"),
    ],
)
def test_cli_reports_a_disk_error_in_one_line(code, expected, capsys, monkeypatch) -> None:
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)

    def task(cfg):
        raise OSError(code, os.strerror(code), "/x/y")

    with pytest.raises(SystemExit) as info:
        cli.report_errors(task)(None)
    assert info.value.code == 1
    assert capsys.readouterr().err == expected + "\n"


def test_cli_keeps_the_traceback_of_other_os_errors(monkeypatch) -> None:
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)

    def task(cfg):
        raise OSError(errno.EIO, "Input/output error", "/x/y")

    with pytest.raises(OSError):
        cli.report_errors(task)(None)


def test_a_checkpoint_written_to_a_full_disk_is_an_os_error_naming_it(tmp_path, monkeypatch) -> None:
    import io

    from lit_llm import checkpoint
    from lit_llm.run_checkpoints import AtomicCheckpointIO

    class Full(io.RawIOBase):
        def writable(self) -> bool:
            return True

        def write(self, data) -> int:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    # torch.save turns the failed write into a RuntimeError, the OSError only its __context__.
    monkeypatch.setattr(checkpoint, "save", lambda obj, out: torch.save(obj, io.BufferedWriter(Full())))
    monkeypatch.setattr("lit_llm.run_checkpoints.save", checkpoint.save)
    target = tmp_path / "last.ckpt"
    with pytest.raises(OSError) as info:
        AtomicCheckpointIO().save_checkpoint({"w": torch.zeros(100_000)}, target)
    assert cli.message(info.value) == f"cannot write {target}: No space left on device"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder anyway")
def test_a_read_only_checkpoint_folder_fails_at_start_up(tmp_path, session_data_paths) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        result = run_train(
            tmp_path,
            "debug=fast",
            f"callbacks.model_checkpoint.dirpath={ro}",
            *session_data_paths,
            check=False,
        )
    finally:
        ro.chmod(0o755)
    assert_one_error_line(result, str(ro), "Permission denied")


# -- 11. a refused start leaves no run folder ---------------------------------------------------------------


def test_a_refused_config_leaves_no_run_folder(tmp_path) -> None:
    result = run_train(tmp_path, "debug=fast", "optimizer.lr=-1", check=False)
    assert result.returncode == 2 and "optimizer.lr=-1" in result.stderr
    assert not (tmp_path / "logs" / "debug").exists(), list((tmp_path / "logs").rglob("*"))


# -- 12. the headline command offline -----------------------------------------------------------------------

OFFLINE = """
import runpy, socket, sys
import lit_llm.data.download as dl
s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()  # nothing listens
dl.DATASETS["tinystories"] = tuple(
    dl.RemoteFile(f"http://127.0.0.1:{port}/{r.filename}", r.filename) for r in dl.DATASETS["tinystories"]
)
sys.argv = ["lit_llm.train", *sys.argv[1:]]
runpy.run_module("lit_llm.train", run_name="__main__")
"""


def test_the_headline_command_offline_is_one_line_saying_where_to_place_the_file(tmp_path) -> None:
    import subprocess

    script = tmp_path / "offline.py"
    script.write_text(OFFLINE)
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("HYDRA_FULL_ERROR", None)
    result = subprocess.run(
        [sys.executable, str(script), "experiment=tinystories", "debug=fast"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    dest = tmp_path / "data" / "raw" / "tinystories" / "train.txt"
    assert_one_error_line(result, "could not download", f"place that file at {dest} yourself")
    # The run folder that got as far as the data records why it stopped.
    (log,) = (tmp_path / "logs").glob("*/*/train.log")
    assert "error: could not download" in log.read_text()
