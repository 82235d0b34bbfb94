"""A long-tailed ("high-diversity") benchmark corpus: web-like text with hundreds of thousands of
distinct words, where a tokenizer's per-word cache stops helping.

The Markov corpus (``markov_corpus.py``) reuses a ~30K-word vocabulary, so nearly every pre-token hits a
cache. Web text and users' own corpora have a long tail instead. This corpus draws words from 1,000,000
distinct pseudo-words (random letter strings, 10 % with an accented letter, some capitalised) with
Zipf-distributed frequencies, and mixes in numbers and punctuation; documents end with ``<|endoftext|>``.
Fixed seed: the same bytes on every machine. 50 MB holds more than 400K distinct pre-tokens.

    python -m benchmarks.diverse_corpus --mb 50
    from benchmarks.diverse_corpus import diverse_corpus_path; path = diverse_corpus_path(50)
"""

from __future__ import annotations

import itertools
import os
import random
from pathlib import Path

from benchmarks.markov_corpus import cached_corpus_path, corpus_main
from tokenizer.files import EOT, atomic_write

LETTERS = "abcdefghijklmnopqrstuvwxyz"
ACCENTED = "àáâäçèéêëíîïñóôöúûüßø"
PUNCTUATION = [".", ",", "!", "?", ";", ":", " -", "'s", ")", " ("]
N_WORDS = 1_000_000
ZIPF_EXPONENT = 1.0


def _vocabulary(rng: random.Random) -> list[str]:
    words: set[str] = set()
    while len(words) < N_WORDS:
        word = "".join(rng.choices(LETTERS, k=rng.randint(2, 12)))
        if rng.random() < 0.1:  # one accented letter somewhere
            i = rng.randrange(len(word))
            word = word[:i] + rng.choice(ACCENTED) + word[i + 1 :]
        words.add(word)
    return sorted(words)  # a set's order varies between runs; sorting keeps the corpus fixed by the seed


def write_diverse_corpus(out_path: str | os.PathLike, n_bytes: int, *, seed: int = 0) -> Path:
    """Write about ``n_bytes`` of long-tailed text to ``out_path`` (atomically) and return the path."""
    rng = random.Random(seed)
    words = _vocabulary(rng)
    rng.shuffle(words)  # rank 1 is a random word, not the alphabetically first
    cum_weights = list(itertools.accumulate(1.0 / (rank + 1) ** ZIPF_EXPONENT for rank in range(N_WORDS)))
    written = 0
    with atomic_write(out_path, "w", encoding="utf-8") as f:
        while written < n_bytes:
            parts: list[str] = []
            for sentence_words in rng.choices(range(5, 25), k=rng.randint(3, 20)):  # one document
                drawn = rng.choices(words, cum_weights=cum_weights, k=sentence_words)
                drawn[0] = drawn[0].capitalize()
                for i in range(1, len(drawn)):
                    r = rng.random()
                    if r < 0.05:
                        drawn[i] = str(rng.randrange(10 ** rng.randint(1, 5)))
                    elif r < 0.12:
                        drawn[i] += rng.choice(PUNCTUATION)
                parts.append(" ".join(drawn) + rng.choice([".", ".", ".", "!", "?"]))
            document = " ".join(parts) + "\n" + EOT + "\n"
            f.write(document)
            written += len(document.encode("utf-8"))
    return Path(out_path)


def diverse_corpus_path(
    megabytes: float, *, seed: int = 0, cache_dir: str | os.PathLike | None = None
) -> Path:
    """Path to a cached corpus of ``megabytes`` MB (10**6 bytes), generating it on first use."""
    return cached_corpus_path("diverse", write_diverse_corpus, megabytes, seed=seed, cache_dir=cache_dir)


def main() -> None:
    corpus_main("diverse", write_diverse_corpus, __doc__.splitlines()[0])


if __name__ == "__main__":
    main()
