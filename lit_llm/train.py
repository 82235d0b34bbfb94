"""``python -m lit_llm.train [experiment=NAME] [key=value ...]``: one command from a dataset name to a
trained, logged, resumable model.

The config (configs/, composed by Hydra) is validated first, so a typo fails in about a second
naming the key. Then the callbacks, loggers and the Lightning Trainer are built from their groups (the
Trainer first, so that Lightning's own checks of accelerator/devices/strategy/precision run before any
data work), then the data module (download, tokenizer, token arrays: cached, in ``fit``) and the
LanguageModelModule.

Everything of a run lands in its own logs/<name>/<timestamp>[-N]/ (``run_dir``: created atomically, so two
runs started in the same second never share one): .hydra/ (the exact config), tensorboard/,
checkpoints/{last,best}.ckpt. ``ckpt_path=last`` resumes from the most recently written
logs/<name>/*/checkpoints/last.ckpt (the new run gets its own folder); ``ckpt_path=FILE`` from a file.
Before any work the output folders are checked for writability (``check_writable``) and a resumed
checkpoint for readability; a start refused by validation leaves no run folder behind.
Set HYDRA_FULL_ERROR=1 to get tracebacks instead of one-line errors.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import time
from contextlib import suppress
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lit_llm import cli
from lit_llm.config_validation import ConfigError, trainer_problem, validate_config

# When this process started running our code (the interpreter's own start, ~0.05 s, comes before):
# the origin of the "first training step after X s" line.
STARTED = time.perf_counter()

_RUN_DIRS: dict[tuple[str, str], str] = {}


def run_dir(parent: str, prefix: str = "") -> str:
    """``parent/<prefix><timestamp>``, or ``...-1``, ``-2``, ... where that exists: a folder of its own,
    made with ``os.mkdir`` (atomic: of two processes asking in the same second, one gets ``-1``).

    The ``lit_llm.run_dir`` resolver of ``hydra.run.dir`` and ``hydra.sweep.dir``. Hydra resolves those
    more than once per process (and, in a multirun, once per job), so the answer is kept per process.
    A folder that cannot be made is one ``error:`` line (Hydra calls this before the task's error path).
    """
    key = (str(parent), str(prefix))
    if key in _RUN_DIRS:
        return _RUN_DIRS[key]
    stamp = f"{prefix}{datetime.now():%Y-%m-%d_%H-%M-%S}"
    try:
        os.makedirs(parent, exist_ok=True)
        for n in itertools.count():
            path = os.path.join(parent, f"{stamp}-{n}" if n else stamp)
            try:
                os.mkdir(path)
            except FileExistsError:
                continue
            break
    except OSError as exc:
        if not cli.is_disk_error(exc):
            raise
        cli.report(exc)
    _RUN_DIRS[key] = path
    return path


OmegaConf.register_new_resolver("lit_llm.run_dir", run_dir, replace=True)


def check_writable(*folders: str | Path) -> None:
    """Make each folder (with its parents) and probe it (``tokenizer.files.probe_writable``): a read-only,
    full or forbidden location fails now, as an ``OSError`` naming it, rather than at the first checkpoint."""
    from tokenizer.files import probe_writable

    for folder in dict.fromkeys(str(f) for f in folders):
        os.makedirs(folder, exist_ok=True)
        probe_writable(folder)


def output_folders(config: dict[str, Any]) -> list[str]:
    """Where a run writes: its folder, its checkpoint folder, paths.data_dir and paths.artifacts_dir."""
    paths = config["paths"]
    folders = [paths["output_dir"]]
    checkpoint = (config.get("callbacks") or {}).get("model_checkpoint") or {}
    if checkpoint.get("dirpath") and "://" not in str(checkpoint["dirpath"]):
        folders.append(checkpoint["dirpath"])
    data = config.get("data") or {}
    folders.append(data.get("data_dir") or paths["data_dir"])
    folders.append(data.get("artifacts_dir") or paths["artifacts_dir"])
    return folders


def check_checkpoint(path: str) -> None:
    """Open ``path`` as ``safe_load`` does, tensors memory-mapped (cheap): an empty, truncated, corrupt or
    refused file, or one that is not a training checkpoint, fails now in one line naming it."""
    from lit_llm.checkpoint import CheckpointError, safe_load

    checkpoint = safe_load(path, mmap=True)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(
            path, "not a training checkpoint (no 'state_dict'; resume from a run's last.ckpt or best.ckpt)"
        )


def find_last_checkpoint(experiment_dir: str | Path, exclude: str | Path | None = None) -> Path:
    """The most recently written ``<run>/checkpoints/last.ckpt`` under ``experiment_dir``
    (logs/<name>/), skipping the run folder ``exclude`` (the run being started)."""
    experiment_dir = Path(experiment_dir)
    excluded = Path(exclude).resolve() if exclude is not None else None
    candidates = [
        path
        for path in experiment_dir.glob("*/checkpoints/last.ckpt")
        if excluded is None or path.parent.parent.resolve() != excluded
    ]
    if not candidates:
        raise FileNotFoundError(
            f"ckpt_path=last: no {experiment_dir}/<run>/checkpoints/last.ckpt found; "
            "train this experiment first, or pass ckpt_path=<file.ckpt>"
        )
    return max(candidates, key=lambda p: p.stat().st_mtime_ns)


def resolve_ckpt_path(config: dict[str, Any]) -> str | None:
    """``ckpt_path``: null, "last" (newest last.ckpt of this experiment, other than this run's) or a file."""
    ckpt_path = config.get("ckpt_path")
    if ckpt_path is None:
        return None
    if ckpt_path == "last":
        paths = config["paths"]
        experiment_dir = Path(paths["log_dir"]) / config["name"]
        ckpt_path = str(find_last_checkpoint(experiment_dir, exclude=paths["output_dir"]))
    elif not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"ckpt_path={ckpt_path!r}: no such checkpoint file")
    check_checkpoint(ckpt_path)  # a damaged last.ckpt is refused before any work too
    return ckpt_path


def _single_log_path() -> None:
    """Lightning's top-level logger prints through its own handler *and* propagates to the root
    logger that Hydra configured (terminal + <run>/train.log): drop its handler so each line appears
    once, formatted by Hydra."""
    import logging

    import lightning  # noqa: F401  (its import installs the handler)

    lightning_logger = logging.getLogger("lightning")
    if logging.getLogger().handlers:
        for handler in list(lightning_logger.handlers):
            lightning_logger.removeHandler(handler)


class _Builder:
    """Instantiates config nodes, collecting every failure (a class refusing a value) so that all
    of them are reported at once, as validate_config does for the keys it knows."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def __call__(self, node: dict[str, Any], path: str) -> Any:
        from hydra.errors import InstantiationException
        from hydra.utils import instantiate

        try:
            return instantiate(node, _convert_="all")
        except InstantiationException as exc:
            cause = exc.__cause__ or exc
            message = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
            # The data module names its keys itself ("data.vocab_size=..."); others get the path.
            self.problems.append(message if f"{path}." in message else f"{path}: {message}")
            return None

    def group(self, group: dict[str, Any] | None, path: str) -> list[Any]:
        built = [self(node, f"{path}.{name}") for name, node in (group or {}).items() if node is not None]
        return [obj for obj in built if obj is not None]


def _quiet_unactionable_messages() -> None:
    """Lines a user can do nothing about, each filtered by its own text (nothing else is silenced):
    torch's deprecation of ``LeafSpec``, which Lightning's ``_pytree`` still uses; Lightning's
    advertisement for its cloud logger; and its warning that a ``training_step`` returned None, which
    here is the spike guard skipping an update (lit_llm/spike_guard.py records each one itself)."""
    import warnings

    warnings.filterwarnings(
        "ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning
    )
    warnings.filterwarnings("ignore", message=r"`training_step` returned `None`. If this was on purpose")
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropAdvertisement) for f in rank_zero.filters):
        rank_zero.addFilter(_DropAdvertisement())


class _DropAdvertisement(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip: For seamless cloud logging")


def apply_process_settings(config: dict[str, Any]) -> None:
    """The run config's process-wide settings, for training (``build``) and tuning (``lit_llm.tune``)
    alike: ``matmul_precision`` (CUDA's float32 matmuls) and ``keep_freed_memory`` (``lit_llm.memory``)."""
    import torch

    if torch.cuda.is_available():
        torch.set_float32_matmul_precision(config["matmul_precision"])
    if config["keep_freed_memory"]:
        from lit_llm.memory import keep_freed_memory

        keep_freed_memory()


def build(config: dict[str, Any]) -> tuple[Any, Any, Any]:
    """(trainer, module, datamodule) from a validated, resolved config."""
    import lightning.pytorch as pl
    from lightning.fabric.utilities.exceptions import MisconfigurationException
    from lightning.pytorch.callbacks import Checkpoint, LearningRateMonitor, ModelSummary, ProgressBar

    from lit_llm.callbacks import FreezeStartupObjects, RunClock
    from lit_llm.module import LanguageModelModule
    from lit_llm.run_checkpoints import AtomicCheckpointIO

    _quiet_unactionable_messages()
    apply_process_settings(config)
    pl.seed_everything(config["seed"], workers=True, verbose=False)
    builder = _Builder()
    callbacks = builder.group(config.get("callbacks"), "callbacks")
    callbacks += [RunClock(STARTED), FreezeStartupObjects()]
    loggers = builder.group(config.get("logger"), "logger")
    trainer_kwargs = dict(config["trainer"])
    if isinstance(trainer_kwargs.get("strategy"), dict):
        trainer_kwargs["strategy"] = builder(trainer_kwargs["strategy"], "trainer.strategy")
    if builder.problems:
        raise ConfigError(builder.problems)
    # Lightning refuses these callbacks when their feature is switched off; a switch in the trainer or
    # logger group should just work, so drop them: no logger -> no LR monitor, and so on.
    dropped = (
        (LearningRateMonitor, not loggers),
        (ProgressBar, trainer_kwargs.get("enable_progress_bar") is False),
        (ModelSummary, trainer_kwargs.get("enable_model_summary") is False),
    )
    for kind, drop in dropped:
        if drop:
            callbacks = [cb for cb in callbacks if not isinstance(cb, kind)]
    # Lightning checks its own arguments (accelerator, devices, strategy, precision, ...) here, before the
    # data module exists: a value it refuses fails in seconds, in one line naming the key. Without our
    # checkpoint callback (callbacks.model_checkpoint=null) Lightning must not add its own.
    try:
        trainer = pl.Trainer(
            **trainer_kwargs,
            callbacks=callbacks,
            logger=loggers or False,
            plugins=[AtomicCheckpointIO()],
            default_root_dir=config["paths"]["output_dir"],
            enable_checkpointing=any(isinstance(cb, Checkpoint) for cb in callbacks),
        )
    except (ValueError, TypeError, ImportError, MisconfigurationException) as exc:
        raise ConfigError([trainer_problem(exc, config["trainer"])]) from None
    datamodule = builder(config["data"], "data")
    if builder.problems:
        raise ConfigError(builder.problems)
    module = LanguageModelModule(
        model=config["model"],
        optimizer=config["optimizer"],
        scheduler=config["scheduler"],
        compile=config["compile"],
    )
    return trainer, module, datamodule


def train(config: dict[str, Any]) -> dict[str, float]:
    """Train from a validated, resolved config; returns the final logged metrics."""
    from lightning.pytorch.utilities import rank_zero_info

    ckpt_path = resolve_ckpt_path(config)  # before the slow imports: a wrong path fails at once
    check_writable(*output_folders(config))
    _single_log_path()
    trainer, module, datamodule = build(config)
    rank_zero_info(
        f"run folder: {config['paths']['output_dir']}" + (f" (resuming {ckpt_path})" if ckpt_path else "")
    )
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    metrics = {name: float(value) for name, value in trainer.callback_metrics.items()}
    ckpt = trainer.checkpoint_callback
    summary = ", ".join(f"{k} {metrics[k]:.4f}" for k in ("val/loss", "val/ppl", "val/bpb") if k in metrics)
    rank_zero_info(f"done at step {trainer.global_step}: {summary or 'no validation ran'}")
    if ckpt is not None and getattr(ckpt, "last_model_path", ""):
        rank_zero_info(
            f"checkpoints: {ckpt.last_model_path}"
            + (f", {ckpt.best_model_path}" if ckpt.best_model_path else "")
        )
    return metrics


def _refused_start(exc: BaseException) -> None:
    """A start that ended in a user error: remove the run folder where it holds nothing of the run (only
    .hydra/ and an empty log: a refused config, a wrong ckpt_path); otherwise record the error in its log."""
    from hydra.core.hydra_config import HydraConfig

    if not cli.is_user_error(exc) or not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    folder = Path(hydra_cfg.runtime.output_dir)
    log = folder / f"{hydra_cfg.job.name}.log"
    others = [p for p in folder.iterdir() if p.name not in (".hydra", log.name)] if folder.is_dir() else []
    nothing = all(p.is_dir() and not any(p.iterdir()) for p in others)  # checkpoints/, still empty
    empty_log = not log.exists() or log.stat().st_size == 0
    if nothing and empty_log and folder.resolve() != Path.cwd().resolve():
        shutil.rmtree(folder, ignore_errors=True)
        with suppress(OSError):
            folder.parent.rmdir()  # logs/<name>/, where this was its only run
        return
    line = f"error: {cli.message(exc)}"
    record = logging.makeLogRecord({"name": __name__, "levelno": logging.ERROR, "msg": line})
    record.levelname = "ERROR"
    for handler in logging.getLogger().handlers:  # the log file only: the terminal gets cli's line
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


_jobs_run = 0  # jobs of this process so far (a multirun runs its jobs one after the other in one process)


@cli.main("train", config_path=cli.TRAIN_CONFIGS)
def main(cfg: DictConfig) -> None:
    global STARTED, _jobs_run
    if _jobs_run:  # a later job of a multirun: its start-up begins now, not at the process start
        STARTED = time.perf_counter()
    _jobs_run += 1
    try:
        train(validate_config(cfg))
    except Exception as exc:
        _refused_start(exc)
        raise


if __name__ == "__main__":
    main()
