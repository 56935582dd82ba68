"""Baseline Generic_UNet weights -> Generic_UNet_MoE, and loading them through load_pretrained_weights."""
import pytest
import torch

from nnunet.network_architecture.moe_weight_transfer import (baseline_key_for, forced_expert_differences,
                                                             transfer_state_dict)
from tests.helpers import batch, tiny_moe, tiny_unet

DIMS = [2, 3]


def test_key_mapping():
    assert baseline_key_for("experts.2.tu.1.weight") == "tu.1.weight"
    assert baseline_key_for("experts.0.seg_outputs.0.weight") == "seg_outputs.0.weight"
    encoder = "conv_blocks_context.0.blocks.0.conv.weight"
    assert baseline_key_for(encoder) == encoder
    assert baseline_key_for("gate.w_gate.weight") is None


@pytest.mark.parametrize("dim", DIMS)
def test_every_tensor_but_the_gate_is_copied_and_forced_experts_reproduce_the_baseline(dim):
    baseline, moe = tiny_unet(dim), tiny_moe(dim, num_experts=3, top_k=2)
    state, copied = transfer_state_dict(baseline.state_dict(), moe, perturbation=0.0)
    moe.load_state_dict(state)
    assert len(copied) == len(state) - len([k for k in state if k.startswith("gate.")])
    differences = forced_expert_differences(baseline, moe, batch(dim, n=2))
    assert len(differences) == 3 and max(differences) < 1e-5


@pytest.mark.parametrize("dim", DIMS)
def test_perturbation_makes_experts_differ_but_stay_close(dim):
    baseline, moe = tiny_unet(dim), tiny_moe(dim, num_experts=3)
    state, _ = transfer_state_dict(baseline.state_dict(), moe, perturbation=1e-3)
    moe.load_state_dict(state)
    assert torch.equal(state["experts.0.tu.0.weight"], baseline.state_dict()["tu.0.weight"])
    assert not torch.equal(state["experts.1.tu.0.weight"], state["experts.2.tu.0.weight"])
    differences = forced_expert_differences(baseline, moe, batch(dim, n=2))
    assert differences[0] < 1e-5
    assert 0 < differences[1] < 0.05 and 0 < differences[2] < 0.05


@pytest.mark.parametrize("dim", DIMS)
def test_partial_reinitialisation_redraws_a_share_of_each_experts_channels(dim):
    """Drop-Upcycling: experts 1..E-1 keep (1 - reinit) of each layer's channels and draw the rest afresh from the
    copied tensor's distribution, each its own channels; expert 0 stays the baseline."""
    baseline, moe = tiny_unet(dim), tiny_moe(dim, num_experts=3)
    state, _ = transfer_state_dict(baseline.state_dict(), moe, perturbation=0.0, reinit=0.5)
    source = baseline.state_dict()["tu.0.weight"]
    assert torch.equal(state["experts.0.tu.0.weight"], source)
    redrawn = []
    for expert in (1, 2):
        value = state[f"experts.{expert}.tu.0.weight"]
        changed = [c for c in range(value.shape[1]) if not torch.equal(value[:, c], source[:, c])]
        assert len(changed) == round(0.5 * value.shape[1])
        kept = [c for c in range(value.shape[1]) if c not in changed]
        assert torch.equal(value[:, kept], source[:, kept])
        assert abs(value[:, changed].std() - source.std()) < source.std()  # drawn with the copy's scale
        redrawn.append(changed)
    assert redrawn[0] != redrawn[1] or not torch.equal(state["experts.1.tu.0.weight"], state["experts.2.tu.0.weight"])
    moe.load_state_dict(state)
    differences = forced_expert_differences(baseline, moe, batch(dim, n=2))
    assert differences[0] < 1e-5 and differences[1] > 1e-3 and differences[2] > 1e-3


def test_a_baseline_of_another_shape_is_refused():
    baseline = tiny_unet(3)
    state = dict(baseline.state_dict())
    state["tu.0.weight"] = torch.zeros(1, 1, 1, 1, 1)
    with pytest.raises(ValueError, match="experts.0.tu.0.weight: shape"):
        transfer_state_dict(state, tiny_moe(3))


def test_transferred_checkpoint_loads_through_load_pretrained_weights(tmp_path):
    from nnunet.run.load_pretrained_weights import load_pretrained_weights  # patch 0004
    baseline, moe = tiny_unet(3), tiny_moe(3)
    state, _ = transfer_state_dict(baseline.state_dict(), moe)
    torch.save({"state_dict": state}, tmp_path / "init.model")
    fresh = tiny_moe(3)
    load_pretrained_weights(fresh, str(tmp_path / "init.model"))
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_load_pretrained_weights_names_what_does_not_fit(tmp_path):
    from nnunet.run.load_pretrained_weights import load_pretrained_weights  # patch 0004
    torch.save({"state_dict": tiny_unet(3).state_dict()}, tmp_path / "baseline.model")
    with pytest.raises(RuntimeError, match="experts.0.tu.0.weight"):
        load_pretrained_weights(tiny_moe(3), str(tmp_path / "baseline.model"))
