"""The one command-line wrapper of the Hydra entry points (``train``, ``generate``, ``evaluate``, ``export``).

``@cli.main("generate")`` is ``@hydra.main`` with one error path (in the manner of lightning-hydra-template's
``task_wrapper``): an error the user can fix (a missing file, an invalid value or configuration, a diverged
run, a failed download, a full or read-only disk; see ``is_user_error``) is printed as ``error: <message>``
on stderr and exits with status 2 for an invalid configuration (``ConfigError``), 1 otherwise. Anything
else, or any error with ``HYDRA_FULL_ERROR=1``, propagates with its traceback.

The tools compose from ``configs/tools/`` (``lit_llm.configs.tools``, their own search path, whose
``hydra/tool.yaml`` is their shared hydra block: no output folder); training from ``configs/``.
"""

from __future__ import annotations

import errno
import functools
import math
import os
import sys
from collections.abc import Callable
from typing import Any

import hydra
from omegaconf import DictConfig

from lit_llm.config_validation import ConfigError

TRAIN_CONFIGS = "pkg://lit_llm.configs"
TOOL_CONFIGS = "pkg://lit_llm.configs.tools"

USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, FileExistsError)
# (module, class) of user errors raised only once a heavy module is imported (Lightning): looked up in
# sys.modules, never imported here.
LAZY_USER_ERRORS = (
    ("lit_llm.callbacks", "NonFiniteLossError"),
    # A download that could not complete (offline, HTTP 404): its message says where to place the file.
    ("lit_llm.data.download", "DownloadError"),
)
# A full, read-only or forbidden disk: the path and the cause in one line, never a traceback.
_NO_WRITE_ERRNOS = frozenset(getattr(errno, n) for n in ("ENOSPC", "EDQUOT", "EROFS") if hasattr(errno, n))
DISK_ERRNOS = _NO_WRITE_ERRNOS | {errno.EACCES, errno.EPERM}


def parse_override(override: str) -> tuple[str, object]:
    """``key=value`` as (key, value as Hydra reads it): a multirun job records ``optimizer.lr=0.001``
    and ``x=False`` for what a single run's command line spelled ``optimizer.lr=1e-3`` and ``x=false``,
    so numbers become floats and true/false/null lower case; ``+key``/``~key`` lose their sign. Used
    to compare runs' overrides (``lit_llm.plot``) and to record them as hyperparameters."""
    key, _, value = override.partition("=")
    key = key.lstrip("+~")
    if value.lower() in ("true", "false", "null"):
        return key, value.lower()
    try:
        number = float(value)
    except ValueError:
        return key, value
    return key, number if math.isfinite(number) else value  # "nan" stays text: nan != nan


def is_user_error(exc: BaseException) -> bool:
    """Bad input found once the data or a checkpoint is opened (missing file, a checkpoint of another
    shape, an invalid value, an existing output), or a diverged run: reported in one line."""
    if isinstance(exc, USER_ERRORS) or is_disk_error(exc):
        return True
    for module, name in LAZY_USER_ERRORS:
        kind = getattr(sys.modules.get(module), name, None)
        if kind is not None and isinstance(exc, kind):
            return True
    return False


def is_disk_error(exc: BaseException) -> bool:
    """An ``OSError`` of a full, read-only or forbidden disk (ENOSPC, EDQUOT, EROFS, EACCES, EPERM)."""
    return isinstance(exc, OSError) and exc.errno in DISK_ERRNOS


def message(exc: BaseException) -> str:
    """The text after ``error:``: a disk error as ``cannot write PATH: CAUSE``, anything else as itself."""
    if not is_disk_error(exc):
        return str(exc)
    assert isinstance(exc, OSError)
    verb = "cannot write" if exc.errno in _NO_WRITE_ERRNOS else "cannot access"
    where = f" {os.fsdecode(exc.filename)}" if exc.filename is not None else ""
    return f"{verb}{where}: {os.strerror(exc.errno)}"


def report(exc: BaseException) -> None:
    """Print ``error: <message>`` on stderr and exit with ``exit_code(exc)``."""
    print(f"error: {message(exc)}", file=sys.stderr)
    sys.exit(exit_code(exc))


def exit_code(exc: BaseException) -> int:
    return 2 if isinstance(exc, ConfigError) else 1


def report_errors(task: Callable[[DictConfig], Any]) -> Callable[[DictConfig], None]:
    """``task`` with user errors turned into one ``error:`` line and an exit status (see the module)."""

    @functools.wraps(task)  # Hydra unwraps it to name the job (train.log) after the task's module
    def wrapped(cfg: DictConfig) -> None:
        try:
            task(cfg)
        except Exception as exc:
            if not is_user_error(exc) or os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            report(exc)

    return wrapped


def main(
    config_name: str, *, config_path: str = TOOL_CONFIGS
) -> Callable[[Callable[[DictConfig], Any]], Callable[[], None]]:
    """``@hydra.main(config_path, config_name)`` of ``report_errors(task)``."""

    def decorate(task: Callable[[DictConfig], Any]) -> Callable[[], None]:
        return hydra.main(version_base="1.3", config_path=config_path, config_name=config_name)(
            report_errors(task)
        )

    return decorate
