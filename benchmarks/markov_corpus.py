"""Large, realistic, non-repeating English corpora for benchmarks and memory tests.

Why a Markov chain: benchmarking a tokenizer on one file copied N times lets any cache keyed on whole
lines or chunks look miraculous. A fixed-seed, word-level Markov chain over real English
(Tiny Shakespeare + corpus.en) keeps the word and pair statistics of English while making sure that
no line repeats verbatim, at any size we ask for. Stories are separated by ``<|endoftext|>``.

Usage:
    python -m benchmarks.markov_corpus --mb 50 --out artifacts/corpora/markov_50mb.txt
    from benchmarks.markov_corpus import markov_corpus_path; path = markov_corpus_path(50)
"""

from __future__ import annotations

import argparse
import os
import random
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import regex

from tokenizer.files import EOT, atomic_write

REPO_ROOT = Path(__file__).resolve().parent.parent
# The two source texts are small and committed as test fixtures, so the corpus can be made in any clone.
SOURCE_DIR = REPO_ROOT / "tests" / "fixtures"
DEFAULT_SOURCES = ("tinyshakespeare.txt", "corpus.en")
DEFAULT_CACHE = REPO_ROOT / "artifacts" / "corpora"

# A "word" is a run of non-space characters, or a single newline (so line structure is modelled too).
_WORD_RE = regex.compile(r"\n|[^\s]+")


def _transition_table(texts: list[str]) -> tuple[list[str], list[list[int]]]:
    """Word vocabulary and, per word id, the list of successor ids (with multiplicity)."""
    word_to_id: dict[str, int] = {}
    successors: dict[int, list[int]] = defaultdict(list)
    for text in texts:
        prev = None
        for word in _WORD_RE.findall(text):
            wid = word_to_id.setdefault(word, len(word_to_id))
            if prev is not None:
                successors[prev].append(wid)
            prev = wid
    words = list(word_to_id)
    table = [successors.get(i) or [word_to_id["\n"]] for i in range(len(words))]
    return words, table


def write_markov_corpus(
    out_path: str | os.PathLike,
    n_bytes: int,
    *,
    seed: int = 0,
    sources: list[str | os.PathLike] | None = None,
    story_words: tuple[int, int] = (150, 600),
) -> Path:
    """Write about ``n_bytes`` of Markov-chain text to ``out_path`` (atomically) and return the path."""
    src_paths = [Path(p) for p in sources] if sources else [SOURCE_DIR / s for s in DEFAULT_SOURCES]
    for p in src_paths:
        if not p.is_file():
            raise FileNotFoundError(f"markov corpus source {p} not found (expected in tests/fixtures/)")
    words, table = _transition_table([p.read_text(encoding="utf-8") for p in src_paths])
    rng = random.Random(seed)
    newline_id = words.index("\n")
    written = 0
    with atomic_write(out_path, "w", encoding="utf-8") as f:
        while written < n_bytes:
            length = rng.randint(*story_words)
            state = rng.randrange(len(words))
            parts: list[str] = []
            at_line_start = True
            for _ in range(length):
                w = words[state]
                if w == "\n":
                    parts.append("\n")
                    at_line_start = True
                else:
                    parts.append(w if at_line_start else " " + w)
                    at_line_start = False
                nxt = table[state]
                state = nxt[rng.randrange(len(nxt))]
            if state == newline_id or not at_line_start:
                parts.append("\n")
            story = "".join(parts).strip("\n") + "\n" + EOT + "\n"
            f.write(story)
            written += len(story.encode("utf-8"))
    return Path(out_path)


def cached_corpus_path(
    name: str,
    write: Callable[..., Path],
    megabytes: float,
    *,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """``<cache>/<name>_<megabytes>mb_seed<seed>.txt``, made by ``write(path, n_bytes, seed=seed)`` on
    first use (the writers write atomically, so a crash never leaves a half corpus to be reused)."""
    cache = Path(cache_dir) if cache_dir else DEFAULT_CACHE
    path = cache / f"{name}_{megabytes:g}mb_seed{seed}.txt"
    if not path.exists():
        write(path, int(megabytes * 1_000_000), seed=seed)
    return path


def corpus_main(name: str, write: Callable[..., Path], description: str) -> None:
    """The command line of a corpus module: ``--mb`` MB into ``--out`` or the cache; prints the path."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--mb", type=float, required=True, help="size in MB (10**6 bytes)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.out is None:
        path = cached_corpus_path(name, write, args.mb, seed=args.seed)
    else:
        path = write(args.out, int(args.mb * 1_000_000), seed=args.seed)
    print(f"{path} ({path.stat().st_size / 1e6:.1f} MB)")


def markov_corpus_path(
    megabytes: float, *, seed: int = 0, cache_dir: str | os.PathLike | None = None
) -> Path:
    """Path to a cached corpus of ``megabytes`` MB (10**6 bytes), generating it on first use."""
    return cached_corpus_path("markov", write_markov_corpus, megabytes, seed=seed, cache_dir=cache_dir)


def main() -> None:
    corpus_main("markov", write_markov_corpus, __doc__.splitlines()[0])


if __name__ == "__main__":
    main()
