"""Independent references for GPT-2's tokenizer, built offline from tests/fixtures/.

* ``tiktoken_gpt2()``: tiktoken's Rust encoder with GPT-2's ranks, read from ``gpt2_vocab.json`` by
  undoing GPT-2's byte -> character table (written out here again, not imported from our code).
  Never ``tiktoken.get_encoding``: it downloads.
* ``hf_gpt2()``: Hugging Face ``tokenizers`` assembled from the same files (its own BPE model and
  byte-level pre-tokenizer, not our ``tokenizer.json``).
* ``tiktoken_class_members(r"\\p{L}")``: the characters tiktoken's regex engine puts in a class.

``python -m tests.gpt2_reference --unicode-tables`` prints ``tokenizer/unicode_tables.py``'s tables as
tiktoken sees them (to regenerate them when tiktoken moves to a newer Unicode).
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent / "fixtures"
VOCAB = FIXTURES / "gpt2_vocab.json"
MERGES = FIXTURES / "gpt2_merges.txt"
EOT = "<|endoftext|>"
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
TEXT_FILES = (
    "tinyshakespeare.txt",
    "corpus.en",
    "tinystories_200k.txt",
    "tinystories_sample.txt",
    "german.txt",
    "address.txt",
)

# Pieces that stress every branch of the pre-tokenizer regex and the byte-level merges.
FRAGMENTS = [
    *["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'LL", "''s", "'", "don't", "it's"],
    *[" ", "  ", "   ", "\n", "\n\n", " \n ", "\t", "\t\t", "\r\n", "\x0b", "\x0c", "\x1c", "\x1f"],
    *["\u3000", "\xa0", "\x85", "\u2028", "\u200b", "\ufeff", " \u3000 "],
    *["0", "123", " 2024", "3.14", "\u0663\u0664", "\u2167", "\u00bd", "\U0001d7d8"],
    *["\U0001f600", "\U0001f44d\U0001f3fd", "\U0001f468\u200d\U0001f469\u200d\U0001f467", "\u2764\ufe0f"],
    *["e\u0301", "\u0300\u0301", "n\u0303o", "\u0915\u094d\u0937"],
    *["\u4f60\u597d", "\u65e5\u672c\u8a9e", " \uc548\ub155", "\U00020000", "\U000323b0", "\u1c89"],
    *["hello", " world", "Hello", " WORLD", "caf\u00e9", " na\u00efve", "\u00dcber", " \u0440\u0443\u0441"],
    *["!", "?!", " ...", "<|", "|>", "<|endoftext", "endoftext|>", "\ufffd", "$", " (", ")."],
]


def _gpt2_char_to_byte() -> dict[str, int]:
    """GPT-2's ``bytes_to_unicode`` (encoder.py), inverted: printable bytes map to themselves, the
    rest to U+0100 onwards in byte order."""
    keep = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars = {b: chr(b) for b in keep}
    for n, b in enumerate(b for b in range(256) if b not in chars):
        chars[b] = chr(0x100 + n)
    return {c: b for b, c in chars.items()}


@functools.cache
def tiktoken_gpt2():
    import tiktoken

    decoder = _gpt2_char_to_byte()
    vocab = json.loads(VOCAB.read_text(encoding="utf-8"))
    ranks = {bytes(decoder[c] for c in token): i for token, i in vocab.items() if token != EOT}
    return tiktoken.Encoding(
        "gpt2-offline", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={EOT: 50256}
    )


@functools.cache
def hf_gpt2():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.BPE.from_file(str(VOCAB), str(MERGES)))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([EOT])
    return tok


@functools.cache
def ours_gpt2():
    from tokenizer.tokenizer import Tokenizer

    return Tokenizer.from_files(VOCAB, MERGES, [EOT])


def all_characters() -> str:
    """Every code point except the surrogates (which no UTF-8 text can hold)."""
    return "".join(chr(i) for i in range(0x110000) if not 0xD800 <= i <= 0xDFFF)


def tiktoken_class_members(char_class: str) -> set[str]:
    """The characters that tiktoken's regex engine matches with ``char_class`` (e.g. ``\\p{L}``).

    An encoding whose pattern is just the class and whose ranks are the 256 single bytes drops every
    character the pattern does not match and returns the others' bytes: decoding gives the members.
    """
    import tiktoken

    ranks = {bytes([b]): b for b in range(256)}
    enc = tiktoken.Encoding(
        f"class {char_class}", pat_str=char_class, mergeable_ranks=ranks, special_tokens={}
    )
    return set(enc.decode(enc.encode_ordinary(all_characters())))


def table(members: set[str]) -> str:
    """Code points as ``tokenizer.unicode_tables`` writes them: ``"41-5a aa ..."``."""
    points, items = sorted(map(ord, members)), []
    i = 0
    while i < len(points):
        j = i
        while j + 1 < len(points) and points[j + 1] == points[j] + 1:
            j += 1
        items.append(f"{points[i]:x}" if i == j else f"{points[i]:x}-{points[j]:x}")
        i = j + 1
    return " ".join(items)


if __name__ == "__main__":
    if sys.argv[1:] != ["--unicode-tables"]:
        sys.exit("usage: python -m tests.gpt2_reference --unicode-tables")
    for name, cls in (("LETTER", r"\p{L}"), ("NUMBER", r"\p{N}"), ("WHITE_SPACE", r"\s")):
        print(f"{name} = {table(tiktoken_class_members(cls))!r}")
