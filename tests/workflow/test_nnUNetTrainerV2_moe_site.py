"""nnUNetTrainerV2_moe_site, the site oracle: each training case goes to its site's expert, the gate learns to
imitate that routing, validation routes by the gate, and a task without sites is refused with instructions."""
import pytest
import torch

from tests.helpers import FOLD, PLANS
from tests.workflow.test_nnUNetTrainerV2_moe import CONSISTENCY, MOE, shut_down


def make_site_trainer(workflow, output):
    from nnunet.training.network_training.nnUNetTrainerV2_moe_site import nnUNetTrainerV2_moe_site
    trainer = nnUNetTrainerV2_moe_site(str(workflow.preprocessed_task / f"{PLANS}_plans_3D.pkl"), FOLD,
                                       output_folder=str(output), dataset_directory=str(workflow.preprocessed_task),
                                       batch_dice=True, stage=1, unpack_data=True, deterministic=False, fp16=True,
                                       settings={"moe": MOE, "consistency": CONSISTENCY})
    trainer.max_num_epochs, trainer.num_batches_per_epoch, trainer.num_val_batches_per_epoch = 1, 2, 1
    return trainer


def task_cases(workflow) -> list:
    """Every case id of the tiny task: labelled and unlabelled (the preprocessed cases' property files)."""
    return sorted({p.stem for p in workflow.preprocessed_task.rglob("*.pkl") if "plans" not in p.stem
                   and p.stem not in ("dataset_properties", "splits_final")})


@pytest.fixture
def sited(workflow, monkeypatch):
    """Sites A, B, C in turn for the task's cases, as split.json would record them."""
    sites = {case: "ABC"[i % 3] for i, case in enumerate(task_cases(workflow))}
    import nnunet.training.network_training.nnUNetTrainerV2_moe as moe_module
    monkeypatch.setattr(moe_module, "unlabeled_sites", lambda trainer: dict(sites))
    return sites


def test_sites_in_sorted_order_get_the_experts_in_turn():
    from nnunet.training.network_training.nnUNetTrainerV2_moe_site import site_experts
    experts = site_experts({"a": "C", "b": "A", "c": "B", "d": "D", "e": "A"}, num_experts=3)
    assert experts == {"a": 2, "b": 0, "c": 1, "d": 0, "e": 0}


def test_a_task_without_sites_is_refused_with_instructions(workflow, tmp_path):
    trainer = make_site_trainer(workflow, tmp_path)
    with pytest.raises(RuntimeError, match="records no sites.*sites.csv"):
        trainer.initialize(True)
    shut_down(trainer)


def test_each_case_trains_its_sites_expert_and_the_gate_learns_the_routing(workflow, tmp_path, sited):
    from nnunet.training.network_training.nnUNetTrainerV2_moe_site import site_experts
    trainer = make_site_trainer(workflow, tmp_path)
    trainer.initialize(True)
    try:
        assert trainer.moe.top_k == 1 and trainer.network.top_k == 1
        expected = site_experts(sited, 3)
        routed, keys_seen = [], []
        route, forward = trainer.route, trainer.network.forward

        def spy_route(keys):
            keys_seen.append(keys)
            route(keys)

        def spy_forward(x, decision=None):
            output = forward(x, decision=decision)
            routed.append((list(keys_seen[-1]), output.gate.indices[:, 0].tolist()))
            return output

        trainer.route, trainer.network.forward = spy_route, spy_forward
        trainer.epoch = 3  # past the warm-up: labelled and unlabelled batches
        gate_before = trainer.network.gate.w_gate.weight.detach().clone()
        for _ in range(2):
            trainer.run_iteration(trainer.tr_gen, do_backprop=True)
        assert len(routed) == 2 * 3  # labelled, weak and strong view per iteration
        assert all(indices == [expected[k] for k in keys] for keys, indices in routed)
        assert {i for _, indices in routed for i in indices} != {0}  # more than one expert trained
        assert keys_seen[-1] is None and trainer.network.forced_expert is None  # nothing forced after the step
        assert not torch.equal(gate_before, trainer.network.gate.w_gate.weight)  # the imitation trains the gate
        assert all(s["balance"] > 0 for s in trainer._epoch_stats)  # the imitation's cross-entropy

        trainer.network.eval()  # validation routes by the gate, as inference does
        trainer.run_iteration(trainer.val_gen, do_backprop=False)
        assert trainer.network.forced_expert is None
    finally:
        shut_down(trainer)


def test_the_imitation_loss_pulls_the_gate_towards_the_sites_expert(workflow, tmp_path, sited):
    from nnunet.network_architecture.generic_UNet_MoE import GateDecision
    trainer = make_site_trainer(workflow, tmp_path)
    scores = torch.zeros(4, 3, requires_grad=True)
    indices = torch.tensor([[0], [1], [2], [1]])
    router = GateDecision(indices, torch.ones(4, 1), torch.softmax(scores, 1), scores, torch.zeros(4, 3))
    loss = trainer.balance_loss([router])
    assert loss.item() == pytest.approx(torch.log(torch.tensor(3.0)).item())  # uniform scores: log E
    loss.backward()
    assert all(scores.grad[b, indices[b, 0]] < 0 for b in range(4))  # descent raises the site expert's score


def test_the_model_records_one_expert_per_case(workflow, tmp_path):
    """settings.json and the checkpoint's .pkl rebuild the oracle's network with top_k 1 at inference too."""
    from nnunet.training.provenance import settings_record
    trainer = make_site_trainer(workflow, tmp_path)
    assert settings_record(trainer)["settings"]["moe"]["top_k"] == 1
