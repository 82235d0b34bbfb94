"""``python -m lit_llm.plot RUN_DIR [RUN_DIR ...] --out curves.png``: learning curves of training runs,
read from their TensorBoard event files, as one PNG (no notebook, no TensorBoard server).

A question such as "which learning rate?" is answered by comparing runs, so the figure puts every run
on the same axes: the validation metric (val/bpb by default, comparable across tokenizers) against
optimizer steps, training tokens and wall-clock time (the three ways a run can be "longer"), then the
training loss, the learning rate and the gradient norm against steps. Each run is labelled by what
sets it apart: the Hydra overrides in ``<run>/.hydra/overrides.yaml`` that not every plotted run shares.
It also prints a markdown table of the final and best values, ready for experiments/README.md.

``python -m lit_llm.plot --health RUN_DIR --out health.png`` draws one run's ``health/`` tags instead:
update-to-weight ratios, attention entropies, residual RMS, largest logit and clipping over time.
``python -m lit_llm.plot --scaling RUN_DIR ... --out scaling.png`` fits loss = a x C^-alpha of the runs'
final val/loss against their training FLOPs and draws it (``experiment=scaling``).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lit_llm.cli import parse_override

PANELS = (  # (tag, x axis, title); the first three use the chosen validation metric
    (None, "step", "{metric} vs steps"),
    (None, "tokens", "{metric} vs training tokens"),
    (None, "time", "{metric} vs wall time"),
    ("train/loss", "step", "train/loss vs steps"),
    ("lr", "step", "lr vs steps"),
    ("grad_norm", "step", "grad_norm (before clipping) vs steps"),
)
X_LABELS = {"step": "optimizer step", "tokens": "training tokens", "time": "wall time (minutes)"}


@dataclass
class Run:
    """One run folder: its scalars as ``tag -> [(step, seconds since the run's first event, value)]``."""

    path: Path
    overrides: list[str]
    tokens_per_step: int | None
    scalars: dict[str, list[tuple[int, float, float]]] = field(default_factory=dict)
    label: str = ""


def _event_files(run_dir: Path) -> list[Path]:
    return sorted(run_dir.rglob("events.out.tfevents.*"))


def read_scalars(run_dir: str | os.PathLike) -> dict[str, list[tuple[int, float, float]]]:
    """Every scalar of every event file under ``run_dir``, per tag sorted by step, with wall time in
    seconds since the earliest event of the run. Where a step was written twice (a resumed run that
    repeats a logging step), the later write wins."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run folder")
    if (run_dir / "multirun.yaml").is_file():  # its jobs' event files would be merged into one curve
        jobs = sorted(p.name for p in run_dir.iterdir() if (p / ".hydra").is_dir())
        raise ValueError(
            f"{run_dir} is a multirun sweep folder; pass its job folders instead "
            f"({run_dir}/{{{','.join(jobs)}}})"
        )
    files = _event_files(run_dir)
    if not files:
        raise FileNotFoundError(
            f"{run_dir}: no TensorBoard event file (events.out.tfevents.*) in it; "
            "was the run trained with logger=tensorboard?"
        )
    by_tag: dict[str, dict[int, tuple[float, float]]] = {}
    for path in files:
        accumulator = EventAccumulator(str(path), size_guidance={"scalars": 0})  # 0: keep every point
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            points = by_tag.setdefault(tag, {})
            for event in accumulator.Scalars(tag):
                if event.step not in points or event.wall_time >= points[event.step][0]:
                    points[event.step] = (event.wall_time, event.value)
    start = min((t for points in by_tag.values() for t, _ in points.values()), default=0.0)
    return {
        tag: [(step, wall - start, value) for step, (wall, value) in sorted(points.items())]
        for tag, points in by_tag.items()
    }


def _load_yaml(path: Path) -> Any:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(path), resolve=False)


def tokens_per_step(config: dict[str, Any]) -> int | None:
    """Training tokens per optimizer step from a run's composed config (``.hydra/config.yaml``):
    batch size x context length x gradient accumulation x devices x nodes; None where unknown."""
    try:
        data, trainer = config["data"], config["trainer"]
        batch, context = int(data["batch_size"]), int(config["model"]["context_length"])
        accumulate = int(trainer.get("accumulate_grad_batches") or 1)
        devices = trainer.get("devices", 1)
        devices = int(devices) if isinstance(devices, int | str) and str(devices).isdigit() else 1
        nodes = int(trainer.get("num_nodes") or 1)
    except (KeyError, TypeError, ValueError):
        return None
    return batch * context * accumulate * devices * nodes


def load_run(run_dir: str | os.PathLike) -> Run:
    """A run folder of ``python -m lit_llm.train``: scalars, Hydra overrides and tokens per step."""
    run_dir = Path(run_dir)
    scalars = read_scalars(run_dir)
    hydra_dir = run_dir / ".hydra"
    overrides = _load_yaml(hydra_dir / "overrides.yaml") if (hydra_dir / "overrides.yaml").is_file() else []
    config = _load_yaml(hydra_dir / "config.yaml") if (hydra_dir / "config.yaml").is_file() else {}
    return Run(run_dir, [str(o) for o in overrides or []], tokens_per_step(config or {}), scalars)


def assign_labels(runs: list[Run], labels: list[str] | None = None) -> None:
    """Label each run by its overrides that not all runs share (``optimizer.lr=3e-3``); a run with no
    such override (or a single run) gets its ``experiment=`` override or else its folder name."""
    if labels is not None:
        if len(labels) != len(runs):
            raise ValueError(f"--labels: got {len(labels)} labels for {len(runs)} runs")
        for run, label in zip(runs, labels, strict=True):
            run.label = label
        return
    parsed = [{parse_override(o) for o in run.overrides} for run in runs]
    shared = set.intersection(*parsed) if runs else set()
    for run in runs:
        distinct = [o for o in run.overrides if parse_override(o) not in shared] if len(runs) > 1 else []
        experiment = [o for o in run.overrides if o.startswith("experiment=")]
        run.label = " ".join(distinct or experiment) or f"{run.path.parent.name}/{run.path.name}"


def _series(run: Run, tag: str, x: str) -> tuple[list[float], list[float]]:
    points = run.scalars.get(tag, [])
    values = [value for _, _, value in points]
    if x == "time":
        return [seconds / 60.0 for _, seconds, _ in points], values
    if x == "tokens":
        per_step = run.tokens_per_step or 0
        return [(step + 1) * per_step for step, _, _ in points], values
    return [step + 1 for step, _, _ in points], values  # Lightning logs step k after k+1 optimizer steps


def make_figure(runs: list[Run], metric: str = "val/bpb", title: str | None = None):
    """A 2 x 3 matplotlib Figure, one line per run on every panel (a run lacking a tag is skipped there)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not any(metric in run.scalars for run in runs):
        available = sorted({tag for run in runs for tag in run.scalars})
        raise ValueError(f"--metric {metric}: no run logged it; tags present: {', '.join(available)}")
    fig, axes = plt.subplots(2, 3, figsize=(13.5, 7.0), dpi=72)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (tag, x, panel_title) in zip(axes.flat, PANELS, strict=True):
        tag = tag or metric
        for i, run in enumerate(runs):
            if x == "tokens" and not run.tokens_per_step:
                continue
            xs, ys = _series(run, tag, x)
            if xs:
                marker = "o" if tag.startswith("val/") and len(xs) <= 30 else None
                ax.plot(xs, ys, color=colors[i % len(colors)], marker=marker, markersize=3, label=run.label)
        ax.set_title(panel_title.format(metric=metric), fontsize=10)
        ax.set_xlabel(X_LABELS[x], fontsize=9)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
        if tag == "lr":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(runs), 3), fontsize=9, frameon=False)
    if title:
        fig.suptitle(title, fontsize=12)
    legend_rows = -(-len(runs) // 3)
    fig.tight_layout(rect=(0, 0.035 * legend_rows + 0.01, 1, 0.96 if title else 1))
    return fig


def _layer_of(tag: str) -> int | None:
    """``health/update_ratio_log10/layers.3.attn.q_proj`` -> 3; None outside the blocks (embeddings,
    lm_head, max_logit)."""
    match = re.search(r"(?:^|[/.])layers\.(\d+)(?:[/.]|$)", tag)
    return int(match.group(1)) if match else None


def make_health_figure(run: Run, title: str | None = None):
    """A 2 x 2 matplotlib Figure of one run's ``health/`` tags (lit_llm/health.py) against steps: the
    update-to-weight ratio of every weight matrix (log10, the 1e-3 rule of thumb marked), attention
    entropy per layer (mean over heads solid, lowest head dashed), the residual stream's RMS after each
    block, and the largest logit with the fraction of steps clipped. One colour per layer throughout."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tags = sorted(t for t in run.scalars if t.startswith("health/"))
    if not tags:
        raise ValueError(f"{run.path}: no health/ scalars (was callbacks.health on?)")
    layers = sorted({n for n in map(_layer_of, tags) if n is not None})
    colour = {n: plt.cm.viridis(i / max(len(layers) - 1, 1)) for i, n in enumerate(layers)}

    def style(tag: str) -> dict[str, Any]:
        n = _layer_of(tag)
        return {"color": colour[n] if n is not None else "0.4", "linewidth": 1.0}

    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5), dpi=90)
    ratio, entropy, rms, logit = axes.flat
    for tag in (t for t in tags if t.startswith("health/update_ratio_log10/")):
        ratio.plot(*_series(run, tag, "step"), alpha=0.8, **style(tag))
    ratio.axhline(-3, color="C3", linestyle=":", linewidth=1, label="1e-3 (rule of thumb)")
    ratio.set_title("update / weight ratio (log10), one line per matrix", fontsize=10)
    for tag in (t for t in tags if t.startswith("health/attn_entropy/")):
        dashed = {"linestyle": "--"} if tag.endswith("/min") else {}
        entropy.plot(*_series(run, tag, "step"), **style(tag), **dashed)
    entropy.set_title("attention entropy (nats): mean over heads ---, lowest head - -", fontsize=10)
    for tag in (t for t in tags if t.startswith("health/residual_rms/")):
        rms.plot(*_series(run, tag, "step"), **style(tag))
    rms.set_title("residual stream RMS after each block", fontsize=10)
    logit.plot(*_series(run, "health/max_logit", "step"), color="C0", label="largest |logit|")
    logit.set_title("largest |logit|; fraction of steps clipped (right axis)", fontsize=10)
    if "health/clip_fraction" in run.scalars:
        clipped = logit.twinx()
        clipped.plot(*_series(run, "health/clip_fraction", "step"), color="C1", linewidth=1)
        clipped.set_ylim(-0.05, 1.05)
        clipped.set_ylabel("fraction clipped", color="C1")
    for ax in axes.flat:
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], color=colour[n], label=f"layer {n}") for n in layers]
    handles.append(plt.Line2D([], [], color="0.4", label="embeddings / lm_head"))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 8), fontsize=9, frameon=False)
    fig.suptitle(title or f"network health: {run.label or run.path}", fontsize=12)
    fig.tight_layout(rect=(0, 0.04, 1, 0.96))
    return fig


@dataclass
class ScalingPoint:
    """One run of a scaling study: its size, its training compute and where it ended."""

    label: str
    parameters: int  # every parameter of the model (lit_llm.flops.count_parameters)
    flops: float  # training FLOPs: FLOPs per token (lit_llm.flops) x tokens trained
    loss: float  # final val/loss (nats/token)


def scaling_point(run: Run) -> ScalingPoint:
    """The model, tokens and final validation loss of a run folder (its .hydra/config.yaml and scalars)."""
    from omegaconf import OmegaConf

    from lit_llm.flops import count_parameters, estimate_flops_per_token
    from lit_llm.model import ModelConfig

    config_file = run.path / ".hydra" / "config.yaml"
    if not config_file.is_file() or not run.scalars.get("val/loss") or not run.tokens_per_step:
        raise ValueError(f"{run.path}: a scaling point needs .hydra/config.yaml, val/loss and train/loss")
    model = OmegaConf.to_container(OmegaConf.load(config_file).model, resolve=True)  # vocab_size: ${data...}
    config = ModelConfig.from_dict(model)
    steps = max(step for tag in ("train/loss", "val/loss") for step, _, _ in run.scalars.get(tag, [])) + 1
    tokens = steps * run.tokens_per_step
    return ScalingPoint(
        run.label,
        count_parameters(config),
        estimate_flops_per_token(config) * tokens,
        run.scalars["val/loss"][-1][2],
    )


def fit_power_law(flops: list[float], losses: list[float]) -> tuple[float, float]:
    """(a, alpha) of loss = a x flops^-alpha, least squares on log loss against log flops (a straight
    line on the log-log plot; no irreducible-loss term, so alpha is the local slope over the range)."""
    import numpy as np

    if len(flops) < 2 or len(set(flops)) < 2:
        raise ValueError(f"a power-law fit needs at least 2 runs of different compute; got {len(flops)}")
    slope, intercept = np.polyfit(np.log(flops), np.log(losses), 1)
    return float(np.exp(intercept)), float(-slope)


def make_scaling_figure(points: list[ScalingPoint], a: float, alpha: float, title: str | None = None):
    """Final val/loss against training FLOPs on log-log axes, each run labelled, with the fitted law."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7.5, 5), dpi=100)
    flops = np.array([p.flops for p in points])
    ax.scatter(flops, [p.loss for p in points], color="C0", zorder=3)
    for p in points:
        ax.annotate(
            f"{p.label} ({p.parameters / 1e6:.2f}M)",
            (p.flops, p.loss),
            fontsize=8,
            textcoords="offset points",
            xytext=(5, 5),
        )
    grid = np.geomspace(flops.min() / 1.5, flops.max() * 1.5, 50)
    ax.plot(grid, a * grid**-alpha, color="C3", linestyle="--", label=f"fit: {a:.3g} x C^-{alpha:.3f}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training compute C (FLOPs)")
    ax.set_ylabel("final val/loss (nats/token)")
    ax.set_title(title or "scaling: final validation loss against training compute", fontsize=11)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    return fig


def save_png(fig, out: str | os.PathLike) -> Path:
    """Write the figure to ``out`` through a temporary file in the same folder (never half a PNG)."""
    import matplotlib.pyplot as plt

    from tokenizer.files import atomic_write

    out = Path(out)
    try:
        with atomic_write(out, "wb") as f:
            fig.savefig(f, format="png")
    finally:
        plt.close(fig)
    return out


def results_table(runs: list[Run], metric: str = "val/bpb") -> str:
    """Markdown: per run, the final and best value of ``metric``, steps trained and wall time."""
    lines = [
        f"| run | steps | final {metric} | best {metric} | wall time (min) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for run in runs:
        points = run.scalars.get(metric, [])
        # Training and validation points of step k are logged after k + 1 optimizer steps (end-of-run
        # summaries such as hp/* are logged at the step count itself, so they are not counted).
        trained = [step for tag in ("train/loss", metric) for step, _, _ in run.scalars.get(tag, [])]
        last_step = max(trained, default=-1) + 1
        minutes = max((t for pts in run.scalars.values() for _, t, _ in pts), default=0.0) / 60.0
        final = f"{points[-1][2]:.4f}" if points else "-"
        best = f"{min(v for _, _, v in points):.4f}" if points else "-"
        lines.append(f"| {run.label} | {last_step} | {final} | {best} | {minutes:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lit_llm.plot", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (logs/<name>/<run>/), one curve each")
    parser.add_argument("--out", required=True, type=Path, help="PNG file to write")
    parser.add_argument("--metric", default="val/bpb", help="validation tag to plot (default: val/bpb)")
    parser.add_argument("--title", default=None, help="figure title")
    parser.add_argument("--labels", nargs="+", default=None, help="one legend label per run, in order")
    parser.add_argument(
        "--health",
        action="store_true",
        help="draw one run's network health (update/weight ratios, attention entropy, residual RMS, logits)",
    )
    parser.add_argument(
        "--scaling",
        action="store_true",
        help="fit and draw a power law of final val/loss against training FLOPs over the runs",
    )
    args = parser.parse_args(argv)
    if args.out.suffix.lower() != ".png":
        print(f"error: --out {args.out}: expected a .png file name", file=sys.stderr)
        return 2
    if args.scaling:
        try:
            runs = [load_run(path) for path in args.runs]
            assign_labels(runs, args.labels)
            points = sorted((scaling_point(run) for run in runs), key=lambda p: p.flops)
            a, alpha = fit_power_law([p.flops for p in points], [p.loss for p in points])
            out = save_png(make_scaling_figure(points, a, alpha, args.title), args.out)
        except (FileNotFoundError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print("| run | parameters | training FLOPs | final val/loss |\n| --- | ---: | ---: | ---: |")
        for p in points:
            print(f"| {p.label} | {p.parameters:,} | {p.flops:.3g} | {p.loss:.4f} |")
        print(f"fit: val/loss = {a:.4g} x C^-{alpha:.4f}")
        print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KB)")
        return 0
    if args.health:
        if len(args.runs) != 1:
            print(f"error: --health draws one run; got {len(args.runs)} run folders", file=sys.stderr)
            return 2
        try:
            run = load_run(args.runs[0])
            out = save_png(make_health_figure(run, args.title), args.out)
        except (FileNotFoundError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KB)")
        return 0
    try:
        runs = [load_run(path) for path in args.runs]
        assign_labels(runs, args.labels)
        out = save_png(make_figure(runs, args.metric, args.title), args.out)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(results_table(runs, args.metric))
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
