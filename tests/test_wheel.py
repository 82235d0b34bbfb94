"""The wheel is the product a user installs: built from this tree, unpacked onto an empty ``sys.path``
entry and run from a folder that is not the repository, it must carry every config file and every module,
compose the config and finish a run (``configs/`` lives at the top level of the repository and ships
as the package ``lit_llm.configs``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out, tree = tmp_path_factory.mktemp("wheel"), tmp_path_factory.mktemp("tree")
    # Built from a copy of what a wheel is made of, so setuptools' build/ stays out of the repository.
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, tree / name)
    for name in ("configs", "lit_llm", "tokenizer"):
        shutil.copytree(REPO / name, tree / name, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(tree)],
        check=True,
        capture_output=True,
        text=True,
        cwd=out,
        timeout=600,
    )
    (path,) = out.glob("lit_llm-*.whl")
    return path


def _unpacked(wheel: Path, where: Path) -> Path:
    site = where / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
    return site


def _run(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    # The unpacked wheel comes first on sys.path, ahead of the editable install of the repository.
    env = dict(os.environ, PYTHONPATH=str(site))
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def test_the_wheel_holds_every_config_and_every_module(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {
        f"lit_llm/configs/{p.relative_to(REPO / 'configs').as_posix()}"
        for p in (REPO / "configs").rglob("*.yaml")
    }
    modules = {
        p.relative_to(REPO).as_posix() for pkg in ("lit_llm", "tokenizer") for p in (REPO / pkg).rglob("*.py")
    }
    assert len(configs) > 20
    assert not configs - names, f"configs missing from the wheel: {sorted(configs - names)}"
    assert not modules - names, f"modules missing from the wheel: {sorted(modules - names)}"
    assert not any(n.startswith(("tests/", "benchmarks/", "configs/")) for n in names), (
        "stray top-level folder"
    )


@pytest.mark.slow
def test_the_installed_wheel_composes_and_trains_from_any_folder(wheel: Path, tmp_path: Path) -> None:
    site, cwd = _unpacked(wheel, tmp_path), tmp_path / "elsewhere"
    cwd.mkdir()
    where = _run(site, cwd, "-c", "import lit_llm.configs, lit_llm.train; print(lit_llm.train.__file__)")
    assert where.returncode == 0, where.stderr
    assert where.stdout.strip().startswith(str(site)), (
        f"imported the repository, not the wheel: {where.stdout}"
    )

    job = _run(site, cwd, "-m", "lit_llm.train", "--cfg", "job")
    assert job.returncode == 0, job.stderr[-3000:]
    assert "name: quickstart" in job.stdout and "_target_: lit_llm.data.datamodule" in job.stdout
    tool = _run(site, cwd, "-m", "lit_llm.evaluate", "--cfg", "job", "data=valid.txt")  # configs.tools
    assert tool.returncode == 0 and "data: valid.txt" in tool.stdout, tool.stderr[-3000:]

    run = _run(site, cwd, "-m", "lit_llm.train", "debug=fast")
    assert run.returncode == 0, f"{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    (last,) = (cwd / "logs" / "debug").glob("*/checkpoints/last.ckpt")
    assert last.stat().st_size > 0
