"""Load balancing, cross pseudo-supervision and the consistency ramp-up."""
import math

import pytest
import torch

from nnunet.training.loss_functions.moe_losses import (consistency_weight, cross_pseudo_supervision_loss,
                                                       expert_usage, load_balancing_loss, pairwise_consistency_loss)


def test_load_balancing_is_smallest_at_uniform_usage():
    E = 3
    uniform = load_balancing_loss(torch.tensor([[0], [1], [2]]), torch.full((3, E), 1 / 3), E)
    skewed = load_balancing_loss(torch.tensor([[0], [0], [1]]), torch.tensor([[.6, .3, .1]] * 3), E)
    collapsed = load_balancing_loss(torch.tensor([[0], [0], [0]]), torch.tensor([[1., 0., 0.]] * 3), E)
    assert uniform.item() == pytest.approx(1.0)
    assert uniform < skewed < collapsed
    assert collapsed.item() == pytest.approx(E)


def test_load_balancing_counts_every_top_k_slot():
    indices = torch.tensor([[0, 1], [0, 2]])  # expert 0 is every sample's first choice; 1 and 2 are second choices
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.4, 0.2, 0.4]])
    assert expert_usage(indices, 3).tolist() == pytest.approx([0.5, 0.25, 0.25])
    # E * sum_i f_i P_i with f = [0.5, 0.25, 0.25] (4 assignments) and P = the mean probabilities [0.45, 0.25, 0.3]
    expected = 3 * (0.5 * 0.45 + 0.25 * 0.25 + 0.25 * 0.3)
    assert load_balancing_loss(indices, probs, 3).item() == pytest.approx(expected)
    first_slot_only = 3 * (1.0 * 0.45)
    assert load_balancing_loss(indices[:, :1], probs, 3).item() == pytest.approx(first_slot_only)


@pytest.mark.parametrize("shape", [(2, 2, 8, 8), (2, 2, 4, 8, 8)])
def test_consistency_is_zero_when_experts_agree(shape):
    labels = torch.randint(0, 2, (shape[0],) + shape[2:], generator=torch.Generator().manual_seed(0))
    confident = torch.nn.functional.one_hot(labels, 2).movedim(-1, 1).float() * 60 - 30
    assert cross_pseudo_supervision_loss(confident, confident.clone()).item() == pytest.approx(0, abs=1e-6)
    disagreeing = -confident
    assert cross_pseudo_supervision_loss(confident, disagreeing).item() > 10


def test_consistency_gradient_flows_to_both_experts_not_through_pseudo_labels():
    a = torch.randn(2, 2, 8, 8, requires_grad=True)
    b = torch.randn(2, 2, 8, 8, requires_grad=True)
    cross_pseudo_supervision_loss(a, b).backward()
    assert a.grad.abs().sum() > 0 and b.grad.abs().sum() > 0


def test_pairwise_consistency_averages_over_pairs():
    x = [torch.randn(1, 2, 4, 4) for _ in range(3)]
    expected = sum(cross_pseudo_supervision_loss(x[i], x[j]) for i, j in [(0, 1), (0, 2), (1, 2)]) / 3
    assert pairwise_consistency_loss(x).item() == pytest.approx(expected.item())
    assert pairwise_consistency_loss(x[:1]).item() == 0


def test_consistency_weight_warmup_and_sigmoid_rampup():
    w = [consistency_weight(e, 0.5, warmup_epochs=10, rampup_epochs=20) for e in range(40)]
    assert w[:10] == [0.0] * 10
    assert w[10] == pytest.approx(0.5 * math.exp(-5))
    assert w[20] == pytest.approx(0.5 * math.exp(-5 * 0.25))
    assert w[30:] == [pytest.approx(0.5)] * 10
    assert all(a <= b for a, b in zip(w, w[1:]))
