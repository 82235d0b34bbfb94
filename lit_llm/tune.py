"""``python -m lit_llm.tune mode=lr|batch_size [experiment=NAME] [key=value ...]``: two questions asked
before a long run, answered as an override to paste into the training command.

- ``mode=lr``, a learning-rate range test (Smith, 2015): ``tune.steps`` optimizer steps whose learning
  rate grows by a constant factor from ``tune.min_lr`` to ``tune.max_lr``, stopped early once the loss
  diverges. It prints the suggested peak rate (``optimizer.lr=2.4e-3``) and writes the curve to the run
  folder: lr_find.csv (every step), lr_find.json (settings, suggestion) and lr_find.png.
- ``mode=batch_size``: the largest micro-batch (``data.batch_size=N``) whose training step fits in the
  accelerator's memory, by doubling and then a binary search.

The config is the training config (configs/tune.yaml includes train.yaml): the same experiments,
groups and overrides, validated the same way, plus ``mode`` and the ``tune`` group (``TuneConfig``).

**Our own loop, not Lightning's ``Tuner``.** ``Tuner.lr_find`` (lightning/pytorch/tuner/lr_finder.py)
would run: it swaps our warmup-cosine LambdaLR for its own exponential schedule and keeps our AdamW.
But it is a ``trainer.fit`` in disguise: it saves and restores a full checkpoint in the run folder,
runs our validation (and its ``self.log`` calls) whenever ``val_check_interval`` falls inside the
sweep, replaces all our callbacks (the non-finite-loss guard included), and its divergence test,
``smoothed > 4 * best``, is never true for a NaN loss, so a sweep that blows up runs to the end. It
records only the smoothed loss, and its suggestion is the steepest slope against the *linear* rate,
which on an exponential sweep leans towards the largest rates. ``update_attr=True`` needs ``lr`` on
the module or its hparams (ours is ``hparams.optimizer.lr``). ``Tuner.scale_batch_size`` has the same
fit-and-restore machinery, knows only CUDA's out-of-memory error and has no cap, so on a CPU it
doubles until the machine swaps. The loop here is short and says exactly what a step is: the module's
model and loss, our AdamW built by ``configure_optimizers`` (its schedule discarded), our gradient
clipping at ``trainer.gradient_clip_val``, ``trainer.accumulate_grad_batches`` micro-batches per step,
on the device and precision of the trainer group (Lightning's ``Fabric`` from the same arguments).
It runs on one device: the batch size found is per device; with several devices the global batch,
and so the best learning rate, is larger.
"""

from __future__ import annotations

import csv
import gc
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from lit_llm import cli
from lit_llm.config_schema import TuneConfig
from lit_llm.config_validation import ConfigError, resolve, schema_problems, trainer_problem, validate_config
from lit_llm.train import (  # also registers the lit_llm.run_dir resolver
    _refused_start,
    apply_process_settings,
    check_writable,
)

log = logging.getLogger(__name__)

MODES = ("lr", "batch_size")


@dataclass
class LRCurve:
    """The result of ``lr_range_test``: one entry per optimizer step taken, in order of increasing lr."""

    lrs: list[float]
    losses: list[float]  # mean training loss of the step (nats/token), as measured
    smoothed: list[float]  # bias-corrected exponential moving average of ``losses``: the divergence test's
    # ``smoothed`` smoothed again backwards (``backward_ema``): lag-free, for the suggestion
    centered: list[float]
    steps: int  # steps planned (tune.steps); len(lrs) < steps when the loss diverged first
    suggestion: float | None  # None: too few points before the minimum (see ``suggest_lr``)

    @property
    def stopped_early(self) -> bool:
        return len(self.lrs) < self.steps


# -- configuration ------------------------------------------------------------------------------------


def split_config(cfg: DictConfig | dict[str, Any]) -> tuple[str, TuneConfig, dict[str, Any]]:
    """(mode, tune settings, training config) of a composed tune config, every problem of the three
    reported at once as one ``ConfigError`` (the training part checked by ``validate_config``)."""
    config = resolve(cfg)
    mode = config.pop("mode", "lr")
    tune, problems = schema_problems(TuneConfig, config.pop("tune", {}), "tune")
    if mode not in MODES:
        problems.insert(0, f"mode={mode!r}: expected one of {', '.join(MODES)}")
    try:  # with a problem already found, only the checks that import nothing heavy (fails in ~1 s)
        training = validate_config(config, check_targets=not problems)
    except ConfigError as exc:
        problems += exc.problems
    if problems:
        raise ConfigError(problems)
    assert tune is not None
    return mode, tune, training


def _fabric(config: dict[str, Any]) -> Any:
    """Lightning's ``Fabric`` on one device of the trainer group's accelerator, at its precision: the
    device and autocast that ``trainer.fit`` would use. A value Lightning refuses is a ConfigError."""
    from lightning.fabric import Fabric

    trainer = config["trainer"]
    devices, nodes = trainer.get("devices", 1), trainer.get("num_nodes", 1)
    if str(devices) not in ("1", "auto") or nodes != 1:
        log.info(f"tuning on one device (the trainer group asks for devices={devices}, num_nodes={nodes})")
    try:
        fabric = Fabric(
            accelerator=trainer.get("accelerator", "auto"), devices=1, precision=trainer["precision"]
        )
    except Exception as exc:  # ValueError, MisconfigurationException, ...: Lightning's own checks
        raise ConfigError([trainer_problem(exc, trainer)]) from None
    apply_process_settings(config)
    return fabric


def _model_and_optimizer(config: dict[str, Any], fabric: Any) -> tuple[Any, Any, Any]:
    """(model on the device, Fabric's optimizer, our AdamW itself), seeded as training seeds them. The
    optimizer is ``LanguageModelModule.configure_optimizers``'s (parameter groups from
    ``module.parameter_groups``); its warmup-cosine schedule is dropped: the sweep sets the rate."""
    import lightning.pytorch as pl

    from lit_llm.module import LanguageModelModule

    pl.seed_everything(config["seed"], workers=True, verbose=False)
    module = LanguageModelModule(
        model=config["model"],
        optimizer=config["optimizer"],
        scheduler=config["scheduler"],
        compile=config["compile"],
    )
    optimizer = module.configure_optimizers()["optimizer"]
    model, wrapped = fabric.setup(module.model, optimizer)
    return model, wrapped, optimizer


def train_step(
    fabric: Any, model: Any, optimizer: Any, batches: list[tuple[Any, Any]], max_norm: float
) -> float:
    """One optimizer step over ``batches`` (micro-batches of (x, y), each (batch, seq) int64, already on
    the device), as Lightning's automatic optimization takes it: the loss of each micro-batch divided by
    their number, backward, unscale (fp16 only), our ``clip_grad_norm``, step. Returns the mean loss."""
    from lit_llm.losses import cross_entropy
    from lit_llm.optim import clip_grad_norm

    total = 0.0
    for x, y in batches:
        with fabric.autocast():
            loss = cross_entropy(model(x), y) / len(batches)  # logits (batch, seq, vocab) -> scalar
        fabric.backward(loss)
        total = total + loss.detach()  # on the device: read once, at the end of the step
    raw = getattr(optimizer, "optimizer", optimizer)  # our AdamW inside Fabric's wrapper
    fabric.strategy.precision.unscale_gradients(raw)
    clip_grad_norm([p for group in raw.param_groups for p in group["params"]], max_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(total)


def _max_norm(config: dict[str, Any]) -> float:
    return config["trainer"].get("gradient_clip_val") or math.inf


# -- mode=lr ------------------------------------------------------------------------------------------


def sweep_lrs(min_lr: float, max_lr: float, steps: int) -> list[float]:
    """``steps`` rates from ``min_lr`` to ``max_lr`` (both included), a constant factor apart: each
    decade of rates gets the same number of steps."""
    ratio = max_lr / min_lr
    return [min_lr * ratio ** (i / (steps - 1)) for i in range(steps)]


def backward_ema(values: list[float], beta: float) -> list[float]:
    """The bias-corrected moving average of ``values`` taken from the last one back to the first.

    The forward average at step i is a mean of the steps before it, ~beta / (1 - beta) steps late on
    average (49 at beta=0.98: a whole decade of rates in a 200-step sweep over four): its steepest
    descent, and so the suggestion, would come that much too late. Run backwards over it, the same
    average lags the other way; the two cancel (a zero-phase filter, as scipy's ``filtfilt``). Only the
    finite prefix is smoothed: a last, diverged inf/NaN stays as it is.
    """
    n = next((i for i, v in enumerate(values) if not math.isfinite(v)), len(values))
    out, average = list(values), 0.0
    for k, i in enumerate(range(n - 1, -1, -1)):
        average = beta * average + (1 - beta) * values[i]
        out[i] = average / (1 - beta ** (k + 1))
    return out


def suggest_lr(lrs: list[float], smoothed: list[float], skip_begin: int) -> float | None:
    """The "valley" rate: two thirds of the way (in steps, so in log(lr)) from the first point after
    ``skip_begin`` to the minimum of the (centered) smoothed loss; None with fewer than 3 points there.

    Why not the steepest descent, the rule of many range tests: the sweep starts from an untrained
    model, which learns its easiest statistics at any rate, so the loss falls fastest early in the
    sweep, at rates far too low for a real run (on ``experiment=ablation_base``: 1.1e-4, where its
    learning-rate sweep finds 3e-3 best of 3e-4, 1e-3 and 3e-3). Why not the minimum: it sits where the
    loss starts to turn up, the edge of divergence. Two thirds of the descent (fastai's "valley") is a
    rate that still lowers the loss quickly but is clear of that edge.
    """
    import numpy as np

    end = int(np.argmin(smoothed)) if smoothed else 0  # index of the minimum
    if end - skip_begin < 2:
        return None
    return float(lrs[skip_begin + (2 * (end - skip_begin)) // 3])


def lr_range_test(config: dict[str, Any], tune: TuneConfig, batches: Iterator[tuple[Any, Any]]) -> LRCurve:
    """Train with the rates of ``sweep_lrs``, one per step, on ``batches`` ((x, y) micro-batches of the
    training data); stop after the step whose loss is not finite or whose smoothed loss exceeds
    ``tune.divergence`` times the best smoothed loss so far."""
    fabric = _fabric(config)
    model, optimizer, raw = _model_and_optimizer(config, fabric)
    accumulate = config["trainer"].get("accumulate_grad_batches") or 1
    lrs = sweep_lrs(tune.min_lr, tune.max_lr, tune.steps)
    every = max(1, tune.steps // 10)
    curve = LRCurve([], [], [], [], tune.steps, None)
    average, best = 0.0, math.inf
    for i, lr in enumerate(lrs):
        for group in raw.param_groups:
            group["lr"] = lr  # every group: only weight decay differs between them
        micro = [tuple(t.to(fabric.device) for t in next(batches)) for _ in range(accumulate)]
        loss = train_step(fabric, model, optimizer, micro, _max_norm(config))
        average = tune.smoothing * average + (1 - tune.smoothing) * loss
        smoothed = average / (1 - tune.smoothing ** (i + 1))  # bias correction: no pull towards 0
        curve.lrs.append(lr)
        curve.losses.append(loss)
        curve.smoothed.append(smoothed)
        if i % every == 0 or i == tune.steps - 1:
            log.info(f"step {i + 1}/{tune.steps}: lr {lr:.2e}, loss {loss:.4f} (smoothed {smoothed:.4f})")
        if not math.isfinite(loss) or smoothed > tune.divergence * best:
            log.info(
                f"stopped at step {i + 1}/{tune.steps}: the loss diverged at lr {lr:.2e} "
                f"(loss {loss:.4g}, smoothed {smoothed:.4g} > {tune.divergence:g} x best {best:.4g})"
            )
            break
        best = min(best, smoothed)
    curve.centered = backward_ema(curve.smoothed, tune.smoothing)
    finite = [s if math.isfinite(s) else math.inf for s in curve.centered]
    curve.suggestion = suggest_lr(curve.lrs, finite, skip_begin=max(1, tune.steps // 20))
    return curve


def format_lr(lr: float) -> str:
    """Two significant digits, exponent without padding: ``0.0024`` -> ``2.4e-3``."""
    mantissa, exponent = f"{lr:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def save_curve(curve: LRCurve, tune: TuneConfig, folder: str | Path) -> list[Path]:
    """lr_find.csv (step, lr, loss, smoothed_loss, centered_loss), lr_find.json (settings, suggestion,
    steps run) and, where matplotlib is installed (a dev dependency), lr_find.png; each atomically."""
    from tokenizer.files import atomic_write, write_json

    folder = Path(folder)
    table, summary = folder / "lr_find.csv", folder / "lr_find.json"
    with atomic_write(table, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "lr", "loss", "smoothed_loss", "centered_loss"])
        for i, row in enumerate(zip(curve.lrs, curve.losses, curve.smoothed, curve.centered, strict=True)):
            writer.writerow([i + 1, *(repr(v) for v in row)])
    write_json(
        summary,
        {
            "suggestion": curve.suggestion,
            "rule": "two thirds of the way from the start of the sweep to the minimum of the smoothed loss",
            "steps_run": len(curve.lrs),
            "stopped_early": curve.stopped_early,
            "tune": asdict(tune),
        },
    )
    written = [table, summary]
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        log.warning("matplotlib is not installed (pip install matplotlib): no lr_find.png; see lr_find.csv")
        return written
    return [*written, plot_curve(curve, folder / "lr_find.png")]


def plot_curve(curve: LRCurve, out: Path) -> Path:
    """Loss against lr (log axis): each step faintly, the lag-free smoothed loss, the suggestion marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lit_llm.plot import save_png

    fig, ax = plt.subplots(figsize=(7.0, 4.5), dpi=100)
    ax.plot(curve.lrs, curve.losses, color="0.75", linewidth=0.8, label="loss of the step")
    ax.plot(curve.lrs, curve.centered, color="C0", linewidth=1.8, label="smoothed loss (forward + backward)")
    if curve.suggestion is not None:
        i = curve.lrs.index(curve.suggestion)
        ax.axvline(curve.suggestion, color="C3", linestyle="--", linewidth=1)
        ax.plot(
            [curve.suggestion],
            [curve.centered[i]],
            "o",
            color="C3",
            label=f"optimizer.lr={format_lr(curve.suggestion)}",
        )
    finite = [s for s in curve.centered + curve.losses if math.isfinite(s)]
    if finite:  # the divergence would otherwise squash the interesting part into a line
        low, first = min(finite), max(curve.centered[0], curve.losses[0])
        ax.set_ylim(low - 0.1 * (first - low + 1e-3), first + 0.5 * (first - low + 1e-3))
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss (nats/token)")
    stop = f", stopped early at step {len(curve.lrs)}" if curve.stopped_early else ""
    ax.set_title(f"learning-rate range test: {len(curve.lrs)}/{curve.steps} steps{stop}", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=9)
    fig.tight_layout()
    return save_png(fig, out)


def run_lr(config: dict[str, Any], tune: TuneConfig) -> float:
    """``mode=lr`` on a validated config: prepare the data, sweep, save, print ``optimizer.lr=...``."""
    from hydra.utils import instantiate

    datamodule = instantiate(config["data"], _convert_="all")
    datamodule.prepare_data()
    datamodule.setup("fit")
    curve = lr_range_test(config, tune, iter(datamodule.train_dataloader()))
    written = save_curve(curve, tune, config["paths"]["output_dir"])
    log.info(f"wrote {', '.join(str(p) for p in written)}")
    if curve.suggestion is None:
        raise ValueError(
            f"lr range test: too few steps ({len(curve.lrs)}) before the loss stopped falling to suggest a "
            f"rate; lower tune.min_lr or raise tune.steps (the curve: {written[0]})"
        )
    if not curve.stopped_early and min(curve.centered) == curve.centered[-1]:
        log.warning(
            f"the loss was still falling at tune.max_lr={tune.max_lr:g}: the suggestion may be too low; "
            "raise tune.max_lr to see where it turns up"
        )
    log.info(
        f"suggested peak learning rate {format_lr(curve.suggestion)} (2/3 of the way down to the minimum; "
        f"{len(curve.lrs)}/{tune.steps} steps, lr {tune.min_lr:g} -> {curve.lrs[-1]:.2e})"
    )
    print(f"optimizer.lr={format_lr(curve.suggestion)}", flush=True)
    return curve.suggestion


# -- mode=batch_size ----------------------------------------------------------------------------------


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's ``OutOfMemoryError``, or the RuntimeError of another allocator that ran out (the CPU's
    "can't allocate memory", MPS's "out of memory")."""
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def largest_fitting(fits: Callable[[int], bool], cap: int) -> int:
    """The largest n in [1, cap] with ``fits(n)``, assuming that what fits is a prefix 1..N: doubling
    (1, 2, 4, ...) to the first size that fails or passes ``cap``, then a binary search between the last
    size that fitted and that one. The exact largest size, not a power of two: ~2 log2(N) trials.
    0 when not even 1 fits."""
    good, n = 0, 1
    while n <= cap and fits(n):
        good, n = n, n * 2
    bad = min(n, cap + 1)  # smallest size known (or, past the cap, taken) not to fit
    if good == 0:
        return 0
    while bad - good > 1:
        mid = (good + bad) // 2
        if fits(mid):
            good = mid
        else:
            bad = mid
    return good


def find_batch_size(config: dict[str, Any], tune: TuneConfig) -> tuple[int, bool]:
    """(largest micro-batch whose ``tune.steps_per_trial`` training steps fit, whether out-of-memory
    can be detected on this device). The windows are random token ids: a step's memory depends on the
    shapes only, so no data is prepared."""
    import torch

    fabric = _fabric(config)
    model, optimizer, _ = _model_and_optimizer(config, fabric)
    device = fabric.device
    vocab, context = config["model"]["vocab_size"], config["data"]["context_length"]
    accumulate = config["trainer"].get("accumulate_grad_batches") or 1
    generator = torch.Generator().manual_seed(config["seed"])

    def fits(batch: int) -> bool:
        out_of_memory = False
        try:
            for _ in range(tune.steps_per_trial):
                tokens = torch.randint(0, vocab, (batch, context + 1), generator=generator)  # (batch, seq+1)
                x, y = tokens[:, :-1].to(device), tokens[:, 1:].to(device)  # (batch, seq) each
                train_step(fabric, model, optimizer, [(x, y)] * accumulate, _max_norm(config))
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            out_of_memory = True  # freed below, once the traceback (holding the activations) is gone
        if out_of_memory:
            optimizer.zero_grad(set_to_none=True)
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        log.info(f"micro-batch {batch}: {'out of memory' if out_of_memory else 'fits'}")
        return not out_of_memory

    return largest_fitting(fits, tune.max_batch_size), device.type == "cuda"


def run_batch_size(config: dict[str, Any], tune: TuneConfig) -> int:
    """``mode=batch_size`` on a validated config: search, save batch_size.json, print the override."""
    from tokenizer.files import write_json

    batch, detects = find_batch_size(config, tune)
    if batch == 0:
        raise ValueError("mode=batch_size: not even a micro-batch of 1 fits in memory; shrink the model")
    capped = batch == tune.max_batch_size
    if not detects:
        note = (
            f"no out-of-memory error on this device; capped by tune.max_batch_size={tune.max_batch_size} "
            "(CPU RAM rarely raises one: the system swaps or kills the process first)"
        )
    elif capped:
        note = f"capped by tune.max_batch_size={tune.max_batch_size}; a larger one may fit"
    else:
        note = f"the largest that fits: {batch + 1} ran out of memory"
    out = Path(config["paths"]["output_dir"]) / "batch_size.json"
    write_json(out, {"batch_size": batch, "capped": capped, "tune": asdict(tune)})
    log.info(
        f"micro-batch {batch} windows of {config['data']['context_length']} tokens ({note}); wrote {out}"
    )
    print(f"data.batch_size={batch}", flush=True)
    return batch


def tune_run(cfg: DictConfig | dict[str, Any]) -> float | int:
    """Validate ``cfg`` (a composed tune config), check the output folders, and run its mode."""
    mode, tune, config = split_config(cfg)
    paths, data = config["paths"], config["data"]
    data_folders = [
        data.get("data_dir") or paths["data_dir"],
        data.get("artifacts_dir") or paths["artifacts_dir"],
    ]
    check_writable(paths["output_dir"], *(data_folders if mode == "lr" else []))
    from lit_llm.train import _quiet_unactionable_messages, _single_log_path

    _single_log_path()
    _quiet_unactionable_messages()
    return run_lr(config, tune) if mode == "lr" else run_batch_size(config, tune)


@cli.main("tune", config_path=cli.TRAIN_CONFIGS)
def main(cfg: DictConfig) -> None:
    try:
        tune_run(cfg)
    except Exception as exc:
        _refused_start(exc)  # a refused start leaves no run folder behind, as in lit_llm.train
        raise


if __name__ == "__main__":
    main()
