"""Start-up validation of the composed training config: every problem at once, one line each.

Hydra refuses unknown keys given on the command line, but not typos inside YAML files or keys added
with ``+key=...``, and it checks no values. Failing here, before any data is prepared or any process
is launched, turns an hour-later crash into one line naming the key, its value and what was expected.

The keys, types and ranges are those of the schema (``lit_llm.config_schema``); this module only
applies it to each group and adds what no single group can see. Two passes, so that the common
mistakes are reported in about a second: ``config_problems`` checks the schema without importing
Lightning; ``target_problems`` then checks that every ``_target_`` (data module, callbacks, loggers,
strategy) and every other trainer key exists, which needs the classes imported. What Lightning
validates itself (accelerator, devices, strategy, precision, ...) it checks when ``lit_llm.train``
builds the Trainer, before any data work; ``trainer_problem`` turns its refusal into one line.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lit_llm.config_schema import GROUPS, DataConfig, RunConfig


class ConfigError(ValueError):
    """Invalid configuration; ``problems`` holds one line per bad key."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n" + "\n".join(f"  {p}" for p in problems))


TARGET_GROUPS = ("callbacks", "logger")  # mappings of name -> a node with a _target_ (or null: dropped)
TOP_LEVEL = {f.name for f in dataclasses.fields(RunConfig)} | set(GROUPS) | set(TARGET_GROUPS)
OPEN_GROUPS = {"trainer"}  # may hold any other Trainer argument (checked against its signature)
# Set by train.py itself; in the trainer group they would silently fight with the callbacks/logger groups.
TRAINER_RESERVED = {"callbacks", "logger", "plugins", "default_root_dir", "enable_checkpointing"}
# The Trainer arguments Lightning checks itself, named first when its message names one of them.
LIGHTNING_CHECKED = ("precision", "accelerator", "strategy", "devices", "num_nodes")


def _steps_for_tokens_per_parameter(ratio: float, model: Any, batch_size: int) -> int:
    """The ``lit_llm.steps_for_tokens_per_parameter`` resolver (``experiment=scaling``):
    ``lit_llm.flops.steps_for_tokens_per_parameter``, imported when used (it imports torch)."""
    from lit_llm.flops import steps_for_tokens_per_parameter

    return steps_for_tokens_per_parameter(ratio, model, batch_size)


# Registered here, beside ``resolve``: every reader of the configs (train, tune, the tests, the
# benchmarks) imports this module before resolving them.
OmegaConf.register_new_resolver(
    "lit_llm.steps_for_tokens_per_parameter", _steps_for_tokens_per_parameter, replace=True
)


def resolve(cfg: DictConfig | dict[str, Any]) -> dict[str, Any]:
    """The config as plain containers with every ``${...}`` resolved; a broken reference or a value left
    at ``???`` is a ConfigError."""
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(cfg)
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError([f"{key}: missing (it has no default: set {key}=...)" for key in missing])
    try:
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "?"
        raise ConfigError([f"{key}: {str(exc).splitlines()[0]}"]) from None


def schema_problems(
    schema: type, values: Any, path: str, *, open_keys: bool = False
) -> tuple[Any | None, list[str]]:
    """(``schema(**values)`` or None, one line per problem): unknown keys (unless ``open_keys``),
    missing keys, and the schema's own checks of every value, each prefixed with ``path``."""
    prefix = f"{path}." if path else ""
    if not isinstance(values, dict):
        return None, [f"{path}: expected a mapping of {schema.__name__} fields, got {values!r}"]
    fields = {f.name: f for f in dataclasses.fields(schema)}
    problems = [
        f"{prefix}{key}: unknown key (expected one of {', '.join(fields)})"
        for key in values
        if key not in fields and not open_keys
    ]
    required = [n for n, f in fields.items() if dataclasses.MISSING is f.default is f.default_factory]
    missing = [
        f"{prefix}{key}: missing ({schema.__name__} has no default)" for key in required if key not in values
    ]
    if missing:
        return None, problems + missing
    try:
        return schema(**{k: v for k, v in values.items() if k in fields}), problems
    except ValueError as exc:  # one "  field=value: expected ..." line per bad field
        lines = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()]
        return None, problems + ([prefix + line for line in lines] or [f"{path}: {exc}"])


def config_problems(config: dict[str, Any]) -> list[str]:
    """Problems of a resolved config, found without importing Lightning (see module docstring)."""
    problems = [
        f"{k}: unknown top-level key (expected one of {', '.join(sorted(TOP_LEVEL))})"
        for k in config
        if k not in TOP_LEVEL
    ]
    run_keys = {f.name for f in dataclasses.fields(RunConfig)}
    problems += schema_problems(RunConfig, {k: v for k, v in config.items() if k in run_keys}, "")[1]
    built: dict[str, Any] = {}
    for group, schema in GROUPS.items():
        values = config.get(group)
        if group == "data" and isinstance(values, dict) and values.get("_target_") != DataConfig._target_:
            continue  # another data module: its keys are checked against its signature (target_problems)
        built[group], found = schema_problems(schema, values, group, open_keys=group in OPEN_GROUPS)
        problems += found
    problems += _cross_group_problems(built)

    trainer = config.get("trainer") or {}
    for key in sorted(TRAINER_RESERVED & set(trainer)):
        owner = "the callbacks/logger groups" if key in TARGET_GROUPS else "the training script"
        problems.append(f"trainer.{key}: set by {owner}, not in the trainer group")
    for group in TARGET_GROUPS:
        for name, node in (config.get(group) or {}).items():
            if node is not None and not (isinstance(node, dict) and "_target_" in node):
                problems.append(
                    f"{group}.{name}: expected a mapping with a _target_ class (or null to drop it)"
                )
    data = config.get("data")
    if not (isinstance(data, dict) and "_target_" in data):
        problems.append("data: expected a mapping with a _target_ class (pick one with data=<name>)")
    return problems


def _cross_group_problems(built: dict[str, Any]) -> list[str]:
    """What no single group can check: each shared value against the group it comes from."""
    problems = []
    optimizer, scheduler = built.get("optimizer"), built.get("scheduler")
    if optimizer and scheduler and scheduler.min_lr > optimizer.lr:
        problems.append(f"scheduler.min_lr={scheduler.min_lr!r}: expected <= optimizer.lr={optimizer.lr!r}")
    model, data = built.get("model"), built.get("data")
    if model and data and data.vocab_size > model.vocab_size:
        problems.append(
            f"model.vocab_size={model.vocab_size!r}: expected >= data.vocab_size={data.vocab_size!r} "
            "(every token id must have an embedding; model.vocab_size follows data.vocab_size unless set)"
        )
    if model and data and data.context_length > model.context_length:
        problems.append(
            f"data.context_length={data.context_length!r}: expected <= model.context_length="
            f"{model.context_length!r} (data.context_length follows model.context_length unless set)"
        )
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
    for group in TARGET_GROUPS:
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


def trainer_problem(exc: BaseException, trainer: dict[str, Any]) -> str:
    """One line for Lightning's refusal of the trainer arguments, naming the key its message names (or,
    if none, the arguments Lightning checks), e.g. ``trainer.precision='bf17': Precision 'bf17' is
    invalid. Allowed precision values: ...``."""
    message = " ".join(str(exc).split()) or type(exc).__name__
    keys = [
        *(k for k in LIGHTNING_CHECKED if k in trainer),
        *(k for k in trainer if k not in LIGHTNING_CHECKED),
    ]
    # The most explicit mention wins: "devices=0" or "`devices`", then the bare word ("Precision 'bf17'").
    for pattern in (r"\b{}=", r"`{}`", r"\b{}\b"):
        for key in keys:
            if re.search(pattern.format(re.escape(key)), message, flags=re.IGNORECASE):
                return f"trainer.{key}={trainer[key]!r}: {message}"
    shown = ", ".join(f"{k}={trainer[k]!r}" for k in LIGHTNING_CHECKED if k in trainer)
    return f"trainer ({shown}): {message}"
