"""cross_entropy equals F.cross_entropy, including huge logits, leading dims and its gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import lit_llm.losses as losses_mod
from lit_llm.losses import cross_entropy, token_cross_entropy

pytestmark = pytest.mark.usefixtures("seeded_single_thread")


def _check(logits: torch.Tensor, targets: torch.Tensor) -> None:
    logits = logits.detach().requires_grad_()
    ours = cross_entropy(logits, targets)
    ref = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    torch.testing.assert_close(ours, ref)
    (g_ours,) = torch.autograd.grad(ours * 3.0, logits)  # a non-unit upstream gradient
    (g_ref,) = torch.autograd.grad(ref * 3.0, logits)
    torch.testing.assert_close(g_ours, g_ref)


def test_matches_f_cross_entropy_2d():
    _check(torch.randn(20, 37), torch.randint(0, 37, (20,)))


def test_matches_with_batch_and_sequence_dims():
    _check(torch.randn(3, 5, 11), torch.randint(0, 11, (3, 5)))
    _check(torch.randn(2, 3, 4, 7), torch.randint(0, 7, (2, 3, 4)))


def test_stable_for_logits_of_1e4():
    logits = torch.randn(6, 10) * 1e4
    logits[0, 3] = 1e4
    logits[1] = -1e4
    targets = torch.tensor([3, 0, 5, 9, 1, 2])
    assert torch.isfinite(cross_entropy(logits, targets))
    _check(logits, targets)


def test_blocks_of_rows_give_the_same_result(monkeypatch):
    logits, targets = torch.randn(13, 9), torch.randint(0, 9, (13,))
    monkeypatch.setattr(losses_mod, "_BLOCK_ELEMENTS", 2 * 9 + 3)  # 2 rows per block, a ragged last one
    _check(logits, targets)


def test_low_precision_input_is_computed_in_float32():
    logits = (torch.randn(8, 50) * 4).to(torch.bfloat16).requires_grad_()
    targets = torch.randint(0, 50, (8,))
    loss = cross_entropy(logits, targets)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, F.cross_entropy(logits.float(), targets))
    loss.backward()
    assert logits.grad.dtype == torch.bfloat16


def test_gradcheck_float64():
    logits = torch.randn(4, 3, 6, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 6, (4, 3))
    assert torch.autograd.gradcheck(lambda x: cross_entropy(x, targets), (logits,))


def test_bad_shapes_and_dtypes_are_reported():
    with pytest.raises(ValueError, match=r"logits \(2, 3, 5\) and targets \(2, 4\)"):
        cross_entropy(torch.randn(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="integer class ids"):
        cross_entropy(torch.randn(2, 5), torch.zeros(2))


def test_token_losses_match_f_cross_entropy_without_reduction():
    torch.manual_seed(0)
    logits, targets = torch.randn(3, 5, 11) * 4, torch.randint(0, 11, (3, 5))
    expected = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view(3, 5)
    torch.testing.assert_close(token_cross_entropy(logits, targets), expected)
    torch.testing.assert_close(token_cross_entropy(logits, targets).mean(), cross_entropy(logits, targets))
    with pytest.raises(ValueError, match="token_cross_entropy: logits"):
        token_cross_entropy(logits, targets[:, :4])
