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


# ---------------------------------------------------------------------- the supervised loss and the control's
def control_loss(batch_dice: bool, levels: int):
    """nnUNetTrainerV2's loss: deep-supervision-weighted DC+CE (soft Dice without background, smooth 1e-5)."""
    import numpy as np
    from nnunet.training.loss_functions.deep_supervision import MultipleOutputLoss2
    from nnunet.training.loss_functions.dice_loss import DC_and_CE_loss
    weights = np.array([1 / 2 ** i for i in range(levels)])
    weights[-1] = 0  # nnU-Net drops the coarsest output
    weights = weights / weights.sum()
    return MultipleOutputLoss2(DC_and_CE_loss({"batch_dice": batch_dice, "smooth": 1e-5, "do_bg": False}, {}),
                               weights), weights


def identical_moe_and_baseline(dim: int):
    """A baseline and an MoE whose experts are exact copies of its decoder (no noise, no re-initialisation)."""
    from nnunet.network_architecture.moe_weight_transfer import transfer_state_dict
    from tests.helpers import tiny_moe, tiny_unet
    baseline, moe = tiny_unet(dim), tiny_moe(dim, num_experts=3, top_k=2)
    state, _ = transfer_state_dict(baseline.state_dict(), moe, perturbation=0.0, reinit=0.0)
    moe.load_state_dict(state)
    with torch.no_grad():  # a gate that really weights the two chosen experts differently per sample
        moe.gate.w_gate.weight.normal_(std=1.0)
    return baseline, moe


def targets_for(outputs, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 2, (o.shape[0], 1, *o.shape[2:]), generator=generator).float() for o in outputs]


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("batch_dice", [True, False])
def test_with_identical_experts_the_supervised_gradient_is_the_controls(dim, batch_dice):
    """No confound: the MoE's supervised loss on a batch, and its gradient on every shared weight, are the control's
    (the same nnU-Net on the same batch) while the experts are copies; the old loss was twice that."""
    from nnunet.training.loss_functions.moe_losses import gate_weighted_dice_ce
    from tests.helpers import batch
    baseline, moe = identical_moe_and_baseline(dim)
    x = batch(dim, n=3)
    reference_outputs = baseline(x)
    targets = targets_for(reference_outputs)
    loss, level_weights = control_loss(batch_dice, len(reference_outputs))
    control = loss(reference_outputs, targets)
    control.backward()

    output = moe(x)
    assert not torch.allclose(output.gate.weights[:, 0], output.gate.weights[:, 1])  # the gate weights matter
    supervised = gate_weighted_dice_ce(output.slots, targets, output.gate.weights, level_weights, batch_dice)
    assert supervised.item() == pytest.approx(control.item(), rel=1e-5)
    supervised.backward()
    baseline_gradients = {name: torch.zeros_like(p) if p.grad is None else p.grad  # (the 0-weighted head: none)
                          for name, p in baseline.named_parameters()}
    compared = 0
    for name, parameter in moe.named_parameters():
        if not name.startswith(("experts.", "gate.")):
            assert torch.allclose(parameter.grad, baseline_gradients[name], rtol=1e-4, atol=1e-7), name
            compared += 1
    assert compared > 10
    # each expert's share of the decoder gradient is its gate weight: summed over experts, the control's
    for level in range(len(reference_outputs)):
        summed = sum(e.seg_outputs[level].weight.grad for e in moe.experts)
        assert torch.allclose(summed, baseline_gradients[f"seg_outputs.{level}.weight"], rtol=1e-4, atol=1e-7)

    old = torch.stack([loss(slot, targets) for slot in output.slots]).mean() + loss(output.combined, targets)
    assert old.item() == pytest.approx(2 * control.item(), rel=1e-5)


def test_the_gate_learns_to_prefer_the_expert_with_the_lower_loss():
    """The gate's gradient is the difference between its experts' losses on a sample."""
    from nnunet.training.loss_functions.moe_losses import gate_weighted_dice_ce
    target = torch.zeros((1, 1, 8, 8))
    target[..., 2:6, 2:6] = 1
    good = torch.where(target.bool(), 4.0, -4.0).expand(1, 1, 8, 8)
    good = torch.cat([-good, good], 1)  # class 1 inside the square
    bad = torch.zeros_like(good)
    weights = torch.tensor([[0.5, 0.5]], requires_grad=True)
    gate_weighted_dice_ce([(good,), (bad,)], [target], weights, [1.0]).backward()
    assert weights.grad[0, 0] < weights.grad[0, 1]  # raising the good expert's weight lowers the loss more


def test_signal_to_noise_and_mutual_information():
    from nnunet.training.loss_functions.moe_losses import mutual_information_bits, signal_to_noise
    clean = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert signal_to_noise(clean, torch.full((2, 2), 0.5)) == pytest.approx((2 ** 0.5 / 2) / 0.5)
    assert signal_to_noise(clean[:1], torch.ones(1, 2)) is None
    assert mutual_information_bits([0, 1, 2] * 4, ["A", "B", "C"] * 4) == pytest.approx(math.log2(3))
    assert mutual_information_bits([0, 0, 1, 1], ["A", "B", "A", "B"]) == pytest.approx(0.0)
    assert mutual_information_bits([], []) is None
