"""The schema of ``python -m lit_llm.train``'s config: one dataclass per group, a type, a default and a
docstring per field. It is the only place where the keys, their defaults and their ranges are written.

- **Defaults.** Each class's defaults are stored in Hydra's ConfigStore as ``schema/<group>``, and each
  group file starts from them (``defaults: [/schema/optimizer@_here_, _self_]``), so a YAML file holds
  only what differs and the interpolations that wire the groups together. ``--cfg job`` shows them all.
- **Validation.** Constructing a class checks every field's type and range and raises one ``ValueError``
  listing every bad field (``"lr=-1: expected a positive number"``), as ``ModelConfig`` does;
  ``lit_llm.config_validation`` prefixes the group (``optimizer.lr=-1: ...``) and adds what no single
  group can see (unknown and missing keys, checks across groups).
- **Use.** The code reads its settings through them (``OptimizerConfig(**hparams["optimizer"]).lr``).

The model group's schema is ``lit_llm.model.ModelConfig``, the class that travels inside checkpoints.
The trainer group is Lightning's: ``TrainerConfig`` holds only the Trainer arguments whose meaning this
project fixes; any other Trainer argument may be added, and Lightning checks its own (accelerator,
devices, strategy, precision, ...) when the Trainer is built, before any data work.

Hydra composes the defaults untyped (the stored nodes are plain dicts): a typed merge would refuse a bad
value at composition in a multi-line Hydra error, before the one-line report of every problem could be
made, and it cannot hold the frozen ``ModelConfig``.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from lit_llm.model.config import ModelConfig
from tokenizer.files import EOT

MISSING = "???"  # Hydra's "no default: must be set"


def _type_ok(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, arg) for arg in typing.get_args(tp))
    if origin is list:
        (item,) = typing.get_args(tp)
        return isinstance(value, list | tuple) and all(_type_ok(v, item) for v in value)
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


_NAMES = {int: ("an integer", "integers"), float: ("a number", "numbers"), str: ("a string", "strings")}
_NAMES |= {bool: ("true or false", "booleans"), type(None): ("null", "nulls")}


def _describe(tp: Any) -> str:
    """``int | None`` -> "an integer or null"."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        return "a list of " + _NAMES[typing.get_args(tp)[0]][1]
    return _NAMES[tp][0]


def _number(v: Any) -> bool:
    return _type_ok(v, float) and math.isfinite(v)


def _positive(v: Any) -> bool:
    return _number(v) and v > 0


def _at_least(v: Any, low: float) -> bool:
    return _number(v) and v >= low


def _int_at_least(v: Any, low: int) -> bool:
    return _type_ok(v, int) and v >= low


class _Checked:
    """Validates a dataclass on construction: the types first, then ``_range_problems``."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        fields = dataclasses.fields(self)  # type: ignore[arg-type]
        bad_type = {f.name for f in fields if not _type_ok(getattr(self, f.name), hints[f.name])}
        problems = [f"{self._show(name)}: expected {_describe(hints[name])}" for name in sorted(bad_type)]
        problems += [p for name, p in self._range_problems() if name not in bad_type]
        if problems:
            raise ValueError(f"invalid {type(self).__name__}:\n" + "\n".join(f"  {p}" for p in problems))

    def _range_problems(self) -> list[tuple[str, str]]:
        """(field, "field=value: expected ...") for each value out of range."""
        return []

    def _show(self, name: str) -> str:
        return f"{name}={getattr(self, name)!r}"

    def _check(self, name: str, ok: bool, expected: str) -> list[tuple[str, str]]:
        return [] if ok else [(name, f"{self._show(name)}: expected {expected}")]


@dataclass
class RunConfig(_Checked):
    """The top-level keys of the training config (the groups are the others)."""

    name: str = "default"
    """Experiment name: runs go to logs/<name>/<timestamp>/ and ``ckpt_path=last`` searches logs/<name>/."""
    seed: int = 1337
    """Seeds model initialisation and the data order (windows are a function of seed, step and rank)."""
    ckpt_path: str | None = None
    """Resume: null (a fresh run), "last" (last.ckpt of the newest run of this experiment) or a .ckpt path."""
    compile: bool = False
    """torch.compile the model for training (the saved state dict stays the plain module's)."""
    matmul_precision: str = "high"
    """torch.set_float32_matmul_precision on CUDA: "high" lets float32 matmuls use TF32 tensor cores;
    "highest" or "medium"."""
    keep_freed_memory: bool = True
    """Linux/glibc: the C allocator keeps freed memory for the next step instead of returning it to the
    kernel, which saves the page faults of re-allocating the activations (``lit_llm.memory``: at the
    ablation_base size 3.4-4.5 ms of kernel time a step). false: the allocator's defaults."""

    def _range_problems(self) -> list[tuple[str, str]]:
        return [
            *self._check(
                "name",
                _type_ok(self.name, str) and self.name != "" and "/" not in self.name,
                "a non-empty name without '/'",
            ),
            *self._check("ckpt_path", self.ckpt_path != "", "null, 'last' or a checkpoint path"),
            *self._check(
                "matmul_precision",
                self.matmul_precision in ("highest", "high", "medium"),
                "highest, high or medium",
            ),
        ]


@dataclass
class OptimizerConfig(_Checked):
    """``lit_llm.optim.AdamW`` with two parameter groups: "decay" (matrices) and "no_decay" (norm gains
    and, unless ``decay_embeddings``, the token embeddings); see ``module.parameter_groups``."""

    lr: float = 1e-3
    """Peak learning rate of AdamW (reached at the end of warmup; the schedule scales it)."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    """Decay rates of AdamW's first and second moment estimates."""
    eps: float = 1e-8
    """Added to the root of the (bias-corrected) second moment."""
    weight_decay: float = 0.1
    """Decoupled weight decay of the "decay" group (per step: p *= 1 - lr * weight_decay)."""
    decay_norms: bool = False
    """Also decay RMSNorm gains (and any other 1-D parameter)."""
    decay_embeddings: bool = False
    """Also decay the token embeddings (and a tied lm_head)."""

    def _range_problems(self) -> list[tuple[str, str]]:
        betas = self.betas
        betas_ok = _type_ok(betas, list[float]) and len(betas) == 2 and all(0 <= b < 1 for b in betas)
        return [
            *self._check("lr", _positive(self.lr), "a positive number"),
            *self._check("betas", betas_ok, "two numbers in [0, 1)"),
            *self._check("eps", _positive(self.eps), "a positive number"),
            *self._check("weight_decay", _at_least(self.weight_decay, 0), "a number >= 0"),
        ]


@dataclass
class SchedulerConfig(_Checked):
    """``lit_llm.optim.warmup_cosine`` as a LambdaLR stepped after every optimizer step: linear warmup to
    optimizer.lr, half a cosine down to ``min_lr`` at ``cosine_cycle_iters``, then ``min_lr``."""

    cosine_cycle_iters: int
    """Step at which the cosine reaches min_lr: the run's length (scheduler/warmup_cosine.yaml sets it to
    trainer.max_steps)."""
    min_lr: float = 1e-4
    """Floor of the schedule (at most optimizer.lr)."""
    warmup_fraction: float = 0.1
    """Warmup over this fraction of cosine_cycle_iters (rounded to steps), so any run length is valid."""
    warmup_iters: int | None = None
    """Warmup in optimizer steps; when set it wins over warmup_fraction."""

    @property
    def warmup_steps(self) -> int:
        """The warmup used: ``warmup_iters``, or ``warmup_fraction`` of the cycle (always shorter)."""
        if self.warmup_iters is not None:
            return self.warmup_iters
        return min(round(self.warmup_fraction * self.cosine_cycle_iters), self.cosine_cycle_iters - 1)

    def _range_problems(self) -> list[tuple[str, str]]:
        cycle, warmup = self.cosine_cycle_iters, self.warmup_iters
        cycle_ok = _int_at_least(cycle, 1)
        fraction_ok = _at_least(self.warmup_fraction, 0) and self.warmup_fraction < 1
        problems = [
            *self._check("cosine_cycle_iters", cycle_ok, "a positive integer"),
            *self._check("min_lr", _at_least(self.min_lr, 0), "a number >= 0"),
            *self._check("warmup_fraction", fraction_ok, "a number in [0, 1)"),
            *self._check(
                "warmup_iters", warmup is None or _int_at_least(warmup, 0), "an integer >= 0 or null"
            ),
        ]
        if cycle_ok and _int_at_least(warmup, cycle):
            problems += self._check(
                "warmup_iters",
                False,
                f"< cosine_cycle_iters={cycle} (the schedule's length, by default trainer.max_steps), "
                "or null to warm up over warmup_fraction of it",
            )
        return problems


@dataclass
class DataConfig(_Checked):
    """``lit_llm.data.datamodule.TokenWindowDataModule``: every field is one of its arguments. Values are
    checked by the data module itself (it names the key: ``data.vocab_size=...``), when it is built."""

    dataset: str
    """quickstart | shakespeare | tinystories | owt | local (see lit_llm.data.prepare)."""
    vocab_size: int
    """BPE vocabulary, special tokens included; model.vocab_size follows it."""
    context_length: int
    """Tokens per training window (data/base.yaml sets it to model.context_length)."""
    seed: int
    """Windows are a function of (seed, global micro-batch, rank) (data/base.yaml: the run's seed)."""
    data_dir: str
    """Downloads and corpora (data/base.yaml: paths.data_dir)."""
    artifacts_dir: str
    """Tokenizers and token arrays, cached by their inputs (data/base.yaml: paths.artifacts_dir)."""
    _target_: str = "lit_llm.data.datamodule.TokenWindowDataModule"
    """The data module class."""
    train_file: str | None = None
    """A local UTF-8 text file instead of the named dataset."""
    val_file: str | None = None
    """Its validation file; null: the tail of train_file (val_fraction) is split off."""
    val_fraction: float = 0.1
    """Split off as validation when a single text is given (cut at a story or line boundary)."""
    special_tokens: list[str] = field(default_factory=lambda: [EOT])
    """Special tokens of the tokenizer (never merged, never split)."""
    batch_size: int = 32
    """Windows per micro-batch, per device."""
    val_batch_size: int | None = None
    """Validation windows per batch; null: batch_size."""
    val_windows: int | None = 128
    """Fixed validation windows, the same every time (null: every non-overlapping window)."""
    tokenizer_workers: int | None = None
    """Processes for train_bpe / encode_file (null: all cores)."""
    tokenizer_train_bytes: int | None = None
    """Train BPE on the first N bytes of the training text only (null: all)."""
    num_workers: int = 0
    """DataLoader workers (windows are cheap to cut; 0 is usually fastest)."""
    synthetic_stories: int = 10000
    """quickstart: training stories (~5.5 MB); the corpus is rebuilt when these change."""
    synthetic_val_stories: int = 1000
    """quickstart: validation stories (a separate random stream)."""
    synthetic_seed: int = 0
    """quickstart: the corpus's own seed (independent of the training seed)."""
    errors: str = "strict"
    """Invalid UTF-8 in a text: strict refuses it (naming the file and byte), replace uses U+FFFD."""


@dataclass
class TrainerConfig(_Checked):
    """The ``lightning.pytorch.Trainer`` arguments whose meaning this project fixes (training is counted
    in optimizer steps over an endless stream of windows). The trainer group may hold any other Trainer
    argument; Lightning checks those when the Trainer is built."""

    max_steps: int = 5000
    """Length of the run in optimizer steps (the training data has no epochs)."""
    val_check_interval: int | float | None = 500
    """Validate (and write last.ckpt / best.ckpt) every this many training batches (micro-batches when
    accumulate_grad_batches > 1). Make max_steps a multiple so the final step is validated too."""
    accumulate_grad_batches: int = 1
    """Micro-batches per optimizer step."""
    log_every_n_steps: int = 10
    """Logging interval in optimizer steps (the progress bar's numbers are refreshed then too)."""
    gradient_clip_val: float | None = 1.0
    """Max global L2 norm of the gradients (lit_llm.optim.clip_grad_norm); null: no clipping."""

    def _range_problems(self) -> list[tuple[str, str]]:
        interval = self.val_check_interval
        interval_ok = (
            interval is None
            or _int_at_least(interval, 1)
            or (isinstance(interval, float) and 0 < interval <= 1)
        )
        clip_ok = self.gradient_clip_val is None or _positive(self.gradient_clip_val)
        return [
            *self._check("max_steps", _int_at_least(self.max_steps, 1), "a positive integer"),
            *self._check(
                "val_check_interval", interval_ok, "a positive integer (batches) or a fraction in (0, 1]"
            ),
            *self._check(
                "accumulate_grad_batches",
                _int_at_least(self.accumulate_grad_batches, 1),
                "a positive integer",
            ),
            *self._check("log_every_n_steps", _int_at_least(self.log_every_n_steps, 1), "a positive integer"),
            *self._check("gradient_clip_val", clip_ok, "a positive number or null"),
        ]


@dataclass
class PathsConfig(_Checked):
    """Where a run reads and writes (configs/paths/default.yaml wires them to Hydra's folders)."""

    root_dir: str
    """Everything lives under it (default: the folder you run from)."""
    data_dir: str
    """Downloads and corpora (data/raw/<dataset>/...)."""
    artifacts_dir: str
    """Tokenizers and token arrays, cached by their inputs."""
    log_dir: str
    """Run folders: logs/<name>/<timestamp>/."""
    output_dir: str
    """This run's folder."""


# The schema of each group of configs/train.yaml; logger and callbacks are mappings of _target_ nodes.
GROUPS: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "optimizer": OptimizerConfig,
    "scheduler": SchedulerConfig,
    "trainer": TrainerConfig,
    "paths": PathsConfig,
}


def defaults(schema: type) -> dict[str, Any]:
    """The fields of ``schema`` with their defaults; ``"???"`` (must be set) where there is none.
    ``_target_`` comes first, where YAML files usually write it."""
    out = {}
    for f in sorted(dataclasses.fields(schema), key=lambda f: f.name != "_target_"):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
        else:
            out[f.name] = MISSING
    return out


def register() -> None:
    """Store every schema's defaults as ``schema/<group>`` (and ``schema/run``) in Hydra's ConfigStore."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    store.store(group="schema", name="run", node=defaults(RunConfig))
    for group, schema in GROUPS.items():
        if group != "paths":  # its every value is an interpolation, written in paths/default.yaml
            store.store(group="schema", name=group, node=defaults(schema))


register()


@dataclass
class TuneConfig(_Checked):
    """The ``tune`` group of ``python -m lit_llm.tune`` (configs/tune.yaml): its learning-rate range test
    (``mode=lr``) and micro-batch search (``mode=batch_size``). Not a group of the training config, so it
    is not in ``GROUPS``; lit_llm.tune validates it beside the training groups."""

    steps: int = 200
    """mode=lr: optimizer steps of the sweep from min_lr to max_lr (fewer if the loss diverges first)."""
    min_lr: float = 1.0e-5
    """mode=lr: learning rate of the first step."""
    max_lr: float = 1.0e-1
    """mode=lr: learning rate of the last step; the rate grows by a constant factor per step."""
    smoothing: float = 0.9
    """mode=lr: beta of the exponential moving average of the loss (bias-corrected), run forwards and
    backwards (no lag); 0: no smoothing. 0.9 averages ~10 steps, 5% of the default sweep (0.98 flattened
    the whole curve of a 200-step sweep)."""
    divergence: float = 4.0
    """mode=lr: stop once the smoothed loss exceeds this many times the best smoothed loss so far."""
    max_batch_size: int = 1024
    """mode=batch_size: largest micro-batch tried. The only bound on a CPU, whose RAM rarely raises an
    out-of-memory error (the system swaps or kills the process instead)."""
    steps_per_trial: int = 2
    """mode=batch_size: optimizer steps per batch size tried (the first allocates AdamW's moments)."""

    def _range_problems(self) -> list[tuple[str, str]]:
        lrs_ok = _positive(self.min_lr) and _positive(self.max_lr) and self.min_lr < self.max_lr
        return [
            *self._check("steps", _int_at_least(self.steps, 2), "an integer >= 2"),
            *self._check("min_lr", _positive(self.min_lr), "a positive number"),
            *self._check("max_lr", lrs_ok, f"a number > min_lr={self.min_lr!r}"),
            *self._check(
                "smoothing", _at_least(self.smoothing, 0) and self.smoothing < 1, "a number in [0, 1)"
            ),
            *self._check("divergence", _number(self.divergence) and self.divergence > 1, "a number > 1"),
            *self._check("max_batch_size", _int_at_least(self.max_batch_size, 1), "a positive integer"),
            *self._check("steps_per_trial", _int_at_least(self.steps_per_trial, 1), "a positive integer"),
        ]


def _register_tune() -> None:
    """``schema/tune`` in Hydra's ConfigStore (configs/tune.yaml starts its ``tune`` group from it)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(group="schema", name="tune", node=defaults(TuneConfig))


_register_tune()
