"""Start-up validation of the composed training config: every problem at once, one line each.

Hydra refuses unknown keys given on the command line, but not typos inside YAML files or keys added
with ``+key=...``, and it checks no values. Failing here, before any data is prepared or any process
is launched, turns an hour-later crash into one line naming the key, its value and what was expected.

Two passes, so that the common mistakes are reported in about a second: ``config_problems`` checks
the groups we own (keys and values) without importing Lightning; ``target_problems`` then checks that
every ``_target_`` (data module, callbacks, loggers, strategy) and every trainer key exists, which
needs the classes imported.
"""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


class ConfigError(ValueError):
    """Invalid configuration; ``problems`` holds one line per bad key."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n" + "\n".join(f"  {p}" for p in problems))


TOP_LEVEL = {
    "data", "model", "optimizer", "scheduler", "trainer", "logger", "callbacks", "paths",
    "name", "seed", "ckpt_path", "compile", "matmul_precision",
}  # fmt: skip
PATHS = {"root_dir", "data_dir", "artifacts_dir", "log_dir", "output_dir"}
# Set by train.py itself; in the trainer group they would silently fight with the callbacks/logger groups.
TRAINER_RESERVED = {"callbacks", "logger", "plugins", "default_root_dir", "enable_checkpointing"}
PRECISIONS = {
    "64-true",
    "64",
    "32-true",
    "32",
    "16-mixed",
    "16",
    "bf16-mixed",
    "bf16",
    "16-true",
    "bf16-true",
}
ACCELERATORS = {"auto", "cpu", "gpu", "cuda", "mps", "tpu"}


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# (check, what was expected) per key of the groups whose every key is known here.
Rule = tuple[Callable[[Any], bool], str]
OPTIMIZER: dict[str, Rule] = {
    "lr": (lambda v: _number(v) and v > 0, "a positive number"),
    "betas": (
        lambda v: isinstance(v, list | tuple) and len(v) == 2 and all(_number(b) and 0 <= b < 1 for b in v),
        "two numbers in [0, 1)",
    ),
    "eps": (lambda v: _number(v) and v > 0, "a positive number"),
    "weight_decay": (lambda v: _number(v) and v >= 0, "a number >= 0"),
    "decay_norms": (lambda v: isinstance(v, bool), "true or false"),
    "decay_embeddings": (lambda v: isinstance(v, bool), "true or false"),
}
SCHEDULER: dict[str, Rule] = {
    "warmup_iters": (lambda v: _int(v) and v >= 0, "an integer >= 0"),
    "cosine_cycle_iters": (lambda v: _int(v) and v >= 1, "a positive integer"),
    "min_lr": (lambda v: _number(v) and v >= 0, "a number >= 0"),
}
TRAINER: dict[str, Rule] = {
    "max_steps": (lambda v: _int(v) and v >= 1, "a positive integer"),
    "accumulate_grad_batches": (lambda v: _int(v) and v >= 1, "a positive integer"),
    "log_every_n_steps": (lambda v: _int(v) and v >= 1, "a positive integer"),
    "gradient_clip_val": (lambda v: v is None or (_number(v) and v > 0), "a positive number or null"),
    "val_check_interval": (
        lambda v: v is None or (_int(v) and v >= 1) or (isinstance(v, float) and 0 < v <= 1),
        "a positive integer (batches) or a fraction in (0, 1]",
    ),
    "precision": (lambda v: str(v) in PRECISIONS, "one of " + ", ".join(sorted(PRECISIONS))),
    "accelerator": (lambda v: v in ACCELERATORS, "one of " + ", ".join(sorted(ACCELERATORS))),
    "devices": (
        lambda v: (
            v == "auto" or v == -1 or (_int(v) and v >= 1) or (isinstance(v, list) and all(map(_int, v)))
        ),
        "a positive integer, -1, 'auto' or a list of device ids",
    ),
    "num_nodes": (lambda v: _int(v) and v >= 1, "a positive integer"),
}
TOP: dict[str, Rule] = {
    "seed": (_int, "an integer"),
    "compile": (lambda v: isinstance(v, bool), "true or false"),
    "name": (lambda v: isinstance(v, str) and v != "" and "/" not in v, "a non-empty name without '/'"),
    "ckpt_path": (
        lambda v: v is None or (isinstance(v, str) and v != ""),
        "null, 'last' or a checkpoint path",
    ),
    "matmul_precision": (lambda v: v in ("highest", "high", "medium"), "highest, high or medium"),
}


def resolve(cfg: DictConfig | dict[str, Any]) -> dict[str, Any]:
    """The config as plain containers with every ``${...}`` resolved; a broken reference is a ConfigError."""
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(cfg)
    try:
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "?"
        raise ConfigError([f"{key}: {str(exc).splitlines()[0]}"]) from None


def _check_rules(node: Any, path: str, rules: dict[str, Rule], *, closed: bool, problems: list[str]) -> None:
    if not isinstance(node, dict):
        problems.append(f"{path}: expected a mapping of keys, got {node!r}")
        return
    for key, (check, expected) in rules.items():
        if key not in node:
            if closed:
                problems.append(f"{path}.{key}: missing (expected {expected})")
        elif not check(node[key]):
            problems.append(f"{path}.{key}={node[key]!r}: expected {expected}")
    if closed:
        for key in node:
            if key not in rules:
                problems.append(f"{path}.{key}: unknown key (expected one of {', '.join(rules)})")


def _valid(node: Any, key: str, rules: dict[str, Rule]) -> bool:
    return isinstance(node, dict) and key in node and rules[key][0](node[key])


def _model_problems(model: Any) -> list[str]:
    from lit_llm.model import ModelConfig

    if not isinstance(model, dict):
        return [f"model: expected a mapping of ModelConfig fields, got {model!r}"]
    fields = ModelConfig.__dataclass_fields__
    problems = [
        f"model.{k}: unknown key (expected one of {', '.join(fields)})" for k in model if k not in fields
    ]
    try:
        ModelConfig(**{k: v for k, v in model.items() if k in fields})
    except TypeError as exc:  # a required field is missing
        problems.append(f"model: {exc}")
    except ValueError as exc:
        # ModelConfig reports one "  field=value: expected ..." line per bad field.
        lines = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()]
        problems += [f"model.{line}" for line in lines] or [f"model: {exc}"]
    return problems


def config_problems(config: dict[str, Any]) -> list[str]:
    """Problems of a resolved config, found without importing Lightning (see module docstring)."""
    problems = [
        f"{k}: unknown top-level key (expected one of {', '.join(sorted(TOP_LEVEL))})"
        for k in config
        if k not in TOP_LEVEL
    ]
    for key, (check, expected) in TOP.items():
        if key in config and not check(config[key]):
            problems.append(f"{key}={config[key]!r}: expected {expected}")
    problems += _model_problems(config.get("model"))
    _check_rules(config.get("optimizer"), "optimizer", OPTIMIZER, closed=True, problems=problems)
    _check_rules(config.get("scheduler"), "scheduler", SCHEDULER, closed=True, problems=problems)
    _check_rules(config.get("trainer"), "trainer", TRAINER, closed=False, problems=problems)
    paths = config.get("paths") or {}
    problems += [
        f"paths.{k}: unknown key (expected one of {', '.join(sorted(PATHS))})"
        for k in paths
        if k not in PATHS
    ]

    opt, sched = config.get("optimizer") or {}, config.get("scheduler") or {}
    if _valid(opt, "lr", OPTIMIZER) and _valid(sched, "min_lr", SCHEDULER) and sched["min_lr"] > opt["lr"]:
        problems.append(f"scheduler.min_lr={sched['min_lr']!r}: expected <= optimizer.lr={opt['lr']!r}")
    if (
        _valid(sched, "warmup_iters", SCHEDULER)
        and _valid(sched, "cosine_cycle_iters", SCHEDULER)
        and sched["warmup_iters"] >= sched["cosine_cycle_iters"]
    ):
        problems.append(
            f"scheduler.warmup_iters={sched['warmup_iters']!r}: expected < scheduler.cosine_cycle_iters="
            f"{sched['cosine_cycle_iters']!r} (which defaults to trainer.max_steps)"
        )
    trainer = config.get("trainer") or {}
    for key in sorted(TRAINER_RESERVED & set(trainer)):
        owner = "the callbacks/logger groups" if key in ("callbacks", "logger") else "the training script"
        problems.append(f"trainer.{key}: set by {owner}, not in the trainer group")
    for group in ("callbacks", "logger"):
        for name, node in (config.get(group) or {}).items():
            if node is not None and not (isinstance(node, dict) and "_target_" in node):
                problems.append(
                    f"{group}.{name}: expected a mapping with a _target_ class (or null to drop it)"
                )
    data = config.get("data")
    if not (isinstance(data, dict) and "_target_" in data):
        problems.append("data: expected a mapping with a _target_ class (pick one with data=<name>)")
    return problems


def _signature_problems(target: Any, node: dict[str, Any], path: str) -> list[str]:
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return []
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return []
    known = ", ".join(n for n in params if n != "self")
    name = getattr(target, "__qualname__", target)
    return [
        f"{path}.{k}: unknown key for {name} (expected some of {known})"
        for k in node
        if not k.startswith("_") and k not in params
    ]


def _target_node_problems(node: dict[str, Any], path: str) -> list[str]:
    module_name, _, attribute = str(node["_target_"]).rpartition(".")
    try:
        target = getattr(importlib.import_module(module_name), attribute)
    except Exception as exc:  # ImportError, AttributeError, ValueError: report, whichever it is
        return [f"{path}._target_={node['_target_']!r}: cannot import ({type(exc).__name__}: {exc})"]
    problems = _signature_problems(target, node, path)
    for key, value in node.items():  # nested objects, e.g. a strategy's auto_wrap_policy
        if isinstance(value, dict) and "_target_" in value:
            problems += _target_node_problems(value, f"{path}.{key}")
    return problems


def target_problems(config: dict[str, Any]) -> list[str]:
    """Problems that need the target classes imported: unknown ``_target_`` classes and unknown keys
    of the data module, callbacks, loggers, strategy and Trainer."""
    import lightning.pytorch as pl

    problems = _target_node_problems(config["data"], "data")
    for group in ("callbacks", "logger"):
        for name, node in (config.get(group) or {}).items():
            if node is not None:
                problems += _target_node_problems(node, f"{group}.{name}")
    trainer = dict(config.get("trainer") or {})
    problems += _signature_problems(
        pl.Trainer.__init__, {k: v for k, v in trainer.items() if k not in TRAINER_RESERVED}, "trainer"
    )
    strategy = trainer.get("strategy")
    if isinstance(strategy, dict) and "_target_" in strategy:
        problems += _target_node_problems(strategy, "trainer.strategy")
    return problems


def validate_config(cfg: DictConfig | dict[str, Any], *, check_targets: bool = True) -> dict[str, Any]:
    """Resolve ``cfg`` and raise ``ConfigError`` listing every problem; returns the resolved config."""
    config = resolve(cfg)
    problems = config_problems(config)
    if problems:
        raise ConfigError(problems)
    if check_targets:
        problems = target_problems(config)
        if problems:
            raise ConfigError(problems)
    return config
