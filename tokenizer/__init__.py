"""Byte-level BPE, from scratch: ``train_bpe``, ``Tokenizer`` and ``encode_file``.

The package is light (``regex`` and ``numpy``), so its public names are imported eagerly. That also
keeps ``from tokenizer import encode_file`` the *function*: the submodule of the same name is
imported first and its package attribute is then rebound to the function.
"""

from __future__ import annotations

from tokenizer.bpe import train_bpe
from tokenizer.encode_file import encode_file
from tokenizer.tokenizer import Tokenizer

__all__ = ["train_bpe", "Tokenizer", "encode_file"]
