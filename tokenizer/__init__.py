"""Byte-level BPE, from scratch: ``train_bpe``, ``Tokenizer`` and ``encode_file``.

Imports are lazy so that ``python -m tokenizer train`` does not pay for the encoder's machinery
(and vice versa), and worker processes start quickly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["train_bpe", "Tokenizer", "encode_file"]

_EXPORTS = {
    "train_bpe": "tokenizer.bpe",
    "Tokenizer": "tokenizer.tokenizer",
    "encode_file": "tokenizer.encode_file",
}

if TYPE_CHECKING:  # pragma: no cover
    from tokenizer.bpe import train_bpe
    from tokenizer.encode_file import encode_file
    from tokenizer.tokenizer import Tokenizer


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'tokenizer' has no attribute {name!r}")
