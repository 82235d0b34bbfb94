"""encode_iterable: the ids of the joined pieces, in flat memory; the cut rule it relies on."""

from __future__ import annotations

import itertools
import tracemalloc

import pytest
from gpt2_reference import EOT, FRAGMENTS, ours_gpt2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokenizer.splitting import CUT_RE, straddles
from tokenizer.tokenizer import Tokenizer

pieces_of_text = st.lists(st.sampled_from([*FRAGMENTS, EOT, EOT + EOT, "\n" + EOT + "\n"]), max_size=60).map(
    "".join
)
quick = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("name", ["tinyshakespeare.txt", "tinystories_sample.txt", "corpus.en", "german.txt"])
@pytest.mark.parametrize("buffer_chars", [64, 1 << 16])
def test_lines_of_a_file_encode_like_the_whole_file(fixture_file, name, buffer_chars):
    path = fixture_file(name)
    tok = ours_gpt2()
    with open(path, encoding="utf-8", newline="") as f:
        streamed = list(tok.encode_iterable(f, buffer_chars=buffer_chars))
    assert streamed == tok.encode(path.read_text(encoding="utf-8"))


@quick
@given(pieces_of_text, st.lists(st.integers(0, 10_000), max_size=12), st.sampled_from([1, 7, 40]))
def test_arbitrary_pieces_encode_like_their_join(text, cuts, buffer_chars):
    """Pieces split anywhere (inside words, emoji sequences, special tokens) change nothing."""
    bounds = sorted({c % (len(text) + 1) for c in cuts} | {0, len(text)})
    pieces = [text[a:b] for a, b in itertools.pairwise(bounds)]
    tok = ours_gpt2()
    for allowed in ("all", "none"):
        expected = tok.encode(text, allowed_special=allowed)
        assert (
            list(tok.encode_iterable(pieces, allowed_special=allowed, buffer_chars=buffer_chars)) == expected
        )


def test_special_token_split_across_pieces():
    tok = ours_gpt2()
    pieces = ["hello <|endof", "text|> world\n", "a" * 50, "<|endoftext|>", "<", "|endoftext|", ">!"]
    assert list(tok.encode_iterable(pieces, buffer_chars=1)) == tok.encode("".join(pieces))
    with pytest.raises(ValueError, match="none_raise"):
        list(tok.encode_iterable(pieces, allowed_special="none_raise", buffer_chars=1))


def test_text_without_cut_points_still_encodes():
    tok = ours_gpt2()
    pieces = ["x" * 1000] * 50 + ["\ty" * 100]  # no cut for 50,000 characters
    assert list(tok.encode_iterable(pieces, buffer_chars=100)) == tok.encode("".join(pieces))


def _peak_bytes(tok: Tokenizer, lines: list[str], copies: int) -> int:
    tracemalloc.start()
    try:
        n = sum(
            1 for _ in tok.encode_iterable(itertools.chain.from_iterable(itertools.repeat(lines, copies)))
        )
        assert n > 0
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_stays_flat_as_the_input_grows(fixture_file):
    text = fixture_file("tinyshakespeare.txt").read_text(encoding="utf-8")[:300_000]
    lines = text.splitlines(keepends=True)
    tok = ours_gpt2()
    tok.encode(text)  # warm the pre-token cache, so that only the streaming state is measured
    small, large = _peak_bytes(tok, lines, 1), _peak_bytes(tok, lines, 4)
    assert large < 1.25 * small + 100_000, (small, large)
    # Encoding the 1.2 MB joined text at once peaks at ~18 MB (text, pre-token list, ~360k ids).
    assert large < 4_000_000, large


@settings(max_examples=300, deadline=None)
@given(pieces_of_text)
def test_every_cut_point_is_safe(text):
    """The cut rule: at every position ``CUT_RE`` offers that splits no special token, encoding the
    two halves apart gives the ids of the whole. encode_iterable and encode_file rely on this."""
    tok = ours_gpt2()
    whole = tok.encode(text)
    special_re = tok._special_res("all")[1]
    for m in CUT_RE.finditer(text):
        p = m.start()
        if not straddles(text, p, special_re, len(EOT)):
            assert tok.encode(text[:p]) + tok.encode(text[p:]) == whole, p
