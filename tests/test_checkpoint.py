"""The checkpoint layer: save_checkpoint / load_checkpoint (full round trip, atomic writes, no
unpickling), one error line for every unreadable file whoever loads it, one state-dict check for
load_checkpoint, load_model and resume, and why last.ckpt is written by RunCheckpoint rather than by
Lightning's ModelCheckpoint."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from test_module import TinyData, make_module, make_trainer

from lit_llm.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from lit_llm.losses import cross_entropy
from lit_llm.model import ModelConfig, TransformerLM
from lit_llm.optim import AdamW
from lit_llm.run_checkpoints import AtomicCheckpointIO, RunCheckpoint

TINY = dict(vocab_size=32, context_length=8, d_model=16, num_layers=2, num_heads=2)


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny tensors: a second thread brings nothing, and on a loaded machine it can slow a step 30x.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _train(model, optimizer, steps, seed):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        ids = torch.randint(0, 32, (2, 9), generator=gen)
        optimizer.zero_grad()
        cross_entropy(model(ids[:, :-1]), ids[:, 1:]).backward()
        optimizer.step()


def _fresh(**overrides):
    torch.manual_seed(123)
    model = TransformerLM(**{**TINY, **overrides})
    return model, AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)


@pytest.mark.parametrize("to_file_object", [False, True])
def test_round_trip_restores_model_optimizer_and_iteration(tmp_path, to_file_object):
    model, opt = _fresh()
    _train(model, opt, 3, seed=0)
    target = io.BytesIO() if to_file_object else tmp_path / "sub" / "ckpt.pt"
    save_checkpoint(model, opt, 3, target)
    if to_file_object:
        target.seek(0)
    restored, restored_opt = _fresh()
    assert load_checkpoint(target, restored, restored_opt) == 3
    for (name, a), b in zip(model.state_dict().items(), restored.state_dict().values(), strict=True):
        assert torch.equal(a, b), name  # saved tensors loaded back: exact
    # The optimizer state came back too: training on continues identically (bit-identical weights and
    # state, the same batches, shapes and ops: deterministic on every CPU).
    _train(model, opt, 2, seed=1)
    _train(restored, restored_opt, 2, seed=1)
    for a, b in zip(model.parameters(), restored.parameters(), strict=True):
        assert torch.equal(a, b)


def test_file_holds_plain_state_and_config(tmp_path):
    model, opt = _fresh(tie_embeddings=True)
    path = tmp_path / "ckpt.pt"
    model.compile()  # in place, as training does; never called here, so nothing compiles
    save_checkpoint(model, opt, 7, path)
    payload = torch.load(path, weights_only=True)
    assert set(payload) == {"model", "optimizer", "iteration", "config"}
    assert payload["iteration"] == 7
    assert not any("_orig_mod" in k for k in payload["model"])
    assert ModelConfig.from_dict(payload["config"]) == model.config
    assert list(tmp_path.iterdir()) == [path]  # the temp file was renamed, nothing left behind
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    assert path.stat().st_mode == plain.stat().st_mode  # usual permissions, not a temp file's 0600
    restored, _ = _fresh(tie_embeddings=True)
    restored.compile()
    load_checkpoint(path, restored, None)
    assert restored.lm_head.weight is restored.token_embeddings.weight
    assert torch.equal(restored.lm_head.weight, model.lm_head.weight)  # loaded back: exact


def test_truncated_file_gives_a_clear_error(tmp_path):
    model, opt = _fresh()
    path = tmp_path / "ckpt.pt"
    save_checkpoint(model, opt, 1, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"ckpt\.pt: not a readable checkpoint"):
        load_checkpoint(path, model, opt)


def test_arbitrary_pickles_are_refused(tmp_path):
    path = tmp_path / "evil.pt"

    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    with path.open("wb") as f:
        torch.save({"model": {}, "iteration": 0, "x": Evil()}, f, pickle_module=pickle)
    model, opt = _fresh()
    with pytest.raises(ValueError, match=r"evil\.pt: refused: .*Unsupported global: GLOBAL print was not"):
        load_checkpoint(path, model, opt)


def test_shape_mismatch_names_the_parameter(tmp_path):
    model, opt = _fresh()
    path = tmp_path / "ckpt.pt"
    save_checkpoint(model, opt, 1, path)
    wider, wider_opt = _fresh(d_model=32)
    with pytest.raises(
        ValueError, match=r"token_embeddings\.weight has shape \(32, 16\) in the checkpoint but \(32, 32\)"
    ):
        load_checkpoint(path, wider, wider_opt)
    other, other_opt = _fresh(ffn="silu")
    with pytest.raises(ValueError, match=r"missing: none; unexpected: layers\.0\.ffn\.w3\.weight"):
        load_checkpoint(path, other, other_opt)


def test_missing_file(tmp_path):
    model, opt = _fresh()
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_checkpoint(tmp_path / "nope.pt", model, opt)


# -- one error line for every unreadable file, whoever loads it ----------------------------------------


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def _unreadable(path: Path, kind: str) -> Path:
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "random bytes":
        path.write_bytes(bytes(range(256)) * 4)
    elif kind == "truncated":
        model, opt = _fresh()
        save_checkpoint(model, opt, 1, path)
        path.write_bytes(path.read_bytes()[:2000])
    else:  # a torch.save zip file whose pickle would run code
        torch.save({"model": {}, "iteration": 0, "state_dict": {}, "x": _Evil()}, path)
    return path


UNREADABLE = {
    "empty": "not a readable checkpoint (the file is empty)",
    "random bytes": "not a readable checkpoint (not a zip archive written by torch.save)",
    "truncated": "not a readable checkpoint (truncated or corrupt?): PytorchStreamReader failed",
    "refused pickle": "refused: it holds objects other than tensors and plain data",
}


@pytest.mark.parametrize("kind", UNREADABLE)
def test_an_unreadable_file_is_one_line_naming_it_whoever_loads_it(tmp_path, kind, capsys):
    path = _unreadable(tmp_path / "x.ckpt", kind)
    model, opt = _fresh()
    loaders = {
        "load_checkpoint": lambda: load_checkpoint(path, model, opt),
        "load_model": lambda: load_model(path),
        "AtomicCheckpointIO (resume)": lambda: AtomicCheckpointIO().load_checkpoint(path),
    }
    for who, load in loaders.items():
        with pytest.raises(CheckpointError) as err:
            load()
        message = str(err.value)
        assert message.startswith(f"{path}: {UNREADABLE[kind]}"), (who, message)
        assert "\n" not in message, who
    assert "must never run" not in capsys.readouterr().out


# -- one state-dict check: load_checkpoint, load_model (tests/test_load_model.py) and resume ------------


def test_resume_refuses_another_shape_with_the_same_check():
    small, wide = make_module(), make_module(model={"d_model": 64})
    checkpoint: dict = {"state_dict": small.state_dict()}
    small.on_save_checkpoint(checkpoint)
    with pytest.raises(ValueError) as err:
        wide.on_load_checkpoint(checkpoint)
    vocab = small.config.vocab_size
    assert str(err.value) == (
        "checkpoint holds a model of another shape (d_model: checkpoint 32, config 64; parameter "
        f"model.token_embeddings.weight has shape ({vocab}, 32) in the checkpoint but ({vocab}, 64) in "
        "the model)"
    )
    del checkpoint["state_dict"]["model.lm_head.weight"]
    with pytest.raises(ValueError, match=r"missing: model\.lm_head\.weight; unexpected: none"):
        small.on_load_checkpoint(checkpoint)


# -- last.ckpt: why RunCheckpoint and not Lightning's ModelCheckpoint -----------------------------------


class _RecordingIO(AtomicCheckpointIO):
    """Every checkpoint written through Lightning, as (file name, global step)."""

    def __init__(self) -> None:
        super().__init__()
        self.written: list[tuple[str, int]] = []

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        self.written.append((Path(path).name, checkpoint["global_step"]))
        super().save_checkpoint(checkpoint, path, storage_options)


def _fit_validating_every_2_of_7_steps(callback) -> _RecordingIO:
    io_plugin = _RecordingIO()
    trainer = make_trainer(
        max_steps=7,
        val_check_interval=2,
        check_val_every_n_epoch=None,
        limit_val_batches=1,
        enable_checkpointing=True,
        callbacks=[callback],
        plugins=[io_plugin],
    )
    trainer.fit(make_module(), datamodule=TinyData())
    return io_plugin


def _steps(folder: Path) -> dict[str, int]:
    return {p.name: torch.load(p, weights_only=True)["global_step"] for p in sorted(folder.iterdir())}


def test_model_checkpoint_skips_last_when_validation_does_not_improve_and_run_checkpoint_does_not(tmp_path):
    """The claim in lit_llm/run_checkpoints.py, against the installed Lightning: with save_last=True and
    save_top_k=1, ModelCheckpoint writes last.ckpt only where it also wrote a top-k file. Validations run
    at steps 2, 4, 6; monitoring a falling loss with mode="max" makes only the first an improvement."""
    lightning_dir, ours_dir = tmp_path / "lightning", tmp_path / "ours"
    theirs = _fit_validating_every_2_of_7_steps(
        ModelCheckpoint(
            dirpath=lightning_dir,
            filename="best",
            monitor="val/loss",
            mode="max",
            save_top_k=1,
            save_last=True,
        )
    )
    assert theirs.written == [("best.ckpt", 2), ("last.ckpt", 2)]  # nothing at 4, 6 or the end (7)
    assert _steps(lightning_dir) == {"best.ckpt": 2, "last.ckpt": 2}  # a resume would redo steps 3-7

    ours = _fit_validating_every_2_of_7_steps(RunCheckpoint(dirpath=str(ours_dir), mode="max"))
    # last.ckpt after every validation and at the end; best.ckpt (a copy, not an IO write) on improvement
    assert ours.written == [("last.ckpt", 2), ("last.ckpt", 4), ("last.ckpt", 6), ("last.ckpt", 7)]
    assert _steps(ours_dir) == {"best.ckpt": 2, "last.ckpt": 7}
