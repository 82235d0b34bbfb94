"""Tokenizer files: GPT-2's ``vocab.json`` + ``merges.txt``, and Hugging Face's ``tokenizer.json``.

GPT-2 stores byte-level tokens as text through a fixed byte -> character table (``bytes_to_unicode``):
the 188 printable Latin-1 bytes stand for themselves and the other 68 (control bytes, space, ...) are
shifted to U+0100 and above, so that every token is a printable string without spaces (a space is
``Ġ``). A merge line is then just two such strings separated by one space.

Readers validate everything and fail with one line naming the file (and line, where there is one);
writers go through ``tokenizer.files.write_text`` (a temporary file in the same folder, then
``os.replace``), so no reader ever sees a half-written file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from functools import cache
from pathlib import Path

from tokenizer.files import write_text

__all__ = [
    "bytes_to_unicode",
    "read_merges_txt",
    "read_vocab_json",
    "str_to_token",
    "token_to_str",
    "write_hf_tokenizer_json",
    "write_merges_txt",
    "write_vocab_json",
]


@cache
def _byte_table() -> tuple[str, ...]:
    printable = {
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    }
    table, shifted = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + shifted)
            shifted += 1
    return tuple(table[b] for b in range(256))


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> character table (a fresh dict; 256 distinct printable characters)."""
    return dict(enumerate(_byte_table()))


@cache
def _char_to_byte() -> dict[str, int]:
    return {c: b for b, c in enumerate(_byte_table())}


def token_to_str(token: bytes) -> str:
    """A token's bytes as GPT-2 writes them in vocab.json and merges.txt."""
    table = _byte_table()
    return "".join(table[b] for b in token)


def str_to_token(text: str) -> bytes:
    """Inverse of ``token_to_str``.

    A string with a character outside the byte alphabet cannot come from ``token_to_str``; such
    entries are added tokens that other tools (Hugging Face) write verbatim, so they stand for their
    UTF-8 bytes.
    """
    table = _char_to_byte()
    try:
        return bytes(table[c] for c in text)
    except KeyError:
        return text.encode("utf-8")


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} file {path} not found") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not valid UTF-8 at byte {e.start}") from None


def _vocab_strings(vocab: dict[int, bytes], special_tokens: Iterable[str]) -> dict[str, int]:
    """``{token string: id}`` in id order; special tokens verbatim, as Hugging Face writes them."""
    verbatim = {token.encode("utf-8"): token for token in special_tokens}
    return {verbatim.get(vocab[i]) or token_to_str(vocab[i]): i for i in sorted(vocab)}


def write_vocab_json(
    path: str | os.PathLike, vocab: dict[int, bytes], special_tokens: Iterable[str] = ()
) -> None:
    """``{"token string": id}`` in id order, one entry per line (diffable, unlike GPT-2's one line).

    Special tokens are written verbatim (``"<|end of text|>"``, not ``"<|endĠofĠtext|>"``), as
    Hugging Face does, so that its added tokens and the vocabulary agree.
    """
    write_text(path, json.dumps(_vocab_strings(vocab, special_tokens), ensure_ascii=False, indent=0) + "\n")


def read_vocab_json(path: str | os.PathLike, special_tokens: Iterable[str] = ()) -> dict[int, bytes]:
    """``vocab.json`` -> ``{id: token bytes}``; ids must be exactly 0..n-1.

    An entry spelled like one of ``special_tokens`` is that token's UTF-8; any other entry is a
    byte-level string (``str_to_token``).
    """
    path = Path(path)
    verbatim = set(special_tokens)
    try:
        data = json.loads(_read_text(path, "vocab"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{path}: expected a non-empty JSON object mapping token strings to ids")
    vocab: dict[int, bytes] = {}
    names: dict[int, str] = {}
    for name, token_id in data.items():
        if not isinstance(token_id, int) or isinstance(token_id, bool) or token_id < 0:
            raise ValueError(f"{path}: token {name!r} has id {token_id!r}; expected an integer >= 0")
        if token_id in names:
            raise ValueError(f"{path}: id {token_id} is given to both {names[token_id]!r} and {name!r}")
        names[token_id] = name
        vocab[token_id] = name.encode("utf-8") if name in verbatim else str_to_token(name)
    if len(vocab) - 1 != max(vocab):
        missing = next(i for i in range(len(vocab)) if i not in vocab)
        raise ValueError(f"{path}: ids must be 0..{len(vocab) - 1} without gaps; id {missing} is missing")
    return vocab


def write_merges_txt(path: str | os.PathLike, merges: list[tuple[bytes, bytes]]) -> None:
    """One merge per line, ``left right``, in rank order, after GPT-2's ``#version`` header."""
    lines = ["#version: 0.2"] + [f"{token_to_str(a)} {token_to_str(b)}" for a, b in merges]
    write_text(path, "\n".join(lines) + "\n")


def read_merges_txt(
    path: str | os.PathLike, vocab: dict[int, bytes], vocab_path: str | os.PathLike = "the vocabulary"
) -> list[tuple[bytes, bytes]]:
    """``merges.txt`` -> ``[(left, right), ...]`` in rank order, each checked against ``vocab``.

    The optional ``#version`` first line and empty lines are skipped; anything else must be two tokens
    separated by one space, both in the vocabulary, and so must their concatenation be.
    """
    path = Path(path)
    known = set(vocab.values())
    merges = []
    for lineno, line in enumerate(_read_text(path, "merges").split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line or (lineno == 1 and line.startswith("#version")):
            continue
        parts = line.split(" ")
        if len(parts) != 2 or not all(parts):
            raise ValueError(f"{path}:{lineno}: expected two tokens separated by one space, got {line!r}")
        left, right = str_to_token(parts[0]), str_to_token(parts[1])
        for part, token in zip(parts, (left, right), strict=True):
            if token not in known:
                raise ValueError(f"{path}:{lineno}: merge part {part!r} is not in {vocab_path}")
        if left + right not in known:
            raise ValueError(f"{path}:{lineno}: merged token {parts[0] + parts[1]!r} is not in {vocab_path}")
        merges.append((left, right))
    return merges


def write_hf_tokenizer_json(
    path: str | os.PathLike,
    vocab: dict[int, bytes],
    merges: list[tuple[bytes, bytes]],
    special_tokens: list[str] | tuple[str, ...] = (),
) -> None:
    """A Hugging Face ``tokenizer.json`` that encodes exactly as ``tokenizer.Tokenizer`` does.

    * pre-tokenizer ``ByteLevel`` with ``use_regex``: its built-in regex is GPT-2's pattern (the same
      as ours, contractions spelled out), and its engine's Unicode classes equal tiktoken's; a
      ``Split`` with our pattern string followed by ``ByteLevel(use_regex=False)`` encodes the same
      (tests/test_io.py checks both), so we keep the form every GPT-2-style consumer recognises.
    * ``ignore_merges``: a pre-token that is itself a token is emitted whole before any merge runs,
      as tiktoken (and our encoder) does.
    * special tokens are "added tokens", matched on the raw text before pre-tokenization, longest
      first, and appear verbatim in the model's vocabulary too, so that HF counts each once.
      (HF's ByteLevel *decoder* garbles an added token with non-ASCII characters; encoding is exact.)

    ``ignore_merges`` needs ``tokenizers`` >= 0.19.
    """
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    token_ids = {token: i for i, token in vocab.items()}
    special_ids = {}
    for token in special_tokens:
        if token.encode("utf-8") not in token_ids:
            raise ValueError(f"special token {token!r} is not in the vocabulary")
        special_ids[token] = token_ids[token.encode("utf-8")]
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": special_ids[token],
                "content": token,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
            for token in special_tokens
        ],
        "normalizer": None,
        "pre_tokenizer": byte_level,
        "post_processor": None,
        "decoder": byte_level,
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": True,
            "vocab": _vocab_strings(vocab, special_tokens),
            "merges": [f"{token_to_str(a)} {token_to_str(b)}" for a, b in merges],
        },
    }
    write_text(path, json.dumps(tokenizer, ensure_ascii=False, indent=1) + "\n")
