"""`python -m tokenizer train|encode ...`: the tokenizer's command line.

Each subcommand lives in its own module (``cli_train``, ``cli_encode``) so that the command line of
one never has to import the machinery of the other.
"""

from __future__ import annotations

import signal
import sys

USAGE = "usage: python -m tokenizer {train,encode} [options]  (python -m tokenizer train --help)"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "train":
        from tokenizer.cli_train import main as run
    elif command == "encode":
        from tokenizer.cli_encode import main as run
    else:
        print(f"error: unknown command {command!r}; expected 'train' or 'encode'", file=sys.stderr)
        return 2
    return run(rest)


if __name__ == "__main__":
    # A plain kill (SIGTERM) unwinds like Ctrl-C does: temporary files are removed, workers reaped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    sys.exit(main())
