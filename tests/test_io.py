"""GPT-2 vocab.json / merges.txt reading, writing and validation; Hugging Face tokenizer.json export."""

from __future__ import annotations

import json

import pytest
from gpt2_reference import EOT, MERGES, TEXT_FILES, VOCAB, ours_gpt2, tiktoken_gpt2
from hypothesis import given
from hypothesis import strategies as st

from tokenizer import io
from tokenizer.tokenizer import Tokenizer

TRICKY = (
    "Don't   stop\n\n  \t 2024 \u3000caf\u00e9 \U0001f600\U0001f600 e\u0301 \u4f60\u597d!! 'll\r\n\x0b \xa0x"
)


def test_bytes_to_unicode_is_a_printable_bijection():
    table = io.bytes_to_unicode()
    assert sorted(table) == list(range(256))
    assert len(set(table.values())) == 256
    assert all(c.isprintable() and not c.isspace() for c in table.values())
    assert table[ord("a")] == "a" and table[ord(" ")] == "\u0120" and table[ord("\n")] == "\u010a"
    table[0] = "mutated"  # callers get a fresh dict
    assert io.bytes_to_unicode()[0] == "\u0100"


def test_bytes_to_unicode_matches_gpt2s_vocab():
    vocab = json.loads(VOCAB.read_text(encoding="utf-8"))
    single_bytes = {token for token, i in vocab.items() if i < 256}
    assert single_bytes == set(io.bytes_to_unicode().values())


@given(st.binary(max_size=40))
def test_token_str_round_trip(token):
    assert io.str_to_token(io.token_to_str(token)) == token
    assert " " not in io.token_to_str(token)


def test_read_gpt2_files_equal_tiktoken_ranks():
    vocab = io.read_vocab_json(VOCAB)
    merges = io.read_merges_txt(MERGES, vocab)
    assert len(vocab) == 50257 and len(merges) == 50000
    ref = tiktoken_gpt2()
    assert all(vocab[i] == ref.decode_single_token_bytes(i) for i in range(50256))
    assert vocab[50256] == EOT.encode()
    assert merges[0] == (b" ", b"t")
    assert all(vocab[256 + i] == a + b for i, (a, b) in enumerate(merges))


def test_vocab_and_merges_round_trip(tmp_path):
    vocab = {i: bytes([i]) for i in range(256)} | {256: b" \n", 257: b"\xe2\x82", 258: EOT.encode()}
    merges = [(b" ", b"\n"), (b"\xe2", b"\x82")]
    io.write_vocab_json(tmp_path / "vocab.json", vocab)
    io.write_merges_txt(tmp_path / "merges.txt", merges)
    assert io.read_vocab_json(tmp_path / "vocab.json") == vocab
    assert io.read_merges_txt(tmp_path / "merges.txt", vocab) == merges
    assert (tmp_path / "merges.txt").read_text(encoding="utf-8").splitlines()[:2] == [
        "#version: 0.2",
        "\u0120 \u010a",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merges.txt", "vocab.json"]  # no temporary files


def test_special_tokens_are_written_verbatim(tmp_path):
    specials = ["<|end of text|>", "<|\u00e9t\u00e9|>"]
    vocab = {i: bytes([i]) for i in range(256)} | {256 + i: s.encode() for i, s in enumerate(specials)}
    io.write_vocab_json(tmp_path / "vocab.json", vocab, specials)
    written = json.loads((tmp_path / "vocab.json").read_text(encoding="utf-8"))
    assert written["<|end of text|>"] == 256 and written["<|\u00e9t\u00e9|>"] == 257
    assert io.read_vocab_json(tmp_path / "vocab.json", specials) == vocab
    # Without being told, a verbatim "<|été|>" reads as byte-level text: é is the byte 0xe9.
    assert io.read_vocab_json(tmp_path / "vocab.json")[257] == b"<|\xe9t\xe9|>"
    assert io.read_vocab_json(tmp_path / "vocab.json")[256] == b"<|end of text|>"  # not byte-level: UTF-8


def _write(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"a": 0,\n "b": 1,\n}', r"vocab.json:3: invalid JSON"),
        ("[1, 2]", "expected a non-empty JSON object"),
        ('{"a": 0, "b": 2}', "ids must be 0..1 without gaps; id 1 is missing"),
        ('{"a": 0, "b": 0}', "id 0 is given to both 'a' and 'b'"),
        ('{"a": 0, "b": "1"}', "token 'b' has id '1'; expected an integer >= 0"),
        ('{"a": 0, "b": -1}', "token 'b' has id -1"),
    ],
)
def test_bad_vocab_files(tmp_path, content, message):
    with pytest.raises(ValueError, match=message):
        io.read_vocab_json(_write(tmp_path / "vocab.json", content))


def test_missing_and_undecodable_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="vocab file .*nope.json not found"):
        io.read_vocab_json(tmp_path / "nope.json")
    with pytest.raises(FileNotFoundError, match="merges file .*nope.txt not found"):
        io.read_merges_txt(tmp_path / "nope.txt", {})
    (tmp_path / "bad.json").write_bytes(b'{"\xff": 0}')
    with pytest.raises(ValueError, match="bad.json: not valid UTF-8 at byte 2"):
        io.read_vocab_json(tmp_path / "bad.json")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("#version: 0.2\na b\nab\n", r"merges.txt:3: expected two tokens separated by one space, got 'ab'"),
        ("a b\na  b\n", r"merges.txt:2: expected two tokens"),
        ("a b c\n", r"merges.txt:1: expected two tokens"),
        ("a b\nx b\n", r"merges.txt:2: merge part 'x' is not in vocab.json"),
        ("a b\nb a\n", r"merges.txt:2: merged token 'ba' is not in vocab.json"),
    ],
)
def test_bad_merges_files(tmp_path, content, message):
    vocab = {0: b"a", 1: b"b", 2: b"ab"}
    with pytest.raises(ValueError, match=message):
        io.read_merges_txt(_write(tmp_path / "merges.txt", content), vocab, "vocab.json")


def test_merges_file_tolerates_header_blank_lines_and_crlf(tmp_path):
    vocab = {0: b"a", 1: b"b", 2: b"ab"}
    path = _write(tmp_path / "merges.txt", "#version: 0.2\r\na b\r\n\n")
    assert io.read_merges_txt(path, vocab) == [(b"a", b"b")]


def test_from_files_names_the_vocab_file_for_a_missing_special_token():
    with pytest.raises(
        ValueError, match=r"gpt2_vocab.json: special token '<\|pad\|>' is not in the vocabulary"
    ):
        Tokenizer.from_files(VOCAB, MERGES, [EOT, "<|pad|>"])


# ----- Hugging Face tokenizer.json ---------------------------------------------------------------


def _texts(fixtures_dir) -> list[str]:
    """The fixture texts, Tiny Shakespeare cut to 200 kB: HF's encoder runs at ~1.5 MB/s."""
    return [TRICKY] + [(fixtures_dir / n).read_text(encoding="utf-8")[:200_000] for n in TEXT_FILES]


def _hf_from(tmp_path, tok: Tokenizer):
    from tokenizers import Tokenizer as HFTokenizer

    tok.save(tmp_path)
    return HFTokenizer.from_file(str(tmp_path / "tokenizer.json"))


def _assert_hf_equal(hf, tok: Tokenizer, text: str, *, decode: bool = True):
    ids = tok.encode(text)
    assert hf.encode(text).ids == ids
    if decode:
        assert hf.decode(ids, skip_special_tokens=False) == text


def test_hf_tokenizer_json_encodes_like_ours_with_gpt2s_vocab(tmp_path, fixtures_dir):
    tok = ours_gpt2()
    hf = _hf_from(tmp_path, tok)
    for text in _texts(fixtures_dir):
        _assert_hf_equal(hf, tok, text)
    _assert_hf_equal(hf, tok, TRICKY + EOT + EOT + " x" + EOT)


def test_split_pre_tokenizer_with_our_pattern_is_equivalent(tmp_path, fixtures_dir):
    """Why tokenizer.json keeps ByteLevel(use_regex=True): an explicit Split on GPT-2's pattern followed
    by ByteLevel(use_regex=False) splits exactly alike, on real text and on the tricky cases."""
    from gpt2_reference import GPT2_PATTERN
    from tokenizers import Tokenizer as HFTokenizer

    ours = _hf_from(tmp_path, ours_gpt2())
    spec = json.loads((tmp_path / "tokenizer.json").read_text(encoding="utf-8"))
    spec["pre_tokenizer"] = {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": GPT2_PATTERN}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        ],
    }
    split = HFTokenizer.from_str(json.dumps(spec))
    for text in _texts(fixtures_dir):
        assert split.encode(text).ids == ours.encode(text).ids


def test_hf_tokenizer_json_with_a_trained_vocab(tmp_path, fixture_file, fixtures_dir):
    from tokenizer.bpe import train_bpe

    specials = [EOT, "<|pad token|>", "<|\u00e9t\u00e9|>"]
    vocab, merges = train_bpe(fixture_file("corpus.en"), 600, specials, num_workers=1)
    tok = Tokenizer(vocab, merges, specials)
    hf = _hf_from(tmp_path, tok)
    assert hf.get_vocab_size() == tok.vocab_size == 600
    for text in _texts(fixtures_dir):
        _assert_hf_equal(hf, tok, text)
    _assert_hf_equal(hf, tok, TRICKY + "<|pad token|>" + EOT)
    # HF's ByteLevel *decoder* maps an added token's non-ASCII characters through the byte table too
    # (é -> byte 0xe9 -> U+FFFD), so only the ids can be compared for this one.
    _assert_hf_equal(hf, tok, TRICKY + "<|\u00e9t\u00e9|>", decode=False)
    assert Tokenizer.from_dir(tmp_path).encode(TRICKY) == tok.encode(TRICKY)


def test_hf_tokenizer_json_looks_up_whole_pre_tokens_first(tmp_path):
    """``ignore_merges``: "abc" is a token no merge builds; HF must emit it whole, as we (and tiktoken) do."""
    vocab = {i: bytes([i]) for i in range(256)} | {256: b"bc", 257: b"ab", 258: b"abc"}
    tok = Tokenizer(vocab, [(b"b", b"c"), (b"a", b"b")])
    hf = _hf_from(tmp_path, tok)
    for text in ["abc", "abcd abc", "xabc"]:
        assert hf.encode(text).ids == tok.encode(text)
    assert tok.encode("abc") == [258]
