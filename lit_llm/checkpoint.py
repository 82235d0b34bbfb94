"""Plain-PyTorch checkpoints: model, optimizer, iteration and model config in one file.

A path is written atomically (a temp file in the same folder, then ``os.replace``), so a crash mid-save
leaves the previous checkpoint intact. Loading uses ``torch.load(weights_only=True)``, which refuses to
unpickle arbitrary objects: a checkpoint from elsewhere cannot run code.
"""

from __future__ import annotations

import os
import pickle
import uuid
import zipfile
from pathlib import Path
from typing import IO, Any

import torch
from torch import nn

PathOrFile = str | os.PathLike | IO[bytes]

_COMPILED_PREFIX = "_orig_mod."


def _unwrap(model: nn.Module) -> nn.Module:
    """The module that ``torch.compile`` wrapped, so state-dict keys carry no ``_orig_mod.`` prefix."""
    return getattr(model, "_orig_mod", model)


def _clean_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    # Also strips the prefix of compiled submodules (torch.compile applied below the top level).
    return {k.replace(_COMPILED_PREFIX, ""): v for k, v in _unwrap(model).state_dict().items()}


def _describe(target: PathOrFile) -> str:
    return str(target) if isinstance(target, str | os.PathLike) else getattr(target, "name", repr(target))


def save_checkpoint(
    model: nn.Module, optimizer: torch.optim.Optimizer | None, iteration: int, out: PathOrFile
) -> None:
    """Save ``{"model", "optimizer", "iteration", "config"}`` to a path (atomically) or a binary file."""
    config = getattr(_unwrap(model), "config", None)
    payload: dict[str, Any] = {
        "model": _clean_state_dict(model),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "iteration": int(iteration),
        "config": config.to_dict() if hasattr(config, "to_dict") else None,
    }
    if not isinstance(out, str | os.PathLike):
        torch.save(payload, out)
        return
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique name in the same folder (os.replace is atomic only within one filesystem); opened with
    # "x" rather than mkstemp so the file gets the usual umask permissions, not mkstemp's 0600.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_checkpoint(src: PathOrFile) -> dict[str, Any]:
    """The raw checkpoint dict (tensors on CPU), with a one-line ``ValueError`` for unreadable files."""
    name = _describe(src)
    if isinstance(src, str | os.PathLike) and not Path(src).is_file():
        raise FileNotFoundError(f"checkpoint not found: {name}")
    try:
        payload = torch.load(src, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"{name}: not a readable checkpoint (truncated or corrupt?): {reason}") from e
    if not isinstance(payload, dict) or not {"model", "iteration"} <= payload.keys():
        raise ValueError(f"{name}: not a lit-llm checkpoint (expected a dict with 'model' and 'iteration')")
    return payload


def _check_compatible(name: str, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    expected = _clean_state_dict(model)
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    if missing or unexpected:
        raise ValueError(
            f"{name}: parameters do not match the model (missing: {', '.join(missing) or 'none'}; "
            f"unexpected: {', '.join(unexpected) or 'none'})"
        )
    for key, tensor in expected.items():
        if tensor.shape != state[key].shape:
            raise ValueError(
                f"{name}: parameter {key} has shape {tuple(state[key].shape)} in the checkpoint but "
                f"{tuple(tensor.shape)} in the model"
            )


def load_checkpoint(src: PathOrFile, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> int:
    """Restore ``model`` (and ``optimizer`` when given) in place; return the saved iteration."""
    name = _describe(src)
    payload = read_checkpoint(src)
    _check_compatible(name, model, payload["model"])
    module = _unwrap(model)
    actual_keys = {k.replace(_COMPILED_PREFIX, ""): k for k in module.state_dict()}
    module.load_state_dict({actual_keys[k]: v for k, v in payload["model"].items()})
    if optimizer is not None:
        if payload.get("optimizer") is None:
            raise ValueError(f"{name}: the checkpoint holds no optimizer state")
        optimizer.load_state_dict(payload["optimizer"])
    return int(payload["iteration"])
