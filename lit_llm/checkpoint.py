"""Checkpoint files: the one place that writes, reads and checks them.

- :func:`save`: ``torch.save`` to a path through ``tokenizer.files.atomic_write`` (a temporary file in
  the same folder, fsync of the file and the folder, rename): a crash leaves the old file or the new one.
- :func:`safe_load`: ``torch.load(weights_only=True)``: tensors and plain containers only, so a file from
  elsewhere cannot run code. Every failure is one :class:`CheckpointError` line, ``FILE: what is wrong``
  (empty, not a torch.save file, truncated or corrupt, or refused because it would unpickle objects).
  Every entry of the zip archive is checked against the CRC-32 torch.save records for it before
  anything is unpickled (:func:`check_integrity`): a byte changed inside a tensor is refused, not
  loaded as a silently different model (one read of the file; a non-seekable stream is not checked).
- :func:`check_state_dict`: the one compatibility check (missing/unexpected keys, a shape that differs),
  used by ``load_checkpoint``, ``lit_llm.loading.load_model`` and resume (``LanguageModelModule``).
- :func:`save_checkpoint` / :func:`load_checkpoint`: plain-PyTorch checkpoints (model, optimizer,
  iteration, model config) in one file.

The Lightning side (``CheckpointIO``, last.ckpt/best.ckpt) is ``lit_llm.run_checkpoints``; using a
trained model (``load_model``, the tokenizer lookup) is ``lit_llm.loading``, re-exported here.
"""

from __future__ import annotations

import os
import pickle
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import torch
from torch import nn

from tokenizer.files import atomic_write

PathOrFile = str | os.PathLike | IO[bytes]

_ZIP_MAGIC = b"PK\x03\x04"  # what torch.save writes (its only format since PyTorch 1.6)


class CheckpointError(ValueError):
    """One line: ``FILE: what is wrong``."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"{name}: {problem}")
        self.name, self.problem = name, problem


def describe(target: PathOrFile) -> str:
    """The name errors use for a path or a file object."""
    return (
        str(target) if isinstance(target, str | os.PathLike) else str(getattr(target, "name", repr(target)))
    )


# -- the file primitives -----------------------------------------------------------------------------


def save(obj: Any, out: PathOrFile) -> None:
    """``torch.save(obj)`` to a path (atomically) or to a binary file object."""
    if isinstance(out, str | os.PathLike):
        with atomic_write(out, "wb") as f:
            torch.save(obj, f)
    else:
        torch.save(obj, out)


def _first_sentence(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text.split(". ")[0].rstrip(".") or type(err).__name__


def _refusal(err: BaseException) -> str:
    """What torch's weights-only unpickler refused, in a few words (its message is a page long)."""
    for line in str(err).splitlines():
        _, found, detail = line.partition("WeightsUnpickler error:")
        if found and detail.strip():
            return "Weights only load failed: " + _first_sentence(RuntimeError(detail))
    return _first_sentence(err)


def _header(src: PathOrFile) -> bytes | None:
    """The first 4 bytes (None for a stream that cannot be rewound: torch.load decides then)."""
    if isinstance(src, str | os.PathLike):
        with open(src, "rb") as f:
            return f.read(4)
    if not (hasattr(src, "seekable") and src.seekable()):
        return None
    position = src.tell()
    head = src.read(4)
    src.seek(position)
    return head


def check_integrity(src: PathOrFile) -> None:
    """Check every entry of a torch.save zip archive against its recorded CRC-32 (reads it all once).

    A file that is not a readable zip archive at all is left to ``torch.load`` to describe; a damaged
    entry is one CheckpointError line: ``FILE: damaged (entry archive/data/3 fails its CRC check)``.
    A non-seekable stream is not checked (it cannot be read twice).
    """
    name = describe(src)
    position = None
    if not isinstance(src, str | os.PathLike):
        if not (hasattr(src, "seekable") and src.seekable()):
            return
        position = src.tell()
    try:
        try:
            archive = zipfile.ZipFile(src)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError):
            return  # no readable central directory: torch.load says what is wrong
        with archive:
            try:
                bad = archive.testzip()
            except (zipfile.BadZipFile, OSError, ValueError, EOFError, zlib.error) as e:
                raise CheckpointError(name, f"damaged ({_first_sentence(e)})") from None
        if bad is not None:
            raise CheckpointError(name, f"damaged (entry {bad} fails its CRC check)")
    finally:
        if position is not None:
            src.seek(position)


def safe_load(src: PathOrFile, *, map_location: Any = "cpu", mmap: bool = False) -> Any:
    """``torch.load(src, weights_only=True)``; any unreadable or refused file is one CheckpointError line.

    ``mmap=True`` maps a path's tensors instead of reading them (a checkpoint larger than memory loads).
    Only torch.save's zip format is read: a bare pickle is refused before anything is unpickled, and
    every entry's CRC-32 is verified first (:func:`check_integrity`), so a damaged file is refused.
    """
    name = describe(src)
    is_path = isinstance(src, str | os.PathLike)
    if is_path and not Path(src).is_file():
        raise FileNotFoundError(f"{name}: checkpoint not found")
    try:
        head = _header(src)
    except OSError as e:
        raise CheckpointError(name, f"not a readable checkpoint ({_first_sentence(e)})") from None
    if head == b"":
        raise CheckpointError(name, "not a readable checkpoint (the file is empty)")
    if head is not None and not head.startswith(_ZIP_MAGIC):
        raise CheckpointError(name, "not a readable checkpoint (not a zip archive written by torch.save)")
    check_integrity(src)
    try:
        return torch.load(src, map_location=map_location, weights_only=True, mmap=mmap and is_path)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            name,
            "refused: it holds objects other than tensors and plain data, which would run code when "
            f"unpickled ({_refusal(e)})",
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        raise CheckpointError(
            name, f"not a readable checkpoint (truncated or corrupt?): {_first_sentence(e)}"
        ) from None


def check_state_dict(name: str, expected: Mapping[str, Any], state: Mapping[str, Any]) -> None:
    """The one compatibility check: ``state`` has exactly ``expected``'s keys, each of the same shape.

    Raises a one-line CheckpointError naming the keys that are missing or unexpected, or the first key
    whose shape differs with both shapes.
    """
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    if missing or unexpected:
        raise CheckpointError(
            name,
            f"parameters do not match the model (missing: {', '.join(missing) or 'none'}; "
            f"unexpected: {', '.join(unexpected) or 'none'})",
        )
    for key, tensor in expected.items():
        if tuple(tensor.shape) != tuple(state[key].shape):
            raise CheckpointError(
                name,
                f"parameter {key} has shape {tuple(state[key].shape)} in the checkpoint but "
                f"{tuple(tensor.shape)} in the model",
            )


# -- plain-PyTorch checkpoints -------------------------------------------------------------------------


def save_checkpoint(
    model: nn.Module, optimizer: torch.optim.Optimizer | None, iteration: int, out: PathOrFile
) -> None:
    """Save ``{"model", "optimizer", "iteration", "config"}`` to a path (atomically) or a binary file."""
    config = getattr(model, "config", None)
    save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "iteration": int(iteration),
            "config": config.to_dict() if hasattr(config, "to_dict") else None,
        },
        out,
    )


def read_checkpoint(src: PathOrFile) -> dict[str, Any]:
    """The raw ``save_checkpoint`` dict (tensors on CPU)."""
    payload = safe_load(src)
    if not isinstance(payload, dict) or not {"model", "iteration"} <= payload.keys():
        raise CheckpointError(
            describe(src), "not a lit-llm checkpoint (expected a dict with 'model' and 'iteration')"
        )
    return payload


def load_checkpoint(src: PathOrFile, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> int:
    """Restore ``model`` (and ``optimizer`` when given) in place; return the saved iteration."""
    name = describe(src)
    payload = read_checkpoint(src)
    check_state_dict(name, model.state_dict(), payload["model"])
    model.load_state_dict(payload["model"])
    if optimizer is not None:
        if payload.get("optimizer") is None:
            raise CheckpointError(name, "the checkpoint holds no optimizer state")
        optimizer.load_state_dict(payload["optimizer"])
    return int(payload["iteration"])


_LOADING_NAMES = ("load_model", "MODEL_FILE", "CONFIG_FILE")


def __getattr__(name: str) -> Any:
    """``from lit_llm.checkpoint import load_model`` keeps working (it lives in ``lit_llm.loading``)."""
    if name in _LOADING_NAMES:
        from lit_llm import loading

        return getattr(loading, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
