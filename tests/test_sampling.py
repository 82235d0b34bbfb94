"""lit_llm.sampling on hand-made distributions: temperature 0 is argmax, top-k keeps the k largest,
top-p keeps exactly the smallest most-probable set reaching p, and draws follow the filtered softmax."""

from __future__ import annotations

import math

import pytest
import torch

from lit_llm.sampling import check_sampling_args, sample_next, top_k_filter, top_p_filter


def log_probs(probs: list[float]) -> torch.Tensor:
    return torch.tensor([math.log(p) for p in probs])


def kept(logits: torch.Tensor) -> set[int]:
    return {i for i, v in enumerate(logits.tolist()) if v != float("-inf")}


def test_temperature_zero_is_argmax() -> None:
    logits = torch.randn(4, 7, 50, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sample_next(logits, temperature=0), logits.argmax(-1))
    # top-k / top-p never remove the most likely token, so greedy ignores them
    assert torch.equal(sample_next(logits, temperature=0, top_k=3, top_p=0.1), logits.argmax(-1))


def test_top_k_keeps_the_k_largest() -> None:
    logits = log_probs([0.05, 0.4, 0.1, 0.25, 0.2])  # ranks: 1, 3, 4, 2, 0
    assert kept(top_k_filter(logits, 1)) == {1}
    assert kept(top_k_filter(logits, 2)) == {1, 3}
    assert kept(top_k_filter(logits, 3)) == {1, 3, 4}
    assert kept(top_k_filter(logits, 5)) == kept(top_k_filter(logits, 99)) == {0, 1, 2, 3, 4}
    assert torch.equal(top_k_filter(logits, 2)[[1, 3]], logits[[1, 3]])  # kept logits untouched


@pytest.mark.parametrize(
    ("p", "expected"),
    [
        (0.3, {1}),  # 0.4 alone reaches 0.3
        (0.39, {1}),
        (0.5, {1, 3}),  # 0.4 < 0.5 <= 0.4 + 0.25
        (0.64, {1, 3}),
        (0.66, {1, 3, 4}),  # 0.65 < 0.66 <= 0.85
        (0.9, {1, 2, 3, 4}),  # 0.85 < 0.9 <= 0.95
        (0.97, {0, 1, 2, 3, 4}),
        (1.0, {0, 1, 2, 3, 4}),
    ],
)
def test_top_p_keeps_the_smallest_set_reaching_p(p: float, expected: set[int]) -> None:
    logits = log_probs([0.05, 0.4, 0.1, 0.25, 0.2])
    assert kept(top_p_filter(logits, p)) == expected


def test_top_p_matches_a_brute_force_definition_on_random_rows() -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(200, 30, generator=gen) * 3
    ps = torch.rand(200, generator=gen).clamp(0.01, 0.99)
    for row, p in zip(logits, ps.tolist(), strict=True):
        probs = torch.softmax(row.double(), -1)
        order = probs.argsort(descending=True).tolist()
        # smallest m whose top-m mass reaches p
        mass, m = 0.0, 0
        while mass < p:
            mass += probs[order[m]].item()
            m += 1
        assert kept(top_p_filter(row, p)) == set(order[:m])


def test_filters_work_on_batches_row_by_row() -> None:
    a, b = log_probs([0.7, 0.2, 0.1]), log_probs([0.1, 0.3, 0.6])
    out = top_p_filter(torch.stack([a, b]), 0.8)
    assert kept(out[0]) == {0, 1} and kept(out[1]) == {1, 2}
    out = top_k_filter(torch.stack([a, b]).unsqueeze(0), 1)  # (1, 2, vocab)
    assert kept(out[0, 0]) == {0} and kept(out[0, 1]) == {2}


def frequencies(logits: torch.Tensor, n: int, **kwargs) -> torch.Tensor:
    gen = torch.Generator().manual_seed(123)
    draws = sample_next(logits.expand(n, -1), generator=gen, **kwargs)
    return torch.bincount(draws, minlength=logits.shape[-1]).double() / n


def test_draws_follow_the_filtered_renormalised_distribution() -> None:
    probs = [0.05, 0.4, 0.1, 0.25, 0.2]
    logits = log_probs(probs)
    n = 40000  # standard error of a frequency <= 0.0025: 0.015 is 6 sigma
    assert torch.allclose(frequencies(logits, n), torch.tensor(probs).double(), atol=0.015)
    # top-k 2 and top-p 0.5 both leave {1, 3}: 0.4 and 0.25 renormalised
    expected = torch.tensor([0, 0.4 / 0.65, 0, 0.25 / 0.65, 0]).double()
    assert torch.allclose(frequencies(logits, n, top_k=2), expected, atol=0.015)
    assert torch.allclose(frequencies(logits, n, top_p=0.5), expected, atol=0.015)
    # temperature 2: softmax(log p / 2) ~ sqrt(p)
    sqrt = torch.tensor(probs).double().sqrt()
    assert torch.allclose(frequencies(logits, n, temperature=2.0), sqrt / sqrt.sum(), atol=0.015)
    # excluded tokens are never drawn
    assert frequencies(logits, n, top_k=2)[[0, 2, 4]].sum() == 0


def test_a_seeded_generator_makes_draws_reproducible() -> None:
    logits = torch.randn(3, 100, generator=torch.Generator().manual_seed(0))
    draws = [sample_next(logits, top_p=0.9, generator=torch.Generator().manual_seed(7)) for _ in range(2)]
    assert torch.equal(draws[0], draws[1])
    assert draws[0].shape == (3,) and draws[0].dtype == torch.long


def test_bad_arguments_are_named_together() -> None:
    with pytest.raises(ValueError) as err:
        check_sampling_args(-1.0, 1.5, 0)
    message = str(err.value)
    assert "temperature=-1.0" in message and "top_p=1.5" in message and "top_k=0" in message
    check_sampling_args(0, 1.0, None)
    check_sampling_args(0.7, 0.95, 40)
