"""The pre-tokenizer's Unicode classes are tiktoken's, for every code point; its three regexes agree;
the pre-tokens BPE training counts are the pieces tiktoken splits a text into."""

from __future__ import annotations

from collections import Counter

import pytest
from gpt2_reference import (
    FRAGMENTS,
    GPT2_PATTERN,
    TEXT_FILES,
    all_characters,
    ours_gpt2,
    table,
    tiktoken_class_members,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenizer import splitting
from tokenizer.pretokenize import count_pretokens
from tokenizer.unicode_tables import LETTER, NUMBER, WHITE_SPACE, char_class, ranges


@pytest.mark.parametrize(("ours", "cls"), [(LETTER, r"\p{L}"), (NUMBER, r"\p{N}"), (WHITE_SPACE, r"\s")])
def test_tables_equal_tiktoken_classes(ours, cls):
    theirs = table(tiktoken_class_members(cls))
    assert ours == theirs, f"{cls} differs from tiktoken: python -m tests.gpt2_reference --unicode-tables"


def test_tables_are_sorted_disjoint_ranges():
    for t in (LETTER, NUMBER, WHITE_SPACE):
        spans = ranges(t)
        assert all(a <= b for a, b in spans)
        assert all(b1 + 1 < a2 for (_, b1), (a2, _) in zip(spans, spans[1:], strict=False))
    assert char_class("41-43 61", max_code_point=0x7F) == "A-Ca"
    assert char_class("41-43 1f600-1f64f", max_code_point=0xFFFF) == "A-C"


def _split_all_ways(text: str) -> list[list[str]]:
    out = [splitting.FULL_RE.findall(text)]
    if splitting.within_bmp(text):
        out.append(splitting.BMP_RE.findall(text))
    if text.isascii():
        out.append(splitting.ASCII_RE.findall(text))
    return out


@pytest.mark.parametrize("name", TEXT_FILES)
def test_the_three_regexes_split_real_text_alike(fixture_file, name):
    text = fixture_file(name).read_text(encoding="utf-8")
    splits = _split_all_ways(text)
    assert all(s == splits[0] for s in splits)
    assert "".join(splits[0]) == text
    ascii_only = text.encode("ascii", errors="ignore").decode()
    assert len({tuple(s) for s in _split_all_ways(ascii_only)}) == 1


@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(exclude_categories=())))  # lone surrogates too
def test_within_bmp_says_whether_every_character_is_at_most_u_ffff(text):
    for t in (text, text * 64):  # both ways: a short text by regex, a long one by its UTF-16 length
        assert splitting.within_bmp(t) == all(ord(c) <= 0xFFFF for c in t)


@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(max_codepoint=0xFFFF, exclude_categories=("Cs",))))
def test_the_bmp_regex_splits_like_the_full_one(text):
    splits = _split_all_ways(text)
    assert all(s == splits[0] for s in splits)


@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(max_codepoint=0x7F)))
def test_the_ascii_regex_splits_like_the_full_one(text):
    splits = _split_all_ways(text)
    assert len(splits) == 3 and all(s == splits[0] for s in splits)


def test_ids_equal_tiktoken_across_the_whole_code_space():
    """Every 8th code point, in runs of 1 to 6 separated by spaces or newlines: 140k characters."""
    from gpt2_reference import tiktoken_gpt2

    chars = all_characters()[::8]
    parts, i = [], 0
    while i < len(chars):
        n = 1 + i % 6
        parts.append(chars[i : i + n] + (" " if i % 5 else "\n"))
        i += n
    text = "".join(parts)
    assert ours_gpt2().encode(text, allowed_special="none") == tiktoken_gpt2().encode_ordinary(text)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.one_of(st.text(st.characters(codec=None, exclude_categories=("Cs",))), st.sampled_from(FRAGMENTS)),
        max_size=20,
    ).map("".join)
)
def test_training_pretokens_are_tiktokens_pieces(text):
    """BPE training's pre-tokens are tiktoken's: given each as a whole token, tiktoken (which looks a
    pre-token up whole before merging) encodes the text as exactly those pieces, once each."""
    import tiktoken

    counts = count_pretokens(text, [])
    ranks = {bytes([b]): b for b in range(256)}
    for piece in counts:
        ranks.setdefault(piece.encode("utf-8"), len(ranks))
    enc = tiktoken.Encoding("pieces", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={})
    pieces = Counter(enc.decode_single_token_bytes(i) for i in enc.encode_ordinary(text))
    assert pieces == Counter({piece.encode("utf-8"): n for piece, n in counts.items()})
