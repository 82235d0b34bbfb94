"""The TensorBoard logger of every run: Lightning's, minus a chart that says nothing.

Lightning adds ``epoch`` to the metrics of every logging step. Training here reads an endless stream
of random windows, so the epoch is always 0, and TensorBoard opened its Scalars tab on that flat line.
"""

from __future__ import annotations

from collections.abc import Mapping

from lightning.pytorch.loggers import TensorBoardLogger as _LightningTensorBoardLogger


class TensorBoardLogger(_LightningTensorBoardLogger):
    """``lightning.pytorch.loggers.TensorBoardLogger`` without the constant ``epoch`` scalar."""

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        super().log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step)
