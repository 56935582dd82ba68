"""Weak-to-strong pseudo-supervision and its diagnostics (ConsistencySettings: tests/unit/test_settings.py)."""
import pytest
import torch

from nnunet.training.loss_functions.consistency import (PseudoLabels, confident_fraction,
                                                        disagreement, pseudo_labels, teacher_student_pairs,
                                                        thresholded_cross_entropy, weak_to_strong_loss)
from tests.helpers import SHAPES


def logits(dim: int, seed: int, n: int = 2) -> torch.Tensor:
    return 3 * torch.randn((n, 2) + SHAPES[dim], generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("dim", [2, 3])
def test_only_confident_voxels_count_and_the_sum_is_over_all_voxels(dim):
    teacher, student = logits(dim, 0), logits(dim, 1)
    target = pseudo_labels(teacher)
    assert target.labels.shape == teacher.shape[:1] + teacher.shape[2:]
    full = torch.nn.functional.cross_entropy(student, target.labels, reduction="none")
    confident = target.confidence >= 0.9
    assert 0 < confident.float().mean() < 1
    assert thresholded_cross_entropy(student, target, 0.9).item() == pytest.approx(
        (full * confident).sum().item() / full.numel(), rel=1e-5)
    assert thresholded_cross_entropy(student, target, 0.0).item() == pytest.approx(full.mean().item(), rel=1e-5)


def test_every_chosen_expert_teaches_every_other_one():
    assert teacher_student_pairs(1) == [(0, 0)]
    assert teacher_student_pairs(2) == [(0, 1), (1, 0)]
    assert len(teacher_student_pairs(3)) == 6


@pytest.mark.parametrize("dim", [2, 3])
def test_identical_experts_still_get_a_gradient_from_the_strong_view(dim):
    weak = logits(dim, 0)
    targets = [pseudo_labels(weak), pseudo_labels(weak)]  # two identical experts on the weak view
    strong = (weak + torch.randn_like(weak)).requires_grad_()  # the same experts on the perturbed view
    loss = weak_to_strong_loss([strong, strong], targets, threshold=0.5)
    loss.backward()
    assert loss.item() > 0 and strong.grad.abs().sum() > 0
    assert disagreement([weak, weak]) == 0.0


@pytest.mark.parametrize("dim", [2, 3])
def test_diagnostics_are_fractions(dim):
    a, b = logits(dim, 0), logits(dim, 1)
    assert 0.3 < disagreement([a, b]) < 0.7  # independent random logits disagree on about half the voxels
    assert disagreement([a]) == 0.0
    targets = [pseudo_labels(a), pseudo_labels(b)]
    assert confident_fraction(targets, 0.0) == 1.0
    assert 0 < confident_fraction(targets, 0.95) < 1
    assert confident_fraction([PseudoLabels(t.labels, t.confidence * 0) for t in targets], 0.5) == 0.0


