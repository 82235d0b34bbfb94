"""`python -m tokenizer train`: train a byte-level BPE tokenizer on a text file and save it.

    python -m tokenizer train --input corpus.txt --vocab-size 10000 \\
        --special-token '<|endoftext|>' --out artifacts/tokenizers/mine [--workers K] [--force]

Every argument is checked before training starts, and the files are written into a temporary folder
beside ``--out`` that then replaces ``--out`` in one rename (``tokenizer.files.building_dir``), so a
failure or Ctrl-C never leaves a half-written tokenizer; the stale temporary folders of runs that were
killed are swept from beside ``--out`` first. Invalid UTF-8 in ``--input`` is refused before any work
(``FILE: invalid UTF-8 at byte N``) unless ``--errors replace``.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tokenizer.bpe import TrainResult, check_training_args, train
from tokenizer.files import ProgressBar, building_dir, check_utf8, sha256_file, sweep_stale_temps

TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer.json", "meta.json")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tokenizer train", description="Train a byte-level BPE tokenizer on a text file."
    )
    parser.add_argument("--input", required=True, type=Path, help="UTF-8 text file to train on")
    parser.add_argument("--vocab-size", required=True, type=int, help="256 bytes + special tokens + merges")
    parser.add_argument(
        "--special-token",
        action="append",
        default=[],
        dest="special_tokens",
        metavar="TOKEN",
        help="a special token (repeatable), e.g. '<|endoftext|>'; it splits the text and is never merged",
    )
    parser.add_argument("--out", required=True, type=Path, help="folder for the tokenizer files")
    parser.add_argument(
        "--workers", type=int, default=None, help="pre-tokenizing processes (default: all cores)"
    )
    parser.add_argument("--force", action="store_true", help="overwrite a tokenizer already in --out")
    parser.add_argument(
        "--errors",
        choices=("strict", "replace"),
        default="strict",
        help="invalid UTF-8 in --input: refuse it, naming the byte (strict, default), or use U+FFFD",
    )
    return parser


def check_output_dir(out: Path, force: bool) -> None:
    """Refuse an --out that cannot hold our files, or that holds another tokenizer (unless forced).

    --out is replaced as a whole, so a folder holding anything but a tokenizer's files is refused too.
    """
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} exists and is not a folder")
    if out.is_dir():
        present = sorted(p.name for p in out.iterdir())
        others = [name for name in present if name not in TOKENIZER_FILES]
        if others:
            listed = ", ".join(others[:3])
            raise FileExistsError(f"--out {out} holds other files ({listed}); it would be replaced")
        if present and not force:
            ours = ", ".join(name for name in TOKENIZER_FILES if name in present)
            raise FileExistsError(f"--out {out} already holds a tokenizer ({ours}); add --force")
    ancestor = out
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise PermissionError(f"--out {out}: cannot create files under {ancestor}")


def peak_rss_mb(num_workers: int) -> tuple[float, float, float]:
    """Peak memory of this process and of its largest worker, and their bound for the process tree.

    Exact per process (the kernel's max RSS), so no sampling can miss a peak; the tree's peak is at
    most this process's plus ``num_workers - 1`` times the largest worker's.
    """
    scale = 1 / 2**20 if sys.platform == "darwin" else 1 / 2**10  # ru_maxrss: bytes on macOS, else KiB
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    try:  # Linux's ru_maxrss keeps the peak of the process that exec'd us (a shell, or a big parent)
        with open("/proc/self/status") as f:
            own = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 2**10
    except (OSError, StopIteration):
        pass
    worker = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale if num_workers > 1 else 0.0
    return own, worker, own + (num_workers - 1) * worker


class _PhaseBars:
    """A progress bar per phase of training, each started by the phase's first report, which stops the
    previous phase's bar. ``phase(...)`` returns the ``(done, total)`` callback that ``train`` calls.

    Why start so late: ``ProgressBar`` refreshes from a thread, and the pre-tokenizing workers are
    forked right at the start of ``count_file``, before it first reports progress. A thread alive at
    fork time could leave a lock held in the workers.
    """

    def __init__(self) -> None:
        self.bar: ProgressBar | None = None
        self.current, self.done = "", 0

    def phase(self, description: str, total: int, unit: str) -> Callable[[int, int], None]:
        def report(done: int, _total: int) -> None:
            if self.current != description:
                self.stop()
                self.bar = ProgressBar(total, description, unit=unit).__enter__()
                self.current, self.done = description, 0
            self.bar.advance(done - self.done)
            self.done = done

        return report

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


def train_with_progress(args: argparse.Namespace) -> TrainResult:
    """Train, showing bytes pre-tokenized, then merges done."""
    bars = _PhaseBars()
    try:
        return train(
            args.input,
            args.vocab_size,
            args.special_tokens,
            num_workers=args.workers,
            pretokenize_progress=bars.phase("pre-tokenizing", args.input.stat().st_size, "bytes"),
            merge_progress=bars.phase("merging", args.vocab_size - 256 - len(args.special_tokens), "items"),
        )
    finally:
        bars.stop()


def save(result: TrainResult, out: Path, meta: dict) -> None:
    """Write the four files into a temporary folder beside ``out``, which then replaces ``out``."""
    from tokenizer.tokenizer import Tokenizer

    with building_dir(out) as tmp:
        Tokenizer(result.vocab, result.merges, result.special_tokens).save(tmp, extra_meta=meta)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.workers is not None and args.workers < 1:
            raise ValueError(f"--workers {args.workers}: expected at least 1")
        check_training_args(args.input, args.vocab_size, args.special_tokens)
        for token in args.special_tokens:
            if len(token.encode("utf-8")) == 1:  # a vocab may not hold the same bytes twice
                raise ValueError(
                    f"--special-token {token!r} is a single byte, already one of the 256 byte tokens"
                )
        check_output_dir(args.out, args.force)
        if args.errors == "strict":
            check_utf8(args.input)
        sweep_stale_temps(args.out.parent)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

    start = time.perf_counter()
    try:
        result = train_with_progress(args)
        seconds = time.perf_counter() - start
        own_mb, worker_mb, tree_mb = peak_rss_mb(result.num_workers)
        if result.n_replaced:
            print(
                f"warning: {args.input}: replaced {result.n_replaced} invalid UTF-8 sequence(s) with U+FFFD",
                file=sys.stderr,
            )
        meta = {
            "corpus_path": str(args.input.resolve()),
            "corpus_bytes": result.n_bytes,
            "corpus_sha256": sha256_file(args.input),
            "corpus_tokens": result.n_tokens,
            "bytes_per_token": result.n_bytes / max(result.n_tokens, 1),
            "num_merges": len(result.merges),
            "stopped_early": len(result.vocab) < args.vocab_size,
            "invalid_utf8_replaced": result.n_replaced,
            "num_workers": result.num_workers,
            "training_seconds": round(seconds, 3),
        }
        save(result, args.out, meta)
    except KeyboardInterrupt:
        print("error: interrupted; nothing was written", file=sys.stderr)
        return 130
    except (OSError, RuntimeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

    token_id, longest = max(result.vocab.items(), key=lambda item: (len(item[1]), -item[0]))
    workers = f" + {result.num_workers - 1} worker(s) <= {worker_mb:.0f} MB each" if worker_mb else ""
    print(
        f"trained {len(result.vocab)} tokens ({len(result.merges)} merges) on {args.input} "
        f"({result.n_bytes / 1e6:.1f} MB) in {seconds:.2f} s "
        f"(pre-tokenize {result.pretokenize_seconds:.2f} s with {result.num_workers} process(es), "
        f"merges {result.merge_seconds:.2f} s)"
    )
    if meta["stopped_early"]:
        print(f"stopped early: no pair left after {len(result.merges)} merges (vocab {len(result.vocab)})")
    print(f"peak memory: {tree_mb:.0f} MB (max RSS: this process {own_mb:.0f} MB{workers})")
    print(f"longest token: id {token_id}, {len(longest)} bytes: {longest.decode('utf-8', 'replace')!r}")
    print(f"bytes per token on the corpus: {meta['bytes_per_token']:.3f}")
    print(f"wrote {', '.join(TOKENIZER_FILES)} to {args.out}")
    return 0
