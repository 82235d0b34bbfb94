"""Text generation: ``generate(model, tokenizer, prompt, ...)`` and ``python -m lit_llm.generate``.

One token per step: the model's logits for the last position go through ``lit_llm.sampling`` and the
token is appended. With the KV cache (``use_cache=True``) the prompt is run once and each later step
feeds only the newest token, attending over the keys/values stored for the earlier ones; without it,
every step reruns the whole sequence. Both compute the same function:

- ``num_samples`` continuations of one prompt are one batch: the prompt is run once (batch 1, its
  keys/values broadcast into every row of the cache), then each step is one forward of ``num_samples``
  tokens.
- Past the context length the window is cropped to the last ``context_length`` tokens, exactly as
  without the cache. The hidden state of every token in the window depends on where the window starts,
  so from there on each step recomputes its window (the cache cannot be reused as a sliding window
  without changing the result).

The CLI (Hydra config ``configs/tools/generate.yaml``) streams text to the terminal as it is made.
"""

from __future__ import annotations

import codecs
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from lit_llm import cli
from lit_llm.model import TransformerLM
from lit_llm.model.layers import Linear, column_blocks
from lit_llm.sampling import check_sampling_args, sample_next
from tokenizer.files import EOT, InvalidUTF8Error
from tokenizer.tokenizer import Tokenizer


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@contextmanager
def decoding_layout(model: torch.nn.Module) -> Iterator[None]:
    """On a CPU, a copy of the float32 weights of ``model``'s ``Linear`` layers laid out for decoding
    meanwhile: transposed, cut into one block of columns per thread, and those that read the same
    input side by side.

    Why: a decoding step multiplies one row vector by every weight matrix (a GEMM with M = 1), which
    is bound by reading the weights from memory. With ``W`` stored row-major (as trained), MKL reads
    ``W.t()`` at ~16 GB/s here, and even an (in, out)-contiguous operand at ~25-35 GB/s on one thread
    only, whatever the thread count. ``layers.column_blocks`` stores W^T as one contiguous block of
    columns per thread, which ``torch.bmm`` streams on all threads at once (each output column is the
    same dot product). Modules whose projections read one input (``fusable_projections``: attention's
    q, k, v; SwiGLU's w1, w3) get their weights side by side in one such copy, so one GEMM does the
    three (two) of them. On the TinyStories base model (2 cores) a decoding step went from 5.7 ms
    (row-major) to 4.3 ms (column-major), 3.4 ms (fused) and ~2.6 ms (blocks per thread);
    ``benchmarks/bench_generate.py`` compares the whole decoder with Hugging Face's. (``bfloat16``
    weights go through another kernel: they are left alone.)

    The Parameters themselves are not touched, and the copies are dropped on exit, so a model that is
    being trained (samples drawn by a callback) trains on exactly what it had. The cost: a copy of
    those weights while decoding, and ~15-20 ms to make it.
    """
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if distributed or getattr(model, "_compiled_call_impl", None) is not None:
        yield  # a wrapper (DDP, FSDP) or a compiled graph may depend on the layout: leave it be
        return

    def eligible(w: Tensor) -> bool:  # not a DTensor or another subclass; CPU float32
        return type(w.data) is torch.Tensor and w.device.type == "cpu" and w.dtype == torch.float32

    parts = torch.get_num_threads()
    laid_out: list[tuple[torch.nn.Module, str]] = []  # (module, attribute) to reset on exit
    fused: set[torch.nn.Module] = set()  # Linears whose weight is in a fused copy
    with torch.inference_mode(False), torch.no_grad():  # ordinary tensors, even inside generation
        for module in model.modules():
            for attr, names in getattr(module, "fusable_projections", {}).items():
                linears = [getattr(module, name) for name in names]
                if not all(eligible(m.weight) for m in linears):
                    continue
                setattr(module, attr, column_blocks([m.weight for m in linears], parts))
                laid_out.append((module, attr))
                fused.update(linears)
        for m in model.modules():
            if isinstance(m, Linear) and m not in fused and eligible(m.weight):
                m.column_blocks = column_blocks([m.weight], parts)
                laid_out.append((m, "column_blocks"))
    try:
        yield
    finally:
        for module, attr in laid_out:
            setattr(module, attr, None)


@torch.inference_mode()
def generate_ids(
    model: TransformerLM,
    prompt_ids: Sequence[int],
    *,
    num_samples: int = 1,
    max_new_tokens: int = 256,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int | None = None,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
) -> Iterator[Tensor]:
    """Yield the next token of every sample, (num_samples,) int64, once per step (lazily: stop
    iterating to stop generating). ``prompt_ids`` must hold 1..context_length tokens."""
    check_sampling_args(temperature, top_p, top_k)
    context = model.config.context_length
    if not 1 <= len(prompt_ids) <= context:
        raise ValueError(
            f"the prompt is {len(prompt_ids)} tokens; expected 1 to context_length={context} tokens"
        )
    device = model_device(model)
    # The whole history, preallocated: steps write into it in place.
    n = len(prompt_ids)
    tokens = torch.empty(num_samples, n + max_new_tokens, dtype=torch.long, device=device)
    tokens[:, :n] = torch.tensor(prompt_ids, dtype=torch.long, device=device)
    cache = model.new_kv_cache(num_samples) if use_cache else None
    cached = 0  # tokens whose keys/values are in the cache
    with decoding_layout(model):  # undone when the loop ends or the caller stops iterating
        for _ in range(max_new_tokens):
            rows = 1 if n == len(prompt_ids) else num_samples  # every row holds the same prompt
            if cache is not None and n <= context:
                logits = model(tokens[:rows, cached:n], kv_cache=cache, last_only=True)
                cached = n
            else:
                logits = model(tokens[:rows, max(0, n - context) : n], last_only=True)
            logits = logits[:, -1].expand(num_samples, -1)  # (num_samples, vocab)
            next_ids = sample_next(
                logits, temperature=temperature, top_p=top_p, top_k=top_k, generator=generator
            )
            tokens[:, n] = next_ids
            n += 1
            yield next_ids


class _TextStream:
    """Incremental text of one sample: bytes -> UTF-8 (a character split across tokens is held until
    complete), cut at the first stop string, and never releasing text that might be the start of one."""

    def __init__(self, vocab: dict[int, bytes], stop: Sequence[str]) -> None:
        self.vocab, self.stop = vocab, [s for s in stop if s]
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text = ""
        self.released = 0  # characters of ``text`` handed out so far
        self.done = False

    def push(self, token_id: int) -> str:
        """Add one token; return the text that is now final (possibly "")."""
        if self.done:  # the other samples of the batch go on; this one has ended
            return ""
        self.text += self.decoder.decode(self.vocab[token_id])
        return self._release(final=False)

    def close(self) -> str:
        """End of generation: flush an incomplete character (as U+FFFD) and whatever was held back."""
        if not self.done:
            self.text += self.decoder.decode(b"", final=True)
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        if self.done:
            return ""
        # A stop string can only end in new text, so the search starts where a stop could begin.
        start = max(0, self.released - max((len(s) for s in self.stop), default=0))
        hits = [i for i in (self.text.find(s, start) for s in self.stop) if i >= 0]
        if hits:
            self.text, self.done = self.text[: min(hits)], True
            final = True
        end = len(self.text) if final else len(self.text) - self._held()
        out, self.released = self.text[self.released : end], max(self.released, end)
        return out

    def _held(self) -> int:
        """Length of the longest tail of ``text`` that is a proper prefix of a stop string."""
        for k in range(min(len(self.text), max((len(s) for s in self.stop), default=1) - 1), 0, -1):
            tail = self.text[-k:]
            if any(s.startswith(tail) for s in self.stop):
                return k
        return 0


def encode_prompt(tokenizer: Tokenizer, prompt: str) -> list[int]:
    """Prompt -> ids. An empty prompt starts a new document: ``<|endoftext|>`` (what the model saw
    before every training document)."""
    ids = tokenizer.encode(prompt)
    if not ids:
        if tokenizer.eot_id is None:
            raise ValueError(f"the prompt is empty and the tokenizer has no {EOT} token to start from")
        ids = [tokenizer.eot_id]
    return ids


def generate_samples(
    model: TransformerLM,
    tokenizer: Tokenizer,
    prompt: str,
    *,
    num_samples: int = 1,
    max_new_tokens: int = 256,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int | None = None,
    stop: Sequence[str] = (EOT,),
    use_cache: bool = True,
    seed: int | None = None,
    on_text: Callable[[int, str], None] | None = None,
) -> list[str]:
    """``num_samples`` continuations of ``prompt`` (the continuations only, each cut before its first
    stop string), sampled in one batch. ``on_text(sample_index, text)`` receives text as it becomes
    final (for streaming). ``seed`` makes sampling reproducible (None: torch's global generator)."""
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples={num_samples!r}: expected a positive integer")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens!r}: expected an integer >= 0")
    if isinstance(stop, str):
        stop = (stop,)
    check_sampling_args(temperature, top_p, top_k)
    generator = None
    if seed is not None:
        generator = torch.Generator(model_device(model)).manual_seed(seed)
    streams = [_TextStream(tokenizer.vocab, stop) for _ in range(num_samples)]
    pieces: list[list[str]] = [[] for _ in range(num_samples)]

    def emit(i: int, text: str) -> None:
        if text:
            pieces[i].append(text)
            if on_text is not None:
                on_text(i, text)

    steps = generate_ids(
        model,
        encode_prompt(tokenizer, prompt),
        num_samples=num_samples,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        use_cache=use_cache,
        generator=generator,
    )
    for next_ids in steps:
        for i, token_id in enumerate(next_ids.tolist()):
            emit(i, streams[i].push(token_id))
        if all(s.done for s in streams):
            break
    for i, s in enumerate(streams):
        emit(i, s.close())
    return ["".join(p) for p in pieces]


def generate(
    model: TransformerLM,
    tokenizer: Tokenizer,
    prompt: str,
    *,
    max_new_tokens: int = 256,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int | None = None,
    stop: Sequence[str] = (EOT,),
    use_cache: bool = True,
    seed: int | None = None,
) -> str:
    """The continuation of ``prompt`` (without the prompt), cut before the first ``stop`` string.

    ``temperature=0`` is greedy decoding; ``top_k``/``top_p`` restrict sampling to the most likely
    tokens (see ``lit_llm.sampling``). Generation stops at a stop string or after ``max_new_tokens``.
    """
    return generate_samples(
        model,
        tokenizer,
        prompt,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        stop=stop,
        use_cache=use_cache,
        seed=seed,
    )[0]


# -- command line -------------------------------------------------------------------------------------


def read_prompts(prompt: str | None, prompt_file: str | None) -> list[str]:
    """``prompt=`` or ``prompt_file=`` (one prompt per line; blank lines skipped), not both. A file that
    is missing, unreadable or not UTF-8 is one ValueError/FileNotFoundError line naming it (and the
    offset of the first bad byte)."""
    if prompt_file is None:
        if prompt is not None and not isinstance(prompt, str):
            raise ValueError(f"prompt={prompt!r}: expected a string")
        return [prompt or ""]
    if prompt:
        raise ValueError("give prompt= or prompt_file=, not both")
    path = Path(prompt_file)
    if not path.is_file():
        raise FileNotFoundError(f"prompt_file={prompt_file}: no such file")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ValueError(f"prompt_file={prompt_file}: cannot be read: {os.strerror(e.errno)}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidUTF8Error(prompt_file, e.start) from None
    prompts = [line for line in text.splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"prompt_file={prompt_file}: holds no prompt (one per line expected)")
    return prompts


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_args(cfg: dict) -> None:
    """Every CLI argument that can be checked without the model, in one ValueError line (all problems)."""
    problems = []
    if not cfg.get("ckpt"):
        problems.append("ckpt=PATH is required (a Lightning .ckpt or a folder written by lit_llm.export)")
    if not _is_int(cfg.get("num_samples")) or cfg["num_samples"] < 1:
        problems.append(f"num_samples={cfg.get('num_samples')!r}: expected an integer >= 1")
    if not _is_int(cfg.get("max_new_tokens")) or cfg["max_new_tokens"] < 0:
        problems.append(
            f"max_new_tokens={cfg.get('max_new_tokens')!r}: expected an integer >= 0 (0: the prompt only)"
        )
    if cfg.get("seed") is not None and not _is_int(cfg["seed"]):
        problems.append(f"seed={cfg['seed']!r}: expected an integer or null")
    stop = cfg.get("stop")
    if stop is not None and not (isinstance(stop, list | tuple) and all(isinstance(x, str) for x in stop)):
        problems.append(f"stop={stop!r}: expected a list of strings")
    try:
        check_sampling_args(cfg.get("temperature"), cfg.get("top_p"), cfg.get("top_k"))
    except ValueError as e:
        problems.append(str(e))
    if problems:
        raise ValueError("; ".join(problems))


def run(cfg: dict) -> None:
    """The CLI's work, from a plain config dict (see configs/tools/generate.yaml for the keys).

    Every argument is checked, the model loaded and every prompt encoded (and its length checked)
    before anything is printed: a bad value is one error line with nothing on stdout before it."""
    from lit_llm.loading import load_model, resolve_device

    check_args(cfg)
    device = resolve_device(cfg.get("device"))
    prompts = read_prompts(cfg.get("prompt"), cfg.get("prompt_file"))
    model, tokenizer = load_model(cfg["ckpt"], tokenizer=cfg.get("tokenizer"))
    context = model.config.context_length
    for p, prompt in enumerate(prompts):
        n = len(encode_prompt(tokenizer, prompt))
        if n > context:
            which = (
                f"prompt {p + 1} of prompt_file={cfg['prompt_file']}" if cfg.get("prompt_file") else "prompt"
            )
            raise ValueError(f"{which} is {n} tokens; expected 1 to context_length={context} tokens")
    model.to(device)
    num_samples = cfg["num_samples"]
    out = sys.stdout
    for p, prompt in enumerate(prompts):
        stream = num_samples == 1 and cfg.get("stream", True)

        def on_text(i: int, text: str, stream: bool = stream) -> None:
            if stream:
                out.write(text)
                out.flush()

        if stream:
            out.write(prompt)
            out.flush()
        samples = generate_samples(
            model,
            tokenizer,
            prompt,
            num_samples=num_samples,
            max_new_tokens=cfg["max_new_tokens"],
            temperature=cfg["temperature"],
            top_p=cfg["top_p"],
            top_k=cfg.get("top_k"),
            stop=tuple(cfg.get("stop") or ()),
            use_cache=cfg.get("use_cache", True),
            seed=None if cfg.get("seed") is None else cfg["seed"] + p,
            on_text=on_text,
        )
        if stream:
            out.write("\n")
        else:
            for i, sample in enumerate(samples):
                out.write(f"--- prompt {p + 1}, sample {i + 1} ---\n{prompt}{sample}\n")
        if p + 1 < len(prompts):
            out.write("\n")
        out.flush()


@cli.main("generate")
def main(cfg: DictConfig) -> None:
    run(OmegaConf.to_container(cfg, resolve=True))


if __name__ == "__main__":
    main()
