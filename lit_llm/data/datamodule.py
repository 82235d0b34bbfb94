"""``TokenWindowDataModule``: cached preparation, memory-mapped tokens, reproducible random windows.

Training batches are random windows of ``context_length + 1`` tokens whose start positions are a pure
function of (seed, global micro-batch index, global rank). The dataloader starts at micro-batch
``trainer.global_step * accumulate_grad_batches``, which Lightning has restored before it asks for the
dataloader, so a resumed run draws exactly the windows an uninterrupted run would have drawn, and DDP
ranks never draw the same ones. Nothing about the order lives in a sampler's state.

Validation uses a fixed set of windows spread evenly over the validation tokens: the same every time
(and for every seed), so validation losses are comparable across steps and runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from lit_llm.data.batch import windows
from lit_llm.data.prepare import DataSpec, Prepared, prepare
from tokenizer.files import EOT
from tokenizer.tokenizer import Tokenizer


def window_starts(
    seed: int, micro_batch: int, rank: int, n_tokens: int, context_length: int, batch_size: int
):
    """Start positions (batch_size,) of one training micro-batch: a pure function of its arguments."""
    rng = np.random.default_rng([seed, micro_batch, rank])
    return rng.integers(0, n_tokens - context_length, size=batch_size)


def val_starts(n_tokens: int, context_length: int, count: int | None) -> np.ndarray:
    """Fixed validation windows: ``count`` starts spread evenly (None: every non-overlapping window)."""
    last = n_tokens - context_length - 1  # the last start whose window (T+1 tokens) fits
    if count is None:
        return np.arange(0, last + 1, context_length)
    return np.linspace(0, last, num=count).round().astype(np.int64)


class _TrainWindows(IterableDataset):
    """Endless micro-batches from ``start`` on; DataLoader workers take turns, so order is kept."""

    def __init__(self, path: Path, context_length: int, batch_size: int, seed: int, start: int, rank: int):
        self.path, self.context_length, self.batch_size = path, context_length, batch_size
        self.seed, self.start, self.rank = seed, start, rank

    def __iter__(self):
        tokens = np.load(self.path, mmap_mode="r")  # opened here, in the worker, never pickled
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info else (0, 1)
        i = self.start + worker  # the DataLoader reads workers round-robin: batches arrive in order of i
        while True:
            starts = window_starts(self.seed, i, self.rank, len(tokens), self.context_length, self.batch_size)
            yield windows(tokens, starts, self.context_length)
            i += n_workers


class _ValWindows(Dataset):
    def __init__(self, path: Path, starts: np.ndarray, context_length: int):
        self.path, self.starts, self.context_length = path, starts, context_length
        self._tokens = None

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int):
        if self._tokens is None:
            self._tokens = np.load(self.path, mmap_mode="r")
        x, y = windows(self._tokens, self.starts[i : i + 1], self.context_length)
        return x[0], y[0]


class TokenWindowDataModule(L.LightningDataModule):
    """Download/generate -> tokenizer -> token arrays (cached), then random training windows.

    Every argument is a ``data.<name>`` config key; see ``configs/data/*.yaml`` for what each means.
    """

    def __init__(
        self,
        dataset: str = "quickstart",
        train_file: str | None = None,
        val_file: str | None = None,
        val_fraction: float = 0.1,
        vocab_size: int = 2000,
        special_tokens: list[str] | tuple[str, ...] = (EOT,),
        context_length: int = 256,
        batch_size: int = 32,
        val_batch_size: int | None = None,
        val_windows: int | None = 128,
        seed: int = 0,
        data_dir: str = "data",
        artifacts_dir: str = "artifacts",
        tokenizer_workers: int | None = None,
        tokenizer_train_bytes: int | None = None,
        num_workers: int = 0,
        synthetic_stories: int = 10000,
        synthetic_val_stories: int = 1000,
        synthetic_seed: int = 0,
        errors: str = "strict",
    ):
        super().__init__()
        self.spec = DataSpec(
            dataset=dataset,
            train_file=None if train_file is None else str(train_file),
            val_file=None if val_file is None else str(val_file),
            val_fraction=val_fraction,
            vocab_size=vocab_size,
            special_tokens=tuple(special_tokens or ()),
            data_dir=str(data_dir),
            artifacts_dir=str(artifacts_dir),
            tokenizer_workers=tokenizer_workers,
            tokenizer_train_bytes=tokenizer_train_bytes,
            synthetic_stories=synthetic_stories,
            synthetic_val_stories=synthetic_val_stories,
            synthetic_seed=synthetic_seed,
            errors=errors,
        )
        self.context_length, self.batch_size, self.seed = context_length, batch_size, seed
        self.val_batch_size = val_batch_size if val_batch_size is not None else batch_size
        self.val_windows, self.num_workers = val_windows, num_workers
        problems = self.spec.problems()
        for key, value in (
            ("context_length", context_length),
            ("batch_size", batch_size),
            ("val_batch_size", self.val_batch_size),
        ):
            if not isinstance(value, int) or value < 1:
                problems.append(f"data.{key}={value!r}: expected a positive integer")
        if val_windows is not None and (not isinstance(val_windows, int) or val_windows < 1):
            problems.append(
                f"data.val_windows={val_windows!r}: expected a positive integer or null (all windows)"
            )
        if not isinstance(num_workers, int) or num_workers < 0:
            problems.append(f"data.num_workers={num_workers!r}: expected an integer >= 0")
        if problems:
            raise ValueError("invalid data config: " + "; ".join(problems))
        self.prepared: Prepared | None = None
        self.tokenizer: Tokenizer | None = None
        self.train_tokens: np.ndarray | None = None
        self.val_tokens: np.ndarray | None = None

    # -- Lightning hooks ------------------------------------------------------------------------------

    def prepare_data(self) -> None:
        """Download, train the tokenizer and encode (each step reused when its inputs are unchanged)."""
        prepare(self.spec, build=True)

    def setup(self, stage: str | None = None) -> None:
        if self.prepared is not None:
            return
        prepared = prepare(self.spec, build=False)
        train = np.load(prepared.train_tokens, mmap_mode="r")
        val = np.load(prepared.val_tokens, mmap_mode="r")
        need = self.context_length + 1
        for name, arr, path in (
            ("training", train, prepared.train_tokens),
            ("validation", val, prepared.val_tokens),
        ):
            if len(arr) < need:
                raise ValueError(
                    f"the {name} text has only {len(arr)} tokens ({path}); data.context_length="
                    f"{self.context_length} needs at least {need}: use more text or a shorter context"
                )
        self.prepared, self.train_tokens, self.val_tokens = prepared, train, val
        self.tokenizer = Tokenizer.from_dir(prepared.tokenizer_dir)

    @property
    def eot_id(self) -> int | None:
        """Id of ``<|endoftext|>`` (None where it is not a special token of this data)."""
        return None if self.tokenizer is None else self.tokenizer.eot_id

    @property
    def val_bytes_per_token(self) -> float:
        """UTF-8 bytes of validation text per validation token: val/bpb = val/loss / ln 2 / this."""
        return self._require().val_bytes_per_token

    @property
    def fingerprint(self) -> dict:
        return dict(self._require().fingerprint)

    def _require(self) -> Prepared:
        if self.prepared is None:
            raise RuntimeError("TokenWindowDataModule: call prepare_data() and setup() first")
        return self.prepared

    def _position(self) -> tuple[int, int]:
        """(first global micro-batch index, global rank) for a dataloader created now."""
        trainer = self.trainer
        if trainer is None:
            return 0, 0
        return trainer.global_step * trainer.accumulate_grad_batches, trainer.global_rank

    def train_dataloader(self) -> DataLoader:
        start, rank = self._position()
        dataset = _TrainWindows(
            self._require().train_tokens, self.context_length, self.batch_size, self.seed, start, rank
        )
        return DataLoader(
            dataset,
            batch_size=None,
            num_workers=self.num_workers,
            pin_memory=self._pin(),
            persistent_workers=False,
        )

    def val_dataloader(self) -> DataLoader:
        prepared = self._require()
        starts = val_starts(len(self.val_tokens), self.context_length, self.val_windows)
        dataset = _ValWindows(prepared.val_tokens, starts, self.context_length)
        return DataLoader(
            dataset,
            batch_size=self.val_batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            pin_memory=self._pin(),
        )

    @staticmethod
    def _pin() -> bool:
        return torch.cuda.is_available()

    # -- resume guard ---------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"fingerprint": self.fingerprint if self.prepared is not None else None}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Refuse to resume on data other than the checkpoint's (Lightning calls this after ``setup``)."""
        saved, current = state_dict.get("fingerprint"), self.fingerprint if self.prepared else None
        if saved is None or current is None or saved == current:
            return
        changed = [k for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k)]
        diff = ", ".join(f"{k} {str(saved.get(k))[:12]} -> {str(current.get(k))[:12]}" for k in changed)
        raise ValueError(
            f"the checkpoint was trained on other data ({diff}); resume with the data config it was "
            "trained with, or start a new run"
        )
