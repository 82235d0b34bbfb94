"""Data: batches of token windows, the Lightning DataModule, downloads and the synthetic corpus.

Imports are lazy: ``get_batch`` must not drag Lightning in, and the downloader must not drag torch in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["get_batch", "TokenWindowDataModule"]

_EXPORTS = {
    "get_batch": "lit_llm.data.batch",
    "TokenWindowDataModule": "lit_llm.data.datamodule",
}

if TYPE_CHECKING:  # pragma: no cover
    from lit_llm.data.batch import get_batch
    from lit_llm.data.datamodule import TokenWindowDataModule


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lit_llm.data' has no attribute {name!r}")
