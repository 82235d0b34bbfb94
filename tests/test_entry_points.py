"""lit_llm.cli: the one error path of every entry point (train, generate, evaluate, export)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lit_llm import cli
from lit_llm.config_validation import ConfigError

REPO = Path(__file__).resolve().parent.parent


def failing(exc: BaseException):
    def task(cfg) -> None:
        raise exc

    return cli.report_errors(task)


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (ValueError("bad value"), 1),
        (FileNotFoundError("no such file"), 1),
        (FileExistsError("out=x: exists"), 1),
        (ConfigError(["model.d_model=100: expected a multiple of num_heads=3"]), 2),
    ],
)
def test_a_user_error_is_one_error_line_and_an_exit_status(
    exc: BaseException, code: int, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        failing(exc)(None)
    assert exit_info.value.code == code
    assert capsys.readouterr().err == f"error: {exc}\n"


def test_a_bug_or_hydra_full_error_keeps_the_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(KeyError):
        failing(KeyError("a bug"))(None)
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(ValueError, match="bad value"):
        failing(ValueError("bad value"))(None)


def test_the_tools_compose_from_their_own_search_path(tmp_path: Path) -> None:
    """``data=`` is evaluate's own key (no clash with the training group data/), and a tool writes
    nothing but its output: no outputs/, .hydra/ or log file."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("HYDRA_FULL_ERROR", None)
    run = lambda *a: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "lit_llm.evaluate", *a], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    missing = run("data=quickstart")
    assert missing.returncode == 1
    assert missing.stderr == "error: ckpt=PATH is required\n"
    job = run("--cfg", "job", "data=valid.txt")
    assert job.returncode == 0 and "data: valid.txt" in job.stdout
    assert list(tmp_path.iterdir()) == []
