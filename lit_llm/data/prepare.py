"""Text files -> tokenizer -> token arrays, each step cached under ``artifacts/`` and keyed by its inputs.

The pipeline (what ``TokenWindowDataModule.prepare_data`` runs):

1. **text**: a named dataset is downloaded (``lit_llm.data.download``) or generated
   (``quickstart``, ``lit_llm.data.synthetic``); or local files are used (``train_file`` / ``val_file``).
   A single file is split once, at a story or line boundary, into ``artifacts/splits/``.
2. **tokenizer**: ``train_bpe`` on the training text -> ``artifacts/tokenizers/<name>-v<vocab>-<key>/``,
   the key being a hash of (training text's SHA-256, vocab size, special tokens).
3. **tokens**: ``encode_file`` of both splits -> ``artifacts/tokens/<tokenizer dir>-<key>/{train,valid}.npy``,
   keyed by (tokenizer, both texts' SHA-256).

Every output is built in a temporary folder and renamed into place (``tokenizer.files.building_dir``),
so a folder that exists is whole: its existence is the cache hit. Nothing is reused when an input
changed, because every input is part of the key; a file's SHA-256 is itself cached by (path, size,
mtime), so a warm run hashes nothing.

A cache that is only partly written never validates: folders appear whole or not at all (above); the
quickstart corpus's ``corpus.json`` is removed before its text files are rewritten and written after
them. Stale temporary files of killed runs (``tokenizer.files.sweep_stale_temps``) are swept from
every folder a step writes into before it writes. Invalid UTF-8 in a text is refused up front, naming
that file and the byte (``FILE: invalid UTF-8 at byte N``, found in the same pass that hashes it),
unless ``data.errors=replace``, which then applies to tokenizer training and encoding alike.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from lit_llm.data import download, synthetic
from tokenizer.bpe import train_bpe
from tokenizer.encode_to_npy import encode_file
from tokenizer.files import (
    EOT,
    UTF8_ERRORS,
    InvalidUTF8Error,
    building_dir,
    read_json,
    scan_file,
    sweep_stale_temps,
    write_json,
)
from tokenizer.tokenizer import Tokenizer

log = logging.getLogger(__name__)

DATASETS = ("quickstart", "shakespeare", "tinystories", "owt", "local")
PIPELINE_VERSION = 1  # bump when a step's output format changes, so old artifacts are not reused
_BLOCK = 1 << 20
# encode_file's workers are spawned and re-import the main module (for `python -m lit_llm.train`,
# Lightning: seconds per worker). Below this size one process encodes faster than a pool starts.
_IN_PROCESS_BYTES = 32 << 20


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class DataSpec:
    """What to prepare; every field is a ``data.<field>`` config key (names in errors match)."""

    dataset: str = "quickstart"
    train_file: str | None = None
    val_file: str | None = None
    val_fraction: float = 0.1
    vocab_size: int = 2000
    special_tokens: tuple[str, ...] = (EOT,)
    data_dir: str = "data"
    artifacts_dir: str = "artifacts"
    tokenizer_workers: int | None = None
    tokenizer_train_bytes: int | None = None
    """Train the tokenizer on the first N bytes of the training text only (None: all of it)."""
    synthetic_stories: int = 10000
    synthetic_val_stories: int = 1000
    synthetic_seed: int = 0
    errors: str = "strict"
    """Invalid UTF-8 in a text: refuse it (strict) or replace it by U+FFFD (replace)."""

    def problems(self) -> list[str]:
        """Every invalid field, one phrase each (reported all at once, naming the key)."""
        out = []
        if self.dataset not in DATASETS:
            out.append(f"data.dataset={self.dataset!r}: expected one of {', '.join(DATASETS)}")
        if self.dataset == "local" and not self.train_file:
            out.append("data.train_file is required when data.dataset=local")
        if self.val_file and not self.train_file:
            out.append(f"data.val_file={self.val_file!r} needs data.train_file too")
        if self._needs_split() and not (
            isinstance(self.val_fraction, float | int)
            and not isinstance(self.val_fraction, bool)
            and 0 < self.val_fraction < 1
        ):
            out.append(f"data.val_fraction={self.val_fraction!r}: expected a number strictly between 0 and 1")
        if len(set(self.special_tokens)) != len(self.special_tokens) or not all(self.special_tokens):
            out.append(
                f"data.special_tokens={list(self.special_tokens)!r}: expected distinct non-empty strings"
            )
        if self.errors not in UTF8_ERRORS:
            out.append(f"data.errors={self.errors!r}: expected one of {', '.join(UTF8_ERRORS)}")
        least = 256 + len(self.special_tokens)
        if not _is_int(self.vocab_size) or self.vocab_size < least:
            out.append(
                f"data.vocab_size={self.vocab_size!r}: expected an integer >= {least} (256 bytes + specials)"
            )
        counts = ["tokenizer_workers", "tokenizer_train_bytes"]
        if self.dataset == "quickstart" and not self.train_file:
            counts += ["synthetic_stories", "synthetic_val_stories"]
        for key in counts:
            value = getattr(self, key)
            optional = key.startswith("tokenizer")
            if not (value is None and optional) and (not _is_int(value) or value < 1):
                out.append(
                    f"data.{key}={value!r}: expected a positive integer" + (" or null" if optional else "")
                )
        return out

    def _needs_split(self) -> bool:
        return (self.train_file is not None and self.val_file is None) or (
            self.train_file is None and self.dataset == "shakespeare"
        )


@dataclass(frozen=True)
class Prepared:
    """Where the prepared data lives, and what it is (the fingerprint goes into checkpoints)."""

    tokenizer_dir: Path
    train_tokens: Path
    val_tokens: Path
    val_bytes_per_token: float
    fingerprint: dict = field(default_factory=dict)


# -- file identity -----------------------------------------------------------------------------------


def _file_record(path: Path, cache_dir: Path) -> dict:
    """A file's SHA-256 and first invalid UTF-8 byte (``invalid_utf8_at``, None if none), computed in
    one pass and remembered by (absolute path, size, mtime) so that a warm run reads nothing."""
    st = path.stat()
    record_path = cache_dir / (hashlib.sha1(str(path.resolve()).encode()).hexdigest() + ".json")
    stamp = {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    try:
        record = json.loads(record_path.read_text())
        if {k: record.get(k) for k in stamp} == stamp and "invalid_utf8_at" in record:
            return {"sha256": record["sha256"], "invalid_utf8_at": record["invalid_utf8_at"]}
    except (OSError, ValueError, KeyError):
        pass
    digest, bad = scan_file(path)
    sweep_stale_temps(cache_dir)
    write_json(record_path, {**stamp, "sha256": digest, "invalid_utf8_at": bad})
    return {"sha256": digest, "invalid_utf8_at": bad}


def file_digest(path: Path, cache_dir: Path) -> str:
    """SHA-256 of a file's content, remembered by (absolute path, size, mtime) so it is computed once."""
    return _file_record(path, cache_dir)["sha256"]


def check_text(spec: DataSpec, path: Path, cache_dir: Path) -> str:
    """``path``'s SHA-256, after refusing invalid UTF-8 in it (``FILE: invalid UTF-8 at byte N``) unless
    ``spec.errors == "replace"``. Run on the user's own file, so the error names it, not a split."""
    record = _file_record(path, cache_dir)
    if record["invalid_utf8_at"] is not None and spec.errors != "replace":
        raise InvalidUTF8Error(path, record["invalid_utf8_at"])
    return record["sha256"]


def _key(**parts) -> str:
    return hashlib.sha256(json.dumps({"v": PIPELINE_VERSION, **parts}, sort_keys=True).encode()).hexdigest()


def _reused(build: bool, message: str, *args) -> None:
    """One line per reused step while preparing; quiet when only locating (``setup`` on every rank)."""
    log.log(logging.INFO if build else logging.DEBUG, message, *args)


def _missing(what: Path) -> FileNotFoundError:
    return FileNotFoundError(
        f"{what} is missing: run prepare_data() first (rank 0 prepares, others only read)"
    )


# -- step 1: the text ------------------------------------------------------------------------------


def _check_text(path: Path, key: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"data.{key}={str(path)!r}: no such file")
    if path.stat().st_size == 0:
        raise ValueError(f"data.{key}={str(path)!r}: the file is empty; expected UTF-8 text")
    return path


def find_boundary(path: Path, target: int, special_tokens: tuple[str, ...]) -> int:
    """The first story or line boundary at or after byte ``target``: just past a special token (and the
    newline after it) where the text has one within reach, else just past a newline."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        f.seek(target)
        window = f.read(min(size - target, 4 * _BLOCK))
    for marker in [s.encode() for s in special_tokens] + [b"\n"]:
        i = window.find(marker)
        if i >= 0:
            end = target + i + len(marker)
            return (
                end + 1 if marker != b"\n" and window[i + len(marker) : i + len(marker) + 1] == b"\n" else end
            )
    raise ValueError(f"{path}: no line break after byte {target} to split at; set data.val_file instead")


def _copy_range(src: Path, dst: Path, start: int, stop: int) -> None:
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        fin.seek(start)
        left = stop - start
        while left > 0:
            chunk = fin.read(min(left, 16 * _BLOCK))
            fout.write(chunk)
            left -= len(chunk)


def split_file(spec: DataSpec, source: Path, digest: str, *, build: bool) -> tuple[Path, Path]:
    """One file -> (train, valid) at a boundary near ``1 - val_fraction``; written once, then reused."""
    key = _key(source=digest, val_fraction=spec.val_fraction, special_tokens=list(spec.special_tokens))
    folder = Path(spec.artifacts_dir) / "splits" / f"{source.stem}-{key[:12]}"
    if not folder.is_dir():
        if not build:
            raise _missing(folder)
        size = source.stat().st_size
        cut = find_boundary(source, int(size * (1 - spec.val_fraction)), spec.special_tokens)
        if cut >= size:
            raise ValueError(
                f"data.val_fraction={spec.val_fraction}: {source} has no story or line boundary in its last "
                f"{size - int(size * (1 - spec.val_fraction))} bytes, so the validation split would be empty"
            )
        sweep_stale_temps(folder.parent)
        with building_dir(folder) as tmp:
            _copy_range(source, tmp / "train.txt", 0, cut)
            _copy_range(source, tmp / "valid.txt", cut, size)
        log.info("split %s: built %s (%d + %d bytes)", source.name, folder, cut, size - cut)
    else:
        _reused(build, "split %s: reused %s", source.name, folder)
    return folder / "train.txt", folder / "valid.txt"


def _quickstart_corpus(spec: DataSpec, build: bool) -> tuple[Path, Path]:
    folder = download.dataset_dir("quickstart", spec.data_dir)
    params = {
        "generator_version": synthetic.GENERATOR_VERSION,
        "seed": spec.synthetic_seed,
        "train_stories": spec.synthetic_stories,
        "val_stories": spec.synthetic_val_stories,
    }
    train, valid, meta = folder / "train.txt", folder / "valid.txt", folder / "corpus.json"
    try:
        current = json.loads(meta.read_text()) == params and train.is_file() and valid.is_file()
    except (OSError, ValueError):
        current = False
    if current:
        _reused(build, "corpus quickstart: reused %s", folder)
        return train, valid
    if not build:
        raise _missing(meta)
    # The description is removed first and written last: a run killed in between leaves no corpus.json,
    # so whatever text files it left are never taken for a corpus of any settings.
    meta.unlink(missing_ok=True)
    sweep_stale_temps(folder)
    synthetic.write_corpus(train, spec.synthetic_stories, seed=spec.synthetic_seed)
    synthetic.write_corpus(valid, spec.synthetic_val_stories, seed=f"{spec.synthetic_seed}-valid")
    write_json(meta, params)
    log.info(
        "corpus quickstart: built %s (%d + %d stories)",
        folder,
        spec.synthetic_stories,
        spec.synthetic_val_stories,
    )
    return train, valid


def text_files(spec: DataSpec, *, build: bool = True) -> tuple[Path, Path]:
    """The (train, valid) text files of ``spec``, downloading / generating / splitting where needed."""
    hashes = Path(spec.artifacts_dir) / "hashes"
    if spec.train_file:
        train = _check_text(Path(spec.train_file).expanduser(), "train_file")
        if spec.val_file:
            valid = _check_text(Path(spec.val_file).expanduser(), "val_file")
            check_text(spec, train, hashes)
            check_text(spec, valid, hashes)
            return train, valid
        return split_file(spec, train, check_text(spec, train, hashes), build=build)
    if spec.dataset == "quickstart":
        return _quickstart_corpus(spec, build)
    files = {
        r.filename: download.dataset_dir(spec.dataset, spec.data_dir) / r.filename
        for r in download.DATASETS[spec.dataset]
    }
    if build:
        files = download.download_dataset(spec.dataset, spec.data_dir)
    for path in files.values():
        if not path.is_file():
            raise _missing(path)
    if "input.txt" in files:  # one file (Tiny Shakespeare): split it
        return split_file(spec, files["input.txt"], check_text(spec, files["input.txt"], hashes), build=build)
    return files["train.txt"], files["valid.txt"]


# -- steps 2 and 3: tokenizer and token arrays ----------------------------------------------------------


def _head(source: Path, n_bytes: int, out: Path, special_tokens: tuple[str, ...]) -> Path:
    cut = find_boundary(source, n_bytes, special_tokens) if n_bytes < source.stat().st_size else None
    _copy_range(source, out, 0, cut if cut is not None else source.stat().st_size)  # in a building_dir
    return out


def build_tokenizer(spec: DataSpec, train: Path, train_digest: str, label: str, *, build: bool) -> Path:
    key = _key(
        train=train_digest,
        vocab_size=spec.vocab_size,
        special_tokens=list(spec.special_tokens),
        train_bytes=spec.tokenizer_train_bytes,
    )
    folder = Path(spec.artifacts_dir) / "tokenizers" / f"{label}-v{spec.vocab_size}-{key[:12]}"
    if folder.is_dir():
        _reused(build, "tokenizer: reused %s", folder)
        return folder
    if not build:
        raise _missing(folder)
    sweep_stale_temps(folder.parent)
    with building_dir(folder) as tmp:
        source = train
        if spec.tokenizer_train_bytes is not None:
            source = _head(train, spec.tokenizer_train_bytes, tmp / "bpe_input.txt", spec.special_tokens)
        t0 = time.perf_counter()
        vocab, merges = train_bpe(
            source, spec.vocab_size, list(spec.special_tokens), num_workers=spec.tokenizer_workers
        )
        if source != train:
            source.unlink()
        meta = {
            "trained_on": str(train),
            "trained_on_sha256": train_digest,
            "train_bytes": spec.tokenizer_train_bytes,
            "requested_vocab_size": spec.vocab_size,
            "key": key,
        }
        Tokenizer(vocab, merges, list(spec.special_tokens)).save(tmp, extra_meta=meta)
    log.info("tokenizer: built %s (%d tokens) in %.1f s", folder, len(vocab), time.perf_counter() - t0)
    return folder


def encode_splits(
    spec: DataSpec, tokenizer: Tokenizer, tok_dir: Path, texts: dict[str, tuple[Path, str]], *, build: bool
) -> tuple[Path, dict]:
    """``texts``: split name -> (text file, its SHA-256). Returns the tokens folder and its meta."""
    key = _key(tokenizer=tokenizer.fingerprint, **{name: digest for name, (_, digest) in texts.items()})
    folder = Path(spec.artifacts_dir) / "tokens" / f"{tok_dir.name}-{key[:12]}"
    if folder.is_dir():
        _reused(build, "tokens: reused %s", folder)
        return folder, read_json(folder / "meta.json", "tokens meta")
    if not build:
        raise _missing(folder)
    meta = {"tokenizer": tokenizer.fingerprint, "tokenizer_dir": str(tok_dir), "key": key}
    t0 = time.perf_counter()
    sweep_stale_temps(folder.parent)
    with building_dir(folder) as tmp:
        for name, (path, digest) in texts.items():
            workers = spec.tokenizer_workers
            if workers is None and path.stat().st_size < _IN_PROCESS_BYTES:
                workers = 1
            n_tokens = encode_file(
                path, tmp / f"{name}.npy", tokenizer, num_workers=workers, errors=spec.errors, progress=True
            )
            meta[name] = {
                "source": str(path),
                "sha256": digest,
                "n_bytes": path.stat().st_size,
                "n_tokens": n_tokens,
            }
        write_json(tmp / "meta.json", meta)
    log.info(
        "tokens: built %s (%s) in %.1f s",
        folder,
        ", ".join(f"{n}: {meta[n]['n_tokens']:,} tokens" for n in texts),
        time.perf_counter() - t0,
    )
    return folder, meta


def prepare(spec: DataSpec, *, build: bool = True) -> Prepared:
    """Run the pipeline (``build=True``), or only locate its outputs (``build=False``: raise if missing)."""
    problems = spec.problems()
    if problems:
        raise ValueError("invalid data config: " + "; ".join(problems))
    if build:  # the leftovers of killed runs, in every folder the steps write into (hits included)
        artifacts = Path(spec.artifacts_dir)
        for folder in ("hashes", "splits", "tokenizers", "tokens"):
            sweep_stale_temps(artifacts / folder)
        sweep_stale_temps(download.dataset_dir(spec.dataset, spec.data_dir))
    train, valid = text_files(spec, build=build)
    hashes = Path(spec.artifacts_dir) / "hashes"
    digests = {"train": check_text(spec, train, hashes), "valid": check_text(spec, valid, hashes)}
    label = Path(spec.train_file).stem if spec.train_file else spec.dataset
    tok_dir = build_tokenizer(spec, train, digests["train"], label, build=build)
    tokenizer = Tokenizer.from_dir(tok_dir)
    texts = {"train": (train, digests["train"]), "valid": (valid, digests["valid"])}
    tokens_dir, meta = encode_splits(spec, tokenizer, tok_dir, texts, build=build)
    if meta["valid"]["n_tokens"] == 0:
        raise ValueError(f"validation text {valid} encodes to no tokens")
    fingerprint = {
        "tokenizer": tokenizer.fingerprint,
        "tokens": meta["key"],
        "train_tokens": meta["train"]["n_tokens"],
        "val_tokens": meta["valid"]["n_tokens"],
    }
    return Prepared(
        tokenizer_dir=tok_dir,
        train_tokens=tokens_dir / "train.npy",
        val_tokens=tokens_dir / "valid.npy",
        val_bytes_per_token=meta["valid"]["n_bytes"] / meta["valid"]["n_tokens"],
        fingerprint=fingerprint,
    )
