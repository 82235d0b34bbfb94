"""`python -m lit_llm.plot` on real TensorBoard event files written here (by torch's SummaryWriter, the
same event format Lightning's TensorBoardLogger writes): one curve per run on every panel, labels from
the runs' Hydra overrides, a non-empty PNG whose pixels depend on the runs, one-line errors."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import yaml
from torch.utils.tensorboard import SummaryWriter

from lit_llm import plot

TAGS = ("val/bpb", "val/loss", "train/loss", "lr", "grad_norm")


def make_run(
    run_dir: Path,
    overrides: list[str],
    *,
    lr: float,
    steps: int = 100,
    batch_size: int = 4,
    context_length: int = 16,
    start_step: int = 0,
    t0: float = 1000.0,
) -> Path:
    """A run folder like lit_llm.train writes: .hydra/{overrides,config}.yaml and tensorboard/events.*,
    with curves that depend on ``lr`` (a higher rate learns faster here)."""
    (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    config = {
        "data": {"batch_size": batch_size},
        "model": {"context_length": context_length},
        "trainer": {"accumulate_grad_batches": 1, "devices": 1, "num_nodes": 1},
    }
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
    for step in range(start_step, start_step + steps, 10):
        loss = 3.0 * math.exp(-lr * 1000 * step / steps) + 1.0
        wall = t0 + 2.0 * step
        writer.add_scalar("train/loss", loss, step, walltime=wall)
        writer.add_scalar("lr", lr * (1 - step / (2 * steps)), step, walltime=wall)
        writer.add_scalar("grad_norm", 1.0 / (1 + lr * step), step, walltime=wall)
        if step % 20 == 0:
            writer.add_scalar("val/loss", loss + 0.1, step, walltime=wall + 0.5)
            writer.add_scalar("val/bpb", (loss + 0.1) / math.log(2), step, walltime=wall + 0.5)
    writer.close()
    return run_dir


@pytest.fixture
def two_runs(tmp_path: Path) -> list[Path]:
    common = ["experiment=ablation_base", "callbacks.progress_bar=null"]
    return [
        make_run(tmp_path / "sweep" / "0", [*common, "optimizer.lr=1e-3"], lr=1e-3),
        make_run(tmp_path / "sweep" / "1", [*common, "optimizer.lr=3e-3"], lr=3e-3),
    ]


def read_png(path: Path) -> np.ndarray:
    assert path.is_file() and path.stat().st_size > 0
    return matplotlib.image.imread(path)


def test_read_scalars_gives_every_point_with_relative_wall_time(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", [], lr=1e-3, steps=100)
    scalars = plot.read_scalars(run)
    assert set(TAGS) <= set(scalars)
    assert [step for step, _, _ in scalars["train/loss"]] == list(range(0, 100, 10))
    assert [step for step, _, _ in scalars["val/bpb"]] == list(range(0, 100, 20))
    assert scalars["train/loss"][0][1] == pytest.approx(0.0)
    assert scalars["train/loss"][-1][1] == pytest.approx(180.0)  # 2 s per step, from the first event
    expected = (3.0 * math.exp(-1e-3 * 1000 * 40 / 100) + 1.1) / math.log(2)
    assert scalars["val/bpb"][2][2] == pytest.approx(expected, rel=1e-6)


def test_event_files_of_a_resumed_run_are_merged_in_step_order(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", [], lr=1e-3, steps=50, t0=1000.0)
    make_run(tmp_path / "run", [], lr=1e-3, steps=50, start_step=40, t0=5000.0)  # repeats step 40
    points = plot.read_scalars(run)["train/loss"]
    steps = [step for step, _, _ in points]
    assert steps == sorted(set(steps)) and steps[0] == 0 and steps[-1] == 80
    assert dict((s, t) for s, t, _ in points)[40] == pytest.approx(5000.0 + 80.0 - 1000.0)  # later write


def test_labels_are_the_overrides_that_differ(two_runs: list[Path], tmp_path: Path) -> None:
    runs = [plot.load_run(path) for path in two_runs]
    plot.assign_labels(runs)
    assert [run.label for run in runs] == ["optimizer.lr=1e-3", "optimizer.lr=3e-3"]
    single = [plot.load_run(two_runs[0])]
    plot.assign_labels(single)
    assert single[0].label == "experiment=ablation_base"
    bare = [plot.load_run(make_run(tmp_path / "logs" / "x" / "run7", [], lr=1e-3))]
    plot.assign_labels(bare)
    assert bare[0].label == "x/run7"
    overrides = ["experiment=ablation_base", "callbacks.progress_bar=NULL", "optimizer.lr=0.001"]
    spelled_otherwise = make_run(tmp_path / "other", overrides, lr=1e-3)
    mixed = [plot.load_run(p) for p in (*two_runs, spelled_otherwise)]
    plot.assign_labels(mixed)  # 1e-3 and 0.001, null and NULL are the same value as Hydra reads them
    assert [run.label for run in mixed] == ["optimizer.lr=1e-3", "optimizer.lr=3e-3", "optimizer.lr=0.001"]
    with pytest.raises(ValueError, match="2 runs"):
        plot.assign_labels(runs, ["only one"])


def test_tokens_per_step_from_the_run_config() -> None:
    config = {
        "data": {"batch_size": 12},
        "model": {"context_length": 64},
        "trainer": {"accumulate_grad_batches": 2, "devices": 4, "num_nodes": 1},
    }
    assert plot.tokens_per_step(config) == 12 * 64 * 2 * 4
    assert plot.tokens_per_step({**config, "trainer": {"devices": "auto"}}) == 12 * 64
    assert plot.tokens_per_step({}) is None


def test_figure_has_one_curve_per_run_on_every_panel(two_runs: list[Path]) -> None:
    runs = [plot.load_run(path) for path in two_runs]
    plot.assign_labels(runs)
    fig = plot.make_figure(runs, "val/bpb")
    assert len(fig.axes) == len(plot.PANELS)
    for ax in fig.axes:
        assert [line.get_label() for line in ax.get_lines()] == ["optimizer.lr=1e-3", "optimizer.lr=3e-3"]
    tokens_panel = fig.axes[1].get_lines()[0]
    assert list(tokens_panel.get_xdata()) == [(s + 1) * 4 * 16 for s in range(0, 100, 20)]
    time_panel = fig.axes[2].get_lines()[0]
    assert time_panel.get_xdata()[-1] == pytest.approx((2.0 * 80 + 0.5) / 60)
    first, second = (line.get_ydata() for line in fig.axes[0].get_lines())
    assert second[-1] < first[-1]  # the faster-learning run ends lower
    fig.clf()


def test_cli_writes_a_png_whose_pixels_depend_on_the_runs(
    two_runs: list[Path], tmp_path: Path, capsys
) -> None:
    both, only_a, only_b = tmp_path / "both.png", tmp_path / "a.png", tmp_path / "b.png"
    assert plot.main([str(p) for p in two_runs] + ["--out", str(both), "--title", "lr"]) == 0
    table = capsys.readouterr().out
    assert "| optimizer.lr=1e-3 | 91 |" in table and "| optimizer.lr=3e-3 | 91 |" in table
    assert plot.main([str(two_runs[0]), "--out", str(only_a)]) == 0
    assert plot.main([str(two_runs[1]), "--out", str(only_b)]) == 0
    image_both, image_a, image_b = read_png(both), read_png(only_a), read_png(only_b)
    assert image_a.shape == image_b.shape == image_both.shape and image_a.shape[0] > 100
    assert len(np.unique(image_both.reshape(-1, image_both.shape[-1]), axis=0)) > 10  # not a blank canvas

    # Other curves must be drawn elsewhere: a clear share of pixels changes clearly, not a few bits of
    # antialiasing (measured: 4% of pixels for a vs b and 6% for a vs both, by over a quarter of the range).
    def changed(x: np.ndarray, y: np.ndarray) -> float:
        return float((np.abs(x - y).max(axis=-1) > 0.25).mean())  # share of pixels

    assert changed(image_a, image_b) > 0.005
    assert changed(image_a, image_both) > 0.005
    assert not list(tmp_path.glob(".*.tmp*"))  # the temporary file was renamed, not left behind


def test_bad_input_fails_with_one_line(two_runs: list[Path], tmp_path: Path, capsys) -> None:
    out = str(tmp_path / "x.png")
    assert plot.main([str(tmp_path / "missing"), "--out", out]) == 1
    assert "missing: no such run folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert plot.main([str(tmp_path / "empty"), "--out", out]) == 1
    assert "no TensorBoard event file" in capsys.readouterr().err
    assert plot.main([str(two_runs[0]), "--out", out, "--metric", "val/acc"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --metric val/acc: no run logged it") and "val/bpb" in err
    sweep = two_runs[0].parent
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    assert plot.main([str(sweep), "--out", out]) == 1
    assert "is a multirun sweep folder; pass its job folders instead" in capsys.readouterr().err
    assert plot.main([str(two_runs[0]), "--out", str(tmp_path / "x.pdf")]) == 2
    assert "expected a .png" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def health_run(run_dir: Path, layers: int = 2) -> Path:
    """A run folder with the health/ tags lit_llm.health.NetworkHealth logs, for ``layers`` blocks."""
    make_run(run_dir, ["experiment=ablation_base"], lr=1e-3)
    writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
    for step in range(0, 200, 50):
        for i in range(layers):
            for matrix in ("attn.q_proj", "ffn.w1"):
                writer.add_scalar(f"health/update_ratio_log10/layers.{i}.{matrix}", -2 - step / 100, step)
                writer.add_scalar(f"health/grad_norm/layers.{i}.{matrix}", 0.1, step)
            writer.add_scalar(f"health/attn_entropy/layers.{i}/mean", 2.0 - i * 0.3, step)
            writer.add_scalar(f"health/attn_entropy/layers.{i}/min", 1.0 - i * 0.3, step)
            writer.add_scalar(f"health/residual_rms/layers.{i}", 1.0 + i, step)
        writer.add_scalar("health/update_ratio_log10/lm_head", -2.5, step)
        writer.add_scalar("health/max_logit", 5.0 + step / 50, step)
        writer.add_scalar("health/clip_fraction", 0.5, step)
    writer.close()
    return run_dir


def test_health_figure_draws_every_health_tag_of_one_run(tmp_path: Path, capsys) -> None:
    run = plot.load_run(health_run(tmp_path / "run"))
    fig = plot.make_health_figure(run)
    ratio, entropy, rms, logit = fig.axes[:4]
    assert len(ratio.lines) == 2 * 2 + 1 + 1  # 2 matrices x 2 layers, lm_head, the -3 reference line
    assert len(entropy.lines) == 2 * 2 and len(rms.lines) == 2 and len(logit.lines) == 1
    assert len(fig.axes) == 5  # the clip fraction on its own right-hand axis
    out = tmp_path / "health.png"
    assert plot.main(["--health", str(tmp_path / "run"), "--out", str(out)]) == 0
    assert read_png(out).shape[1] > 500
    assert "wrote" in capsys.readouterr().out


def test_health_needs_one_run_with_health_tags(two_runs: list[Path], tmp_path: Path, capsys) -> None:
    out = str(tmp_path / "h.png")
    assert plot.main(["--health", *map(str, two_runs), "--out", out]) == 2
    assert "--health draws one run; got 2 run folders" in capsys.readouterr().err
    assert plot.main(["--health", str(two_runs[0]), "--out", out]) == 1
    assert "no health/ scalars (was callbacks.health on?)" in capsys.readouterr().err


def test_power_law_fit_recovers_a_known_exponent() -> None:
    flops = list(np.geomspace(1e12, 1e15, 7))
    exact = [4.2 * c**-0.071 for c in flops]
    a, alpha = plot.fit_power_law(flops, exact)
    assert alpha == pytest.approx(0.071, rel=1e-9) and a == pytest.approx(4.2, rel=1e-9)
    wobble = [1.002, 0.998, 1.001, 0.999, 1.002, 0.998, 1.0]  # +-0.2 %, a fixed pattern
    _, noisy = plot.fit_power_law(flops, [loss * w for loss, w in zip(exact, wobble, strict=True)])
    assert noisy == pytest.approx(0.071, abs=2e-3)
    with pytest.raises(ValueError, match="at least 2 runs of different compute"):
        plot.fit_power_law([1e12], [3.0])


def scaling_run(run_dir: Path, d_model: int, steps: int, final_loss: float) -> Path:
    """A run folder of experiment=scaling: its config (model and batch) and its train/val losses."""
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"model.d_model={d_model}"]))
    config = {
        "data": {"batch_size": 8, "vocab_size": 256},
        "model": {
            "vocab_size": "${data.vocab_size}",  # as Hydra saves it: unresolved
            "context_length": 64,
            "d_model": d_model,
            "num_layers": 2,
            "num_heads": 4,
        },
        "trainer": {"accumulate_grad_batches": 1, "devices": 1, "num_nodes": 1},
    }
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
    for step in range(steps):
        writer.add_scalar("train/loss", final_loss + 1.0 / (1 + step), step)
    writer.add_scalar("val/loss", final_loss + 0.5, steps // 2 - 1)
    writer.add_scalar("val/loss", final_loss, steps - 1)
    writer.close()
    return run_dir


def test_scaling_cli_fits_the_runs_and_draws_them(tmp_path: Path, capsys) -> None:
    from lit_llm.flops import count_parameters, estimate_flops_per_token
    from lit_llm.model import ModelConfig

    shapes = [(32, 40, 3.0), (64, 80, 2.6), (128, 160, 2.3)]
    runs = [str(scaling_run(tmp_path / str(i), d, s, loss)) for i, (d, s, loss) in enumerate(shapes)]
    out = tmp_path / "scaling.png"
    assert plot.main(["--scaling", *runs, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    flops = []
    for d_model, steps, _ in shapes:
        config = ModelConfig(vocab_size=256, context_length=64, d_model=d_model, num_layers=2, num_heads=4)
        flops.append(estimate_flops_per_token(config) * steps * 8 * 64)
        assert f"| model.d_model={d_model} | {count_parameters(config):,} |" in printed
    _, alpha = plot.fit_power_law(flops, [loss for _, _, loss in shapes])
    assert f"C^-{alpha:.4f}" in printed
    assert read_png(out).shape[0] > 300
    assert plot.main(["--scaling", runs[0], "--out", str(out)]) == 1
    assert "at least 2 runs of different compute" in capsys.readouterr().err
