"""Using a trained model: ``load_model(path) -> (TransformerLM, Tokenizer)`` and the tokenizer lookup.

``path`` is a Lightning ``.ckpt`` (``logs/<name>/<run>/checkpoints/last.ckpt``), a ``save_checkpoint``
file, or a folder written by ``lit_llm.export`` (model.safetensors + config.json + tokenizer files).
Nothing is unpickled beyond tensors and plain containers (``lit_llm.checkpoint.safe_load``; safetensors
for folders), so a file from elsewhere cannot run code. Weights are checked against the config by the
one state-dict check, ``lit_llm.checkpoint.check_state_dict``. Damaged files are refused, not loaded:
a ``.ckpt``'s entries are checked against their CRC-32s (``safe_load``), an exported folder's
``model.safetensors`` against the sha256 its ``config.json`` records (``WEIGHTS_HASH_KEY``).

The tools' start-up checks live here too, so that a bad argument is refused before a model is loaded
or anything printed: :func:`resolve_device`, :func:`check_writable`.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import torch

from lit_llm.checkpoint import CheckpointError, check_state_dict, safe_load
from lit_llm.model import ModelConfig, TransformerLM
from tokenizer.files import probe_writable, read_json, sha256_file
from tokenizer.tokenizer import Tokenizer

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
# config.json of an exported folder: {"sha256": {"model.safetensors": HEX}} beside the ModelConfig keys.
WEIGHTS_HASH_KEY = "sha256"
_LIGHTNING_PREFIX = "model."  # LanguageModelModule's state-dict keys are "model.<name>"


def load_model(
    path: str | os.PathLike, tokenizer: str | os.PathLike | None = None
) -> tuple[TransformerLM, Tokenizer]:
    """(model on CPU in eval mode, tokenizer). ``tokenizer`` (a ``Tokenizer.save`` folder) overrides the
    one that belongs to the model; see :func:`find_tokenizer` for how a checkpoint's is found."""
    path = Path(path)
    if path.is_dir():
        model, own_tokenizer = _load_exported(path)
    elif path.is_file():
        model, own_tokenizer = _load_ckpt(path, explicit=tokenizer is not None)
    else:
        raise FileNotFoundError(f"model not found: {path} (expected a .ckpt file or an exported folder)")
    tok = Tokenizer.from_dir(tokenizer) if tokenizer is not None else own_tokenizer
    assert tok is not None
    if tok.vocab_size > model.config.vocab_size:
        raise ValueError(
            f"{path}: the tokenizer has {tok.vocab_size} tokens but the model only "
            f"vocab_size={model.config.vocab_size}: they do not belong together"
        )
    return model.eval(), tok


def _build(name: str, config: Any, state: dict[str, torch.Tensor]) -> TransformerLM:
    """A model from its config dict and state dict, with one-line errors for any mismatch."""
    if not isinstance(config, dict):
        raise CheckpointError(name, "the model config is missing or not a mapping")
    try:
        cfg = ModelConfig.from_dict(config)
    except ValueError as e:
        raise CheckpointError(name, " ".join(str(e).split())) from None
    model = TransformerLM.from_config(cfg)
    if cfg.tie_embeddings and "lm_head.weight" not in state and "token_embeddings.weight" in state:
        state = {**state, "lm_head.weight": state["token_embeddings.weight"]}  # stored once (safetensors)
    check_state_dict(name, model.state_dict(), state)
    model.load_state_dict(state)
    return model


def _load_ckpt(path: Path, *, explicit: bool) -> tuple[TransformerLM, Tokenizer | None]:
    payload = safe_load(path, mmap=True)
    if not isinstance(payload, dict):
        raise CheckpointError(
            str(path), f"not a checkpoint (expected a dict, found {type(payload).__name__})"
        )
    if "state_dict" in payload:  # Lightning
        config = payload.get("model_config") or (payload.get("hyper_parameters") or {}).get("model")
        state = {
            k.removeprefix(_LIGHTNING_PREFIX): v
            for k, v in payload["state_dict"].items()
            if k.startswith(_LIGHTNING_PREFIX)
        }
    elif "model" in payload:  # save_checkpoint
        config, state = payload.get("config"), payload["model"]
    else:
        raise CheckpointError(str(path), "not a lit-llm checkpoint (no 'state_dict' or 'model' entry)")
    model = _build(str(path), dict(config) if isinstance(config, dict) else config, state)
    return model, None if explicit else Tokenizer.from_dir(find_tokenizer(path, payload))


def find_tokenizer(path: Path, payload: dict[str, Any]) -> Path:
    """The tokenizer folder of a checkpoint, identified by content rather than by a stored path.

    A Lightning checkpoint records the data fingerprint (``TokenWindowDataModule`` state), which holds
    the tokenizer's hash. Tokenizer folders (``<artifacts>/tokenizers/*/meta.json``) are searched under
    the run's recorded ``paths.artifacts_dir``, the current folder and every folder above the checkpoint;
    the one whose hash matches is the tokenizer the model was trained with. A ``tokenizer_dir`` entry
    in the checkpoint, if a future version writes one, is tried first (and checked against the hash).
    """
    wanted = next(
        (
            v["fingerprint"].get("tokenizer")
            for v in payload.values()
            if isinstance(v, dict) and isinstance(v.get("fingerprint"), dict)
        ),
        None,
    )
    stored = payload.get("tokenizer_dir")
    stored_hash = _tokenizer_hash(Path(stored)) if isinstance(stored, str) else None
    if stored_hash is not None and wanted in (None, stored_hash):
        return Path(stored)
    searched = []
    if wanted is not None:
        roots = [*_recorded_artifacts_dirs(path), Path.cwd() / "artifacts"]
        roots += [parent / "artifacts" for parent in path.resolve().parents]
        for root in dict.fromkeys(roots):
            folder = root / "tokenizers"
            if folder.is_dir():
                searched.append(str(folder))
                for candidate in sorted(p.parent for p in folder.glob("*/meta.json")):
                    if _tokenizer_hash(candidate) == wanted:
                        return candidate
    what = f"with hash {wanted[:12]}..." if wanted else "(the checkpoint records no tokenizer hash)"
    where = f"searched {', '.join(searched)}" if searched else "no artifacts/tokenizers folder searched"
    raise FileNotFoundError(
        f"{path}: tokenizer {what} not found ({where}); pass tokenizer=<folder written by Tokenizer.save>"
    )


def _tokenizer_hash(folder: Path) -> str | None:
    """The ``hash`` recorded in a tokenizer folder's meta.json (None if unreadable);
    ``Tokenizer.from_dir`` re-checks it against the files when the folder is loaded."""
    try:
        meta = read_json(folder / "meta.json")
    except (OSError, ValueError):
        return None
    return meta.get("hash") if isinstance(meta, dict) else None


def _recorded_artifacts_dirs(path: Path) -> list[Path]:
    """``paths.artifacts_dir`` from the run's ``.hydra/config.yaml`` (logs/<name>/<run>/checkpoints/x.ckpt),
    where it was given as a literal path rather than an interpolation."""
    config = path.resolve().parent.parent / ".hydra" / "config.yaml"
    if not config.is_file():
        return []
    from omegaconf import OmegaConf

    try:
        run_config = OmegaConf.to_container(OmegaConf.load(config), resolve=False)
        value = run_config["paths"]["artifacts_dir"]
    except Exception:  # an unreadable run config only removes one place to look
        return []
    return [Path(value)] if isinstance(value, str) and "${" not in value else []


def _load_exported(folder: Path) -> tuple[TransformerLM, Tokenizer]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    config_path, weights_path = folder / CONFIG_FILE, folder / MODEL_FILE
    for required in (config_path, weights_path, folder / "meta.json"):
        if not required.is_file():
            raise FileNotFoundError(
                f"{folder}: missing {required.name} (not a folder written by lit_llm.export)"
            )
    config = read_json(config_path, "model config")
    if isinstance(config, dict) and "architectures" in config:
        raise ValueError(
            f"{config_path}: a Hugging Face model folder; load it with transformers "
            "(lit_llm.export format=hf), or export without format=hf for lit-llm"
        )
    if isinstance(config, dict):
        config = dict(config)
        recorded = config.pop(WEIGHTS_HASH_KEY, None)
        expected = recorded.get(MODEL_FILE) if isinstance(recorded, dict) else None  # older: none
        if expected is not None and sha256_file(weights_path) != expected:
            raise CheckpointError(
                str(weights_path), f"damaged (its sha256 differs from the one recorded in {config_path.name})"
            )
    try:
        state = load_file(weights_path)
    except (SafetensorError, OSError) as e:
        raise CheckpointError(str(weights_path), f"not a readable safetensors file ({e})") from None
    return _build(str(weights_path), config, state), Tokenizer.from_dir(folder)


# -- the tools' start-up checks ------------------------------------------------------------------------


def available_devices() -> list[str]:
    """The devices this torch build and machine can run on: cpu, then cuda:0.., mps, xpu:0.."""
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        devices += [f"xpu:{i}" for i in range(xpu.device_count())]
    return devices


def resolve_device(spec: Any, key: str = "device") -> torch.device:
    """``device=`` as a torch.device this process can use, else one ValueError line that lists the
    available ones: garbage (``gpu``), a backend absent from this torch build or machine (``cuda`` on a
    CPU-only torch, ``mps`` off Apple silicon), or an index beyond the device count (``cuda:3``)."""
    spec = "cpu" if spec is None or spec == "" else spec
    available = ", ".join(available_devices())
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(
            f"{key}={spec}: not a device (expected cpu, cuda, cuda:N or mps; available: {available})"
        ) from None
    if device.type == "cpu":
        return device
    backend = {"cuda": torch.cuda, "mps": getattr(torch.backends, "mps", None)}.get(
        device.type, getattr(torch, device.type, None)
    )
    is_available = getattr(backend, "is_available", None)
    if not callable(is_available):
        raise ValueError(f"{key}={spec}: not a device to run a model on (available: {available})")
    if not is_available():
        built = {"cuda": torch.backends.cuda.is_built, "mps": getattr(backend, "is_built", None)}.get(
            device.type
        )
        where = "in this torch build" if built is not None and not built() else "on this machine"
        raise ValueError(f"{key}={spec}: not available {where} (available: {available})")
    count = getattr(backend, "device_count", None)
    if device.index is not None and callable(count) and device.index >= count():
        raise ValueError(
            f"{key}={spec}: no such device ({count()} {device.type} device(s); available: {available})"
        )
    return device


def check_writable(path: str | os.PathLike, key: str = "out") -> None:
    """Refuse (one ValueError line naming the path and the OS's reason) an output that could not be
    written, before any work: probe the nearest existing folder above it (the writers create missing
    parents) with ``tokenizer.files.probe_writable``."""
    path = Path(path)
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        if not folder.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        probe_writable(folder)
    except OSError as e:
        reason = os.strerror(e.errno) if e.errno else str(e)
        where = "" if folder == path.parent else f" (in {folder})"
        raise ValueError(f"{key}={path}: cannot be written{where}: {reason}") from None
