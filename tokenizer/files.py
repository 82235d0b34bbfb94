"""The project's one set of file primitives: atomic writes, JSON, file hashes, progress bars, ``EOT``.

Everything lit-llm writes (tokenizers, token arrays, corpora, caches, checkpoints, exports, plots) goes
through :func:`atomic_write` or :func:`replace_dir`, so after a crash a reader sees either the old file
or the complete new one, never half of it:

1. write to a temporary name *in the same folder* (``os.replace`` is atomic only within one filesystem),
2. flush and ``fsync`` the file (its bytes are on disk before its name is),
3. ``os.replace`` it over the final name, then ``fsync`` the folder (the rename itself is durable).

Temporary names carry the writer's PID (``.NAME.tmp-PID-RANDOM``), so :func:`sweep_stale_temps` can
remove the leftovers of processes that are no longer alive without touching a live writer's file.

Invalid UTF-8 has one policy everywhere: :func:`check_utf8` (or :func:`scan_file`, which hashes in the
same pass) finds the first bad byte up front, before any work, and the error names the user's file and
the byte offset (``FILE: invalid UTF-8 at byte N``); ``errors="replace"`` is the one way past it.

Test hook: with the environment variable ``LIT_LLM_CRASH_AT_RENAME=N`` set, the N-th rename done through
this module (``os.replace`` in :func:`atomic_write`, :func:`copy_file`, :func:`replace_dir`, and
:func:`replace` for other callers) kills the process with ``os._exit(137)`` just before renaming,
which is what a kill -9 at that exact moment leaves behind (``tests/test_crash.py``). Unset, it costs
one dictionary look-up per rename.

It lives in ``tokenizer`` because that is the lowest layer: ``lit_llm`` builds on ``tokenizer``, never the
other way round. Only the standard library is imported at module level (``rich`` lazily), so forked
tokenizer workers stay small.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

# The document separator of GPT-2 and of every corpus here: the one definition of it.
EOT = "<|endoftext|>"

_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)-[0-9a-f]{8}$")
CRASH_AT_RENAME_ENV = "LIT_LLM_CRASH_AT_RENAME"  # test hook (see the module docstring)
_renames = 0  # renames done through replace(), for the test hook
UTF8_ERRORS = ("strict", "replace")  # the accepted values of every ``errors`` option


def replace(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """``os.replace``, with the test hook ``LIT_LLM_CRASH_AT_RENAME=N``: die at the N-th call."""
    global _renames
    _renames += 1
    crash_at = os.environ.get(CRASH_AT_RENAME_ENV)
    if crash_at and crash_at.strip().isdigit() and _renames == int(crash_at):
        os._exit(137)
    os.replace(src, dst)


def temp_path(path: str | os.PathLike) -> Path:
    """A fresh hidden name beside ``path``: ``.NAME.tmp-PID-RANDOM`` (same folder, so same filesystem)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename inside ``folder`` durable (no-op where the platform cannot fsync a folder)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def _removed_on_failure(tmp: Path) -> Iterator[None]:
    """Remove the temporary file ``tmp`` if the block fails in any way (``KeyboardInterrupt`` too)."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", **open_kwargs: Any) -> Iterator[IO]:
    """``with atomic_write(path, "w", encoding="utf-8") as f: ...``: ``path`` appears complete or not at all.

    The temporary file is removed on any failure (an exception, ``KeyboardInterrupt``); only a kill -9
    can leave one behind, and :func:`sweep_stale_temps` removes it later.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write: mode {mode!r}, expected 'w' or 'wb'")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    with _removed_on_failure(tmp):
        # "x": never clobber an existing file; default permissions (mkstemp's would be 0600).
        with open(tmp, mode.replace("w", "x"), **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        replace(tmp, path)
    fsync_dir(path.parent)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_write(path, "wb") as f:
        f.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_write(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Pretty, key-sorted-as-given JSON with a final newline, written atomically."""
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """Parse ``path``; a missing or malformed file is a one-line ``ValueError`` naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {path} not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{what} {path}: not valid JSON ({e})") from None


def copy_file(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Make ``dst`` a copy of ``src`` atomically: a hard link where the filesystem allows (instant; a
    later ``os.replace`` of ``src`` gives it a new inode and leaves ``dst`` intact), else a byte copy."""
    src, dst = Path(src), Path(dst)
    tmp = temp_path(dst)
    with _removed_on_failure(tmp):
        try:
            os.link(src, tmp)  # the same inode: its bytes are already as durable as src's
        except OSError:
            shutil.copyfile(src, tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        replace(tmp, dst)
    fsync_dir(dst.parent)


@contextlib.contextmanager
def building_dir(final: str | os.PathLike) -> Iterator[Path]:
    """``with building_dir(out) as tmp: <fill tmp>``: then ``tmp`` replaces ``out`` in one rename.

    A folder of several files (a tokenizer, an export, a corpus) is thereby complete or absent: a kill
    while it is filled leaves only a hidden temporary folder, never a half-filled ``out``. An existing
    ``out`` is replaced only once the new one is complete.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(final)
    tmp.mkdir()
    try:
        yield tmp
        for child in tmp.iterdir():
            if child.is_file():
                with open(child, "rb") as f:
                    os.fsync(f.fileno())
        fsync_dir(tmp)
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_dir(tmp: str | os.PathLike, final: str | os.PathLike) -> None:
    """Put the complete folder ``tmp`` at ``final``. A folder cannot be renamed over a non-empty one,
    so an old ``final`` is first renamed aside (one rename each way), then removed."""
    tmp, final = Path(tmp), Path(final)
    old = None
    if final.exists():
        old = temp_path(final)
        replace(final, old)
    replace(tmp, final)
    fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def probe_writable(folder: str | os.PathLike) -> None:
    """Create and remove a temporary file in ``folder``: a read-only, full or forbidden location fails
    now, as an ``OSError`` naming the folder and the OS's reason, instead of after the work."""
    folder = os.fspath(folder)
    probe = temp_path(Path(folder) / "write-probe")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"probe")  # a full disk shows here, not only at creation
        finally:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(probe)
    except OSError as exc:
        raise OSError(exc.errno, os.strerror(exc.errno) if exc.errno else str(exc), folder) from None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def sweep_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files and folders (``.NAME.tmp-PID-*``) in ``folder`` whose writer is dead."""
    folder, removed = Path(folder), []
    if not folder.is_dir():
        return removed
    for child in folder.iterdir():
        match = _TEMP_RE.match(child.name)
        if match is None or _pid_alive(int(match["pid"])):
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                child.unlink()
        removed.append(child)
    return removed


class InvalidUTF8Error(ValueError):
    """``FILE: invalid UTF-8 at byte N``: the first byte of ``FILE`` that is not UTF-8 (``offset``)."""

    def __init__(self, path: str | os.PathLike, offset: int) -> None:
        super().__init__(f"{os.fspath(path)}: invalid UTF-8 at byte {offset}")
        self.path, self.offset = os.fspath(path), offset


def check_errors_option(errors: str, name: str = "errors") -> str:
    """``errors`` if it is ``"strict"`` or ``"replace"``, else a one-line ``ValueError`` naming ``name``."""
    if errors not in UTF8_ERRORS:
        raise ValueError(f"{name}={errors!r}: expected one of {', '.join(UTF8_ERRORS)}")
    return errors


def scan_file(
    path: str | os.PathLike, *, utf8: bool = True, sha256: bool = True, chunk_bytes: int = 1 << 20
) -> tuple[str, int | None]:
    """One pass over a file: its hex SHA-256 (``""`` with ``sha256=False``) and the offset of its first
    invalid UTF-8 byte (``None``: all valid, or ``utf8=False``: not checked). Read in 1 MiB chunks
    through an incremental decoder, so a character cut by a chunk's end is judged whole and memory
    stays constant."""
    import codecs

    digest = hashlib.sha256() if sha256 else None
    decoder = codecs.getincrementaldecoder("utf-8")() if utf8 else None
    consumed, bad = 0, None  # bytes fed to the decoder so far
    with open(path, "rb") as f:
        while True:
            chunk = f.read(chunk_bytes)
            if digest is not None:
                digest.update(chunk)
            if decoder is not None and bad is None:
                pending = len(decoder.getstate()[0])  # an unfinished character from the last chunk
                try:
                    decoder.decode(chunk, final=not chunk)
                except UnicodeDecodeError as e:
                    bad = consumed - pending + e.start
                consumed += len(chunk)
            if not chunk:
                break
    return digest.hexdigest() if digest is not None else "", bad


def check_utf8(path: str | os.PathLike) -> None:
    """Raise :class:`InvalidUTF8Error` (``FILE: invalid UTF-8 at byte N``) unless ``path`` is UTF-8."""
    bad = scan_file(path, sha256=False)[1]
    if bad is not None:
        raise InvalidUTF8Error(path, bad)


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks (constant memory)."""
    return scan_file(path, utf8=False, chunk_bytes=chunk_bytes)[0]


class ProgressBar:
    """One rich progress bar on stderr, or nothing when ``enabled`` is false.

    ``unit="bytes"`` shows MB and MB/s (downloads, encoding); ``unit="items"`` shows ``n/total``.
    ``with ProgressBar(total, "encoding train.txt", enabled) as bar: bar.advance(n)``.
    """

    def __init__(
        self, total: int | None, description: str, enabled: bool = True, unit: str = "items"
    ) -> None:
        if unit not in ("bytes", "items"):
            raise ValueError(f"ProgressBar: unit {unit!r}, expected 'bytes' or 'items'")
        self._progress = self._task = None
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        counts = (DownloadColumn(), TransferSpeedColumn()) if unit == "bytes" else (MofNCompleteColumn(),)
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            *counts,
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        self._task = self._progress.add_task(description, total=total)

    def __enter__(self) -> ProgressBar:
        if self._progress is not None:
            self._progress.start()
        return self

    def advance(self, n: int = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, n)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()
