"""Issue 12 (tools): damaged files are refused, not loaded; an unusable device, a bad argument or an
unwritable output is one ``error:`` line before any model is loaded or anything printed.

The CLI cases run the real Hydra entry points in this process (``main()`` with ``sys.argv``): the
same code path as ``python -m lit_llm.generate``, without a Python start-up per case; one subprocess
case checks the real command line.
"""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lit_llm import evaluate as evaluate_tool
from lit_llm import export as export_tool
from lit_llm import generate as generate_tool
from lit_llm.checkpoint import CheckpointError, check_integrity, safe_load
from lit_llm.export import export_model
from lit_llm.loading import load_model, resolve_device
from lit_llm.run_checkpoints import AtomicCheckpointIO
from tests.tiny_lm import SMALL_MERGES, byte_tokenizer, one_thread, tiny_model, write_lightning_ckpt  # noqa: F401

REPO = Path(__file__).resolve().parent.parent
TOOLS = {"generate": generate_tool, "evaluate": evaluate_tool, "export": export_tool}


def run_tool(tool: str, *args: str, capsys: pytest.CaptureFixture, monkeypatch) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``python -m lit_llm.<tool> ARGS``, run in this process."""
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setattr(sys, "argv", [tool, *args])
    capsys.readouterr()
    try:
        TOOLS[tool].main()
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error_line(result: tuple[int, str, str], *expected: str) -> str:
    """Exit 1, nothing on stdout, stderr exactly one ``error:`` line holding every ``expected``."""
    code, out, err = result
    assert code == 1, (code, out, err)
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    for text in expected:
        assert text in err, err
    return err.strip()


@pytest.fixture
def models(tmp_path: Path) -> dict[str, Path]:
    """A Lightning .ckpt (with its tokenizer under artifacts/), an exported folder, and a text file."""
    model, tokenizer = tiny_model(), byte_tokenizer(SMALL_MERGES)
    tokenizer.save(tmp_path / "artifacts" / "tokenizers" / "small")
    ckpt = write_lightning_ckpt(tmp_path / "run" / "checkpoints" / "last.ckpt", model, tokenizer)
    exported = export_model(model, tokenizer, tmp_path / "exported")
    text = tmp_path / "valid.txt"
    text.write_text("the hat and the cat " * 5, encoding="utf-8")
    return {"ckpt": ckpt, "exported": exported, "text": text}


# -- 5. damaged files --------------------------------------------------------------------------------


def flip_byte_in_largest_tensor(ckpt: Path) -> str:
    """Overwrite one byte in the middle of the largest tensor's data of a torch.save file; its entry."""
    with zipfile.ZipFile(ckpt) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    data = bytearray(ckpt.read_bytes())
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26 : info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len  # the entry's data (stored, uncompressed)
    data[start + info.file_size // 2] ^= 0x5A
    ckpt.write_bytes(bytes(data))
    return info.filename


def flip_byte_in_safetensors(path: Path) -> None:
    """Overwrite one byte in the middle of the tensor data (after the JSON header) of a safetensors file."""
    data = bytearray(path.read_bytes())
    header = 8 + struct.unpack("<Q", data[:8])[0]
    data[header + (len(data) - header) // 2] ^= 0x5A
    path.write_bytes(bytes(data))


def test_a_byte_changed_inside_a_tensor_of_a_ckpt_is_refused_by_every_loader(models, capsys) -> None:
    ckpt = models["ckpt"]
    entry = flip_byte_in_largest_tensor(ckpt)
    # The defect: torch reads the damaged file without a word (a tensor with a different value).
    assert "state_dict" in torch.load(ckpt, weights_only=True)
    expected = f"{ckpt}: damaged (entry {entry} fails its CRC check)"
    loaders = {
        "safe_load": lambda: safe_load(ckpt),
        "safe_load(mmap)": lambda: safe_load(ckpt, mmap=True),
        "safe_load(file object)": lambda: safe_load(io.BytesIO(ckpt.read_bytes())),
        "load_model": lambda: load_model(ckpt),
        "AtomicCheckpointIO (resume)": lambda: AtomicCheckpointIO().load_checkpoint(ckpt),
    }
    for who, load in loaders.items():
        with pytest.raises(CheckpointError) as err:
            load()
        message = str(err.value)
        if who == "safe_load(file object)":  # a BytesIO has no name
            message = message.split(": ", 1)[1]
            assert message == f"damaged (entry {entry} fails its CRC check)", who
        else:
            assert message == expected, who


def test_an_intact_file_object_loads_and_is_left_where_it_was(models) -> None:
    buffer = io.BytesIO(models["ckpt"].read_bytes())
    buffer.seek(0)
    check_integrity(buffer)  # reads every entry, then puts the position back for torch.load
    assert buffer.tell() == 0
    assert "state_dict" in safe_load(buffer)


def test_a_byte_changed_inside_an_exported_model_is_refused(models) -> None:
    weights = models["exported"] / "model.safetensors"
    flip_byte_in_safetensors(weights)
    assert load_file(weights)  # the defect: safetensors reads it without a word
    with pytest.raises(CheckpointError) as err:
        load_model(models["exported"])
    assert str(err.value) == f"{weights}: damaged (its sha256 differs from the one recorded in config.json)"


@pytest.mark.parametrize("which", ["ckpt", "exported"])
@pytest.mark.parametrize("tool", ["generate", "evaluate"])
def test_generate_and_evaluate_refuse_a_damaged_model(models, which, tool, capsys, monkeypatch) -> None:
    if which == "ckpt":
        flip_byte_in_largest_tensor(models["ckpt"])
        damaged = str(models["ckpt"])
    else:
        flip_byte_in_safetensors(models["exported"] / "model.safetensors")
        damaged = str(models["exported"] / "model.safetensors")
    monkeypatch.chdir(models["text"].parent)
    args = [f"ckpt={models[which]}", "prompt=the", "max_new_tokens=4"]
    if tool == "evaluate":
        args = [f"ckpt={models[which]}", f"data={models['text']}", "num_workers=1", "progress=false"]
    assert_one_error_line(run_tool(tool, *args, capsys=capsys, monkeypatch=monkeypatch), damaged, "damaged")


def test_the_command_line_refuses_a_damaged_checkpoint(models) -> None:
    entry = flip_byte_in_largest_tensor(models["ckpt"])
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("HYDRA_FULL_ERROR", None)
    result = subprocess.run(
        [sys.executable, "-m", "lit_llm.generate", f"ckpt={models['ckpt']}", "prompt=the"],
        cwd=models["text"].parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == f"error: {models['ckpt']}: damaged (entry {entry} fails its CRC check)\n"


# -- 7. devices --------------------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a torch without a usable CUDA device")
@pytest.mark.parametrize("tool", ["generate", "evaluate"])
def test_cuda_on_a_cpu_only_torch_is_one_line_listing_the_devices(models, tool, capsys, monkeypatch) -> None:
    built = "in this torch build" if not torch.backends.cuda.is_built() else "on this machine"
    # ckpt= names nothing: the device is checked before the model is looked for.
    args = ["ckpt=missing", "data=missing.txt" if tool == "evaluate" else "prompt=the"]
    err = assert_one_error_line(run_tool(tool, *args, "device=cuda", capsys=capsys, monkeypatch=monkeypatch))
    assert err == f"error: device=cuda: not available {built} (available: cpu)"
    err = assert_one_error_line(run_tool(tool, *args, "device=gpu", capsys=capsys, monkeypatch=monkeypatch))
    assert err == "error: device=gpu: not a device (expected cpu, cuda, cuda:N or mps; available: cpu)"


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="needs a machine without MPS")
def test_mps_where_there_is_none_is_one_line() -> None:
    with pytest.raises(
        ValueError, match=r"^device=mps: not available (in this torch build|on this machine) "
    ):
        resolve_device("mps")


def test_a_cuda_index_beyond_the_device_count_is_one_line(monkeypatch) -> None:
    # A stand-in for a one-GPU machine (this one may have none): only the count is pretended.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(ValueError) as err:
        resolve_device("cuda:3")
    assert str(err.value).startswith(
        "device=cuda:3: no such device (1 cuda device(s); available: cpu, cuda:0"
    )
    assert resolve_device("cpu") == torch.device("cpu") and resolve_device(None) == torch.device("cpu")


# -- 9. every argument checked before any output -----------------------------------------------------


@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        ("max_new_tokens=-1", "max_new_tokens=-1: expected an integer >= 0"),
        ("temperature=-0.5", "temperature=-0.5: expected a number >= 0"),
        ("top_p=0", "top_p=0: expected a number in (0, 1]"),
        ("top_p=1.5", "top_p=1.5: expected a number in (0, 1]"),
        ("top_k=0", "top_k=0: expected a positive integer or None"),
        ("num_samples=0", "num_samples=0: expected an integer >= 1"),
        ("seed=abc", "seed='abc': expected an integer or null"),
        ("prompt=" + "x" * 40, "prompt is 40 tokens; expected 1 to context_length=16 tokens"),
    ],
)
def test_generate_refuses_a_bad_value_before_printing(models, arg, expected, capsys, monkeypatch) -> None:
    args = [f"ckpt={models['exported']}", "prompt=the", arg]
    assert_one_error_line(run_tool("generate", *args, capsys=capsys, monkeypatch=monkeypatch), expected)


def test_generate_refuses_a_prompt_file_that_is_not_utf8_naming_it_and_the_byte(
    models, tmp_path, capsys, monkeypatch
) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes(b"the cat\n" + b"caf\xe9\n")  # Latin-1, not UTF-8: byte 11
    args = [f"ckpt={models['exported']}", f"prompt_file={prompts}"]
    err = assert_one_error_line(run_tool("generate", *args, capsys=capsys, monkeypatch=monkeypatch))
    assert err == f"error: {prompts}: invalid UTF-8 at byte 11"
    long = tmp_path / "long.txt"
    long.write_text(
        "the cat\n" + "y" * 30 + "\n", encoding="utf-8"
    )  # the second is too long: nothing printed
    args = [f"ckpt={models['exported']}", f"prompt_file={long}"]
    assert_one_error_line(
        run_tool("generate", *args, capsys=capsys, monkeypatch=monkeypatch),
        f"prompt 2 of prompt_file={long} is 30 tokens",
    )


def test_max_new_tokens_zero_prints_the_prompt_only(models, capsys, monkeypatch) -> None:
    args = [f"ckpt={models['exported']}", "prompt=the cat", "max_new_tokens=0"]
    assert run_tool("generate", *args, capsys=capsys, monkeypatch=monkeypatch) == (0, "the cat\n", "")


def _npy_files(tmp_path: Path) -> dict[str, Path]:
    good = tmp_path / "good.npy"
    np.save(good, np.arange(50, dtype=np.uint16))
    truncated = tmp_path / "truncated.npy"
    truncated.write_bytes(good.read_bytes()[:-40])
    garbage = tmp_path / "garbage.npy"
    garbage.write_bytes(b"not a numpy file at all")
    pickled = tmp_path / "pickled.npy"
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    floats = tmp_path / "floats.npy"
    np.save(floats, np.ones(10, dtype=np.float32))
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes(b"the cat " * 10 + b"caf\xe9")
    return {
        "truncated": truncated,
        "garbage": garbage,
        "pickled": pickled,
        "floats": floats,
        "latin1": latin1,
    }


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["batch_size=0"], ["batch_size=0: expected an integer >= 1"]),
        (["stride=0"], ["stride=0: expected an integer >= 1"]),
        (["stride=17"], ["stride=17: expected an integer in 1..context_length=16"]),
        (["data=nope.txt"], ["data=nope.txt: no such file"]),
        (["data=truncated.npy"], ["data=truncated.npy: not a readable .npy token array ("]),
        (["data=garbage.npy"], ["data=garbage.npy: not a readable .npy token array ("]),
        (["data=pickled.npy"], ["data=pickled.npy: not a readable .npy token array ("]),
        (["data=floats.npy"], ["data=floats.npy: expected a 1-D integer token array, got float32"]),
        (["data=latin1.txt"], ["latin1.txt: invalid UTF-8 at byte 83"]),
    ],
)
def test_evaluate_refuses_a_bad_value_or_data_file_naming_it(
    models, tmp_path, args, expected, capsys, monkeypatch
) -> None:
    _npy_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    given = {"data": "valid.txt"} | dict(a.split("=", 1) for a in args)
    argv = [f"ckpt={models['exported']}", "num_workers=1", "progress=false"]
    argv += [f"{k}={v}" for k, v in given.items()]
    assert_one_error_line(run_tool("evaluate", *argv, capsys=capsys, monkeypatch=monkeypatch), *expected)


# -- 6. outputs checked writable before the model is loaded ------------------------------------------


def test_evaluate_and_export_refuse_an_unwritable_output_before_loading(
    tmp_path, capsys, monkeypatch
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    (tmp_path / "valid.txt").write_text("the cat", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    # ckpt= names nothing: the output is checked before the model is looked for.
    evaluate = run_tool(
        "evaluate",
        "ckpt=missing",
        "data=valid.txt",
        "out=a-file/r.json",
        capsys=capsys,
        monkeypatch=monkeypatch,
    )
    err = assert_one_error_line(evaluate)
    assert err == f"error: out=a-file/r.json: cannot be written: {os.strerror(20)}"  # ENOTDIR
    export = run_tool("export", "ckpt=missing", "out=a-file/model", capsys=capsys, monkeypatch=monkeypatch)
    assert assert_one_error_line(export) == f"error: out=a-file/model: cannot be written: {os.strerror(20)}"
    deep = run_tool("export", "ckpt=missing", "out=a-file/x/y/model", capsys=capsys, monkeypatch=monkeypatch)
    assert assert_one_error_line(deep) == (
        f"error: out=a-file/x/y/model: cannot be written (in a-file): {os.strerror(20)}"
    )
    folder = run_tool(
        "evaluate", "ckpt=missing", "data=valid.txt", "out=.", capsys=capsys, monkeypatch=monkeypatch
    )
    assert assert_one_error_line(folder) == "error: out=.: is a folder (expected a JSON file to write)"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "valid.txt"]  # no probe left behind
