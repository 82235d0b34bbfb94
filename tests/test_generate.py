"""Generation: the KV cache changes nothing (greedy, token for token, past the context length too),
cropping keeps the last context_length tokens, seeded sampling is reproducible, stop strings and
streaming give exactly the decoded text up to the stop, and the CLI prints what the API returns."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lit_llm.export import export_model
from lit_llm.generate import _TextStream, decoding_layout, generate, generate_ids, generate_samples
from lit_llm.model import attention as attention_module
from lit_llm.model import layers
from lit_llm.model.layers import BLOCK_ROWS, Linear, column_blocks, matmul_column_blocks
from tests.tiny_lm import EOT, SMALL_MERGES, byte_tokenizer, one_thread, tiny_model  # noqa: F401  (autouse fixture)

REPO = Path(__file__).resolve().parent.parent


def run_ids(model, prompt, **kwargs) -> torch.Tensor:
    """(num_samples, steps) of generated ids."""
    return torch.stack(list(generate_ids(model, prompt, **kwargs)), dim=1)


def reference_greedy(model, prompt: list[int], steps: int) -> list[int]:
    """The definition: full forward over the last context_length tokens, argmax, append."""
    tokens = list(prompt)
    with torch.inference_mode():
        for _ in range(steps):
            window = torch.tensor([tokens[-model.config.context_length :]])
            tokens.append(int(model(window)[0, -1].argmax()))
    return tokens[len(prompt) :]


@pytest.mark.parametrize("variant", [{}, {"attn_impl": "naive"}, {"norm": "post", "tie_embeddings": True}])
def test_greedy_with_cache_equals_without_past_the_context(variant: dict) -> None:
    model = tiny_model(**variant)  # context 16: 5 + 40 tokens go far past it
    prompt = [3, 70, 101, 4, 200]
    expected = reference_greedy(model, prompt, 40)
    for use_cache in (True, False):
        ids = run_ids(model, prompt, num_samples=3, max_new_tokens=40, temperature=0, use_cache=use_cache)
        assert ids.shape == (3, 40)
        for row in ids.tolist():  # every sample of a greedy batch is the same sequence
            assert row == expected


@pytest.mark.parametrize("parts", [1, 2, 3, 4, 16])
def test_column_blocks_hold_the_transposed_weights_and_multiply_like_them(parts: int) -> None:
    torch.manual_seed(0)
    weights = [torch.randn(7, 5), torch.randn(4, 5)]  # 11 outputs: 3 blocks of 4 pad one column
    blocks = column_blocks(weights, parts)
    parts = min(parts, 11)  # 16 asked: 11 blocks of one column
    cols = -(-11 // parts)
    assert blocks.shape == (parts, 5, cols) and blocks.is_contiguous()
    side_by_side = torch.cat([w.t() for w in weights], dim=1)  # (5, 11)
    laid_out = blocks.transpose(0, 1).reshape(5, parts * cols)
    assert torch.equal(laid_out[:, :11], side_by_side)  # a copy of the same numbers
    assert not laid_out[:, 11:].any()  # the padding is zeros
    for shape in [(1, 1, 5), (3, 5), (2, 6, 5)]:  # one decoding row, a flat batch, a prompt chunk
        x = torch.randn(shape)
        y = matmul_column_blocks(x, blocks, 11)
        assert y.shape == (*shape[:-1], 11)
        torch.testing.assert_close(y, x @ side_by_side)  # another GEMM split: rounding only


def test_decoding_layout_copies_the_weights_and_leaves_the_parameters_alone(monkeypatch) -> None:
    model = tiny_model(tie_embeddings=True)  # lm_head's weight is the table: laid out once, as a Linear
    before = {name: (p, p.data_ptr(), p.data.clone()) for name, p in model.named_parameters()}
    linears = [m for m in model.modules() if isinstance(m, Linear)]
    tokens = torch.tensor([[3, 70, 101, 4, 200, 9]])
    wide = torch.arange(80).reshape(5, 16)  # 80 rows > BLOCK_ROWS: the Parameters' own GEMMs, copies or not
    assert wide.numel() > BLOCK_ROWS
    block_products = 0

    def counted(*args):  # matmul_column_blocks, counted
        nonlocal block_products
        block_products += 1
        return matmul_column_blocks(*args)

    monkeypatch.setattr(layers, "matmul_column_blocks", counted)
    monkeypatch.setattr(attention_module, "matmul_column_blocks", counted)
    with torch.inference_mode():
        expected = model(tokens)

    def parameters_untouched() -> None:
        for name, p in model.named_parameters():
            param, data, values = before[name]
            assert p is param and p.data_ptr() == data and p.is_contiguous() and torch.equal(p, values)

    def nothing_laid_out() -> None:
        assert all(m.column_blocks is None for m in linears)
        assert attention.fused_qkv is None and ffn.fused_w13 is None

    attention, ffn = model.layers[0].attn, model.layers[0].ffn
    for threads in (1, 2):
        torch.set_num_threads(threads)  # one block of columns per thread (the fixture restores one)
        with torch.inference_mode():
            expected_wide = model(wide)  # at this thread count, as below
        with decoding_layout(model):
            parameters_untouched()
            d, f = attention.d_model, ffn.w1.out_features
            assert attention.fused_qkv.shape == (threads, d, -(-3 * d // threads))
            assert ffn.fused_w13.shape == (threads, d, -(-2 * f // threads))
            assert attention.q_proj.column_blocks is None  # in the fused copy instead
            assert model.lm_head.column_blocks.shape[0] == threads
            assert ffn.w2.column_blocks is not None and attention.output_proj.column_blocks is not None
            with torch.inference_mode():
                torch.testing.assert_close(model(tokens), expected)  # another GEMM split: rounding
                assert block_products > 0  # 6 rows: the copies were read
                before_wide = block_products
                got_wide = model(wide)
                assert block_products == before_wide  # no projection read a copy: the Parameters' GEMMs
                # (the same ops; compared to float32 rounding, since MKL may round by the alignment it finds)
                torch.testing.assert_close(got_wide, expected_wide, rtol=1e-6, atol=1e-6)
        nothing_laid_out()
        parameters_untouched()
    model(tokens).square().mean().backward()
    expected_grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    with decoding_layout(model):  # a training forward meanwhile (autograd on) uses the Parameters
        model(tokens).square().mean().backward()
    for name, p in model.named_parameters():  # the same ops on the same tensors, to float32 rounding
        torch.testing.assert_close(p.grad, expected_grads[name], rtol=1e-6, atol=1e-7, msg=name)
    for stop_after in (None, 2):  # run to the end, and stopped early (the generator is closed)
        steps = generate_ids(model, [1, 2], max_new_tokens=5, temperature=0)
        for i, _ in enumerate(steps):
            if i == stop_after:
                steps.close()
                break
        parameters_untouched()
        nothing_laid_out()
    half = tiny_model().to(torch.bfloat16)  # left alone: its kernel is another one
    compiled = tiny_model()
    compiled.compile()  # left alone: its graphs were (or will be) made for the model as it is
    for untouched in (half, compiled):
        with decoding_layout(untouched):
            assert untouched.layers[0].attn.fused_qkv is None and untouched.lm_head.column_blocks is None


def test_greedy_decoding_on_several_threads_equals_the_definition() -> None:
    """The layout depends on the thread count (a block of columns per thread): tokens must not."""
    model = tiny_model()
    prompt = [3, 70, 101, 4, 200]
    expected = reference_greedy(model, prompt, 20)
    # Token equality is implied, not lucky: at every step the best logit leads the second by far more
    # than float32 rounding of another GEMM split can move either (~1e-6 here).
    tokens, context = prompt + expected, model.config.context_length
    with torch.inference_mode():
        for n in range(len(prompt), len(tokens)):  # the logits reference_greedy chose token n from
            best, second = model(torch.tensor([tokens[max(0, n - context) : n]]))[0, -1].topk(2).values
            assert best - second > 1e-4
    torch.set_num_threads(3)
    assert run_ids(model, prompt, max_new_tokens=20, temperature=0)[0].tolist() == expected


def test_a_prompt_of_exactly_the_context_length_works_and_a_longer_one_fails() -> None:
    model = tiny_model()
    prompt = list(range(1, 17))
    assert run_ids(model, prompt, max_new_tokens=3, temperature=0)[0].tolist() == reference_greedy(
        model, prompt, 3
    )
    with pytest.raises(ValueError, match="the prompt is 17 tokens; expected 1 to context_length=16 tokens"):
        next(generate_ids(model, prompt + [1], max_new_tokens=3))


def test_seeded_sampling_is_reproducible_and_batched_samples_differ() -> None:
    model = tiny_model()
    kwargs = dict(num_samples=4, max_new_tokens=30, temperature=1.5, top_k=50, top_p=0.95)
    first = run_ids(model, [5, 6], generator=torch.Generator().manual_seed(11), **kwargs)
    again = run_ids(model, [5, 6], generator=torch.Generator().manual_seed(11), **kwargs)
    other = run_ids(model, [5, 6], generator=torch.Generator().manual_seed(12), **kwargs)
    # Integer ids from the same computation on the same inputs and generator state: exact on every CPU.
    assert torch.equal(first, again)
    # 4 x 30 draws over up to 50 tokens each: two seeds (or two rows) coinciding everywhere has a
    # probability below 1e-100, so these differences are certain, not an accident of rounding.
    assert not torch.equal(first, other)
    assert len({tuple(row) for row in first.tolist()}) == 4  # independent draws per sample
    tokenizer = byte_tokenizer(SMALL_MERGES)
    texts = [generate(model, tokenizer, "the", max_new_tokens=20, temperature=1.0, seed=5) for _ in range(2)]
    assert texts[0] == texts[1]  # the same seeded call twice: deterministic


def stream_pieces(vocab, stop, ids) -> tuple[list[str], str]:
    stream = _TextStream(vocab, stop)
    pieces = [stream.push(i) for i in ids]
    if not stream.done:
        pieces.append(stream.close())
    return pieces, "".join(pieces)


def test_text_stream_cuts_at_the_first_stop_string_and_never_leaks_part_of_it() -> None:
    tokenizer = byte_tokenizer()
    text = "Hello wor" + "ld\n\nEnd" + EOT + "after"
    ids = tokenizer.encode(text)
    pieces, joined = stream_pieces(tokenizer.vocab, ["\n\n", EOT], ids)
    assert joined == "Hello world"
    assert "\n" not in "".join(pieces)  # the first "\n" was held back, not printed and then taken back
    assert stream_pieces(tokenizer.vocab, [EOT], ids)[1] == "Hello world\n\nEnd"
    assert stream_pieces(tokenizer.vocab, ["orl"], ids)[1] == "Hello w"
    # no stop: the whole text, a held-back tail included
    assert stream_pieces(tokenizer.vocab, ["zz"], tokenizer.encode("fizz buzz z"))[1] == "fi"
    assert stream_pieces(tokenizer.vocab, ["zzz"], tokenizer.encode("fizz buzz z"))[1] == "fizz buzz z"


def test_text_stream_joins_a_character_split_across_tokens() -> None:
    tokenizer = byte_tokenizer()
    ids = tokenizer.encode("héllo ✓")  # é and ✓ are 2 and 3 byte tokens here
    pieces, joined = stream_pieces(tokenizer.vocab, [EOT], ids)
    assert joined == "héllo ✓" == tokenizer.decode(ids)
    assert all("\ufffd" not in p for p in pieces)
    # an incomplete character at the very end becomes U+FFFD, as in decode()
    assert stream_pieces(tokenizer.vocab, [], ids[:-1])[1] == tokenizer.decode(ids[:-1])


def test_generate_returns_the_continuation_up_to_the_end_of_text_token() -> None:
    tokenizer = byte_tokenizer(SMALL_MERGES)
    model = tiny_model()
    with torch.no_grad():  # make <|endoftext|> (id 0) likely wherever token 'e' was: it will come up
        model.lm_head.weight[0] = 3 * model.lm_head.weight[ord("e") + 1]
    prompt = "the cat"
    ids = run_ids(model, tokenizer.encode(prompt), max_new_tokens=30, temperature=0)[0].tolist()
    assert 0 in ids, "the test needs <|endoftext|> among the greedy tokens"
    expected = tokenizer.decode(ids[: ids.index(0)])
    for use_cache in (True, False):
        assert (
            generate(model, tokenizer, prompt, max_new_tokens=30, temperature=0, use_cache=use_cache)
            == expected
        )
    # without stop strings the special token is text like any other
    assert generate(model, tokenizer, prompt, max_new_tokens=30, temperature=0, stop=()) == tokenizer.decode(
        ids
    )
    streamed: list[str] = []
    samples = generate_samples(
        model,
        tokenizer,
        prompt,
        num_samples=2,
        max_new_tokens=30,
        temperature=0,
        on_text=lambda i, t: streamed.append(t) if i == 0 else None,
    )
    assert samples == [expected, expected] and "".join(streamed) == expected


def test_an_empty_prompt_starts_from_end_of_text() -> None:
    tokenizer, model = byte_tokenizer(), tiny_model()
    text = generate(model, tokenizer, "", max_new_tokens=8, temperature=0, stop=())
    assert text == tokenizer.decode(reference_greedy(model, [0], 8))


def test_bad_arguments_fail_before_any_work() -> None:
    tokenizer, model = byte_tokenizer(), tiny_model()
    with pytest.raises(ValueError, match="num_samples=0"):
        generate_samples(model, tokenizer, "a", num_samples=0)
    with pytest.raises(ValueError, match="top_p=0"):
        generate(model, tokenizer, "a", top_p=0)
    with pytest.raises(ValueError, match="the prompt is 20 tokens"):
        generate(model, tokenizer, "x" * 20)


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [sys.executable, "-m", "lit_llm.generate", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_prints_the_prompt_and_what_the_api_returns(tmp_path: Path) -> None:
    tokenizer, model = byte_tokenizer(SMALL_MERGES), tiny_model()
    export_model(model, tokenizer, tmp_path / "model")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("the cat\n\nOnce, upon\n", encoding="utf-8")
    result = run_cli(
        f"ckpt={tmp_path / 'model'}", f"prompt_file={prompts}", "max_new_tokens=12", "seed=3", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    expected = [
        p + generate(model, tokenizer, p, max_new_tokens=12, seed=3 + i)
        for i, p in enumerate(["the cat", "Once, upon"])
    ]
    assert result.stdout == expected[0] + "\n\n" + expected[1] + "\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "prompts.txt"]  # no outputs/ or logs

    bad = run_cli(f"ckpt={tmp_path / 'missing'}", "prompt=hi", cwd=tmp_path)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert (
        bad.stderr.strip()
        == f"error: model not found: {tmp_path / 'missing'} (expected a .ckpt file or an exported folder)"
    )
