"""`python -m tokenizer encode --tokenizer DIR --input FILE --output FILE.npy [--workers K]`.

Encodes a UTF-8 text file into a ``.npy`` array of token ids with a tokenizer folder written by
``Tokenizer.save`` (``python -m tokenizer train``), and writes ``FILE.meta.json`` beside it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tokenizer encode",
        description="Encode a UTF-8 text file into a .npy array of token ids (uint16, or uint32 if needed).",
    )
    parser.add_argument(
        "--tokenizer", type=Path, required=True, help="tokenizer folder (vocab.json, merges.txt, meta.json)"
    )
    parser.add_argument("--input", type=Path, required=True, help="UTF-8 text file")
    parser.add_argument("--output", type=Path, required=True, help="output .npy (its folder must exist)")
    parser.add_argument(
        "--workers", type=int, default=None, help="worker processes (default: all usable cores)"
    )
    parser.add_argument(
        "--chunk-mb", type=float, default=None, help="text per task in MB (default: automatic)"
    )
    parser.add_argument(
        "--errors",
        choices=("strict", "replace"),
        default="strict",
        help="invalid UTF-8 in --input: refuse it, naming the byte (strict, default), or encode it as U+FFFD",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # --help, or a usage error argparse has already printed
        return int(e.code or 0)
    if args.workers is not None and args.workers < 1:
        print(f"error: --workers {args.workers}: expected at least 1", file=sys.stderr)
        return 2
    if args.chunk_mb is not None and args.chunk_mb <= 0:
        print(f"error: --chunk-mb {args.chunk_mb}: expected a positive size", file=sys.stderr)
        return 2

    from tokenizer.encode_to_npy import encode_file, meta_path_for
    from tokenizer.tokenizer import Tokenizer

    try:
        started = time.perf_counter()
        tokenizer = Tokenizer.from_dir(args.tokenizer)
        loaded = time.perf_counter()
        n_tokens = encode_file(
            args.input,
            args.output,
            tokenizer,
            num_workers=args.workers,
            chunk_bytes=None if args.chunk_mb is None else max(1, int(args.chunk_mb * 1e6)),
            progress=not args.quiet,
            errors=args.errors,
        )
    except (OSError, ValueError, RuntimeError) as e:  # RuntimeError: a worker process died (out of memory?)
        print(f"error: {e}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - loaded
    size = args.input.stat().st_size
    per_token = f"{size / n_tokens:.2f} bytes/token" if n_tokens else "empty input"
    print(
        f"{args.output}: {n_tokens:,} tokens ({per_token}) from {size / 1e6:.1f} MB in {seconds:.1f} s "
        f"({size / 1e6 / max(seconds, 1e-9):.1f} MB/s; tokenizer loaded in {loaded - started:.1f} s); "
        f"metadata in {meta_path_for(args.output)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
