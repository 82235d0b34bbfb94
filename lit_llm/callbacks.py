"""Training callbacks: throughput and MFU, text samples, a non-finite-loss guard, final metrics as hparams.

Each is a plain Lightning ``Callback`` configured in configs/callbacks/default.yaml. They log through
``pl_module.log`` (so every logger receives them) and never force a device sync on every step.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Sequence
from operator import attrgetter
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, RichModelSummary, RichProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.model_summary import ModelSummary as LightningModelSummary
from torch import Tensor

# Dense (no sparsity) peak FLOP/s per device from the vendors' datasheets, by compute precision.
# Keys are matched as substrings of torch.cuda.get_device_name(), first match wins, so the more
# specific names come first. "tf32" is what float32 matmuls get with matmul_precision "high"/"medium".
PEAK_FLOPS: dict[str, dict[str, float]] = {
    "H100 PCIe": {"bf16": 756e12, "fp16": 756e12, "tf32": 378e12, "fp32": 51.2e12},
    "H100 NVL": {"bf16": 835e12, "fp16": 835e12, "tf32": 418e12, "fp32": 60e12},
    "H100": {"bf16": 989.4e12, "fp16": 989.4e12, "tf32": 494.7e12, "fp32": 66.9e12},
    "H200": {"bf16": 989.4e12, "fp16": 989.4e12, "tf32": 494.7e12, "fp32": 66.9e12},
    "A100": {"bf16": 312e12, "fp16": 312e12, "tf32": 156e12, "fp32": 19.5e12},
    "L40S": {"bf16": 362e12, "fp16": 362e12, "tf32": 183e12, "fp32": 91.6e12},
    "L4": {"bf16": 121e12, "fp16": 121e12, "tf32": 60e12, "fp32": 30.3e12},
    "A10": {"bf16": 125e12, "fp16": 125e12, "tf32": 62.5e12, "fp32": 31.2e12},
    "RTX 4090": {"bf16": 165.2e12, "fp16": 165.2e12, "tf32": 82.6e12, "fp32": 82.6e12},
    "RTX 3090": {"bf16": 71e12, "fp16": 71e12, "tf32": 35.6e12, "fp32": 35.6e12},
    "V100": {"fp16": 125e12, "fp32": 15.7e12},
    "T4": {"fp16": 65e12, "fp32": 8.1e12},
}


def compute_precision(trainer_precision: str | int | None) -> str:
    """Map Lightning's precision setting to the key of ``PEAK_FLOPS`` the matmuls run at."""
    value = str(trainer_precision)
    if value.startswith("bf16"):
        return "bf16"
    if value.startswith("16"):
        return "fp16"
    return "fp32" if torch.get_float32_matmul_precision() == "highest" else "tf32"


def lookup_peak_flops(device_name: str, precision: str) -> float | None:
    """Peak FLOP/s of a named accelerator at ``precision``, or None when the table does not know it."""
    for key, peaks in PEAK_FLOPS.items():
        if key in device_name:
            return peaks.get(precision, peaks.get("fp32"))
    return None


def measure_matmul_flops(device: torch.device, n: int = 1024, seconds: float = 0.3) -> float:
    """Best float32 matmul FLOP/s of ``device`` over a short burst: the achievable peak, used where no
    datasheet figure applies (CPUs). Issue 2's reference reaches ~80% of it on 2 cores."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elif device.type == "mps":
            torch.mps.synchronize()

    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    a @ b  # warm-up (thread pool, kernels)
    sync()
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        a @ b
        sync()
        best = max(best, 2 * n**3 / (time.perf_counter() - start))
    return best


class TokenThroughput(Callback):
    """Logs ``throughput/tokens_per_sec`` (all ranks together) and ``throughput/mfu`` every
    ``log_every_n_steps`` optimizer steps, over the steps since the previous log. Validation and
    checkpointing time is left out: a window restarts at the first training batch after them."""

    def __init__(self, peak_flops: float | None = None) -> None:
        if peak_flops is not None and not peak_flops > 0:
            raise ValueError(f"peak_flops={peak_flops!r}: expected a positive number of FLOP/s or null")
        self.peak_flops = peak_flops
        self.flops_per_token: float | None = None
        self._window_start: float | None = None
        self._window_tokens = 0
        self._last_step = -1

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from lit_llm.flops import estimate_flops_per_token

        self.flops_per_token = float(estimate_flops_per_token(pl_module.config))
        if self.peak_flops is None:
            device = pl_module.device
            precision = compute_precision(trainer.precision)
            if device.type == "cuda":
                self.peak_flops = lookup_peak_flops(torch.cuda.get_device_name(device), precision)
            if self.peak_flops is None:
                self.peak_flops = measure_matmul_flops(device)
                rank_zero_info(
                    f"throughput: measured float32 matmul peak {self.peak_flops / 1e9:.1f} GFLOP/s"
                )

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._window_start is None:
            self._window_start, self._window_tokens = time.perf_counter(), 0
            self._last_step = trainer.global_step
        self._window_tokens += batch[0].numel() * trainer.world_size

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if step == self._last_step or step % trainer.log_every_n_steps != 0 or self._window_start is None:
            return  # mid-accumulation, or not a logging step
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)  # once per log window: time what the GPU really did
        elapsed = time.perf_counter() - self._window_start
        tokens_per_sec = self._window_tokens / max(elapsed, 1e-9)
        pl_module.log("throughput/tokens_per_sec", tokens_per_sec)
        if self.flops_per_token and self.peak_flops:
            mfu = tokens_per_sec * self.flops_per_token / (self.peak_flops * trainer.world_size)
            pl_module.log("throughput/mfu", mfu)
        self._window_start, self._window_tokens, self._last_step = time.perf_counter(), 0, step

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._window_start = None


def sample_tokens(
    model: torch.nn.Module,
    prompt_ids: Sequence[int],
    *,
    max_new_tokens: int,
    context_length: int,
    temperature: float,
    generator: torch.Generator,
    stop_id: int | None = None,
) -> list[int]:
    """Greedy (temperature 0) or temperature sampling of one continuation through
    ``lit_llm.generate.generate_ids``; the prompt keeps its last ``context_length`` tokens. Full forwards,
    no KV cache: every rank runs the same forwards, as a sharded (FSDP) model needs. Returns the new ids
    only, up to (not including) ``stop_id``."""
    from lit_llm.generate import generate_ids

    new: list[int] = []
    steps = generate_ids(
        model,
        list(prompt_ids)[-context_length:],
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        use_cache=False,
        generator=generator,
    )
    for next_ids in steps:  # (1,) per step
        token_id = int(next_ids[0])
        if token_id == stop_id:
            break
        new.append(token_id)
    return new


class TextSamples(Callback):
    """After every validation, continue each prompt and log prompt + continuation as the ``samples``
    text tag (TensorBoard's TEXT tab) and on the terminal. The sampling generator is re-seeded every
    time, so successive samples differ only because the model changed."""

    def __init__(
        self, prompts: Sequence[str], max_new_tokens: int = 64, temperature: float = 0.8, seed: int = 0
    ) -> None:
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={max_new_tokens!r}: expected a positive integer")
        if not temperature >= 0:
            raise ValueError(f"temperature={temperature!r}: expected a number >= 0 (0: greedy)")
        self.prompts = list(prompts)
        self.max_new_tokens = max_new_tokens
        self.temperature = float(temperature)
        self.seed = seed
        self.last_samples: list[str] = []

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        tokenizer = getattr(trainer.datamodule, "tokenizer", None)
        if trainer.sanity_checking or tokenizer is None or not self.prompts:
            return
        eot = getattr(trainer.datamodule, "eot_id", None)
        model = pl_module.model
        generator = torch.Generator(next(model.parameters()).device).manual_seed(self.seed)
        was_training = model.training
        model.eval()
        samples = []
        # Every rank samples (same seed, same tokens): a sharded (FSDP) model needs all ranks in forward.
        with trainer.precision_plugin.forward_context():
            for prompt in self.prompts:
                new_ids = sample_tokens(
                    model,
                    tokenizer.encode(prompt),
                    max_new_tokens=self.max_new_tokens,
                    context_length=pl_module.config.context_length,
                    temperature=self.temperature,
                    generator=generator,
                    stop_id=eot,
                )
                samples.append(prompt + tokenizer.decode(new_ids))
        model.train(was_training)
        self.last_samples = samples
        if not trainer.is_global_zero:
            return
        step = trainer.global_step
        text = "\n\n".join(f"**{i + 1}.** " + _markdown_quote(s) for i, s in enumerate(samples))
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_text("samples", text, global_step=step)
        rank_zero_info(f"samples at step {step}:\n" + "\n".join(f"  {s!r}" for s in samples))


HISTOGRAM_BINS = 64
_GRAD = attrgetter("grad")


def _summary(values: Tensor) -> list[float]:
    """[min, max, sum, sum of squares] of a 1-D tensor, read in one transfer."""
    low, high = torch.aminmax(values)
    return torch.stack([low, high, values.sum(), values.square().sum()]).tolist()


def histogram_fields(tensor: Tensor, bins: int = HISTOGRAM_BINS) -> dict[str, Any] | None:
    """The keyword arguments of ``SummaryWriter.add_histogram_raw`` for the finite values of ``tensor``:
    ``bins`` equal buckets from its smallest to its largest value, counted by ``torch.histc`` where the
    tensor lives. None when no value is finite (or there is none).

    ``add_histogram`` copies each tensor to numpy and counts it into ~1,500 exponential buckets
    (TensorFlow's layout) before dropping the empty ones: 2 ms per tensor at the ``ablation_base`` size,
    0.17 s per validation for its 78 tensors, as long as the validation forward itself.
    TensorBoard re-buckets what it draws anyway (about 30 bars), so equal buckets lose nothing it shows.
    A bucket's right edge is its ``bucket_limits`` entry, its left edge the previous one (``min`` for the
    first), as TensorBoard reads them.
    """
    values = tensor.detach().flatten().float()  # (n,)
    if values.numel() == 0:
        return None
    low, high, total, squares = _summary(values)  # one device sync
    if not all(math.isfinite(x) for x in (low, high, total, squares)):  # NaN or inf somewhere: drop them
        values = values[torch.isfinite(values)]
        if values.numel() == 0:
            return None
        low, high, total, squares = _summary(values)
    if low == high:  # one value: one bucket holds it
        limits, counts = [high], [float(values.numel())]
    else:
        counts = torch.histc(values, bins=bins, min=low, max=high).tolist()
        step = (high - low) / bins
        limits = [low + step * (i + 1) for i in range(bins - 1)] + [high]
    return {
        "min": low,
        "max": high,
        "num": values.numel(),
        "sum": total,
        "sum_squares": squares,
        "bucket_limits": limits,
        "bucket_counts": counts,
    }


class ParameterHistograms(Callback):
    """After every validation, a histogram of each weight and of its gradient (TensorBoard's
    HISTOGRAMS and DISTRIBUTIONS tabs): ``weights/<name>`` and ``grads/<name>``, one per parameter
    tensor (``model.layers.0.attn.q_proj.weight``, ...), so a layer whose weights drift or whose
    gradients vanish is seen at a glance. Rank 0 writes; turn it off with ``callbacks.histograms=null``.
    The buckets are counted where the tensors live (``histogram_fields``): no copy to the host.

    Lightning drops the gradients (``set_to_none``) right after each optimizer step, so by validation
    they are gone: each step, this keeps a reference to that step's gradient tensors (no copy; the
    next backward makes new ones), and the histograms show those of the last step, as clipped and
    used by the optimizer.
    """

    def __init__(self, bins: int = HISTOGRAM_BINS) -> None:
        if isinstance(bins, bool) or not (isinstance(bins, int) and bins >= 1):  # True is an int
            raise ValueError(f"bins={bins!r}: expected a positive integer")
        self.bins = bins
        # The parameters and their names, listed at the first step: walking the module tree every step
        # costs ~0.1 ms at the ablation_base size. The parameters of a fit stay the same objects (a
        # resume or a rollback loads values into them). Each step keeps only the list of their .grad
        # (None where a parameter has none): one C-level pass, names are paired with it at validation.
        self._names: list[str] = []
        self._params: list[Tensor] | None = None
        self._grads: list[Tensor | None] = []

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._names, self._params, self._grads = [], None, []

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if trainer.is_global_zero:
            if self._params is None:
                named = list(pl_module.named_parameters())
                self._names, self._params = [n for n, _ in named], [p for _, p in named]
            self._grads = list(map(_GRAD, self._params))

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        writers = [lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        if trainer.sanity_checking or not trainer.is_global_zero or not writers:
            return
        step = trainer.global_step
        grads = dict(zip(self._names, self._grads, strict=True))  # empty before the first step
        for name, param in pl_module.named_parameters():
            for kind, tensor in (("weights", param), ("grads", grads.get(name))):
                fields = histogram_fields(tensor, self.bins) if tensor is not None else None
                if fields is None:
                    continue
                for writer in writers:
                    writer.add_histogram_raw(f"{kind}/{name}", **fields, global_step=step)


def _markdown_quote(text: str) -> str:
    # Markdown would fold single newlines and read * and _ as emphasis: quote and escape every line.
    escaped = text.replace("\\", "\\\\").replace("*", "\\*").replace("_", "\\_")
    return "\n".join("> " + line for line in escaped.split("\n"))


def last_good_checkpoint(trainer: pl.Trainer) -> str:
    """ "the last good checkpoint is <path>" or "no checkpoint had been written yet": for the messages of
    the guards that stop a run before anything bad is saved."""
    ckpt = trainer.checkpoint_callback
    last = (ckpt.last_model_path or ckpt.best_model_path) if ckpt is not None else ""
    return f"the last good checkpoint is {last}" if last else "no checkpoint had been written yet"


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss; carries a message naming the last good checkpoint."""


class NonFiniteLossGuard(Callback):
    """Stops training when the loss turns NaN or inf, before anything non-finite is validated or saved.

    Each step's loss is kept (a reference, on the device) and all of them are checked together (one
    sync, agreed across ranks) every ``check_every_n_steps`` steps, before every validation, before
    every checkpoint write and at the end: per step that is a list append, where a finiteness test and
    an or took two tensor ops (~0.1 ms a step at the ablation_base size). Raising aborts the run
    without any further checkpoint, so last.ckpt and best.ckpt stay those written before the loss
    went bad.
    """

    def __init__(self, check_every_n_steps: int = 10) -> None:
        if check_every_n_steps < 1:
            raise ValueError(f"check_every_n_steps={check_every_n_steps!r}: expected a positive integer")
        self.check_every_n_steps = check_every_n_steps
        self._losses: list[Tensor] = []  # since the last check
        self._last_good_step = 0

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs  # {}: a skipped step
        if loss is None:
            return
        self._losses.append(loss.detach())
        if trainer.global_step % self.check_every_n_steps == 0:
            self._check(trainer)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._check(trainer)

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self._check(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check(trainer)

    def _check(self, trainer: pl.Trainer) -> None:
        bad = bool(self._losses) and not bool(torch.isfinite(torch.stack(self._losses)).all())  # a sync
        self._losses = []
        bad = trainer.strategy.reduce_boolean_decision(bad, all=False)  # any rank bad -> all stop
        if not bad:
            self._last_good_step = trainer.global_step
            return
        keep = last_good_checkpoint(trainer)
        raise NonFiniteLossError(
            f"non-finite training loss (NaN or inf) between steps {self._last_good_step} and "
            f"{trainer.global_step}; training stopped and {keep}. Try a lower optimizer.lr, a longer "
            f"scheduler.warmup_iters or trainer.gradient_clip_val, then resume with ckpt_path=..."
        )


class LogStepProgressBar(RichProgressBar):
    """Lightning's rich progress bar, reading the logged metrics only on logging steps.

    The stock bar converts every progress-bar metric to a Python number after every batch: on a GPU
    that is a device sync per step (the loss is still being computed). Here the numbers shown are
    refreshed every ``log_every_n_steps`` steps, and always outside training (validation results).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._shown: dict[str, Any] | None = None
        self._shown_step = -1

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        step = trainer.global_step
        stale = step != self._shown_step and step % trainer.log_every_n_steps == 0
        if self._shown is None or stale or not trainer.training:
            self._shown, self._shown_step = super().get_metrics(trainer, pl_module), step
        return self._shown

    # Training is max_steps steps of an endless stream: Lightning's "Epoch 0/-2" would be noise, so the
    # training bar is renamed once the stock hooks have created it.
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        self._name_train_bar()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        missing = self.train_progress_bar_id is None  # the stock hook creates it on a mid-epoch resume
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if missing:
            self._name_train_bar()

    def _name_train_bar(self) -> None:
        if self.progress is not None and self.train_progress_bar_id is not None:
            style = self.theme.description  # styled the way the stock bar styles its descriptions
            name = f"[{style}]train" if style else "train"
            self.progress.update(self.train_progress_bar_id, description=name)


class _AnalyticFlopsSummary(LightningModelSummary):
    """Lightning's model summary with its FLOPs taken from ``lit_llm.flops`` (training FLOPs per token
    of each listed module, and of the whole model) instead of its ``FlopCounterMode``."""

    def _flops(self, module: torch.nn.Module) -> int:
        from lit_llm.flops import module_flops_per_token

        return int(module_flops_per_token(module, self._model.config.context_length))

    @property
    def total_flops(self) -> int:
        return self._flops(self._model)

    @property
    def flop_counts(self) -> dict[str, dict[Any, int]]:
        modules = dict(self._model.named_modules())
        return {name: {"training per token": self._flops(modules[name])} for name in self.layer_names}


class ModelSummary(RichModelSummary):
    """Lightning's model table with a FLOPs column that is true: each row's training (forward +
    backward) FLOPs per token by ``lit_llm.flops`` (the count MFU uses), and their total.

    Lightning fills that column only by running an ``example_input_array`` through the model (under
    ``compile=true`` a compilation of its own, for a shape training never uses), and otherwise prints
    zeros and ``Total FLOPs: 0``.
    """

    def _summary(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> LightningModelSummary:
        return _AnalyticFlopsSummary(pl_module, max_depth=self._max_depth)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        if self._max_depth:
            context = pl_module.config.context_length
            rank_zero_info(f"FLOPs: training (forward + backward) FLOPs per token at context {context}")


class RunClock(Callback):
    """Prints how long the start took (process start to the first training step: imports, config, data
    checks, model, Lightning's set-up) and, at the end, the training loop's steps per second (from the
    first step to the last, validation and checkpoints included: what a user waits for)."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.first_step_at: float | None = None
        self.first_step = 0

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.first_step_at is None:
            self.first_step_at, self.first_step = time.perf_counter(), trainer.global_step
            rank_zero_info(f"first training step {self.first_step_at - self.started:.1f} s after start")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.first_step_at is None:
            return
        steps, seconds = trainer.global_step - self.first_step, time.perf_counter() - self.first_step_at
        rank_zero_info(
            f"training loop: {steps} steps in {seconds:.1f} s ({steps / max(seconds, 1e-9):.2f} it/s)"
        )


class FreezeStartupObjects(Callback):
    """Keeps the objects made before training out of Python's full garbage collections while it trains.

    Why: by the first step a run holds ~460K Python objects (torch, Lightning, Hydra, TensorBoard, the
    config), and a full (generation 2) collection walks every one of them: 0.19-0.2 s here, inside a
    training step. When the first one comes depends on everything the process allocated before: in
    ``python -m lit_llm.train experiment=ablation_base`` it fell before the first step, in
    ``benchmarks/bench_train.py``'s run of the same training (``build`` + ``fit``, as a user's own script
    or notebook does) at step 89 (traced with ``gc.callbacks``): 0.8 ms a step over its 250 timed
    steps. Those objects outlive training anyway, so ``gc.freeze`` moves them to the permanent generation
    when training starts, and full collections walk only what training made, wherever they fall;
    ``gc.unfreeze`` gives them back when training ends or fails. Cycles made during training are collected
    as before; garbage already there when training starts waits until it ends.

    ``gc.freeze`` is one switch for the whole process, not nested: a process that froze objects of its
    own before training (a server, a notebook) is left as it is, neither frozen further nor unfrozen.
    """

    def __init__(self) -> None:
        self._froze = False  # whether this callback froze, and so has to unfreeze

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if gc.get_freeze_count() == 0:
            gc.freeze()
            self._froze = True

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._unfreeze()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._unfreeze()

    def _unfreeze(self) -> None:
        if self._froze:
            gc.unfreeze()
            self._froze = False


def command_line_overrides() -> dict[str, object]:
    """The run's Hydra overrides (the command line, and in a multirun the values of this job) as
    ``{"override/optimizer.lr": 0.001, "override/experiment": "shakespeare", ...}``, numbers as numbers
    (TensorBoard sorts and plots those as such); empty outside a Hydra app."""
    from hydra.core.hydra_config import HydraConfig

    from lit_llm.cli import parse_override

    if not HydraConfig.initialized():
        return {}
    return {"override/" + key: value for key, value in map(parse_override, HydraConfig.get().overrides.task)}


class FinalMetricsHparams(Callback):
    """At the end of training, record the hyperparameters next to the validation metrics, final
    (``hp/val_loss``, ``hp/val_ppl``, ``hp/val_bpb``) and best of the run (``hp/best_val_loss``,
    ``hp/best_val_bpb``), so TensorBoard's HPARAMS tab compares the runs of a sweep at a glance. The
    hyperparameters include the command-line overrides of the run (``override/<key>``): in a
    ``-m`` sweep, the columns that differ between its jobs."""

    BEST = ("val/loss", "val/bpb")

    def __init__(self) -> None:
        self.best: dict[str, float] = {}

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        for name in self.BEST:
            value = trainer.callback_metrics.get(name)
            if value is None:
                continue
            value = float(value)  # once per validation
            if math.isfinite(value) and value < self.best.get(name, math.inf):
                self.best[name] = value

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = {
            "hp/" + name.replace("/", "_"): float(value)
            for name, value in trainer.callback_metrics.items()
            if name.startswith("val/") and "/loss_by_position/" not in name and math.isfinite(float(value))
        }
        if not metrics:
            return
        metrics.update({"hp/best_" + name.replace("/", "_"): value for name, value in self.best.items()})
        params = dict(pl_module.hparams)
        params.update(getattr(trainer.datamodule, "hparams", {}) or {})
        params["max_steps"] = trainer.max_steps
        params["world_size"] = trainer.world_size
        params.update(command_line_overrides())
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.log_hyperparams(params, metrics=metrics, step=trainer.global_step)
            else:
                logger.log_metrics(metrics, step=trainer.global_step)
            logger.save()
