"""Pre-tokenization for training: exact pre-token counts, wherever the file is cut and however many
workers count it. The reference is the encoder's own splitting of the whole text (special tokens cut
out, then ``splitting.pretokenize``), on text drawn from all of Unicode: a tokenizer is trained on
exactly the segmentation it is applied with (which tests/test_tokenizer*.py check against tiktoken)."""

from __future__ import annotations

import io
import os
from collections import Counter
from itertools import pairwise
from unittest import mock

import pytest
from gpt2_reference import FRAGMENTS as TRICKY
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokenizer import pretokenize, splitting
from tokenizer.pretokenize import (
    Tickets,
    Workers,
    chunk_ranges,
    count_file,
    count_pretokens,
    decode_utf8,
    find_boundary,
)

EOT = "<|endoftext|>"


def reference_counts(text: str, special_tokens: list[str]) -> Counter[str]:
    """The encoder's pre-tokens of the whole text: what ``Tokenizer.encode`` splits it into."""
    special_re = splitting.special_regex(special_tokens)
    pieces = special_re.split(text)[::2] if special_re else [text]  # odd positions: the tokens
    return Counter(t for piece in pieces for t in splitting.pretokenize(piece))


def find(raw: bytes, pos: int, special_tokens: list[str], window: int = 4096) -> int:
    straddle_re = splitting.special_regex(special_tokens, overlapping=True)
    margin = max((len(t.encode()) for t in special_tokens), default=1)
    return find_boundary(io.BytesIO(raw), pos, len(raw), straddle_re, margin, window)


# Fragments chosen to hit every branch of the pattern and every kind of boundary: contractions, runs
# of each kind of white space (ASCII, Unicode, the \x1c-\x1f that only Python calls space), letters,
# digits, punctuation, non-ASCII letters, and special tokens next to anything.
FRAGMENTS = [
    "a", "b", "ab", "the", " ", "  ", "\n", "\n\n", "\r\n", "\t", "\x1c", "\xa0", "\u3000", "'s", "'ll",
    "'", "1", "42", ".", ",!", "é", "ß", "日本", "🙂", "x y", EOT, "<|pad|>", "<|", "|>",
]  # fmt: skip
texts = st.lists(st.sampled_from(FRAGMENTS), max_size=40).map("".join)
specials = st.sampled_from([[], [EOT], [EOT, "<|pad|>"], [EOT, EOT + EOT], ["ab", "b\n"]])
# All of Unicode (letters, marks, digits of every script, emoji, CJK, controls; not the surrogates,
# which no UTF-8 text holds), mixed with the fragments that stress the pattern and the special tokens.
any_unicode = st.text(alphabet=st.characters(codec=None, exclude_categories=("Cs",)), max_size=12)
unicode_texts = st.lists(
    st.one_of(any_unicode, st.sampled_from(TRICKY), st.sampled_from(FRAGMENTS)), max_size=30
).map("".join)


@settings(max_examples=500, deadline=None)
@given(text=unicode_texts, special_tokens=specials)
def test_training_counts_equal_the_encoders_split_on_all_of_unicode(text, special_tokens):
    assert count_pretokens(text, special_tokens) == reference_counts(text, special_tokens)


@settings(max_examples=300, deadline=None)
@given(text=unicode_texts)
def test_words_are_the_text_cut_at_every_safe_cut(text):
    """WORDS_RE (training's fast split) cuts exactly where CUT_RE (the chunk rule) allows a cut."""
    cuts = [0, *(m.start() for m in splitting.CUT_RE.finditer(text)), len(text)]
    expected = [text[a:b] for a, b in pairwise(cuts) if a < b]
    assert splitting.WORDS_RE.findall(text) == expected


@settings(max_examples=300, deadline=None)
@given(text=texts, special_tokens=specials)
def test_count_pretokens_matches_the_definition(text, special_tokens):
    assert count_pretokens(text, special_tokens) == reference_counts(text, special_tokens)


@pytest.mark.parametrize("name", ["corpus.en", "german.txt", "address.txt", "tinystories_sample.txt"])
def test_count_pretokens_on_real_text(fixture_file, name):
    text = fixture_file(name).read_bytes().decode("utf-8")
    assert count_pretokens(text, [EOT]) == reference_counts(text, [EOT])


def test_words_that_occur_once_are_pretokenized_together_only_where_that_is_exact():
    """Words seen once are joined and split in one regex call; the first and last piece of each text
    (which may start with a non-space character or be all white space) must not join them: "x" + "y"
    would be one pre-token, and "\n" + " z" would change the white-space rule."""
    text = "ab" + EOT + "cd ef  " + EOT + "\n" + EOT + "gh ij's 12 kl\n\n" + EOT + " mn" + EOT + "op"
    words = pretokenize.Words()
    words.add(text, splitting.special_regex([EOT]))
    assert set(words.edges) == {"ab", "cd", "  ", "\n", "gh", "\n\n", " mn", "op"}
    assert all(n == 1 for n in words.inner.values())  # the joined path does all of the inner words
    counts: Counter[str] = Counter()
    words.pretokenize_into(counts)
    assert counts == reference_counts(text, [EOT])
    assert len(words) == 0


@settings(max_examples=300, deadline=None)
@given(text=st.one_of(texts, unicode_texts), special_tokens=specials, data=st.data())
def test_find_boundary_is_safe(text, special_tokens, data):
    """Counting the two sides of a boundary apart gives the counts of the whole."""
    raw = text.encode("utf-8")
    pos = data.draw(st.integers(0, len(raw)))
    window = data.draw(st.sampled_from([1, 3, 4096]))
    cut = find(raw, pos, special_tokens, window)
    assert pos <= cut <= len(raw) or (pos == 0 and cut == 0)
    left, right = raw[:cut].decode("utf-8"), raw[cut:].decode("utf-8")  # a character boundary
    assert count_pretokens(left, special_tokens) + count_pretokens(right, special_tokens) == reference_counts(
        text, special_tokens
    )


def test_find_boundary_finds_the_first_safe_cut():
    raw = b"aaaa bbbb\ncccc" + EOT.encode() + b"dddd eeee"
    assert find(raw, 1, []) == raw.index(b" ")
    assert find(raw, 6, [], window=3) == raw.index(b"\n")
    assert find(raw, 11, [EOT]) == raw.index(b" e")
    assert find(b"x" * 50, 10, []) == 50  # nowhere safe: the end
    cjk = "日本。\u3000\n語\n".encode()  # the first newline follows U+3000 (white space): not safe
    assert find(cjk, 1, []) == cjk.index("\u3000".encode())  # but U+3000 follows "。"
    assert find(cjk, cjk.index(b"\n"), []) == len(cjk) - 1
    assert find(b"a\xe3\x80\x80 b", 2, []) == 6  # from inside U+3000: its space follows white space
    spaced = EOT.replace("end", "end ")  # a cut inside an occurrence of a special token is never safe
    raw = (spaced + " x").encode()
    assert find(raw, 1, [spaced]) == raw.index(b" x")


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
    with pytest.raises(OSError, match="disk on fire"):  # the worker's exception, raised again here
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


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=unicode_texts, special_tokens=specials, chunk_bytes=st.integers(1, 16))
def test_count_file_on_all_of_unicode(tmp_path, text, special_tokens, chunk_bytes):
    """Chunks cut anywhere in any script, counted by forked workers: still the encoder's split."""
    path = _write(tmp_path, "u.txt", text.encode())
    with mock.patch.object(pretokenize, "MIN_CHUNKS_PER_WORKER", 1):
        got = count_file(path, special_tokens, num_workers=3, chunk_bytes=chunk_bytes)
    assert got.counts == reference_counts(text, special_tokens)


def test_tickets_are_each_taken_once_by_whichever_worker_asks():
    tickets = Tickets()
    assert tickets.capacity >= 1024
    too_many = Tickets()
    with pytest.raises(ValueError, match="do not fit"):
        too_many.deal(too_many.capacity + 1)
    too_many.close()
    tickets.deal(500)

    def work(i, send):
        while (n := tickets.take()) is not None:
            send(b"%d" % n)

    with Workers(3, work) as pool:
        tickets.close()
        taken = []
        while pool.running:
            for i in pool.ready(None):
                if (message := pool.receive(i)) is not None:
                    taken.append(int(message))
    assert sorted(taken) == list(range(500))


def test_workers_send_in_order_and_report_errors():
    def work(i, send):
        for k in range(3):
            send(b"%d:%d" % (i, k) * 30_000)  # 120 kB: more than a pipe holds
        if i == 1:
            raise ValueError("worker 1 gives up")

    before = _children()
    with Workers(2, work) as pool:
        assert [pool.receive(0) for _ in range(4)] == [b"0:%d" % k * 30_000 for k in range(3)] + [None]
        assert [pool.receive(1) for _ in range(3)] == [b"1:%d" % k * 30_000 for k in range(3)]
        with pytest.raises(ValueError, match="worker 1 gives up"):
            pool.receive(1)
        assert not pool.running
    assert _children() == before
