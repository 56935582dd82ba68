"""nnUNetTrainerV2_meanteacher: the weak-to-strong term with an EMA teacher, and `make meanteacher` end to end."""
import pickle

import pytest
import torch

from tests.helpers import PLANS, batch, tiny_unet


@pytest.mark.parametrize("dim", [2, 3])
def test_identical_student_and_teacher_still_give_a_consistency_gradient(dim):
    from nnunet.training.loss_functions.consistency import ConsistencySettings
    from nnunet.training.network_training.nnUNetTrainerV2_meanteacher import mean_teacher_term
    from nnunet.utilities.ema import ema_copy
    torch.manual_seed(0)
    student = tiny_unet(dim)
    teacher = ema_copy(student)  # identical weights: only the perturbations make them differ
    term = mean_teacher_term(student, teacher, batch(dim, n=2), ConsistencySettings(threshold=0.0))
    term.consistency.backward()
    assert term.consistency.item() > 0 and term.confident_fraction == 1.0
    assert sum(p.grad.abs().sum().item() for p in student.parameters() if p.grad is not None) > 0
    assert all(p.grad is None for p in teacher.parameters())


def test_the_decay_is_a_checked_setting(monkeypatch):
    from nnunet.training.network_training.nnUNetTrainerV2_meanteacher import ema_decay_from_environment
    monkeypatch.setenv("MT_EMA_DECAY", "0.95")
    assert ema_decay_from_environment() == 0.95
    monkeypatch.setenv("MT_EMA_DECAY", "1.5")
    with pytest.raises(ValueError, match="MT_EMA_DECAY=1.5"):
        ema_decay_from_environment()


def test_make_meanteacher_trains_from_the_baseline_and_saves_its_teacher(workflow):
    output = workflow.command("meanteacher", *workflow.workflow_args(), env_extra={"MT_EMA_DECAY": "0.9"}).stdout
    assert "meanteacher" in output and "Validation Dice" in output
    model = workflow.model("3d_fullres", "nnUNetTrainerV2_meanteacher")
    teacher = torch.load(model / "model_final_checkpoint.model.teacher", map_location="cpu", weights_only=True)
    student = torch.load(model / "model_final_checkpoint.model", map_location="cpu", weights_only=False)["state_dict"]
    assert teacher.keys() == student.keys()
    assert any(not torch.equal(teacher[k], student[k]) for k in teacher)  # the EMA lags the student
    with open(model / "model_final_checkpoint.model.pkl", "rb") as f:
        settings = pickle.load(f)["settings"]  # by name (patch 0009)
    assert settings["ema"] == {"decay": 0.9} and settings["consistency"]["kind"] == "weak_strong"
    log = "".join(p.read_text() for p in model.glob("training_log_*.txt"))
    assert "mean teacher: consistency" in log and f"{PLANS}" in str(model)
