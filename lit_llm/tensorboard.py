"""The TensorBoard logger of every run: Lightning's, minus a chart that says nothing, plus a page
that opens organised.

* Lightning adds ``epoch`` to the metrics of every logging step. Training here reads an endless stream
  of random windows, so the epoch is always 0, and TensorBoard opened its Scalars tab on that flat line.
* ``LAYOUT`` is written once per run for TensorBoard's CUSTOM SCALARS tab: the curves that belong
  together on one page (train and validation loss in one chart, the rate next to the gradient norm,
  throughput next to MFU, the loss by position in the window), and a second page of network health
  (lit_llm/health.py).
"""

from __future__ import annotations

from argparse import Namespace
from collections.abc import Mapping
from typing import Any

from lightning.pytorch.loggers import TensorBoardLogger as _LightningTensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

LAYOUT = {
    "lit-llm": {
        "loss (train and validation)": ["Multiline", ["train/loss", "val/loss"]],
        "validation bits per byte": ["Multiline", ["val/bpb"]],
        "learning rate": ["Multiline", ["lr"]],
        "gradient norm (before clipping)": ["Multiline", ["grad_norm"]],
        "throughput (tokens/s)": ["Multiline", ["throughput/tokens_per_sec"]],
        "model FLOPs utilisation": ["Multiline", ["throughput/mfu"]],
        "validation loss by position (tokens of context)": ["Multiline", [r"val/loss_by_position/.*"]],
    },
    # lit_llm/health.py: what each means and how to read it.
    "network health": {
        "update / weight ratio, log10 (rule of thumb: about -3)": [
            "Multiline",
            [r"health/update_ratio_log10/.*"],
        ],
        "gradient norm per weight matrix (before clipping)": ["Multiline", [r"health/grad_norm/.*"]],
        "residual stream RMS after each block": ["Multiline", [r"health/residual_rms/.*"]],
        "attention entropy per layer (nats; mean and lowest head)": [
            "Multiline",
            [r"health/attn_entropy/.*"],
        ],
        "largest |logit|": ["Multiline", ["health/max_logit"]],
        "fraction of steps clipped": ["Multiline", ["health/clip_fraction"]],
    },
}


class TensorBoardLogger(_LightningTensorBoardLogger):
    """``lightning.pytorch.loggers.TensorBoardLogger`` without the constant ``epoch`` scalar, writing
    ``LAYOUT`` with the run's first hyperparameters (Lightning logs them when fitting starts)."""

    _layout_written = False

    @rank_zero_only
    def log_hyperparams(
        self,
        params: dict[str, Any] | Namespace,
        metrics: dict[str, Any] | None = None,
        step: int | None = None,
    ) -> None:
        super().log_hyperparams(params, metrics, step)
        if not self._layout_written:
            self.experiment.add_custom_scalars(LAYOUT)
            self._layout_written = True

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        super().log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step)
