"""Byte-level BPE, from scratch: ``train_bpe``, ``Tokenizer`` and ``encode_file``.

Imports are lazy: ``python -m tokenizer train`` and its forked pre-tokenization workers then never
load the encoder's machinery (numpy among it), which keeps their peak memory below the Rust trainer's.
The function ``encode_file`` lives in ``tokenizer.encode_to_npy``: a submodule named like the function
would shadow it as a package attribute once imported.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["train_bpe", "Tokenizer", "encode_file"]

_EXPORTS = {
    "train_bpe": "tokenizer.bpe",
    "Tokenizer": "tokenizer.tokenizer",
    "encode_file": "tokenizer.encode_to_npy",
}

if TYPE_CHECKING:  # pragma: no cover
    from tokenizer.bpe import train_bpe
    from tokenizer.encode_to_npy import encode_file
    from tokenizer.tokenizer import Tokenizer


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'tokenizer' has no attribute {name!r}")
