"""nnUNetTrainerV2_moe in-process on the tiny preprocessed task: iterations, gate, experts, resume, empty pool."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import FOLD, PLANS

MOE = dict(num_experts=3, top_k=2, balance_alpha=0.01, balance_decay=0.9, gate_features="stem", gate_noise=0.05,
           supervised_loss="gate_weighted")
CONSISTENCY = dict(kind="weak_strong", threshold=0.5, lambda_max=0.3, warmup_epochs=0, rampup_epochs=1)


def make_trainer(workflow, output, dataset_directory=None, consistency=None, **overrides):
    from nnunet.training.network_training.nnUNetTrainerV2_moe import nnUNetTrainerV2_moe
    trainer = nnUNetTrainerV2_moe(str(workflow.preprocessed_task / f"{PLANS}_plans_3D.pkl"), FOLD,
                                  output_folder=str(output),
                                  dataset_directory=str(dataset_directory or workflow.preprocessed_task),
                                  batch_dice=True, stage=1, unpack_data=True, deterministic=False, fp16=True,
                                  settings={"moe": {**MOE, **overrides},
                                            "consistency": {**CONSISTENCY, **(consistency or {})}})
    trainer.max_num_epochs, trainer.num_batches_per_epoch, trainer.num_val_batches_per_epoch = 1, 2, 1
    return trainer


def shut_down(trainer):
    from nnunet.training.dataloading.unlabeled_loader import stop_generator
    for generator in (trainer.tr_gen, trainer.val_gen, trainer.unlabeled_gen):
        stop_generator(generator)


@pytest.fixture(params=["weak_strong", "cps"])
def trainer(workflow, tmp_path, request):
    trainer = make_trainer(workflow, tmp_path, consistency={"kind": request.param})
    trainer.initialize(True)
    yield trainer
    shut_down(trainer)


def test_lookup_finds_the_trainer_like_nnunet_train_does():
    import nnunet
    from nnunet.training.model_restore import recursive_find_python_class
    found = recursive_find_python_class([nnunet.__path__[0] + "/training/network_training"], "nnUNetTrainerV2_moe",
                                        current_module="nnunet.training.network_training")
    assert found is not None and found.__name__ == "nnUNetTrainerV2_moe"


def test_mixed_precision_follows_the_device(trainer):
    """fp16 was asked for: it is on with a grad scaler where CUDA is, and off (fp32) on a CPU."""
    cuda = torch.cuda.is_available()
    assert trainer.fp16 is cuda
    assert (trainer.amp_grad_scaler is not None) is cuda


def test_iterations_use_unlabelled_batches_update_the_gate_and_let_identical_experts_diverge(trainer):
    torch.manual_seed(0)
    experts = trainer.network.experts
    with torch.no_grad():
        for expert in experts[1:]:
            expert.load_state_dict(experts[0].state_dict())  # identical start, as after a plain copy
    gate_before = trainer.network.gate.w_gate.weight.detach().clone()
    trainer.epoch = 3
    assert trainer.consistency_lambda() == pytest.approx(0.3)
    losses = [trainer.run_iteration(trainer.tr_gen, do_backprop=True) for _ in range(3)]
    assert all(np.isfinite(loss) for loss in losses)
    assert all(s["consistency"] > 0 for s in trainer._epoch_stats)  # the unlabelled batch was used
    probes = trainer._gradient_probes  # measured on the first GRADIENT_PROBES iterations
    assert len(probes) == 3 and all(p["consistency_grad_share"] > 0 for p in probes)
    assert not torch.equal(gate_before, trainer.network.gate.w_gate.weight)
    params = [torch.cat([p.flatten() for p in e.parameters()]) for e in experts]
    assert not torch.equal(params[0], params[1]) and not torch.equal(params[1], params[2])


def make_experts_identical(network):
    with torch.no_grad():
        for expert in network.experts[1:]:
            expert.load_state_dict(network.experts[0].state_dict())


def test_weak_to_strong_consistency_moves_the_shared_weights_even_when_the_experts_are_copies(workflow, tmp_path):
    from nnunet.utilities.to_torch import maybe_to_torch
    trainer = make_trainer(workflow, tmp_path, consistency={"threshold": 0.0})
    trainer.initialize(True)
    try:
        torch.manual_seed(0)
        make_experts_identical(trainer.network)
        trainer.epoch = 3
        unlabeled = maybe_to_torch(next(trainer.unlabeled_gen)["data"])
        term = trainer.unlabeled_term(unlabeled)
        assert term.disagreement == 0.0  # identical experts agree everywhere on the weak view
        assert term.consistency.item() > 0
        term.consistency.backward()
        shared_gradient = sum(p.grad.abs().sum().item() for p in trainer.network.shared_parameters()
                              if p.grad is not None)
        assert shared_gradient > 0
    finally:
        shut_down(trainer)


def test_validation_iteration_does_not_touch_the_weights(trainer):
    trainer.network.eval()
    before = {k: v.clone() for k, v in trainer.network.state_dict().items()}
    loss = trainer.run_iteration(trainer.val_gen, do_backprop=False, run_online_evaluation=True)
    assert np.isfinite(loss)
    assert all(torch.equal(before[k], v) for k, v in trainer.network.state_dict().items())


def test_resume_continues_the_epoch_count_and_the_moe_log(workflow, tmp_path):
    first = make_trainer(workflow, tmp_path)
    first.initialize(True)
    unlabeled = first.unlabeled_gen
    first.run_training()
    # the unlabelled stream's workers are stopped by the trainer (left to the interpreter's exit, they could
    # deadlock nnUNet_train after training)
    assert first.unlabeled_gen is None and unlabeled._processes == [] and unlabeled.abort_event.is_set()
    shut_down(first)
    folder = Path(first.output_folder)  # nnU-Net adds fold_<F>
    assert (folder / "model_final_checkpoint.model").is_file()
    assert (folder / "moe_progress.png").stat().st_size > 0
    saved = torch.load(folder / "model_final_checkpoint.model", map_location="cpu", weights_only=False)
    assert any(k.startswith("gate.") for k in saved["state_dict"])  # the checkpoint carries the gate

    second = make_trainer(workflow, tmp_path)
    second.max_num_epochs = 2
    second.initialize(True)
    second.load_latest_checkpoint()
    assert second.epoch == 1
    second.run_training()
    shut_down(second)
    saved = torch.load(folder / "model_final_checkpoint.model", map_location="cpu", weights_only=False)
    assert saved["epoch"] == 2  # (nnU-Net keeps trainer.epoch one lower after its loop and saves epoch + 1)
    log = json.loads((folder / "moe_log.json").read_text())
    assert [e["epoch"] for e in log] == [0, 1]
    assert all(len(e["usage"]) == 3 and sum(e["usage"]) == pytest.approx(1, abs=1e-3) for e in log)
    for entry in log:  # the unlabelled term's diagnostics, every epoch (warm-up 0)
        assert all(0 <= entry[key] <= 1 for key in ("disagreement", "confident_fraction"))
        assert all(entry[key] is None or 0 <= entry[key] <= 1
                   for key in ("expert_lesion_dice", "confident_fraction_lesion"))
        assert 0 < entry["consistency_grad_share"] < 100 and -1 <= entry["consistency_grad_cosine"] <= 1
        assert 0 <= entry["gate_entropy"] <= np.log(3) + 1e-6 and 0 <= entry["gate_entropy_noisy"] <= np.log(3) + 1e-6
        assert entry["gate_signal_to_noise"] > 0
    text = "".join(p.read_text() for p in folder.glob("training_log_*.txt"))
    assert all(key in text for key in ("expert_lesion_dice", "consistency_grad_cosine", "gate_entropy_noisy",
                                       "gate_signal_to_noise", "route_site_mi"))


def test_an_empty_unlabelled_pool_stops_training_with_instructions(workflow, tmp_path):
    copy = tmp_path / "preprocessed"
    shutil.copytree(workflow.preprocessed_task, copy, ignore=shutil.ignore_patterns("unlabeled"))
    trainer = make_trainer(workflow, tmp_path / "out", dataset_directory=copy)
    with pytest.raises(RuntimeError, match="unlabelled pool is empty.*LABELED_FRACTION.*EXTRA_UNLABELED"):
        trainer.initialize(True)
    shut_down(trainer)
