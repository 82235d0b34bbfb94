"""Pre-tokenization for training: exact pre-token counts, wherever the file is cut and however many
workers count it. The reference is the plain definition: GPT-2's regex over the whole text, after
cutting out the special tokens."""

from __future__ import annotations

import io
import os
from collections import Counter
from itertools import pairwise
from unittest import mock

import pytest
import regex
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokenizer import pretokenize
from tokenizer.pretokenize import (
    GPT2_PATTERN,
    WHITESPACE,
    chunk_ranges,
    count_file,
    count_pretokens,
    decode_utf8,
    find_boundary,
)

EOT = "<|endoftext|>"


def reference_counts(text: str, special_tokens: list[str]) -> Counter[str]:
    """GPT-2 pre-tokens of the whole text, special tokens (longest first) cut out beforehand."""
    pieces = [text]
    if special_tokens:
        alternatives = "|".join(regex.escape(t) for t in sorted(special_tokens, key=len, reverse=True))
        pieces = regex.split(alternatives, text)
    return Counter(t for piece in pieces for t in regex.findall(GPT2_PATTERN, piece))


# Fragments chosen to hit every branch of the pattern and every kind of boundary: contractions, runs
# of each kind of white space (ASCII, Unicode, the \x1c-\x1f that only Python calls space), letters,
# digits, punctuation, non-ASCII letters, and special tokens next to anything.
FRAGMENTS = [
    "a", "b", "ab", "the", " ", "  ", "\n", "\n\n", "\r\n", "\t", "\x1c", "\xa0", "\u3000", "'s", "'ll",
    "'", "1", "42", ".", ",!", "é", "ß", "日本", "🙂", "x y", EOT, "<|pad|>", "<|", "|>",
]  # fmt: skip
texts = st.lists(st.sampled_from(FRAGMENTS), max_size=40).map("".join)
specials = st.sampled_from([[], [EOT], [EOT, "<|pad|>"], [EOT, EOT + EOT], ["ab", "b\n"]])


def test_whitespace_class_is_regex_s():
    """WHITESPACE (used with the stdlib `re`) is exactly what the regex module's \\s matches."""
    s = regex.compile(r"\s")
    ours = pretokenize.re.compile(f"[{WHITESPACE}]")
    for cp in range(0x110000):
        c = chr(cp)
        assert bool(s.match(c)) == bool(ours.match(c)), hex(cp)


@settings(max_examples=300, deadline=None)
@given(text=texts, special_tokens=specials)
def test_count_pretokens_matches_the_definition(text, special_tokens):
    assert count_pretokens(text, special_tokens) == reference_counts(text, special_tokens)


@pytest.mark.parametrize("name", ["corpus.en", "german.txt", "address.txt", "tinystories_sample.txt"])
def test_count_pretokens_on_real_text(fixture_file, name):
    text = fixture_file(name).read_bytes().decode("utf-8")
    assert count_pretokens(text, [EOT]) == reference_counts(text, [EOT])


@settings(max_examples=300, deadline=None)
@given(text=texts, special_tokens=specials, data=st.data())
def test_find_boundary_is_safe(text, special_tokens, data):
    """Counting the two sides of a boundary apart gives the counts of the whole."""
    raw = text.encode("utf-8")
    pos = data.draw(st.integers(0, len(raw)))
    window = data.draw(st.sampled_from([1, 3, 4096]))
    cut = find_boundary(io.BytesIO(raw), pos, len(raw), [t.encode() for t in special_tokens], window)
    assert pos <= cut <= len(raw) or (pos == 0 and cut == 0)
    left, right = raw[:cut].decode("utf-8"), raw[cut:].decode("utf-8")  # a character boundary
    assert count_pretokens(left, special_tokens) + count_pretokens(right, special_tokens) == reference_counts(
        text, special_tokens
    )


def test_find_boundary_prefers_special_tokens_then_newlines():
    raw = b"aaaa bbbb\ncccc" + EOT.encode() + b"dddd"
    f = io.BytesIO(raw)
    assert find_boundary(f, 1, len(raw), [EOT.encode()], window=64) == raw.index(EOT.encode())
    assert find_boundary(f, 1, len(raw), [], window=64) == raw.index(b"\n")
    assert find_boundary(f, 1, len(raw), [], window=6) == raw.index(b" ")  # no newline in sight
    assert find_boundary(io.BytesIO(b"x" * 50), 10, 50, []) == 50  # nowhere safe: the end
    cjk = "日本。\u3000\n語\n".encode()  # the first newline follows U+3000 (white space): not safe
    assert find_boundary(io.BytesIO(cjk), 1, len(cjk), []) == len(cjk) - 1


def test_text_without_ascii_is_cut_too(tmp_path):
    """Boundaries do not need ASCII: a newline after any non-space character will do."""
    text = "日本語の文章。\n中文\u3000\n\n한국어 텍스트\n" * 40
    path = _write(tmp_path, "cjk.txt", text.encode())
    with open(path, "rb") as f:
        assert len(chunk_ranges(f, path.stat().st_size, [], chunk_bytes=64)) > 20  # 2 KB
    assert count_file(path, [], num_workers=2, chunk_bytes=64).counts == reference_counts(text, [])


def test_chunk_ranges_tile_the_file(fixture_file):
    path = fixture_file("tinystories_200k.txt")
    size = path.stat().st_size
    with open(path, "rb") as f:
        ranges = chunk_ranges(f, size, [EOT], chunk_bytes=4096)
    assert ranges[0][0] == 0 and ranges[-1][1] == size
    assert all(a[1] == b[0] for a, b in pairwise(ranges))
    assert all(start < end for start, end in ranges)
    assert len(ranges) > 40


def _write(tmp_path, name: str, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("num_workers", [1, 2, 3])
@pytest.mark.parametrize("chunk_bytes", [7, 100, 4096])
def test_count_file_independent_of_workers_and_chunks(fixture_file, tmp_path, num_workers, chunk_bytes):
    files = [fixture_file("tinystories_sample.txt"), fixture_file("german.txt"), fixture_file("address.txt")]
    files += [
        _write(tmp_path, "one_line.txt", ("word, " * 300).encode()),  # no newline at all
        _write(tmp_path, "crlf.txt", ("Line one.\r\n  Two\t\r\n\r\n" * 40).encode()),
        _write(tmp_path, "eot_runs.txt", (EOT * 3 + "x\n" + EOT + "\n\n y" + EOT * 2).encode() * 20),
    ]
    for path in files:
        text = path.read_bytes().decode("utf-8")  # not read_text: it would turn \r\n into \n
        got = count_file(path, [EOT], num_workers=num_workers, chunk_bytes=chunk_bytes)
        assert got.counts == reference_counts(text, [EOT]), path.name
        assert got.n_special == text.count(EOT), path.name
        assert got.n_replaced == 0


def test_count_file_overlapping_special_tokens(tmp_path):
    """With a token that is two others back to back, the longest match still wins across chunks."""
    specials = [EOT, EOT + EOT, "<|pad|>"]
    text = ("a" + EOT * 3 + "b <|pad|>" + EOT + "<|pad|>\n") * 50
    path = _write(tmp_path, "overlap.txt", text.encode())
    for chunk_bytes in (5, 13, 64):
        got = count_file(path, specials, num_workers=2, chunk_bytes=chunk_bytes)
        assert got.counts == reference_counts(text, specials)
        assert got.n_special == 50 * 5  # EOT+EOT, EOT, <|pad|>, EOT, <|pad|>


def test_decode_utf8_counts_replacements():
    assert decode_utf8("héllo \ufffd".encode()) == ("héllo \ufffd", 0)  # a real U+FFFD is not counted
    text, n = decode_utf8(b"a\xffb\xe2\x82c\xf0\x9f\x99" + "\ufffd".encode())
    assert text == "a\ufffdb\ufffdc\ufffd\ufffd" and n == 3


def test_invalid_utf8_across_workers(tmp_path):
    data = (b"caf\xe9 ok \xff\xfe here\n" + "\ufffd fine\n".encode()) * 200
    path = _write(tmp_path, "latin1.txt", data)
    expected = reference_counts(data.decode("utf-8", errors="replace"), [])
    for workers in (1, 3):
        got = count_file(path, [], num_workers=workers, chunk_bytes=50)
        assert got.counts == expected
        assert got.n_replaced == 3 * 200


def _children() -> set[int]:
    import psutil

    return {p.pid for p in psutil.Process().children()}


def test_worker_error_is_reported(monkeypatch, tmp_path):
    path = _write(tmp_path, "t.txt", b"some text\n" * 1000)
    real = pretokenize.count_ranges

    def failing(path_, ranges, special_tokens, on_chunk=None):
        if ranges[0][0] > 0:  # only the forked workers' share
            raise OSError("disk on fire")
        return real(path_, ranges, special_tokens, on_chunk)

    monkeypatch.setattr(pretokenize, "count_ranges", failing)
    before = _children()
    with pytest.raises(RuntimeError, match="failed in a worker: OSError: disk on fire"):
        count_file(path, [], num_workers=3, chunk_bytes=100)
    assert _children() == before  # every worker was reaped


def test_dead_worker_is_reported(monkeypatch, tmp_path):
    path = _write(tmp_path, "t.txt", b"some text\n" * 1000)
    real = pretokenize.count_ranges

    def dying(path_, ranges, special_tokens, on_chunk=None):
        if ranges[0][0] > 0:
            os._exit(9)  # as if killed: no message at all
        return real(path_, ranges, special_tokens, on_chunk)

    monkeypatch.setattr(pretokenize, "count_ranges", dying)
    before = _children()
    with pytest.raises(RuntimeError, match="worker died"):
        count_file(path, [], num_workers=2, chunk_bytes=100)
    assert _children() == before


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=texts, special_tokens=specials, chunk_bytes=st.integers(1, 8))
def test_count_file_hypothesis(tmp_path, text, special_tokens, chunk_bytes):
    path = _write(tmp_path, "h.txt", text.encode())
    with mock.patch.object(pretokenize, "MIN_CHUNKS_PER_WORKER", 1):  # fork even for a few bytes
        got = count_file(path, special_tokens, num_workers=2, chunk_bytes=chunk_bytes)
    assert got.counts == reference_counts(text, special_tokens)
    raw = text.encode()
    n_ranges = len(chunk_ranges(io.BytesIO(raw), len(raw), special_tokens, chunk_bytes))
    assert got.num_workers == max(1, min(2, n_ranges, len(raw) // chunk_bytes))  # the policy, exactly
