"""GPU throughput of ``lit_llm.train`` (one CUDA device, bf16-mixed, eager and ``compile=true``) against
its PyTorch built-ins twin, generation speed with the KV cache, a bf16-vs-float32 numerics check, MFU
and the projected length of the TinyStories base run (327,680,000 tokens), in one run of at most
``--budget-s`` seconds (default 420: a 7-minute slot on a borrowed GPU).

Why one script: the other benchmarks time the code on the CPUs of a development machine; the run a user
waits for is on a GPU, where the questions differ (is the framework the bottleneck once kernels are
fast? does ``torch.compile`` pay? does bf16 change the training curve?). Every figure is measured in
this run, on this device; nothing is copied from elsewhere except the datasheet peaks of
``lit_llm.callbacks.PEAK_FLOPS`` (shown as n/a for a device the table does not know).

Needs, besides the project itself (run from the repository root, so ``lit_llm``, ``tokenizer`` and
``benchmarks`` import from the checkout): torch with CUDA, lightning, numpy, tensorboard, rich and
safetensors, plus three project dependencies that a bare GPU image may lack: hydra-core, omegaconf and
antlr4-python3-runtime (``pip install --no-index --find-links WHEELS hydra-core omegaconf
antlr4-python3-runtime`` on an offline machine). Nothing is downloaded: the training data are random
tokens written here.

Sections (one table at the end, one row per measurement):

* **(a) lit_llm.train**: the TinyStories base shape (vocab 10000, context 256, d_model 512, 4 layers,
  16 heads, d_ff 1344) composed by Hydra from ``experiment=tinystories trainer=gpu`` (bf16-mixed) and
  run through ``lit_llm.train.build(config)`` + ``trainer.fit``, eager and ``compile=true``, batch
  32 x 256, then 64 and 128 while tokens/s still rises (the best is marked). The data are random-walk
  token ids in a .npy array, read by ``ArrayDataModule``: the project's ``TokenWindowDataModule`` (its
  windows, loaders and pinning) with the download/tokenizer preparation replaced by two existing
  arrays. Validation (``limit_val_batches=0``), checkpoints and text samples are off: they are not
  per-step work, and a real run amortises them over 1000 steps.
* **(b) built-in twin**: the same shapes as ``benchmarks.bench_model.ReferenceLM`` (``nn.Linear``,
  ``F.rms_norm``, SDPA) with fused ``torch.optim.AdamW``, ``clip_grad_norm_`` and the same schedule in
  a bare loop (``bench_train.plain_run`` made device- and autocast-aware), same precision, same
  compile setting, same batches, in this run. Its loss is taken in float32, as ours is; where this
  device's autocast refuses ``view_as_complex`` of bfloat16, its RoPE computes in float32 as Llama's
  reference code does (results.json says which, as ``twin_rope``).
* **(c) generation**: ``lit_llm.generate.generate_ids`` with the KV cache, greedy, a 1-token prompt
  and context - 1 new tokens, batch 1 and 32, float32 and bfloat16 weights.
* **(d) numerics**: 200 steps of bf16-mixed and of float32 (``32-true``, ``matmul_precision=highest``)
  through ``lit_llm.train`` from the same seed (same initial weights, same batches); the largest
  difference of the smoothed training losses over the last 50 steps against a stated tolerance.

Each timed span starts after ``warmup`` steps (compilation included there), synchronises the device at
both ends and lasts a fixed time slice (or until the budget says stop, which the output says). MFU is
tokens/s x training FLOPs per token (``lit_llm.flops.estimate_flops_per_token``) over (1) a bf16
matmul rate measured here and (2) the datasheet dense bf16 peak. ``--dry-run`` runs the same code on
the CPU at tiny shapes (compile with the ``aot_eager`` backend: inductor's C++ build alone would take a
minute), to check the script, not the machine.

    python -m benchmarks.bench_gpu --out DIR [--budget-s 420] [--dry-run]

DIR receives results.json (every figure), log.txt (everything printed) and table.txt (the table, which
is also the last thing printed).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import logging
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn

from lit_llm.data.datamodule import TokenWindowDataModule
from lit_llm.data.prepare import Prepared
from lit_llm.flops import estimate_flops_per_token
from lit_llm.model import ModelConfig, TransformerLM

PROJECT_TOKENS = 327_680_000  # experiment=tinystories: 40000 steps x 32 x 256 tokens
NEEDS = ("hydra", "omegaconf", "antlr4")  # imported lazily, after this check, by lit_llm.train
INSTALL_HINT = (
    "pip install --no-index --find-links WHEELS hydra-core omegaconf antlr4-python3-runtime "
    "(see the docstring of benchmarks/bench_gpu.py)"
)

# The base shape comes from experiment=tinystories; the dry run shrinks it (special tokens dropped so that
# vocab 256 is allowed: the data are random ids, there is no text).
GPU_OVERRIDES = ["trainer=gpu"]
DRY_OVERRIDES = [
    "trainer=cpu",
    "trainer.precision=bf16-mixed",
    "data.vocab_size=256",
    "data.special_tokens=[]",
    "model.context_length=32",
    "model.d_model=64",
    "model.num_layers=2",
    "model.num_heads=4",
    "model.d_ff=128",
    "trainer.log_every_n_steps=2",
]


@dataclass(frozen=True)
class Plan:
    """How long each part may take; ``gpu()`` fits the 7-minute default budget, ``dry()`` a CPU check."""

    batches: tuple[int, ...]
    warmup_eager: int
    warmup_compiled: int
    max_timed_steps: int
    slice_s: float  # timed seconds per training run (the span ends earlier only at max_timed_steps)
    compile_prior_s: float  # guess for a compiled run before one has been measured (compile dominates)
    tail_s: float  # kept free for generation + numerics until they have run
    numerics_steps: int
    numerics_window: int  # trailing mean over this many steps
    numerics_compare: int  # the last this many smoothed losses are compared
    numerics_tolerance: float  # nats
    gen_batches: tuple[int, ...]
    gen_rounds: int
    matmul_n: int
    train_tokens: int
    compile_backend: str | None  # None: torch's default (inductor)

    @classmethod
    def gpu(cls) -> Plan:
        return cls(
            batches=(32, 64, 128),
            warmup_eager=10,
            warmup_compiled=15,
            max_timed_steps=5000,
            slice_s=5.0,
            compile_prior_s=75.0,
            tail_s=45.0,
            numerics_steps=200,
            numerics_window=10,
            numerics_compare=50,
            numerics_tolerance=0.05,
            gen_batches=(1, 32),
            gen_rounds=3,
            matmul_n=8192,
            train_tokens=8_000_000,
            compile_backend=None,
        )

    @classmethod
    def dry(cls) -> Plan:
        return cls(
            batches=(4, 8),
            warmup_eager=2,
            warmup_compiled=2,
            max_timed_steps=4,
            slice_s=2.0,
            compile_prior_s=8.0,
            tail_s=10.0,
            numerics_steps=20,
            numerics_window=5,
            numerics_compare=10,
            numerics_tolerance=0.05,
            gen_batches=(1, 4),
            gen_rounds=2,
            matmul_n=256,
            train_tokens=65_536,
            compile_backend="aot_eager",
        )


# -- time ------------------------------------------------------------------------------------------


def process_age_s() -> float:
    """Seconds since this process started (Linux /proc; 0 elsewhere), so that the budget counts the
    interpreter's start and the imports (torch, Lightning: seconds) too."""
    try:
        after_name = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        start_ticks = int(after_name[19])  # field 22, starttime, in clock ticks after boot
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


@dataclass
class Budget:
    """The run's wall-clock allowance, counted from the start of the process."""

    total_s: float
    started: float = field(default_factory=lambda: time.perf_counter() - process_age_s())

    @property
    def end(self) -> float:
        return self.started + self.total_s

    def left(self) -> float:
        return self.end - time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started


def sync(device: torch.device) -> None:
    """Wait for the device: a CUDA queue runs ahead of the host, so a clock read without it times the
    kernel launches, not the work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class SpanClock:
    """Times the steps from ``warmup`` on: ``max_steps`` of them, or fewer when the slice (or, earlier,
    the budget's ``hard_stop``) runs out. Shared by the Lightning callback and the bare loop, so both are
    timed by the same rule."""

    def __init__(
        self, device: torch.device, warmup: int, max_steps: int, slice_s: float, hard_stop: float
    ) -> None:
        self.device, self.warmup, self.max_steps = device, warmup, max_steps
        self.slice_s, self.hard_stop = slice_s, hard_stop
        self.t0: float | None = None
        self.t1: float | None = None
        self.step0 = 0
        self.steps = 0
        self.stop_at = math.inf
        self.cut_by_budget = False

    def begin(self, step: int) -> None:
        sync(self.device)
        self.t0, self.step0 = time.perf_counter(), step
        self.stop_at = min(self.t0 + self.slice_s, self.hard_stop)

    def after_step(self, steps_done: int) -> bool:
        """Call after each optimizer step (``steps_done`` in all); True once the span is over."""
        if self.t0 is None or self.t1 is not None:
            return self.t1 is not None
        timed = steps_done - self.step0
        if timed < self.max_steps and time.perf_counter() < self.stop_at:
            return False
        sync(self.device)
        self.t1, self.steps = time.perf_counter(), timed
        self.cut_by_budget = timed < self.max_steps and self.stop_at < self.t0 + self.slice_s
        return True

    @property
    def seconds(self) -> float:
        if self.t0 is None or self.t1 is None:
            raise RuntimeError("the timed span never started or never ended (the run stopped early)")
        return self.t1 - self.t0


class _SpanCallback(Callback):
    """Drives a ``SpanClock`` from Lightning's hooks and stops the fit when the span is over. Unlike
    ``bench_train.lightning_run`` (which times until ``fit`` returns, final checkpoint included), the
    span ends at the last timed step, so the figure is per-step throughput."""

    def __init__(self, clock: SpanClock) -> None:
        self.clock = clock

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.clock.t0 is None and trainer.global_step == self.clock.warmup:
            self.clock.begin(trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.clock.after_step(trainer.global_step):
            trainer.should_stop = True


class _LossRecorder(Callback):
    """Every training loss as a float (a device sync per step: for the numerics check only, never timed)."""

    def __init__(self, stop_at: float) -> None:
        self.losses: list[float] = []
        self.stop_at = stop_at
        self.cut_by_budget = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs  # {}: a step the guard skipped
        self.losses.append(math.nan if loss is None else float(loss.detach().float()))
        if time.perf_counter() > self.stop_at:
            self.cut_by_budget, trainer.should_stop = True, True


# -- data ------------------------------------------------------------------------------------------


class ArrayDataModule(TokenWindowDataModule):
    """``TokenWindowDataModule`` over two existing token arrays (.npy): the GPU machine is offline and
    random ids need no tokenizer, so ``prepare_data`` has nothing to do and ``setup`` points at the arrays.
    The windows, loaders and pinning are the project's own, as in a real run."""

    def __init__(self, train_tokens: str, val_tokens: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.array_paths = (Path(train_tokens), Path(val_tokens))

    def prepare_data(self) -> None:
        pass

    def setup(self, stage: str | None = None) -> None:
        if self.prepared is not None:
            return
        train, val = self.array_paths
        self.prepared = Prepared(
            tokenizer_dir=train.parent,
            train_tokens=train,
            val_tokens=val,
            val_bytes_per_token=float("nan"),
            fingerprint={"arrays": f"{train}:{train.stat().st_size}"},
        )
        self.train_tokens = np.load(train, mmap_mode="r")
        self.val_tokens = np.load(val, mmap_mode="r")

    @property
    def val_bytes_per_token(self) -> float | None:
        return None  # random ids are no text: no val/bpb


STEP_SIZES = np.arange(1, 9)
STEP_PROBS = (1 / STEP_SIZES) / (1 / STEP_SIZES).sum()  # Zipf over 8 step sizes


def walk_entropy() -> float:
    """Nats per token of the random walk below given the previous token: the floor of its loss."""
    return float(-(STEP_PROBS * np.log(STEP_PROBS)).sum())


def write_tokens(folder: Path, vocab_size: int, n_train: int, seed: int = 0) -> tuple[Path, Path]:
    """Train and valid token arrays, (n,) uint16: a random walk ``t[i] = t[i-1] + d[i] mod vocab`` with
    Zipf-distributed steps d in 1..8. Random (so throughput does not depend on content) yet learnable
    down to ``walk_entropy()`` nats, so the numerics check compares a loss that really falls."""
    rng = np.random.default_rng(seed)
    paths = []
    for name, n in (("train", n_train), ("valid", max(n_train // 64, 4096))):
        walk = rng.choice(STEP_SIZES, size=n, p=STEP_PROBS).cumsum() + rng.integers(vocab_size)
        path = folder / f"{name}.npy"
        np.save(path, (walk % vocab_size).astype(np.uint16))
        paths.append(path)
    return paths[0], paths[1]


# -- configs ---------------------------------------------------------------------------------------


def compose_config(root: Path, overrides: list[str], tokens: tuple[Path, Path]) -> dict[str, Any]:
    """The validated config of ``experiment=tinystories`` + ``overrides``, composed by Hydra from configs/
    as ``bench_train.shape_config`` does (that one fixes its shapes and the CPU trainer), every path
    under ``root``, the data module switched to ``ArrayDataModule`` over ``tokens`` afterwards (its two
    keys are not data-config keys, so validation would refuse them)."""
    from hydra import compose, initialize_config_dir

    from benchmarks.bench_train import CONFIGS
    from lit_llm.config_validation import resolve, validate_config

    full = [
        "experiment=tinystories",
        f"paths.root_dir={root}",
        f"paths.output_dir={root / 'run'}",
        "callbacks.text_samples=null",
        "callbacks.model_checkpoint=null",
        "trainer.limit_val_batches=0",
        *overrides,
    ]
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        config = validate_config(resolve(compose("train", overrides=full)))
    config["data"]["_target_"] = "benchmarks.bench_gpu.ArrayDataModule"
    config["data"]["train_tokens"], config["data"]["val_tokens"] = str(tokens[0]), str(tokens[1])
    return config


@contextlib.contextmanager
def compile_backend(backend: str | None) -> Iterator[None]:
    """Within: ``torch.compile`` (also as called by ``nn.Module.compile``) defaults to ``backend``. Only
    the dry run sets one; on the GPU torch's own default (inductor) is what is measured."""
    if backend is None:
        yield
        return
    original = torch.compile

    def patched(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("backend", backend)
        return original(*args, **kwargs)

    torch.compile = patched  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.compile = original  # type: ignore[assignment]


def _fresh_compile_state() -> None:
    """Forget earlier compilations: a new model at a new batch size would otherwise hit dynamo's cache of
    the same code objects and be recompiled with dynamic shapes, which no single real run sees."""
    torch._dynamo.reset()


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# -- (a) and (b): training -------------------------------------------------------------------------


def fit_timed(config: dict[str, Any], run_dir: Path, clock: SpanClock) -> dict[str, Any]:
    """``lit_llm.train.build(config)`` + ``trainer.fit``, as ``python -m lit_llm.train`` runs it, timed by
    ``clock`` (which holds the figures); returns the seconds before the timed span (build, compile,
    warmup)."""
    from lit_llm.train import build

    config = copy.deepcopy(config)
    config["paths"]["output_dir"] = str(run_dir)
    config["logger"]["tensorboard"]["save_dir"] = str(run_dir)
    started = time.perf_counter()
    trainer, module, datamodule = build(config)
    trainer.callbacks.insert(0, _SpanCallback(clock))
    trainer.fit(module, datamodule=datamodule, weights_only=True)
    del trainer, module, datamodule
    return {"setup_s": (clock.t0 or started) - started}


class _Float32RoPE(nn.Module):
    """Llama's reference RoPE casts to float32 before ``view_as_complex`` (which has no bfloat16 form);
    wraps ``ReferenceLM``'s RoPE that way where autocast on this device does not do it already."""

    def __init__(self, rope: nn.Module) -> None:
        super().__init__()
        self.rope = rope

    def forward(self, x: Tensor) -> Tensor:  # (b, h, s, d)
        return self.rope(x.float()).type_as(x)


def _autocast_rope_ok(device: torch.device) -> bool:
    """Whether ``view_as_complex`` of a bfloat16 tensor works under this device's autocast (the CPU's
    casts it to float32; CUDA's may refuse it)."""
    try:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            torch.view_as_complex(torch.zeros(1, 2, device=device, dtype=torch.bfloat16))
        return True
    except RuntimeError:
        return False


def twin_timed(
    config: dict[str, Any], device: torch.device, clock: SpanClock, compile_: bool
) -> dict[str, Any]:
    """The built-in twin of ``bench_train.plain_run`` (``ReferenceLM``, ``F.cross_entropy``, fused
    ``torch.optim.AdamW`` with the same decay groups, ``clip_grad_norm_``, the same warmup-cosine
    schedule, random windows of the same token file), on ``device`` and under bf16 autocast when the
    config's precision is bf16-mixed (forward and loss inside it, backward outside: what Lightning's
    plugin does). plain_run itself keeps data and model on the CPU and has no autocast."""
    from benchmarks.bench_model import ReferenceLM
    from lit_llm.config_schema import SchedulerConfig
    from lit_llm.data.batch import get_batch
    from lit_llm.module import parameter_groups, schedule_factor

    started = time.perf_counter()
    torch.manual_seed(config["seed"])
    if device.type == "cuda":
        torch.set_float32_matmul_precision(config["matmul_precision"])  # as build() does
    bf16 = str(config["trainer"]["precision"]).startswith("bf16")
    steps, log_every = config["trainer"]["max_steps"], config["trainer"]["log_every_n_steps"]
    clip = config["trainer"]["gradient_clip_val"]
    opt_cfg, sched_cfg = config["optimizer"], config["scheduler"]
    train_tokens = np.load(config["data"]["train_tokens"], mmap_mode="r")
    batch, context = config["data"]["batch_size"], config["model"]["context_length"]
    model_config = ModelConfig.from_dict(config["model"])
    fields = model_config.to_dict()
    model = ReferenceLM(
        **{k: fields[k] for k in ("vocab_size", "context_length", "d_model", "num_layers", "num_heads")},
        d_ff=model_config.resolved_d_ff,
        rope_theta=model_config.rope_theta,
    )
    rope = "as written"
    if bf16 and not _autocast_rope_ok(device):
        wrapped = _Float32RoPE(model.layers[0].rope)  # one RoPE module shared by every block
        for layer in model.layers:
            layer.rope = wrapped
        rope = "float32 (Llama reference style)"
    model.to(device)
    groups = parameter_groups(model, opt_cfg["weight_decay"])
    betas, eps = tuple(opt_cfg["betas"]), opt_cfg["eps"]
    optimizer = torch.optim.AdamW(groups, lr=opt_cfg["lr"], betas=betas, eps=eps, fused=True)
    params = [p for g in groups for p in g["params"]]
    forward: Callable[[Tensor], Tensor] = torch.compile(model) if compile_ else model
    lr, min_lr = opt_cfg["lr"], sched_cfg["min_lr"]
    warm, cycle = SchedulerConfig(**sched_cfg).warmup_steps, sched_cfg["cosine_cycle_iters"]
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda k: schedule_factor(k, lr, min_lr, warm, cycle)
    )
    rng = np.random.default_rng(config["seed"])
    for step in range(steps):
        if step == clock.warmup:
            clock.begin(step)
        x, y = get_batch(train_tokens, batch, context, device, rng)  # (batch, context) int64 each
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = forward(x)  # (batch, context, vocab)
            # In float32, as lit_llm.losses.cross_entropy computes it (CUDA's autocast would too).
            loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if (step + 1) % log_every == 0:
            loss.item()  # what a logging loop reads
        if clock.after_step(step + 1):
            break
    del model, optimizer, forward
    return {"setup_s": (clock.t0 or started) - started, "twin_rope": rope}


@dataclass
class Context:
    """What every section needs: the device, the plan, the budget, the results so far and their files."""

    device: torch.device
    plan: Plan
    budget: Budget
    out: Path
    work: Path
    tokens: tuple[Path, Path]
    overrides: list[str]
    model_config: ModelConfig
    flops_per_token: float
    results: dict[str, Any]
    errors: list[dict[str, str]] = field(default_factory=list)
    tail_done: bool = False  # generation and numerics have run: nothing more to keep time for

    def reserve(self) -> float:
        return 3.0 + (0.0 if self.tail_done else self.plan.tail_s)

    def save(self) -> None:
        """results.json and table.txt after every section: a run killed at the deadline still leaves its
        figures and its table."""
        finish_rows(self)
        self.results["table"] = render_table(self)
        self.results["errors"] = self.errors
        self.results["meta"]["elapsed_s"] = round(self.budget.elapsed(), 2)
        (self.out / "results.json").write_text(json.dumps(self.results, indent=2, allow_nan=False) + "\n")
        (self.out / "table.txt").write_text(self.results["table"] + "\n")

    def fail(self, where: str, exc: BaseException) -> None:
        self.errors.append({"where": where, "error": f"{type(exc).__name__}: {exc}"})
        print(f"error in {where}: {type(exc).__name__}: {exc}")
        print(traceback.format_exc())
        _free(self.device)

    def stamp(self) -> str:
        """``[  12.3 s]``: when a line was printed, counted as the budget counts."""
        return f"[{self.budget.elapsed():6.1f} s]"

    def skip(self, what: str, needs_s: float) -> None:
        line = f"{what}: the budget has {self.budget.left():.0f} s left and this needs ~{needs_s:.0f} s"
        self.results["skipped"].append(line)
        print(f"{self.stamp()} skipped: {line}")


def train_pair(ctx: Context, batch: int, compile_: bool) -> float | None:
    """(a) and (b) at one batch size and compile setting; returns the wall seconds the pair took, or None
    where (a) failed. Rows go to results["sections"]."""
    plan = ctx.plan
    mode = "compile" if compile_ else "eager"
    warmup = plan.warmup_compiled if compile_ else plan.warmup_eager
    overrides = [
        *ctx.overrides,
        f"data.batch_size={batch}",
        f"trainer.max_steps={warmup + plan.max_timed_steps}",
        f"compile={str(compile_).lower()}",
    ]
    started = time.perf_counter()
    try:
        config = compose_config(ctx.work, overrides, ctx.tokens)
    except Exception as exc:
        ctx.fail(f"config {mode} batch {batch}", exc)
        return None
    precision = str(config["trainer"]["precision"])
    figures: dict[str, dict[str, Any]] = {}
    runs: dict[str, Callable[[SpanClock], dict[str, Any]]] = {
        "a_lit_llm_train": lambda clock: fit_timed(config, ctx.work / f"run-{mode}-{batch}", clock),
        "b_builtin_twin": lambda clock: twin_timed(config, ctx.device, clock, compile_),
    }
    for section, run in runs.items():
        clock = SpanClock(
            ctx.device, warmup, plan.max_timed_steps, plan.slice_s, ctx.budget.end - ctx.reserve()
        )
        try:
            if compile_:
                _fresh_compile_state()
            with compile_backend(plan.compile_backend if compile_ else None):
                extra = run(clock)
            seconds = clock.seconds
        except Exception as exc:  # one failing run (an OOM at batch 128) must not lose the others
            ctx.fail(f"{section} {mode} batch {batch}", exc)
            if section == "a_lit_llm_train":
                return None
            continue
        finally:
            _free(ctx.device)
        tokens = clock.steps * batch * config["model"]["context_length"]
        row = {
            "run": "lit_llm.train" if section.startswith("a") else "built-in twin",
            "mode": mode,
            "batch": batch,
            "precision": precision,
            "steps_timed": clock.steps,
            "seconds": round(seconds, 4),
            "tokens": tokens,
            "tokens_per_s": tokens / seconds,
            "cut_by_budget": clock.cut_by_budget,
            **extra,
        }
        figures[section] = row
        ctx.results["sections"][section].append(row)
        note = " (timing cut short by the budget)" if clock.cut_by_budget else ""
        print(
            f"{ctx.stamp()} ({section[0]}) {row['run']:<14} {mode:<7} batch {batch:>3}: "
            f"{row['tokens_per_s']:>12,.0f} tokens/s"
            f" ({clock.steps} steps in {seconds:.2f} s after {row['setup_s']:.1f} s of set-up){note}"
        )
    ctx.save()
    return time.perf_counter() - started


def batch_sweep(ctx: Context, compile_: bool, first_wall: float | None) -> None:
    """After the first batch size: the next ones while lit_llm.train's tokens/s rose at the last one and
    the budget holds a pair like the last (1.3 x its wall time, compilation included)."""
    last_wall = first_wall
    batches = ctx.plan.batches
    for previous, batch in zip(batches, batches[1:], strict=False):
        mode = "compile" if compile_ else "eager"
        ours = {
            r["batch"]: r["tokens_per_s"]
            for r in ctx.results["sections"]["a_lit_llm_train"]
            if r["mode"] == mode
        }
        before = [b for b in batches if b < previous and b in ours]
        if previous not in ours or last_wall is None:
            return
        if before and ours[previous] <= ours[before[-1]]:
            print(f"{ctx.stamp()} {mode}: tokens/s stopped rising at batch {previous}; no larger batch")
            return
        needs = 1.3 * last_wall
        if ctx.budget.left() < needs + ctx.reserve():
            ctx.skip(f"(a)+(b) {mode} batch {batch}", needs)
            return
        last_wall = train_pair(ctx, batch, compile_)


# -- (c): generation -------------------------------------------------------------------------------


def generation_section(ctx: Context) -> None:
    """Greedy decoding with the KV cache of a randomly initialised base model: a 1-token prompt plus
    context - 1 new tokens fill the context exactly, so no step crops the window. Runners are timed in
    interleaved rounds; tokens/s = batch x new tokens / the median run."""
    from lit_llm.generate import generate_ids

    device, plan = ctx.device, ctx.plan
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # the training default (matmul_precision)
    torch.manual_seed(0)
    model = TransformerLM.from_config(ctx.model_config).to(device).eval()
    models = {"float32": model, "bfloat16": copy.deepcopy(model).to(torch.bfloat16)}
    new_tokens = ctx.model_config.context_length - 1

    def runner(m: TransformerLM, batch: int) -> Callable[[], None]:
        def run() -> None:
            for _ in generate_ids(m, [0], num_samples=batch, max_new_tokens=new_tokens, temperature=0.0):
                pass  # (batch,) ids per step, left on the device
            sync(device)

        return run

    runners = {(dtype, b): runner(m, b) for b in plan.gen_batches for dtype, m in models.items()}
    times: dict[tuple[str, int], list[float]] = {key: [] for key in runners}
    for run in runners.values():
        run()  # warm-up: kernels, allocator
    cut = False
    for round_ in range(plan.gen_rounds):
        if round_ and ctx.budget.left() < plan.tail_s / 2 + 3:  # leave numerics its share
            cut = True
            break
        for key, run in runners.items():
            t0 = time.perf_counter()
            run()
            times[key].append(time.perf_counter() - t0)
    for (dtype, batch), ts in times.items():
        tokens = batch * new_tokens
        row = {
            "run": f"generate, KV cache, {dtype}",
            "mode": "eager",
            "batch": batch,
            "new_tokens": new_tokens,
            "rounds": len(ts),
            "seconds_median": statistics.median(ts),
            "tokens_per_s": tokens / statistics.median(ts),
            "tokens_per_s_best": tokens / min(ts),
            "cut_by_budget": cut,
        }
        ctx.results["sections"]["c_generation"].append(row)
        print(
            f"{ctx.stamp()} (c) {row['run']:<28} batch {batch:>3}: {row['tokens_per_s']:>10,.0f} tokens/s"
            f" (median of {len(ts)} runs of {new_tokens} steps)"
        )
    del models, model
    _free(device)
    ctx.save()


# -- (d): numerics ---------------------------------------------------------------------------------


def fit_losses(config: dict[str, Any], run_dir: Path, stop_at: float) -> _LossRecorder:
    """Every training loss of a ``lit_llm.train`` fit (build + fit, as the command runs it)."""
    from lit_llm.train import build

    config = copy.deepcopy(config)
    config["paths"]["output_dir"] = str(run_dir)
    config["logger"]["tensorboard"]["save_dir"] = str(run_dir)
    trainer, module, datamodule = build(config)
    recorder = _LossRecorder(stop_at)
    trainer.callbacks.insert(0, recorder)
    trainer.fit(module, datamodule=datamodule, weights_only=True)
    return recorder


def trailing_mean(values: np.ndarray, window: int) -> np.ndarray:
    """(n,) -> (n - window + 1,): the mean of each run of ``window`` consecutive values."""
    return np.convolve(values, np.ones(window) / window, mode="valid")


def numerics_section(ctx: Context) -> None:
    """bf16-mixed against float32 (``32-true`` with ``matmul_precision=highest``: no TF32 either), the
    same seed, so the same initial weights and the same batches; eager, the first batch size."""
    plan = ctx.plan
    batch = plan.batches[0]
    steps = plan.numerics_steps
    common = [*ctx.overrides, f"data.batch_size={batch}", f"trainer.max_steps={steps}", "compile=false"]
    variants = {
        "bf16-mixed": ["trainer.precision=bf16-mixed", "matmul_precision=high"],
        "float32": ["trainer.precision=32-true", "matmul_precision=highest"],
    }
    losses: dict[str, list[float]] = {}
    cut = False
    for name, extra in variants.items():
        config = compose_config(ctx.work, [*common, *extra], ctx.tokens)
        recorder = fit_losses(config, ctx.work / f"numerics-{name}", ctx.budget.end - 3.0)
        losses[name] = recorder.losses
        cut = cut or recorder.cut_by_budget
        _free(ctx.device)
    done = min(len(v) for v in losses.values())
    if done == 0:
        raise RuntimeError("numerics: no training step finished within the budget")
    window = min(plan.numerics_window, done)
    bf16, fp32 = (np.asarray(losses[k][:done]) for k in ("bf16-mixed", "float32"))
    smooth_bf16, smooth_fp32 = trailing_mean(bf16, window), trailing_mean(fp32, window)
    compare = min(plan.numerics_compare, len(smooth_bf16))
    diff = np.abs(smooth_bf16 - smooth_fp32)[-compare:]
    max_diff = float(diff.max())
    result = {
        "batch": batch,
        "steps": steps,
        "steps_done": done,
        "cut_by_budget": cut,
        "smoothing": f"trailing mean of {window} steps",
        "compared_last_steps": compare,
        "max_abs_loss_diff": max_diff,
        "max_abs_raw_loss_diff_compared": float(np.abs(bf16 - fp32)[-compare:].max()),
        "tolerance": plan.numerics_tolerance,
        "passed": bool(max_diff <= plan.numerics_tolerance),
        "first_loss": {"bf16-mixed": float(bf16[0]), "float32": float(fp32[0])},
        "last_smoothed_loss": {"bf16-mixed": float(smooth_bf16[-1]), "float32": float(smooth_fp32[-1])},
        "loss_floor_nats": walk_entropy(),
        "losses": {k: [round(v, 5) for v in vals] for k, vals in losses.items()},
    }
    ctx.results["sections"]["d_numerics"] = result
    print(
        f"{ctx.stamp()} (d) numerics: {done} steps, loss {bf16[0]:.3f} -> {smooth_bf16[-1]:.3f} (bf16), "
        f"{fp32[0]:.3f} -> {smooth_fp32[-1]:.3f} (float32); max |difference| of the {result['smoothing']} "
        f"over the last {compare} steps {max_diff:.4f} nats (tolerance {plan.numerics_tolerance}): "
        + ("pass" if result["passed"] else "FAIL")
        + (" (cut short by the budget)" if cut else "")
    )
    ctx.save()


# -- matmul rate, table ----------------------------------------------------------------------------


def matmul_rate(device: torch.device, n: int, seconds: float = 1.0) -> tuple[float, str]:
    """(best FLOP/s, dtype) of square n x n matmuls: bf16 on a GPU (what bf16-mixed training's matmuls
    run at; CUDA events around 10 back-to-back products), float32 on the CPU
    (``bench_model.matmul_peak_flops``)."""
    if device.type != "cuda":
        from benchmarks.bench_model import matmul_peak_flops

        return matmul_peak_flops(n=n, reps=10), "float32"
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    c = torch.empty(n, n, device=device, dtype=torch.bfloat16)
    reps, best = 10, 0.0
    for _ in range(3):
        torch.mm(a, b, out=c)
    sync(device)
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            torch.mm(a, b, out=c)
        end.record()
        end.synchronize()
        best = max(best, reps * 2 * n**3 / (start.elapsed_time(end) / 1e3))
    del a, b, c
    return best, "bfloat16"


def _hours(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60}h{minutes % 60:02d}m"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def finish_rows(ctx: Context) -> None:
    """Add MFU, the ratio to the twin and the projection to every training row; mark the best batch."""
    peak = ctx.results["peak"]
    measured, sheet = peak["measured_matmul_flops"], peak["datasheet_bf16_flops"]
    sections = ctx.results["sections"]
    twin = {(r["mode"], r["batch"]): r["tokens_per_s"] for r in sections["b_builtin_twin"]}
    for key in ("a_lit_llm_train", "b_builtin_twin"):
        for row in sections[key]:
            rate = row["tokens_per_s"] * ctx.flops_per_token
            row["mfu_measured"] = rate / measured
            row["mfu_datasheet"] = rate / sheet if sheet else None
            other = twin.get((row["mode"], row["batch"]))
            row["ratio_to_twin"] = row["tokens_per_s"] / other if other else None
            row["projected_s"] = PROJECT_TOKENS / row["tokens_per_s"]
    best: dict[str, Any] = {}
    for mode in ("eager", "compile"):
        rows = [r for r in sections["a_lit_llm_train"] if r["mode"] == mode]
        if rows:
            top = max(rows, key=lambda r: r["tokens_per_s"])
            best[mode] = {"batch": top["batch"], "tokens_per_s": top["tokens_per_s"]}
            for r in rows:
                r["best"] = r is top
    ctx.results["best"] = best
    for row in sections["c_generation"]:
        row.update(mfu_measured=None, mfu_datasheet=None, ratio_to_twin=None, projected_s=None)


def render_table(ctx: Context) -> str:
    """The one table: a row per measurement, then what its columns mean and the numerics verdict."""
    res = ctx.results
    peak, meta = res["peak"], res["meta"]
    header = (
        f"{'':2}{'run':<30}{'mode':<8}{'batch':>6}{'tokens/s':>13}{'MFU meas':>10}{'MFU sheet':>10}"
        f"{'vs twin':>9}{'327.68M tok':>13}  note"
    )
    lines = [
        f"bench_gpu on {meta['device_name']} (torch {meta['torch']}), {meta['date']}"
        + (" -- DRY RUN (CPU, tiny shapes)" if meta["dry_run"] else ""),
        header,
        "-" * len(header),
    ]
    sections = res["sections"]
    order = {"eager": 0, "compile": 1}
    for key in ("a_lit_llm_train", "b_builtin_twin", "c_generation"):
        for row in sorted(sections[key], key=lambda r: (order[r["mode"]], r["batch"])):
            notes = [n for n, on in (("best", row.get("best")), ("*budget", row["cut_by_budget"])) if on]
            ratio = "n/a" if row["ratio_to_twin"] is None else f"{row['ratio_to_twin']:.2f}"
            projected = "n/a" if row["projected_s"] is None else _hours(row["projected_s"])
            lines.append(
                f"{key[0]:<2}{row['run']:<30}{row['mode']:<8}{row['batch']:>6}{row['tokens_per_s']:>13,.0f}"
                f"{_pct(row['mfu_measured']):>10}{_pct(row['mfu_datasheet']):>10}{ratio:>9}{projected:>13}"
                f"  {' '.join(notes)}".rstrip()
            )
    sheet = peak["datasheet_bf16_flops"]
    n = peak["matmul_n"]
    lines += [
        "-" * len(header),
        f"MFU meas: vs the best {peak['matmul_dtype']} {n}x{n} matmul measured here, "
        f"{peak['measured_matmul_flops'] / 1e12:.2f} TFLOP/s;",
        "MFU sheet: vs the datasheet dense bf16 peak, "
        + (f"{sheet / 1e12:.1f} TFLOP/s" if sheet else "n/a (no datasheet figure for this device)"),
        f"FLOPs: {ctx.flops_per_token / 1e6:.2f} M per token (training, lit_llm.flops). 327.68M tok: time "
        "for experiment=tinystories's",
        "  327,680,000 tokens at that rate (steps only: no validation, checkpoints or start-up).",
        "vs twin: tokens/s over the built-in twin's at the same mode and batch. *budget: timing cut short.",
    ]
    numerics = sections.get("d_numerics")
    if numerics:
        lines.append(
            f"d numerics: bf16-mixed vs float32, {numerics['steps_done']} steps; max |loss difference| "
            f"over the last {numerics['compared_last_steps']} steps"
            f"\n  ({numerics['smoothing']}): {numerics['max_abs_loss_diff']:.4f} nats, "
            f"tolerance {numerics['tolerance']} nats: "
            + ("pass" if numerics["passed"] else "FAIL")
            + (
                f" (cut short by the budget: {numerics['steps_done']} of {numerics['steps']} steps)"
                if numerics["cut_by_budget"]
                else ""
            )
        )
    for line in res["skipped"]:
        lines.append(f"skipped: {line}")
    for error in ctx.errors:
        lines.append(f"ERROR in {error['where']}: {error['error'][:200]}")
    return "\n".join(lines)


# -- output ----------------------------------------------------------------------------------------


class _Tee:
    """A text stream writing to the terminal and to log.txt (everything else is the terminal's)."""

    def __init__(self, stream: TextIO, log: TextIO) -> None:
        self.stream, self.log = stream, log

    def write(self, text: str) -> int:
        self.stream.write(text)
        self.log.write(text)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()
        self.log.flush()

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, encoding, ...: the terminal's
        return getattr(self.stream, name)


@contextlib.contextmanager
def tee_output(log_path: Path) -> Iterator[None]:
    """Within: stdout, stderr and the logging handlers that write to them (Lightning's, made at import)
    also write to ``log_path``."""
    with open(log_path, "w", encoding="utf-8") as log:
        saved = sys.stdout, sys.stderr
        tees = {id(sys.stdout): _Tee(sys.stdout, log), id(sys.stderr): _Tee(sys.stderr, log)}
        loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
        moved = []
        for logger in loggers:
            for handler in getattr(logger, "handlers", []):
                if isinstance(handler, logging.StreamHandler) and id(handler.stream) in tees:
                    moved.append((handler, handler.setStream(tees[id(handler.stream)])))
        sys.stdout, sys.stderr = tees[id(saved[0])], tees[id(saved[1])]
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            sys.stdout, sys.stderr = saved
            for handler, stream in moved:
                handler.setStream(stream)


def _missing_dependencies() -> list[str]:
    import importlib.util

    return [name for name in NEEDS if importlib.util.find_spec(name) is None]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def run(args: argparse.Namespace, out: Path) -> int:
    """Every section in budget order: the first batch size eager and compiled, generation and numerics
    (all four sections exist before anything optional), then the larger batch sizes as time allows."""
    from lit_llm.callbacks import lookup_peak_flops

    plan = Plan.dry() if args.dry_run else Plan.gpu()
    budget = Budget(args.budget_s)
    if args.dry_run:
        torch.set_num_threads(1)
        device = torch.device("cpu")
    elif torch.cuda.is_available():
        device = torch.device("cuda", 0)
    else:
        print("no CUDA device: run with --dry-run to check the script on the CPU")
        return 2
    name = device_name(device)
    meta = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "lightning": L.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "device_name": name,
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "load_average_start": list(os.getloadavg()),
        "dry_run": args.dry_run,
        "budget_s": args.budget_s,
        "compile_backend": plan.compile_backend or "inductor (torch default)",
        "threads": torch.get_num_threads(),
    }
    print(
        f"torch {meta['torch']} (CUDA {meta['cuda']}), lightning {meta['lightning']}, python {meta['python']}"
    )
    print(f"device: {name}")
    print(f"date: {meta['date']}; load average: {meta['load_average_start']}")
    print(f"budget: {args.budget_s:.0f} s; output: {out}" + ("; DRY RUN" if args.dry_run else ""))

    overrides = DRY_OVERRIDES if args.dry_run else GPU_OVERRIDES
    with tempfile.TemporaryDirectory(prefix="bench_gpu-") as tmp:
        work = Path(tmp)
        probe = compose_config(work, overrides, (work / "train.npy", work / "valid.npy"))
        model_config = ModelConfig.from_dict(probe["model"])
        tokens = write_tokens(work, model_config.vocab_size, plan.train_tokens)
        flops = estimate_flops_per_token(model_config, model_config.context_length)
        rate, dtype = matmul_rate(device, plan.matmul_n)
        sheet = lookup_peak_flops(name, "bf16") if device.type == "cuda" else None
        results: dict[str, Any] = {
            "meta": meta,
            "model": {**model_config.to_dict(), "d_ff": model_config.resolved_d_ff},
            "flops_per_token": flops,
            "project_tokens": PROJECT_TOKENS,
            "data": {"kind": "random walk, Zipf steps 1..8", "train_tokens": plan.train_tokens},
            "peak": {
                "measured_matmul_flops": rate,
                "matmul_dtype": dtype,
                "matmul_n": plan.matmul_n,
                "datasheet_bf16_flops": sheet,
                "datasheet_source": "lit_llm.callbacks.PEAK_FLOPS",
            },
            "plan": dict(vars(plan)),
            "sections": {"a_lit_llm_train": [], "b_builtin_twin": [], "c_generation": [], "d_numerics": None},
            "skipped": [],
        }
        if device.type == "cpu":  # the throughput callback would otherwise measure a CPU matmul every fit
            overrides = [*overrides, f"callbacks.throughput.peak_flops={rate}"]
        ctx = Context(device, plan, budget, out, work, tokens, overrides, model_config, flops, results)
        print(
            f"model {results['model']}; {flops / 1e6:.1f} MFLOP/token; {dtype} matmul {rate / 1e12:.2f} "
            f"TFLOP/s measured, datasheet " + (f"{sheet / 1e12:.1f} TFLOP/s" if sheet else "n/a")
        )
        ctx.save()

        first = plan.batches[0]
        walls: dict[bool, float | None] = {}
        for compile_ in (False, True):
            needs = 2 * plan.compile_prior_s if compile_ else 0.0
            if compile_ and budget.left() < needs + ctx.reserve():
                ctx.skip(f"(a)+(b) compile batch {first}", needs)
                walls[compile_] = None
                continue
            walls[compile_] = train_pair(ctx, first, compile_)
        for section, fn in (("c_generation", generation_section), ("d_numerics", numerics_section)):
            try:
                fn(ctx)
            except Exception as exc:
                ctx.fail(section, exc)
        ctx.tail_done = True
        for compile_ in (False, True):
            batch_sweep(ctx, compile_, walls[compile_])

        if budget.left() > 5:  # a second burst: clocks may have settled after the warm-up of training
            again, _ = matmul_rate(device, plan.matmul_n, seconds=0.5)
            results["peak"]["measured_matmul_flops"] = max(rate, again)
        meta["load_average_end"] = list(os.getloadavg())
        ctx.save()
    print()
    print(results["table"], flush=True)
    return 1 if ctx.errors else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for results.json, log.txt, table.txt")
    parser.add_argument("--budget-s", type=float, default=420.0, help="wall-clock allowance (default 420)")
    parser.add_argument("--dry-run", action="store_true", help="the same code on the CPU at tiny shapes")
    args = parser.parse_args(argv)
    missing = _missing_dependencies()
    if missing:
        print(f"missing {', '.join(missing)}: {INSTALL_HINT}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    with tee_output(args.out / "log.txt"):
        return run(args, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
