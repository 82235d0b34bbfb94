"""Plain-PyTorch checkpoints: model, optimizer, iteration and model config in one file.

A path is written atomically (a temp file in the same folder, then ``os.replace``), so a crash mid-save
leaves the previous checkpoint intact. Loading uses ``torch.load(weights_only=True)``, which refuses to
unpickle arbitrary objects: a checkpoint from elsewhere cannot run code.
"""

from __future__ import annotations

import json
import os
import pickle
import uuid
import zipfile
from pathlib import Path
from typing import IO, Any

import torch
from torch import nn

from lit_llm.model import ModelConfig, TransformerLM
from tokenizer.tokenizer import Tokenizer

PathOrFile = str | os.PathLike | IO[bytes]

_COMPILED_PREFIX = "_orig_mod."


def _unwrap(model: nn.Module) -> nn.Module:
    """The module that ``torch.compile`` wrapped, so state-dict keys carry no ``_orig_mod.`` prefix."""
    return getattr(model, "_orig_mod", model)


def _clean_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    # Also strips the prefix of compiled submodules (torch.compile applied below the top level).
    return {k.replace(_COMPILED_PREFIX, ""): v for k, v in _unwrap(model).state_dict().items()}


def _describe(target: PathOrFile) -> str:
    return str(target) if isinstance(target, str | os.PathLike) else getattr(target, "name", repr(target))


def save_checkpoint(
    model: nn.Module, optimizer: torch.optim.Optimizer | None, iteration: int, out: PathOrFile
) -> None:
    """Save ``{"model", "optimizer", "iteration", "config"}`` to a path (atomically) or a binary file."""
    config = getattr(_unwrap(model), "config", None)
    payload: dict[str, Any] = {
        "model": _clean_state_dict(model),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "iteration": int(iteration),
        "config": config.to_dict() if hasattr(config, "to_dict") else None,
    }
    if not isinstance(out, str | os.PathLike):
        torch.save(payload, out)
        return
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique name in the same folder (os.replace is atomic only within one filesystem); opened with
    # "x" rather than mkstemp so the file gets the usual umask permissions, not mkstemp's 0600.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_checkpoint(src: PathOrFile) -> dict[str, Any]:
    """The raw checkpoint dict (tensors on CPU), with a one-line ``ValueError`` for unreadable files."""
    name = _describe(src)
    if isinstance(src, str | os.PathLike) and not Path(src).is_file():
        raise FileNotFoundError(f"checkpoint not found: {name}")
    try:
        payload = torch.load(src, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"{name}: not a readable checkpoint (truncated or corrupt?): {reason}") from e
    if not isinstance(payload, dict) or not {"model", "iteration"} <= payload.keys():
        raise ValueError(f"{name}: not a lit-llm checkpoint (expected a dict with 'model' and 'iteration')")
    return payload


def _check_compatible(name: str, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    expected = _clean_state_dict(model)
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    if missing or unexpected:
        raise ValueError(
            f"{name}: parameters do not match the model (missing: {', '.join(missing) or 'none'}; "
            f"unexpected: {', '.join(unexpected) or 'none'})"
        )
    for key, tensor in expected.items():
        if tensor.shape != state[key].shape:
            raise ValueError(
                f"{name}: parameter {key} has shape {tuple(state[key].shape)} in the checkpoint but "
                f"{tuple(tensor.shape)} in the model"
            )


def load_checkpoint(src: PathOrFile, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> int:
    """Restore ``model`` (and ``optimizer`` when given) in place; return the saved iteration."""
    name = _describe(src)
    payload = read_checkpoint(src)
    _check_compatible(name, model, payload["model"])
    module = _unwrap(model)
    actual_keys = {k.replace(_COMPILED_PREFIX, ""): k for k in module.state_dict()}
    module.load_state_dict({actual_keys[k]: v for k, v in payload["model"].items()})
    if optimizer is not None:
        if payload.get("optimizer") is None:
            raise ValueError(f"{name}: the checkpoint holds no optimizer state")
        optimizer.load_state_dict(payload["optimizer"])
    return int(payload["iteration"])


# -- using a trained model: load_model ---------------------------------------------------------------

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
_LIGHTNING_PREFIX = "model."


def load_model(
    path: str | os.PathLike, tokenizer: str | os.PathLike | None = None
) -> tuple[TransformerLM, Tokenizer]:
    """(model on CPU, tokenizer) from a Lightning ``.ckpt``, a ``save_checkpoint`` file, or a folder
    written by ``lit_llm.export`` (model.safetensors + config.json + tokenizer files).

    Nothing is unpickled beyond tensors and plain containers (``weights_only=True``; safetensors for
    folders), so a file from elsewhere cannot run code. ``tokenizer`` (a ``Tokenizer.save`` folder)
    overrides the one that belongs to the model; see ``_find_tokenizer`` for how a checkpoint's is found.
    """
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


def _build(name: str, config: dict[str, Any], state: dict[str, torch.Tensor]) -> TransformerLM:
    """A model from its config dict and state dict, with one-line errors for any mismatch."""
    if not isinstance(config, dict):
        raise ValueError(f"{name}: the model config is missing or not a mapping")
    try:
        cfg = ModelConfig.from_dict(config)
    except ValueError as e:
        raise ValueError(f"{name}: {' '.join(str(e).split())}") from None
    model = TransformerLM.from_config(cfg)
    if cfg.tie_embeddings and "lm_head.weight" not in state and "token_embeddings.weight" in state:
        state = {**state, "lm_head.weight": state["token_embeddings.weight"]}  # stored once (safetensors)
    _check_compatible(name, model, state)
    model.load_state_dict(state)
    return model


def _load_ckpt(path: Path, *, explicit: bool) -> tuple[TransformerLM, Tokenizer | None]:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        reason = str(e).splitlines()[0] if str(e) else "unsupported content"
        raise ValueError(
            f"{path}: refused: the file holds objects other than tensors and plain data, which would "
            f"run code when unpickled ({reason})"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"{path}: not a readable checkpoint (truncated or corrupt?): {reason}") from None
    if not isinstance(payload, dict):
        raise ValueError(f"{path}: not a checkpoint (expected a dict, found {type(payload).__name__})")
    if "state_dict" in payload:  # Lightning: LanguageModelModule's keys are "model.<name>"
        config = payload.get("model_config") or (payload.get("hyper_parameters") or {}).get("model")
        state = {
            k.removeprefix(_LIGHTNING_PREFIX).replace(_COMPILED_PREFIX, ""): v
            for k, v in payload["state_dict"].items()
            if k.startswith(_LIGHTNING_PREFIX)
        }
    elif "model" in payload:  # save_checkpoint
        config, state = payload.get("config"), payload["model"]
    else:
        raise ValueError(f"{path}: not a lit-llm checkpoint (no 'state_dict' or 'model' entry)")
    model = _build(str(path), dict(config) if isinstance(config, dict) else config, state)
    return model, None if explicit else Tokenizer.from_dir(_find_tokenizer(path, payload))


def _find_tokenizer(path: Path, payload: dict[str, Any]) -> Path:
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
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
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
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{config_path}: invalid JSON ({e})") from None
    if isinstance(config, dict) and "architectures" in config:
        raise ValueError(
            f"{config_path}: a Hugging Face model folder; load it with transformers "
            "(lit_llm.export format=hf), or export without format=hf for lit-llm"
        )
    try:
        state = load_file(weights_path)
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{weights_path}: not a readable safetensors file ({e})") from None
    return _build(str(weights_path), config, state), Tokenizer.from_dir(folder)
