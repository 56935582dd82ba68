"""make control (python -m covidseg.control): nnUNetTrainerV2_finetune continues the tiny trained baseline on the
labelled cases with the MoE's budget and learning rate (the `control_workflow` fixture)."""
import re

import pytest
import torch

from tests.helpers import FOLD, PLANS, TASK

CONTROL_TRAINER = "nnUNetTrainerV2_finetune"


def test_control_continues_the_baseline_for_the_given_budget(control_workflow):
    assert "Loaded pretrained weights" in control_workflow.outputs["control"]  # from the baseline, not from scratch
    folder = control_workflow.model("3d_fullres", CONTROL_TRAINER)
    saved = torch.load(folder / "model_final_checkpoint.model", map_location="cpu", weights_only=False)
    assert saved["epoch"] == 2  # the workflow's EPOCHS, the same budget the MoE gets
    log = "".join(p.read_text() for p in folder.glob("training_log_*.txt"))
    assert re.search(r"lr: 0\.002\s*\n", log), "the first epoch runs at FINETUNE_LR (then nnU-Net's poly decay)"
    assert len(list((folder / "validation_raw").glob("*.npz"))) >= 1


def test_control_prints_its_validation_dice_beside_the_baseline_and_the_moe(control_workflow):
    table = control_workflow.outputs["control"].split("Validation Dice")[1]
    assert all(f"  {model} " in table for model in ("fullres", "control", "moe"))


def test_control_again_does_not_retrain(control_workflow):
    checkpoint = control_workflow.model("3d_fullres", CONTROL_TRAINER) / "model_final_checkpoint.model"
    before = checkpoint.stat().st_mtime_ns
    again = control_workflow.command("control", *control_workflow.workflow_args(), env_extra={"FINETUNE_LR": "0.002"})
    assert f"3d_fullres {CONTROL_TRAINER}: already trained" in again.stdout
    assert checkpoint.stat().st_mtime_ns == before


def test_control_before_the_baseline_names_make_baseline(workflow):
    result = workflow.command("control", "--task", str(TASK), "--fold", "0", "--plans", PLANS, expect_ok=False)
    assert result.returncode == 1 and "run 'make baseline' first" in result.stderr


@pytest.mark.parametrize("trainer", [CONTROL_TRAINER, "nnUNetTrainerV2_moe"])
def test_the_moe_and_its_control_start_from_the_same_learning_rate(workflow, monkeypatch, tmp_path, trainer):
    from nnunet.training.model_restore import recursive_find_python_class
    import nnunet
    trainer_class = recursive_find_python_class([nnunet.__path__[0] + "/training/network_training"], trainer,
                                                current_module="nnunet.training.network_training")
    monkeypatch.setenv("FINETUNE_LR", "0.004")
    created = trainer_class(str(workflow.preprocessed_task / f"{PLANS}_plans_3D.pkl"), FOLD,
                            output_folder=str(tmp_path), dataset_directory=str(workflow.preprocessed_task))
    assert created.initial_lr == pytest.approx(0.004)
