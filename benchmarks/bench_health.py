"""What the TensorBoard dashboards cost: ``lit_llm.train`` with the network-health callback (every 50
steps, the default), the attention maps and the parameter histograms, and with all three off
(``callbacks.health=null callbacks.attention_maps=null callbacks.histograms=null``), in alternating
rounds of one process.

The target for health is an overhead of at most 3 % of step time at the ``ablation_base``
(``--shape small``) and TinyStories base (``--shape base``) sizes; the attention maps are a cost per
validation, printed in seconds. Each timed span is the one of ``benchmarks.bench_train``
(from step ``--warmup`` until the last checkpoint is on disk, one validation included), so it holds
the health steps at their default rate and one set of attention images and histograms.

The histograms are also timed on their own against the reference, ``SummaryWriter.add_histogram`` of
the same tensors (what ``ParameterHistograms`` called before it counted buckets with ``torch.histc``),
in the same process.

    python -m benchmarks.bench_health [--shape small|base] [--steps N] [--rounds 3]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.bench_train import CONFIGS, SHAPES, lightning_run, shape_config
from lit_llm.attention_maps import AttentionMaps
from lit_llm.callbacks import ParameterHistograms, histogram_fields
from lit_llm.health import NetworkHealth
from lit_llm.model import ModelConfig, TransformerLM

SPENT: dict[str, float] = {}  # seconds inside the dashboards' hooks during the current run


def _timed(cls: type, hook: str, key: str) -> None:
    """Wrap ``cls.hook`` so that the seconds spent in it add up in SPENT[key] (wall clock: on a CPU the
    hooks' work is done when they return; no device queue to wait for)."""
    original = getattr(cls, hook)

    def wrapper(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            SPENT[key] = SPENT.get(key, 0.0) + time.perf_counter() - t0

    setattr(cls, hook, wrapper)


_timed(NetworkHealth, "on_before_optimizer_step", "health")
_timed(NetworkHealth, "on_train_batch_end", "health")
_timed(AttentionMaps, "on_validation_end", "attention maps")
_timed(ParameterHistograms, "on_validation_end", "histograms")


def histogram_seconds(model_config: dict, repeats: int = 5) -> tuple[float, float]:
    """(ours, reference): best seconds to write the weight and gradient histograms of a model of this
    shape once, through ``histogram_fields`` + ``add_histogram_raw`` and through ``add_histogram``."""
    from torch.utils.tensorboard import SummaryWriter

    model = TransformerLM.from_config(ModelConfig.from_dict(model_config))
    tokens = torch.randint(0, model_config["vocab_size"], (2, model_config["context_length"]))
    model(tokens).square().mean().backward()  # gradients of a realistic spread
    tensors = [
        (f"{kind}/{name}", t.detach())
        for name, p in model.named_parameters()
        for kind, t in (("weights", p), ("grads", p.grad))
    ]
    best = {"ours": float("inf"), "reference": float("inf")}
    with tempfile.TemporaryDirectory() as tmp, SummaryWriter(tmp) as writer:
        for step in range(repeats):
            for name in best:  # alternating, so both see the same machine
                t0 = time.perf_counter()
                for tag, tensor in tensors:
                    if name == "ours":
                        writer.add_histogram_raw(tag, **histogram_fields(tensor), global_step=step)
                    else:
                        writer.add_histogram(tag, tensor.float().cpu().numpy(), global_step=step)
                best[name] = min(best[name], time.perf_counter() - t0)
    return best["ours"], best["reference"]


def experiment_val_interval(shape: str) -> int:
    """The experiment's own trainer.val_check_interval (shape_config replaces it to fit the span)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return int(compose("train", overrides=SHAPES[shape]).trainer.val_check_interval)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=["small", "base"], default="small")
    parser.add_argument("--steps", type=int, default=None, help="steps per run (400 small, 110 base)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed first steps (default: 10)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    steps = args.steps or {"small": 400, "base": 110}[args.shape]
    warmup = args.warmup if args.warmup is not None else 10
    print(f"load average: {os.getloadavg()}; torch {torch.__version__}, threads {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as tmp:
        on = shape_config(args.shape, Path(tmp), steps, steps, compile_=False)
        off = copy.deepcopy(on)
        off["callbacks"]["health"] = None
        off["callbacks"]["attention_maps"] = None
        off["callbacks"]["histograms"] = None
        every = on["callbacks"]["health"]["every_n_steps"]
        print(
            f"--shape {args.shape}: {steps} steps timed from step {warmup}; health every {every} steps; "
            f"one validation (at the end)"
        )
        runs = {"dashboards off": off, "dashboards on": on}
        seconds: dict[str, list[float]] = {name: [] for name in runs}
        spent: list[dict[str, float]] = []
        for round_ in range(args.rounds):
            for i, (name, config) in enumerate(runs.items()):
                SPENT.clear()
                wall, _ = lightning_run(copy.deepcopy(config), warmup, Path(tmp) / f"{i}-{round_}")
                seconds[name].append(wall)
                if name == "dashboards on":
                    spent.append(dict(SPENT))
                print(f"  round {round_ + 1}: {name:<15} {(steps - warmup) / wall:6.2f} it/s ({wall:.2f} s)")
    off_s, on_s = statistics.median(seconds["dashboards off"]), statistics.median(seconds["dashboards on"])
    per_round = [b / a - 1 for a, b in zip(seconds["dashboards off"], seconds["dashboards on"], strict=True)]
    print(f"medians of {args.rounds} rounds (wall time of the span):")
    print(f"  dashboards off  {off_s:7.2f} s  ({(steps - warmup) / off_s:.2f} it/s)")
    print(f"  dashboards on   {on_s:7.2f} s  ({(steps - warmup) / on_s:.2f} it/s)")
    print(
        f"  difference {on_s / off_s - 1:+.2%} (per round: " + ", ".join(f"{r:+.2%}" for r in per_round) + ")"
        " -- the noise of a shared machine; the hooks' own time below is the overhead"
    )
    # Whole run (warmup included): health ran at steps 0, every, 2 every, ... < steps.
    health_steps = len(range(0, steps, every))
    health_s = statistics.median(s.get("health", 0.0) for s in spent)
    maps_s = statistics.median(s.get("attention maps", 0.0) for s in spent)
    step_s = off_s / (steps - warmup)
    per_step = health_s / health_steps
    print(
        f"health: {per_step * 1e3:.1f} ms per logged step ({health_steps} in the run), i.e. "
        f"{per_step / every * 1e3:.2f} ms per step at every_n_steps={every} against a step of "
        f"{step_s * 1e3:.1f} ms: overhead {per_step / every / step_s:.2%} (target <= 3%)"
    )
    interval = experiment_val_interval(args.shape)
    print(
        f"attention maps: {maps_s:.2f} s per validation ({on['model']['num_layers']} images), "
        f"{maps_s / (interval * step_s):.2%} of the {interval} steps between two validations of the "
        "experiment"
    )
    histograms_s = statistics.median(s.get("histograms", 0.0) for s in spent)
    print(
        f"histograms: {histograms_s:.3f} s per validation in the run, "
        f"{histograms_s / (interval * step_s):.2%} of the {interval} steps between two validations"
    )
    ours, reference = histogram_seconds(on["model"])
    print(
        f"histograms of every weight and gradient, best of 5: ours (torch.histc + add_histogram_raw) "
        f"{ours * 1e3:.1f} ms, add_histogram {reference * 1e3:.1f} ms: {reference / ours:.1f}x faster"
    )
    print(f"load average: {os.getloadavg()}")


if __name__ == "__main__":
    main()
