"""``AttentionMaps``: after every validation, where each head of each layer looks, for one fixed prompt,
as images in TensorBoard's IMAGES tab (``attention/layers.<i>``; the ``callbacks.attention_maps`` node).

One image per layer, its heads side by side (eight to a row): row = query position, column = key
position, darker = more attention; the tokens label the axes when there are few enough to read. A
head that looks at the previous token draws the sub-diagonal, one that looks at the first token a
dark first column, one that averages a lower triangle fading to the right: watching those patterns
form over training is the point.

The weights come from ``lit_llm.model.trace`` (a plain-attention pass on the validation model): the
fused attention kernel stays in training. The images are drawn with NumPy (the heat maps) and Pillow
(the text; TensorBoard needs Pillow to store any image); without Pillow the callback warns once and
draws nothing.

Why not matplotlib: the picture is a grid of heat maps with a few words on it. matplotlib's figures
took 0.14 s to lay out (four layers, the first validation) and 9 ms a layer to redraw; here it is 11 ms
and 1.4 ms. In an ``ablation_base`` run the step holding the first validation took 0.56-0.70 s with
matplotlib's images, 0.35-0.37 s with these, 0.30 s with none (2 cores).
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
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
PANEL_PIXELS = 160  # a head's square is about this wide: seq cells of PANEL_PIXELS // seq pixels
MARGIN = 6  # pixels around the figure and between its parts
FONT_SIZE = 11

# ColorBrewer's 9-class "Blues", light to dark: weight 0 is the first colour, 1 the last, linear between.
BLUES = ((247, 251, 255), (222, 235, 247), (198, 219, 239), (158, 202, 225), (107, 174, 214),
         (66, 146, 198), (33, 113, 181), (8, 81, 156), (8, 48, 107))  # fmt: skip


def _colour_table() -> np.ndarray:
    """(256, 3) uint8: the colour of weight i / 255."""
    anchors = np.array(BLUES, dtype=np.float64)  # (9, 3)
    at = np.linspace(0, len(BLUES) - 1, 256)  # each weight's place on the anchors' scale
    channels = [np.interp(at, np.arange(len(BLUES)), anchors[:, c]) for c in range(3)]
    return np.rint(np.stack(channels, axis=1)).astype(np.uint8)


COLOURS = _colour_table()


def token_labels(tokenizer: Any, ids: list[int], width: int = 8) -> list[str]:
    """Each token as short printable text: newlines and tabs escaped, a leading space shown as '␣'."""
    labels = []
    for i in ids:
        text = tokenizer.decode([i]).replace("\n", "\\n").replace("\t", "\\t")
        labels.append(("␣" + text[1:] if text.startswith(" ") else text)[:width] or "·")
    return labels


@functools.cache
def _font() -> Any:
    """DejaVu Sans (the system's, else the copy matplotlib ships, found without importing it), which has
    the labels' '␣' and accented letters; where there is neither, Pillow's built-in font (ASCII only:
    other characters show as boxes)."""
    from PIL import ImageFont

    candidates = ["DejaVuSans.ttf"]  # Pillow searches the system's font folders for a bare name
    try:
        spec = importlib.util.find_spec("matplotlib")
    except (ImportError, ValueError):  # a broken or blocked install
        spec = None
    if spec is not None and spec.submodule_search_locations:
        candidates.append(
            os.path.join(spec.submodule_search_locations[0], "mpl-data", "fonts", "ttf", "DejaVuSans.ttf")
        )
    for candidate in candidates:
        try:
            return ImageFont.truetype(candidate, FONT_SIZE)
        except OSError:  # not there
            continue
    try:
        return ImageFont.load_default(size=FONT_SIZE)  # Pillow >= 10.1: a scalable font
    except TypeError:  # older Pillow: its one bitmap font
        return ImageFont.load_default()


def title(layer: int, step: int) -> str:
    """The line above layer ``layer``'s image at ``step``."""
    return f"layer {layer}, step {step}: rows = query, columns = key"


def heat_map(weights: np.ndarray, cell: int) -> np.ndarray:
    """(seq, seq) weights in [0, 1] -> (seq * cell, seq * cell, 3) uint8, each weight a cell x cell
    square of its colour. A NaN weight (a diverged model) is drawn as 0, not turned into an index."""
    shades = np.clip(np.rint(np.nan_to_num(weights * 255.0)), 0, 255).astype(np.intp)
    return COLOURS[shades].repeat(cell, axis=0).repeat(cell, axis=1)


class LayerFigure:
    """One layer's figure for a fixed prompt, laid out and drawn once, then redrawn with new weights.

    Between two validations only the weights and the title's step change; the heads' captions, frames
    and token labels do not. So those are drawn once, on a background image, and each render copies
    it, pastes the heat maps into their frames and writes the title."""

    def __init__(self, heads: int, seq: int, labels: list[str] | None) -> None:
        from PIL import Image, ImageDraw

        if labels is not None and len(labels) != seq:
            raise ValueError(f"{len(labels)} labels for {seq} positions")
        self.heads, self.seq, self.labels = heads, seq, labels
        self.font = _font()
        line = self._text_size("Ag|")[1] + 2  # a line of text, in pixels
        self.cols = min(heads, HEADS_PER_ROW)
        rows = math.ceil(heads / self.cols)
        self.cell = max(1, PANEL_PIXELS // seq, line if labels is not None else 1)  # a label per row
        side = seq * self.cell
        label_width = max((self._text_size(t)[0] for t in labels), default=0) + MARGIN if labels else 0
        title_height = line + MARGIN
        # The top-left corner of head h's heat map; a caption line above it, the x labels below it.
        row_height = line + side + label_width + MARGIN
        self.corners = [
            (
                MARGIN + label_width + (h % self.cols) * (side + MARGIN),
                MARGIN + title_height + line + (h // self.cols) * row_height,
            )
            for h in range(heads)
        ]
        # At least as wide as the title AttentionMaps writes, with a long step number.
        title_width = self._text_size(title(99, 99_999_999))[0]
        width = max(MARGIN + label_width + self.cols * (side + MARGIN), title_width + 2 * MARGIN)
        height = MARGIN + title_height + rows * row_height
        self.background = Image.new("RGB", (width, height), "white")
        draw = ImageDraw.Draw(self.background)
        for h, (x, y) in enumerate(self.corners):
            draw.rectangle((x - 1, y - 1, x + side, y + side), outline=(128, 128, 128))
            draw.text((x, y - line), f"head {h}", fill="black", font=self.font)
            if labels is None:
                continue
            centre = (self.cell - line) // 2  # a label in the middle of its cell's row or column
            if h % self.cols == 0:  # the first of its row: the query tokens on the left
                for i, text in enumerate(labels):
                    w = self._text_size(text)[0]
                    draw.text(
                        (x - MARGIN - w, y + i * self.cell + centre), text, fill="black", font=self.font
                    )
            if h + self.cols >= heads:  # the last of its column: the key tokens below, read upwards
                for i, text in enumerate(labels):
                    tag = Image.new("RGB", (self._text_size(text)[0], line), "white")
                    ImageDraw.Draw(tag).text((0, 0), text, fill="black", font=self.font)
                    corner = (x + i * self.cell + centre, y + side + 2)
                    self.background.paste(tag.rotate(90, expand=True), corner)

    def _text_size(self, text: str) -> tuple[int, int]:
        """(width, height) in pixels of ``text`` drawn at (0, 0)."""
        _, _, right, bottom = self.font.getbbox(text)
        return int(right), int(bottom)

    def render(self, weights: np.ndarray, heading: str) -> np.ndarray:
        """(heads, seq, seq) attention weights -> an RGB image (height, width, 3) uint8."""
        from PIL import Image, ImageDraw

        if weights.shape != (self.heads, self.seq, self.seq):
            raise ValueError(f"weights of shape {weights.shape}: expected {(self.heads, self.seq, self.seq)}")
        image = np.array(self.background)  # (height, width, 3), a copy
        side = self.seq * self.cell
        for (x, y), head in zip(self.corners, weights, strict=True):
            image[y : y + side, x : x + side] = heat_map(head, self.cell)
        picture = Image.fromarray(image)
        ImageDraw.Draw(picture).text((MARGIN, MARGIN), heading, fill="black", font=self.font)
        return np.array(picture)  # a copy: (height, width, 3) uint8


def draw_layer(weights: np.ndarray, labels: list[str] | None, heading: str) -> np.ndarray:
    """(heads, seq, seq) attention weights -> an RGB image (height, width, 3) uint8 of the heads side
    by side, ``labels`` (one per position) on the axes when given: a ``LayerFigure`` used once."""
    heads, seq = weights.shape[0], weights.shape[-1]
    return LayerFigure(heads, seq, labels).render(weights, heading)


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
        if isinstance(trainer.strategy, FSDPStrategy) or not self._has_pillow():
            return
        limit = min(self.max_tokens, pl_module.config.context_length)
        ids = tokenizer.encode(self.prompt)[:limit]
        token_ids = torch.tensor([ids], device=pl_module.device)  # (1, seq)
        trace = trace_forward(pl_module.model, token_ids)
        labels = token_labels(tokenizer, ids) if len(ids) <= MAX_LABELLED_TOKENS else None
        step = trainer.global_step
        self.last_images = []
        for i, weights in enumerate(trace.attention):  # (1, heads, seq, seq) each
            image = self._figure(i, weights.shape[1], labels, len(ids)).render(
                weights[0].float().cpu().numpy(), title(i, step)
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

    def _has_pillow(self) -> bool:
        try:
            import PIL  # noqa: F401
        except ImportError:
            if not self._warned:
                rank_zero_warn(
                    "callbacks.attention_maps needs Pillow (pip install pillow); no attention images are "
                    "drawn (callbacks.attention_maps=null silences this)"
                )
                self._warned = True
            return False
        return True
