"""Checkpoint files of a training run: atomic writes, and last.ckpt + best.ckpt.

Why not Lightning's own pieces as they are:
- ``TorchCheckpointIO`` serialises into memory and writes through an fsspec transaction whose temporary
  file lives in the system temp folder; where that is another filesystem the final move is a copy, and
  a crash during it leaves a truncated checkpoint. ``AtomicCheckpointIO`` writes a temporary file in the
  checkpoint's own folder, fsyncs it and ``os.replace``s it: readers see the old file or the new one.
  It also always loads with ``weights_only=True`` (no unpickling of code).
- ``ModelCheckpoint`` (Lightning 2.6) writes last.ckpt only when a top-k checkpoint was written at the
  same step, so a validation that does not improve leaves last.ckpt behind. ``RunCheckpoint`` keeps
  the contract resume needs: last.ckpt after every validation and at the end, best.ckpt on improvement.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Checkpoint

LAST = "last.ckpt"
BEST = "best.ckpt"


def _temp_beside(path: Path) -> Path:
    """A fresh hidden name in ``path``'s folder (same filesystem, so ``os.replace`` is atomic)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform/filesystem lets a directory be fsynced
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Local checkpoint files written all-or-nothing, read with ``weights_only=True``."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _temp_beside(path)
        try:
            with open(tmp, "xb") as f:  # "x": never clobber; default permissions (mkstemp's are 0600)
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        _fsync_dir(path.parent)

    def load_checkpoint(
        self, path: Any, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        return super().load_checkpoint(path, map_location=map_location, weights_only=True)


def copy_atomic(src: Path, dst: Path) -> None:
    """Make ``dst`` a copy of ``src`` atomically: a hard link when the filesystem allows (instant, and
    a later ``os.replace`` of ``src`` gives it a new inode, leaving ``dst`` intact), else a byte copy."""
    tmp = _temp_beside(dst)
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class RunCheckpoint(Checkpoint):
    """``last.ckpt`` after every validation and when training ends; ``best.ckpt`` whenever ``monitor``
    improves at a validation. Both live in ``dirpath`` (the run's checkpoints/ folder).

    A resumed run writes into its own new folder; best-score tracking carries over only when the folder
    is the same (as Lightning's ModelCheckpoint does), so every run folder gets its own best.ckpt.
    """

    def __init__(
        self, dirpath: str, monitor: str = "val/loss", mode: str = "min", save_best: bool = True
    ) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"mode={mode!r}: expected 'min' or 'max'")
        self.dirpath = Path(dirpath)
        self.monitor = monitor
        self.mode = mode
        self.save_best = save_best
        self.best_model_score: float | None = None
        self.best_model_path = ""
        self.last_model_path = ""
        self._last_saved_step = -1

    @property
    def state_key(self) -> str:
        return f"RunCheckpoint[monitor={self.monitor}]"

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        self._save(trainer, validated=True)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step != self._last_saved_step and trainer.global_step > 0:
            self._save(trainer, validated=False)

    def _improved(self, trainer: pl.Trainer) -> float | None:
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            return None
        score = float(value)
        if not math.isfinite(score):
            return None
        if self.best_model_score is None:
            return score
        better = score < self.best_model_score if self.mode == "min" else score > self.best_model_score
        return score if better else None

    def _save(self, trainer: pl.Trainer, *, validated: bool) -> None:
        last, best = self.dirpath / LAST, self.dirpath / BEST
        score = self._improved(trainer) if (validated and self.save_best) else None
        # Update the state first: it is part of what the checkpoint records.
        if score is not None:
            self.best_model_score, self.best_model_path = score, str(best)
        self.last_model_path = str(last)
        trainer.save_checkpoint(last, weights_only=False)  # False: the full training state
        if score is not None:
            if trainer.is_global_zero:
                copy_atomic(last, best)
            trainer.strategy.barrier("RunCheckpoint.best")
        self._last_saved_step = trainer.global_step

    def state_dict(self) -> dict[str, Any]:
        return {
            "dirpath": str(self.dirpath),
            "best_model_score": self.best_model_score,
            "best_model_path": self.best_model_path,
            "last_model_path": self.last_model_path,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("dirpath") == str(self.dirpath):
            self.best_model_score = state_dict.get("best_model_score")
            self.best_model_path = state_dict.get("best_model_path", "")
