"""``python -m lit_llm.evaluate ckpt=PATH data=FILE``: loss, perplexity and bits per byte of a model.

Every token after the first is scored exactly once, by windows of ``context_length`` tokens:
- ``stride = context_length`` (default): non-overlapping windows, each target seen with 0..T-1 tokens
  of context, the way validation windows are scored during training;
- a smaller ``stride``: windows overlap and each scores only the targets its predecessor did not, so
  every target but those of the first window sees at least ``context_length - stride`` tokens of
  context (closer to the model's loss at full context, ``context_length / stride`` times the work).
The last window is aligned to the end of the data, so no tail is dropped.

Bits per byte = total nats / ln 2 / UTF-8 bytes of the scored tokens: unlike the loss per token it
does not depend on the tokenizer, so models with different vocabularies can be compared.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from lit_llm import cli
from lit_llm.data.batch import windows
from lit_llm.losses import cross_entropy
from lit_llm.model import TransformerLM
from tokenizer.files import write_json
from tokenizer.tokenizer import Tokenizer


def window_plan(n_tokens: int, context_length: int, stride: int | None = None) -> list[tuple[int, int]]:
    """(start, first scored position) of every window over ``n_tokens`` tokens.

    A window's input is tokens[start : start + L] and its targets tokens[start + 1 : start + L + 1],
    with L = min(context_length, n_tokens - 1); it scores targets first..L-1.
    """
    if n_tokens < 2:
        raise ValueError(f"the data holds {n_tokens} token(s); at least 2 are needed to score one")
    stride = context_length if stride is None else stride
    if isinstance(stride, bool) or not isinstance(stride, int) or not 1 <= stride <= context_length:
        raise ValueError(f"stride={stride!r}: expected an integer in 1..context_length={context_length}")
    targets = n_tokens - 1
    length = min(context_length, targets)
    starts = list(range(0, targets - length + 1, stride))
    if starts[-1] + length < targets:
        starts.append(targets - length)  # aligned to the end: the tail is scored too
    plan, scored_until = [], 0  # targets before scored_until (as positions in the data) are done
    for start in starts:
        plan.append((start, scored_until - start if scored_until > start else 0))
        scored_until = start + length
    return plan


@torch.inference_mode()
def evaluate(
    model: TransformerLM,
    tokens: np.ndarray,
    token_bytes: np.ndarray,
    *,
    stride: int | None = None,
    batch_size: int = 8,
    progress: bool = False,
) -> dict[str, float | int]:
    """Score ``tokens`` (1-D ints) with ``model``; ``token_bytes[i]`` is the UTF-8 length of token i.

    Returns loss (mean nats per scored token), ppl = e^loss, bpb, and the counts behind them.
    """
    context = model.config.context_length
    if not _is_int(batch_size) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}: expected an integer >= 1")
    if tokens.ndim != 1:
        raise ValueError(f"expected a 1-D token array, got shape {tokens.shape}")
    if len(tokens) and int(tokens.max()) >= model.config.vocab_size:
        raise ValueError(
            f"the data holds token id {int(tokens.max())} but the model's vocab_size is "
            f"{model.config.vocab_size}: it was encoded with another tokenizer"
        )
    plan = window_plan(len(tokens), context, stride)
    length = min(context, len(tokens) - 1)
    device = next(model.parameters()).device
    total_nats, scored = 0.0, 0
    batches = [plan[i : i + batch_size] for i in range(0, len(plan), batch_size)]
    with _Progress(len(plan), progress) as advance:
        for batch in batches:
            x, y = windows(tokens, np.array([start for start, _ in batch]), length)  # (B, L) each
            x, y = x.to(device), y.to(device)
            logits = model(x)  # (B, L, vocab)
            # Windows that score every position (all but an overlapping tail, with the default stride)
            # as one loss over their rows: one call and one read of the result per batch.
            whole = [row for row, (_, first) in enumerate(batch) if first == 0]
            if whole:
                rows = slice(None) if len(whole) == len(batch) else whole
                count = len(whole) * length
                total_nats += float(cross_entropy(logits[rows], y[rows])) * count  # float64: no drift
                scored += count
            for row, (_, first) in enumerate(batch):
                if first > 0:
                    count = length - first
                    total_nats += float(cross_entropy(logits[row, first:], y[row, first:])) * count
                    scored += count
            advance(len(batch))
    n_bytes = sum(  # in chunks: a memory-mapped array may be far larger than RAM
        int(token_bytes[np.asarray(tokens[i : i + 2**22], dtype=np.int64)].sum())
        for i in range(1, len(tokens), 2**22)
    )
    loss = total_nats / scored
    return {
        "loss": loss,
        "ppl": math.exp(loss),
        "bpb": total_nats / math.log(2) / n_bytes if n_bytes else float("nan"),
        "tokens": scored,
        "bytes": n_bytes,
        "windows": len(plan),
        "context_length": length,
        "stride": length if stride is None else stride,
    }


class _Progress:
    """A rich progress bar on stderr (or nothing); ``advance(n)`` moves it."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.enabled, self.bar = total, enabled, None

    def __enter__(self):
        if not self.enabled:
            return lambda n: None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        self.bar = Progress(
            "evaluating",
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        self.bar.start()
        task = self.bar.add_task("windows", total=self.total)
        return lambda n: self.bar.advance(task, n)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


def token_byte_lengths(tokenizer: Tokenizer, vocab_size: int) -> np.ndarray:
    """UTF-8 bytes of every token id (a special token counts as the text that spells it)."""
    lengths = np.zeros(vocab_size, dtype=np.int64)
    for i, token in tokenizer.vocab.items():
        lengths[i] = len(token)
    return lengths


def load_tokens(
    path: str | os.PathLike, tokenizer: Tokenizer, *, num_workers: int | None = None, check: bool = True
) -> np.ndarray:
    """A ``.npy`` token array (memory-mapped), or a UTF-8 text file encoded with ``tokenizer``
    (``check=False``: the caller has already run :func:`check_data_file` on it)."""
    from tokenizer.encode_to_npy import encode_file

    path = Path(path)
    if path.suffix == ".npy":
        return load_npy(path)
    if check:
        check_data_file(path)
    with tempfile.TemporaryDirectory() as tmp:
        encode_file(path, Path(tmp) / "tokens.npy", tokenizer, num_workers=num_workers)
        return np.load(Path(tmp) / "tokens.npy")


def load_npy(path: str | os.PathLike) -> np.ndarray:
    """A 1-D integer token array, memory-mapped; anything else is one ValueError line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data={path}: no such file")
    try:
        tokens = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as e:  # numpy raises ValueError, OSError, EOFError, UnpicklingError...: all one line
        detail = " ".join(str(e).split()) or type(e).__name__
        raise ValueError(f"data={path}: not a readable .npy token array ({detail})") from None
    if not isinstance(tokens, np.ndarray) or tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
        what = f"{tokens.dtype} {tokens.shape}" if isinstance(tokens, np.ndarray) else type(tokens).__name__
        raise ValueError(f"data={path}: expected a 1-D integer token array, got {what}")
    return tokens


def check_data_file(path: str | os.PathLike) -> None:
    """``data=`` exists and is a valid .npy token array or UTF-8 text (checked before the model loads)."""
    from tokenizer.files import check_utf8

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data={path}: no such file")
    if path.suffix == ".npy":
        load_npy(path)
    else:
        check_utf8(path)  # one policy for every text we read: FILE: invalid UTF-8 at byte N


# -- command line -------------------------------------------------------------------------------------


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_args(cfg: dict[str, Any]) -> None:
    """Every argument that can be checked without the model, in one ValueError line (all problems)."""
    problems = [f"{key}=PATH is required" for key in ("ckpt", "data") if not cfg.get(key)]
    if not _is_int(cfg.get("batch_size")) or cfg["batch_size"] < 1:
        problems.append(f"batch_size={cfg.get('batch_size')!r}: expected an integer >= 1")
    stride = cfg.get("stride")
    if stride is not None and (not _is_int(stride) or stride < 1):
        problems.append(f"stride={stride!r}: expected an integer >= 1 (at most context_length) or null")
    workers = cfg.get("num_workers")
    if workers is not None and (not _is_int(workers) or workers < 1):
        problems.append(f"num_workers={workers!r}: expected an integer >= 1 or null")
    if problems:
        raise ValueError("; ".join(problems))


def run(cfg: dict[str, Any]) -> dict[str, Any]:
    """The CLI's work. Arguments, the device, the data file and ``out`` are checked before the model
    is loaded; the stride's upper bound (context_length) once it is."""
    from lit_llm.loading import check_writable, load_model, resolve_device

    check_args(cfg)
    device = resolve_device(cfg.get("device"))
    if cfg.get("out"):
        if Path(cfg["out"]).is_dir():
            raise ValueError(f"out={cfg['out']}: is a folder (expected a JSON file to write)")
        check_writable(cfg["out"])
    check_data_file(cfg["data"])
    model, tokenizer = load_model(cfg["ckpt"], tokenizer=cfg.get("tokenizer"))
    window_plan(2, model.config.context_length, cfg.get("stride"))  # stride <= context_length
    model.to(device)
    tokens = load_tokens(cfg["data"], tokenizer, num_workers=cfg.get("num_workers"), check=False)
    result = evaluate(
        model,
        tokens,
        token_byte_lengths(tokenizer, model.config.vocab_size),
        stride=cfg.get("stride"),
        batch_size=cfg["batch_size"],
        progress=cfg.get("progress", True),
    )
    return {"ckpt": str(cfg["ckpt"]), "data": str(cfg["data"]), **result}


@cli.main("evaluate")
def main(cfg: DictConfig) -> None:
    config = OmegaConf.to_container(cfg, resolve=True)
    result = run(config)
    if config.get("out"):
        write_json(config["out"], result)
    if config.get("json"):
        print(json.dumps(result))
    else:
        print(
            f"loss {result['loss']:.4f}  ppl {result['ppl']:.3f}  bpb {result['bpb']:.4f}  "
            f"({result['tokens']:,} tokens, {result['bytes']:,} bytes, {result['windows']:,} windows of "
            f"{result['context_length']}, stride {result['stride']})"
        )


if __name__ == "__main__":
    main()
