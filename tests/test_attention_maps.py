"""Attention-map images (lit_llm/attention_maps.py): one decodable PNG per layer at each validation, of
the size drawn, made from the same weights the trace returns."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_module import MODEL, fit_to_tensorboard
from tiny_lm import one_thread  # noqa: F401  (an autouse fixture)

from lit_llm.attention_maps import AttentionMaps, LayerFigure, draw_layer, token_labels


def test_one_image_per_layer_at_each_validation(tmp_path: Path) -> None:
    import matplotlib.image

    maps = AttentionMaps(prompt="the cat sat on the mat", max_tokens=10)
    events = fit_to_tensorboard(tmp_path, maps, max_steps=2, val_check_interval=1)
    tags = [f"attention/layers.{i}" for i in range(MODEL["num_layers"])]
    assert sorted(events.Tags()["images"]) == tags
    assert len(maps.last_images) == MODEL["num_layers"]
    for tag, drawn in zip(tags, maps.last_images, strict=True):
        images = events.Images(tag)
        assert [image.step for image in images] == [1, 2]
        decoded = matplotlib.image.imread(io.BytesIO(images[-1].encoded_image_string), format="png")
        assert decoded.shape[:2] == drawn.shape[:2] == (images[-1].height, images[-1].width)
        assert drawn.std() > 0  # not a blank canvas


def test_drawing_puts_every_head_in_the_image_and_labels_fit() -> None:
    seq = 6
    weights = torch.softmax(
        torch.randn(4, seq, seq).masked_fill(~torch.ones(seq, seq).tril().bool(), -1e9), -1
    )
    labelled = draw_layer(weights.numpy(), [f"t{i}" for i in range(seq)], "layer 0")
    plain = draw_layer(weights.numpy(), None, "layer 0")
    assert labelled.dtype == plain.dtype == np.uint8 and labelled.shape[2] == 3
    assert labelled.shape[1] > labelled.shape[0]  # four heads side by side: wider than tall
    sixteen = draw_layer(torch.cat([weights] * 4).numpy(), None, "layer 0")
    assert sixteen.shape[0] > plain.shape[0]  # two rows of eight


def test_a_figure_laid_out_once_redraws_what_a_fresh_one_draws() -> None:
    """AttentionMaps keeps one figure per layer across validations: redrawing it with new weights and
    a new title gives the very pixels a figure drawn from nothing gives (Agg rasterises the same
    artists the same way)."""
    seq, labels = 5, [f"t{i}" for i in range(5)]
    first, second = (torch.softmax(torch.randn(2, seq, seq), -1).numpy() for _ in range(2))
    figure = LayerFigure(2, seq, labels)
    figure.render(first, "layer 0, step 1: rows = query, columns = key")
    again = figure.render(second, "layer 0, step 20: rows = query, columns = key")
    assert np.array_equal(again, draw_layer(second, labels, "layer 0, step 20: rows = query, columns = key"))
    with pytest.raises(ValueError, match=r"weights of shape \(3, 5, 5\): expected \(2, 5, 5\)"):
        figure.render(np.zeros((3, seq, seq), dtype=np.float32), "x")


def test_token_labels_are_short_and_printable() -> None:
    class Tok:
        def decode(self, ids: list[int]) -> str:
            return {0: " hello", 1: "\n", 2: "averyverylongtoken", 3: ""}[ids[0]]

    assert token_labels(Tok(), [0, 1, 2, 3]) == ["␣hello", "\\n", "averyver", "·"]


def test_bad_settings_are_one_clear_error() -> None:
    with pytest.raises(ValueError, match="prompt='': expected a non-empty string"):
        AttentionMaps(prompt="")
    with pytest.raises(ValueError, match="max_tokens=0: expected a positive integer"):
        AttentionMaps(prompt="hi", max_tokens=0)


def test_drawing_needs_no_matplotlib(monkeypatch) -> None:
    """The images are NumPy and Pillow: matplotlib's figures (~0.14 s to lay out four at the first
    validation, on top of the import where Lightning has not already made it) are not needed."""
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)  # importing it now raises ImportError
    weights = np.full((2, 4, 4), 0.25, dtype=np.float32)
    image = LayerFigure(2, 4, ["a", "␣b", "c", "d"]).render(weights, "layer 0")
    assert image.shape[2] == 3 and image.std() > 0


def test_weights_are_shaded_light_to_dark() -> None:
    from lit_llm.attention_maps import BLUES, heat_map

    cells = heat_map(np.array([[0.0, 1.0], [0.5, 1.5]], dtype=np.float32), cell=3)  # (6, 6, 3)
    assert cells.shape == (6, 6, 3) and cells.dtype == np.uint8
    assert tuple(cells[0, 0]) == BLUES[0] and tuple(cells[0, 5]) == BLUES[-1]  # weight 0 and 1
    assert tuple(cells[5, 5]) == BLUES[-1]  # above 1: clipped
    assert (cells[:3, :3] == cells[0, 0]).all()  # each weight a 3 x 3 square
    assert cells[0, 0].sum() > cells[5, 0].sum() > cells[0, 5].sum()  # darker as the weight grows
    diverged = heat_map(np.array([[np.nan, 1.0], [0.0, 0.0]], dtype=np.float32), cell=1)
    assert tuple(diverged[0, 0]) == BLUES[0]  # NaN: drawn as 0
