"""How text is split before BPE: special tokens, GPT-2's pre-tokenizer regex, and safe cut points.

The regex is GPT-2's, ``'(?:[sdmt]|ll|ve|re)| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+``,
run on the standard-library ``re`` with Unicode 16 classes spelled out (``tokenizer.unicode_tables``
says why), compiled three times: ASCII-only text (most of English) gets ASCII classes, text within
the Basic Multilingual Plane gets classes that ``re`` stores as one bitmap, and only text with
characters above U+FFFF (emoji, ...) pays for the full tables. On the texts each is used for, the
three split alike (tests/test_tokenizer_unicode.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

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
ASTRAL_RE = re.compile("[\U00010000-\U0010ffff]")


def pretokenize(text: str) -> list[str]:
    """GPT-2's pre-tokens of ``text`` (which holds no special token), with the cheapest exact regex."""
    if text.isascii():  # O(1): CPython keeps this flag on every str
        return ASCII_RE.findall(text)
    if ASTRAL_RE.search(text) is None:
        return BMP_RE.findall(text)
    return FULL_RE.findall(text)


# Where a text can be cut and its halves encoded apart, with the ids of the whole: before an ASCII
# white-space character that follows a printable non-space ASCII one. No pre-token holds a non-space
# character followed by white space, so the pre-token covering the left character ends there, and the
# regex's only look-ahead (``\s+(?!\S)``) belongs to white-space runs, none of which crosses the cut.
CUT_RE = re.compile(r"(?<=[!-~])[\t\n\x0b\x0c\r ]")


def special_regex(tokens: Iterable[str], *, overlapping: bool = False) -> re.Pattern[str] | None:
    """Matches any of ``tokens``, the longest first where several start at one place.

    ``overlapping=True`` wraps it in a look-ahead, so ``finditer`` reports every occurrence, even
    occurrences that overlap (used to check that a cut splits no special token).
    """
    tokens = sorted(set(tokens), key=len, reverse=True)
    if not tokens:
        return None
    alternatives = "|".join(map(re.escape, tokens))
    return re.compile(f"(?=({alternatives}))" if overlapping else f"({alternatives})")


def last_cut(text: str, lo: int, hi: int, straddle_re: re.Pattern[str] | None, margin: int) -> int:
    """The last position in ``[lo, hi]`` where ``text`` may be cut (see ``CUT_RE``), or -1."""
    for start in (max(lo, hi - 1024), lo):  # the last kilobyte nearly always has one
        cuts = [m.start() for m in CUT_RE.finditer(text, max(start, 1), hi + 1)]
        for p in reversed(cuts):
            if straddle_re is None or not straddles(text, p, straddle_re, margin):
                return p
        if start <= lo:
            break
    return -1


def straddles(text: str, p: int, straddle_re: re.Pattern[str], margin: int) -> bool:
    """Whether a special token (at most ``margin`` long) occurs in ``text`` across position ``p``."""
    for m in straddle_re.finditer(text, max(p - margin + 1, 0), p + margin - 1):
        if m.start() < p < m.start() + len(m.group(1)):
            return True
    return False
