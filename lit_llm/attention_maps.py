"""``AttentionMaps``: after every validation, where each head of each layer looks, for one fixed prompt,
as images in TensorBoard's IMAGES tab (``attention/layers.<i>``; the ``callbacks.attention_maps`` node).

One image per layer, its heads side by side (eight to a row): row = query position, column = key
position, darker = more attention; the tokens label the axes when there are few enough to read. A
head that looks at the previous token draws the sub-diagonal, one that looks at the first token a
dark first column, one that averages a lower triangle fading to the right: watching those patterns
form over training is the point.

The weights come from ``lit_llm.model.trace`` (a plain-attention pass on the validation model): the
fused attention kernel stays in training. Needs matplotlib (``pip install matplotlib``, part of the
dev extra); without it the callback warns once and draws nothing.
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.utilities import rank_zero_warn

from lit_llm.model.trace import trace_forward

HEADS_PER_ROW = 8
MAX_LABELLED_TOKENS = 24  # beyond this the axis labels overlap; the image stays, unlabelled


def token_labels(tokenizer: Any, ids: list[int], width: int = 8) -> list[str]:
    """Each token as short printable text: newlines and tabs escaped, a leading space shown as '␣'."""
    labels = []
    for i in ids:
        text = tokenizer.decode([i]).replace("\n", "\\n").replace("\t", "\\t")
        labels.append(("␣" + text[1:] if text.startswith(" ") else text)[:width] or "·")
    return labels


class LayerFigure:
    """One layer's figure for a fixed prompt, laid out and drawn once, then redrawn with new weights.

    Between two validations only the weights and the title's step change; the heads, axes, tokens and
    labels do not. So the figure is laid out and rasterised once without the weights and the title
    (matplotlib's "animated" artists), and each render pastes those pixels back and draws only the
    weight images and the title on them (blitting): laying out and drawing a labelled figure costs
    many times more (benchmarks/bench_health.py prints the seconds per validation). A plain
    ``matplotlib.figure.Figure`` on an Agg canvas: not registered with pyplot, so holding many open
    neither warns nor leaks pyplot state."""

    def __init__(self, heads: int, seq: int, labels: list[str] | None) -> None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        self.heads, self.seq, self.labels = heads, seq, labels
        cols = min(heads, HEADS_PER_ROW)
        rows = math.ceil(heads / cols)
        panel = 2.2 if labels is None else max(2.2, 0.16 * seq + 0.8)
        self.figure = Figure(figsize=(panel * cols, panel * rows + 0.5), dpi=72)
        FigureCanvasAgg(self.figure)
        axes = self.figure.subplots(rows, cols, squeeze=False)
        blank = np.zeros((seq, seq), dtype=np.float32)
        self.images = []
        for h, ax in enumerate(axes.flat):
            if h >= heads:
                ax.axis("off")
                continue
            self.images.append(
                ax.imshow(blank, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest", animated=True)
            )
            ax.set_title(f"head {h}", fontsize=9)
            ticks = range(seq) if labels is not None else []
            ax.set_xticks(ticks)
            ax.set_yticks(ticks)
            if labels is not None:
                bottom_of_column = h + cols >= heads
                ax.set_xticklabels(labels if bottom_of_column else [], rotation=90, fontsize=7)
                ax.set_yticklabels(labels if h % cols == 0 else [], fontsize=7)
        self.title = self.figure.suptitle("layer 0, step 0: rows = query, columns = key", fontsize=10)
        self.title.set_animated(True)
        self.figure.tight_layout()
        # Everything but the animated artists (weights and title), drawn once and kept as pixels.
        self.figure.canvas.draw()
        self.background = self.figure.canvas.copy_from_bbox(self.figure.bbox)

    def render(self, weights: np.ndarray, title: str) -> np.ndarray:
        """(heads, seq, seq) attention weights -> an RGB image (height, width, 3) uint8."""
        if weights.shape != (self.heads, self.seq, self.seq):
            raise ValueError(f"weights of shape {weights.shape}: expected {(self.heads, self.seq, self.seq)}")
        canvas = self.figure.canvas
        canvas.restore_region(self.background)
        for image, head in zip(self.images, weights, strict=True):
            image.set_data(head)
            self.figure.draw_artist(image)
        self.title.set_text(title)
        self.figure.draw_artist(self.title)
        return np.asarray(self.figure.canvas.buffer_rgba())[..., :3].copy()  # (height, width, 3)


def draw_layer(weights: np.ndarray, labels: list[str] | None, title: str) -> np.ndarray:
    """(heads, seq, seq) attention weights -> an RGB image (height, width, 3) uint8 of the heads side
    by side, ``labels`` (one per position) on the axes when given: a ``LayerFigure`` used once."""
    heads, seq = weights.shape[0], weights.shape[-1]
    return LayerFigure(heads, seq, labels).render(weights, title)


class AttentionMaps(Callback):
    """After every validation, ``attention/layers.<i>``: the attention weights of every head of layer i
    on ``prompt`` (its first ``max_tokens`` tokens), as an image. Rank 0 draws; TensorBoard only."""

    def __init__(self, prompt: str, max_tokens: int = 32) -> None:
        if not isinstance(prompt, str) or not prompt:
            raise ValueError(f"prompt={prompt!r}: expected a non-empty string")
        if not (isinstance(max_tokens, int) and max_tokens >= 1):
            raise ValueError(f"max_tokens={max_tokens!r}: expected a positive integer")
        self.prompt, self.max_tokens = prompt, max_tokens
        self.last_images: list[np.ndarray] = []
        self._figures: list[LayerFigure] = []  # one per layer, for the prompt's tokens (laid out once)
        self._warned = False

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        writers = [lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        tokenizer = getattr(trainer.datamodule, "tokenizer", None)
        if trainer.sanity_checking or not trainer.is_global_zero or not writers or tokenizer is None:
            return
        if isinstance(trainer.strategy, FSDPStrategy) or not self._has_matplotlib():
            return
        limit = min(self.max_tokens, pl_module.config.context_length)
        ids = tokenizer.encode(self.prompt)[:limit]
        token_ids = torch.tensor([ids], device=pl_module.device)  # (1, seq)
        trace = trace_forward(pl_module.model, token_ids)
        labels = token_labels(tokenizer, ids) if len(ids) <= MAX_LABELLED_TOKENS else None
        step = trainer.global_step
        self.last_images = []
        for i, weights in enumerate(trace.attention):  # (1, heads, seq, seq) each
            title = f"layer {i}, step {step}: rows = query, columns = key"
            image = self._figure(i, weights.shape[1], labels, len(ids)).render(
                weights[0].float().cpu().numpy(), title
            )
            self.last_images.append(image)
            for writer in writers:
                writer.add_image(f"attention/layers.{i}", image, global_step=step, dataformats="HWC")

    def _figure(self, layer: int, heads: int, labels: list[str] | None, seq: int) -> LayerFigure:
        """Layer ``layer``'s figure, laid out on first use (and again only if its shape changed)."""
        if layer < len(self._figures):
            figure = self._figures[layer]
            if (figure.heads, figure.seq, figure.labels) == (heads, seq, labels):
                return figure
            del self._figures[layer:]
        figure = LayerFigure(heads, seq, labels)
        self._figures.append(figure)
        return figure

    def _has_matplotlib(self) -> bool:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            if not self._warned:
                rank_zero_warn(
                    "callbacks.attention_maps needs matplotlib (pip install matplotlib); no attention "
                    "images are drawn (callbacks.attention_maps=null silences this)"
                )
                self._warned = True
            return False
        return True
