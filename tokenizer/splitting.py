"""How text is split before BPE, for training and encoding alike: the one pre-tokenizer.

Three rules, each defined once, here:

* **special tokens** (``special_regex``): cut out of the text first, the longest first where several
  start at one place;
* **pre-tokens** (``pretokenize``): GPT-2's regex,
  ``'(?:[sdmt]|ll|ve|re)| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+``,
  with tiktoken's Unicode classes (``tokenizer.unicode_tables``), so that a tokenizer is trained on
  exactly the segmentation it is applied with, and its ids equal tiktoken's on any text;
* **safe cuts** (``CUT_RE``): where a text may be cut and its two sides processed apart, with the
  pre-tokens (hence ids) of the whole. Files are chunked for the workers there, ``encode_iterable``
  cuts its buffer there, and training counts distinct "words" cut there (``WORDS_RE``).

Engine: the standard library's ``re``, not the ``regex`` module. Both can run the pattern exactly as
tiktoken does once ``\\p{L}``, ``\\p{N}`` and ``\\s`` are spelled out as the tables' character
classes (both engines try the alternatives in order, leftmost first, as tiktoken's does), but
``regex`` then matches about 1-2 M characters/s against ``re``'s 20 M: ``re`` stores a class of the
Basic Multilingual Plane as one bitmap, ``regex`` scans the long list of ranges. ``regex``'s own
``\\p{L}`` is fast but follows its Unicode version, not tiktoken's. So the pattern is compiled three
times with ``re``: ASCII-only text (most of English) gets ASCII classes, text within the BMP gets
classes that ``re`` stores as one bitmap, and only text with characters above U+FFFF (emoji, ...)
pays for the full tables. On the texts each is used for, the three split alike
(tests/test_tokenizer_unicode.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from tokenizer.unicode_tables import LETTER, NUMBER, WHITE_SPACE, char_class


def gpt2_regex(max_code_point: int) -> re.Pattern[str]:
    """GPT-2's pre-tokenizer regex, valid for texts whose characters are all <= ``max_code_point``."""
    letter, number, space = (
        char_class(table, max_code_point=max_code_point) for table in (LETTER, NUMBER, WHITE_SPACE)
    )
    return re.compile(
        rf"'(?:[sdmt]|ll|ve|re)| ?[{letter}]+| ?[{number}]+| ?[^{space}{letter}{number}]+"
        rf"|[{space}]+(?![^{space}])|[{space}]+"
    )


ASCII_RE, BMP_RE, FULL_RE = (gpt2_regex(m) for m in (0x7F, 0xFFFF, 0x10FFFF))


_ASTRAL_RE = re.compile("[\U00010000-\U0010ffff]")


def within_bmp(text: str) -> bool:
    """Whether every character of ``text`` is in the Basic Multilingual Plane (<= U+FFFF).

    Two ways to the same answer, by length. A regex search for a character above U+FFFF costs ~9 ns
    per character: on 20 MB of long-tailed text that was ~0.18 s of a ~5 s encode. The length of the
    UTF-16 encoding says it too (2 bytes per BMP character, lone surrogates passed through, 4 for any
    other), in a tight C loop ~20x faster per character, but the codec call costs ~0.5 us, more than
    the whole search on a short word (BPE training asks this of every distinct word).
    """
    if len(text) < 64:
        return _ASTRAL_RE.search(text) is None
    return len(text.encode("utf-16-le", "surrogatepass")) == 2 * len(text)


def pretokenize(text: str) -> list[str]:
    """GPT-2's pre-tokens of ``text`` (which holds no special token), with the cheapest exact regex."""
    if text.isascii():  # O(1): CPython keeps this flag on every str
        return ASCII_RE.findall(text)
    if within_bmp(text):
        return BMP_RE.findall(text)
    return FULL_RE.findall(text)


def special_regex(tokens: Iterable[str], *, overlapping: bool = False) -> re.Pattern[str] | None:
    """Matches any of ``tokens`` (captured as group 1), the longest first where several start at one place.

    Longest first matters for overlapping tokens: with ``<|endoftext|>`` and
    ``<|endoftext|><|endoftext|>`` both special, a double occurrence is the longer token. ``split``
    returns the text between the tokens at the even positions and the tokens at the odd ones.
    ``overlapping=True`` wraps it in a look-ahead, so ``finditer`` reports every occurrence, even
    occurrences that overlap (used to check that a cut splits no special token).
    """
    tokens = sorted(set(tokens), key=len, reverse=True)
    if not tokens:
        return None
    alternatives = "|".join(map(re.escape, tokens))
    return re.compile(f"(?=({alternatives}))" if overlapping else f"({alternatives})")


# The safe cut: before a white-space character that follows a non-white-space one. Why it is safe: no
# pre-token holds a non-space character followed by white space (white space only ever leads a
# pre-token, or forms a run of its own), so the pre-token covering the left character ends at the
# cut; and the regex's only look-ahead (``\s+(?!\S)``) belongs to white-space runs, none of which
# crosses the cut. So the matching right of the cut is the same with or without the left part.
# (Invalid UTF-8 that a file reader escapes as lone surrogates counts as non-space here, as the
# U+FFFD that replaces it does in the regex.)
_SPACE = char_class(WHITE_SPACE)
CUT_RE = re.compile(f"(?<=[^{_SPACE}])[{_SPACE}]")
# The same rule as a split at *every* cut: "a, b\n\nc" -> ["a,", " b", "\n\nc"]. Each piece is a
# white-space run plus the non-space run after it; the pieces repeat, so training runs the GPT-2
# regex once per distinct piece. Written as a findall because that is ~1.7x faster than
# ``CUT_RE``-style zero-width splitting (tests/test_pretokenize.py checks the two agree).
WORDS_RE = re.compile(f"[{_SPACE}]*[^{_SPACE}]+|[{_SPACE}]+")


def straddles(text: str, p: int, straddle_re: re.Pattern[str], margin: int) -> bool:
    """Whether a special token (at most ``margin`` long) occurs in ``text`` across position ``p``."""
    for m in straddle_re.finditer(text, max(p - margin + 1, 0), p + margin - 1):
        if m.start() < p < m.start() + len(m.group(1)):
            return True
    return False


def safe_cuts(text: str, lo: int, hi: int, straddle_re: re.Pattern[str] | None, margin: int) -> Iterator[int]:
    """The positions in ``[lo, hi]`` where ``text`` may be cut (``CUT_RE``), in order, leaving out
    those inside an occurrence of a special token (``straddle_re``: ``special_regex(...,
    overlapping=True)``; ``margin``: the longest token's length)."""
    for m in CUT_RE.finditer(text, max(lo, 1), hi + 1):  # the look-behind sees text before `lo`
        p = m.start()
        if straddle_re is None or not straddles(text, p, straddle_re, margin):
            yield p


def last_cut(text: str, lo: int, hi: int, straddle_re: re.Pattern[str] | None, margin: int) -> int:
    """The last safe cut in ``[lo, hi]`` (see ``safe_cuts``), or -1."""
    for start in (max(lo, hi - 1024), lo):  # the last kilobyte nearly always has one
        cut = max(safe_cuts(text, start, hi, straddle_re, margin), default=-1)
        if cut >= 0 or start <= lo:
            return cut
    return -1
