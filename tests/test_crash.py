"""kill -9 of `tokenizer train`, `tokenizer encode` and data preparation, at chosen points (issue 12).

Two ways to kill: a real ``SIGKILL`` while workers run, and the test hook ``LIT_LLM_CRASH_AT_RENAME=N``
(``tokenizer.files``), which dies with ``os._exit(137)`` just before the N-th rename, the most
delicate moment of an atomic write. After each: no orphaned worker, nothing half-written that a later
run takes for complete (the re-run's outputs are byte-identical to a clean run's), and the killed run's
temporaries are swept by the re-run.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from test_data_hardening import children_of, wait_gone

REPO_ROOT = Path(__file__).resolve().parent.parent
HOOK = "LIT_LLM_CRASH_AT_RENAME"
EOT = "<|endoftext|>"


def run(args: list[str], crash_at: int | None = None, **kwargs) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != HOOK} | {"PYTHONPATH": str(REPO_ROOT)}
    if crash_at is not None:
        env[HOOK] = str(crash_at)
    return subprocess.run(
        [sys.executable, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, **kwargs
    )


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` by relative path, byte for byte, but for the lines of JSON files that
    say when (a training time; the mtime of a file that a re-run wrote again, with the same bytes)."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            if path.suffix == ".json":
                when = (b"training_seconds", b"mtime_ns")
                data = b"\n".join(line for line in data.split(b"\n") if not any(w in line for w in when))
            out[str(path.relative_to(folder))] = data
    return out


def temps(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".tmp-" in p.name]


def train_args(corpus: Path, out: Path, *extra: str) -> list[str]:
    return ["-m", "tokenizer", "train", "--input", str(corpus), "--vocab-size", "300",
            "--special-token", EOT, "--out", str(out), "--workers", "1", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def big_corpus(tmp_path_factory, fixture_file) -> Path:
    """~3.3 MB: enough for `tokenizer train` to fork a worker (1 MB each) and for encode to take a while."""
    path = tmp_path_factory.mktemp("big") / "big.txt"
    path.write_bytes(fixture_file("tinyshakespeare.txt").read_bytes() * 3)
    return path


@pytest.fixture(scope="module")
def small_tokenizer(tmp_path_factory, fixture_file) -> Path:
    out = tmp_path_factory.mktemp("tok") / "tok"
    proc = run(train_args(fixture_file("corpus.en"), out))
    assert proc.returncode == 0, proc.stderr
    return out


# ----- a real kill -9 while the workers run ---------------------------------------------------------


def kill_when_workers_exist(args: list[str], n_workers: int) -> list[psutil.Process]:
    env = {k: v for k, v in os.environ.items() if k != HOOK} | {"PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen([sys.executable, *args], cwd=REPO_ROOT, env=env, stderr=subprocess.DEVNULL)
    try:
        kids = children_of(proc.pid, n_workers)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
    finally:
        proc.kill()
        proc.wait()
    return kids


@pytest.mark.slow
def test_kill9_of_encode_leaves_no_orphan_and_no_array(tmp_path, big_corpus, small_tokenizer):
    out = tmp_path / "out"
    out.mkdir()

    def args_for(folder: Path) -> list[str]:
        return ["-m", "tokenizer", "encode", "--tokenizer", str(small_tokenizer), "--input",
                str(big_corpus), "--output", str(folder / "big.npy"), "--workers", "2", "--quiet",
                "--chunk-mb", "0.25"]  # fmt: skip

    args = args_for(out)
    kids = kill_when_workers_exist(args, 1)
    assert wait_gone(kids) == [], "encode's workers outlived it"
    assert not (out / "big.npy").exists() and not (out / "big.meta.json").exists()
    proc = run(args)
    assert proc.returncode == 0, proc.stderr
    assert temps(out) == []  # the killed run's partial .npy was swept
    clean = tmp_path / "clean"
    clean.mkdir()
    assert run(args_for(clean)).returncode == 0
    assert tree(out) == tree(clean)


@pytest.mark.slow
def test_kill9_of_train_leaves_no_orphan_and_no_tokenizer(tmp_path, big_corpus):
    out = tmp_path / "tok"
    args = train_args(big_corpus, out)[:-1] + ["2"]
    kids = kill_when_workers_exist(args, 1)
    assert wait_gone(kids) == [], "BPE training's workers outlived it"
    assert not out.exists()  # only a hidden temporary folder, if anything


# ----- the exact moment of a rename -----------------------------------------------------------------


@pytest.fixture(scope="module")
def clean_train(tmp_path_factory, fixture_file) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("clean") / "tok"
    assert run(train_args(fixture_file("corpus.en"), out)).returncode == 0
    return tree(out)


@pytest.mark.parametrize("crash_at", [1, 4, 5])  # the first file, the last file, the folder itself
def test_train_killed_at_a_rename(tmp_path, fixture_file, clean_train, crash_at):
    out = tmp_path / "tok"
    proc = run(train_args(fixture_file("corpus.en"), out), crash_at=crash_at)
    assert proc.returncode == 137, proc.stderr
    assert not out.exists() and temps(tmp_path)  # nothing at --out; the temporary is left behind
    assert run(train_args(fixture_file("corpus.en"), out)).returncode == 0
    assert tree(out) == clean_train and temps(tmp_path) == []


@pytest.mark.parametrize("crash_at", [5, 6])  # --force over an old tokenizer: set aside, then replaced
def test_forced_train_killed_at_a_rename(tmp_path, fixture_file, clean_train, crash_at):
    out = tmp_path / "tok"
    old = tmp_path / "old.txt"
    old.write_text("an older corpus, an older tokenizer\n" * 50)
    assert run(train_args(old, out)).returncode == 0
    before = tree(out)
    proc = run(train_args(fixture_file("corpus.en"), out, "--force"), crash_at=crash_at)
    assert proc.returncode == 137, proc.stderr
    assert not out.exists() or tree(out) == before  # the old tokenizer whole, or none: never a mix
    assert run(train_args(fixture_file("corpus.en"), out, "--force")).returncode == 0
    assert tree(out) == clean_train and temps(tmp_path) == []


@pytest.mark.parametrize("crash_at", [1, 2])  # the array, then its meta.json
def test_encode_killed_at_a_rename(tmp_path, fixture_file, small_tokenizer, crash_at):
    def args(folder: Path) -> list[str]:
        return ["-m", "tokenizer", "encode", "--tokenizer", str(small_tokenizer), "--input",
                str(fixture_file("corpus.en")), "--output", str(folder / "c.npy"), "--quiet"]  # fmt: skip

    clean, out = tmp_path / "clean", tmp_path / "out"
    clean.mkdir(), out.mkdir()
    assert run(args(clean)).returncode == 0
    assert run(args(out), crash_at=crash_at).returncode == 137
    assert not (out / "c.meta.json").exists()  # no meta.json: the array is not vouched for
    assert run(args(out)).returncode == 0
    assert tree(out) == tree(clean) and temps(out) == []


PREPARE = """
import sys
from lit_llm.data.prepare import DataSpec, prepare
import tokenizer.files as files
spec = DataSpec(dataset="local", train_file=sys.argv[1], vocab_size=300, artifacts_dir=sys.argv[2],
                data_dir=sys.argv[3], tokenizer_workers=1)
prepare(spec)
print("renames", files._renames)
"""


@pytest.mark.slow
def test_prepare_killed_at_every_kind_of_rename(tmp_path, fixture_file):
    art, data = tmp_path / "artifacts", tmp_path / "data"
    args = ["-c", PREPARE, str(fixture_file("corpus.en")), str(art), str(data)]
    proc = run(args)
    assert proc.returncode == 0, proc.stderr
    total = int(proc.stdout.split()[-1])
    clean = tree(art)
    # a hash record, the split folder, a tokenizer file, the tokenizer folder, an array, the tokens folder
    points = sorted({1, 2, total // 3, total // 2, total - 2, total - 1, total})
    for crash_at in points:
        shutil.rmtree(art)
        assert run(args, crash_at=crash_at).returncode == 137, crash_at
        proc = run(args)
        assert proc.returncode == 0, proc.stderr
        assert tree(art) == clean, crash_at
        assert temps(art) == [], crash_at
