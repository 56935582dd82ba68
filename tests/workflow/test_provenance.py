"""Every number knows where it came from (covidseg.runs.provenance, covidseg.evaluation.prediction_records,
nnunet/training/provenance.py): a model records its settings, a training command refuses a model trained under
other settings, test predictions are tied to the checkpoint that made them."""
import gzip
import hashlib
import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from covidseg.runs.provenance import setting_changes
from covidseg.evaluation import prediction_records
from tests.helpers import BASELINE_ITERATIONS, FULLRES_EPOCHS, MOE_TRAINER, PLANS, Workflow

CONTROL_TRAINER = "nnUNetTrainerV2_finetune"
# what a model trained with no MOE_* variable records (semi_supervised/training/settings.py MoESettings)
DEFAULT_MOE = {"num_experts": 3, "top_k": 2, "balance_alpha": 0.01, "balance_decay": 0.9, "gate_features": "stem",
               "gate_noise": 0.05, "supervised_loss": "gate_weighted"}


def copy_of(workflow: Workflow, folder: Path) -> Workflow:
    """The workflow's folders copied, for a test that retrains or damages a model."""
    shutil.copytree(workflow.root, folder, symlinks=True)
    copy = Workflow(folder)
    copy.baseline_env = workflow.baseline_env
    return copy


def test_setting_changes_name_each_setting_old_and_new():
    recorded = {"budget": {"epochs": 10, "initial_lr": 0.01}, "settings": {"moe": {"top_k": 2}},
                "initialised_from": {"file": "/a/model", "sha256": "aa"}, "software": {"torch": "2.1"}}
    requested = {"budget": {"epochs": 3, "initial_lr": 0.01}, "settings": {"moe": {"top_k": 2}},
                 "initialised_from": {"file": "/b/model", "sha256": "aa"}, "software": {"torch": "2.9"}}
    # another path to the same checkpoint and another torch are no other model
    assert setting_changes(recorded, requested) == ["budget.epochs: 10 (the model) -> 3 (now)"]
    requested["settings"]["moe"]["top_k"] = 1
    assert "settings.moe.top_k: 2 (the model) -> 1 (now)" in setting_changes(recorded, requested)


def test_every_trained_model_records_its_settings(control_workflow):
    fullres = json.loads((control_workflow.model("3d_fullres") / "settings.json").read_text())
    assert fullres["model"] == {"task": "Task200_COVID_19_20", "configuration": "3d_fullres",
                                "trainer": "nnUNetTrainerV2", "plans": PLANS, "fold": "4"}
    assert fullres["budget"]["epochs"] == FULLRES_EPOCHS
    assert fullres["budget"]["iterations_per_epoch"] == BASELINE_ITERATIONS
    assert fullres["settings"] == {} and fullres["initialised_from"] is None
    assert fullres["data"]["split_json_sha256"] == hashlib.sha256(
        (control_workflow.raw_task / "split.json").read_bytes()).hexdigest()
    assert set(fullres["software"]) == {"workspace", "torch", "nnunet", "numpy", "python"}
    assert fullres["processes"] == 1
    moe = json.loads((control_workflow.model("3d_fullres", MOE_TRAINER) / "settings.json").read_text())
    assert moe["budget"]["epochs"] == 2 and set(moe["settings"]) == {"finetune", "moe", "consistency"}
    assert moe["settings"]["moe"] == DEFAULT_MOE
    assert moe["settings"]["consistency"]["kind"] == "weak_strong"
    assert moe["initialised_from"]["file"].endswith("moe_init_fold_4.model")
    control = json.loads((control_workflow.model("3d_fullres", CONTROL_TRAINER) / "settings.json").read_text())
    assert control["settings"] == {"finetune": {"initial_lr": 0.002}} and control["budget"]["initial_lr"] == 0.002
    baseline_checkpoint = control_workflow.model("3d_fullres") / "model_final_checkpoint.model"
    assert control["initialised_from"]["sha256"] == prediction_records.checkpoint_sha256(baseline_checkpoint.parent)


def test_the_checkpoint_pkl_holds_the_settings_by_name_and_restores_them(moe_workflow, monkeypatch):
    from nnunet.training.model_restore import restore_model
    checkpoint = moe_workflow.model("3d_fullres", MOE_TRAINER) / "model_final_checkpoint.model"
    info = pickle.loads(Path(str(checkpoint) + ".pkl").read_bytes())
    assert info["settings"]["moe"] == DEFAULT_MOE
    assert len(info["init"]) == 9  # nnU-Net's own positional arguments only
    monkeypatch.setenv("MOE_TOP_K", "1")  # the environment does not change a restored model
    monkeypatch.setenv("MOE_NUM_EXPERTS", "5")
    trainer = restore_model(str(checkpoint) + ".pkl", str(checkpoint), train=False)
    assert (trainer.moe.num_experts, trainer.moe.top_k) == (3, 2)
    assert trainer.network.num_experts == 3


@pytest.mark.parametrize("command,env,change", [
    ("semi", {"MOE_TOP_K": "1"}, "settings.moe.top_k: 2 (the model) -> 1 (now)"),
    ("semi", {"CONSISTENCY_THRESHOLD": "0.5"}, "settings.consistency.threshold: 0.95 (the model) -> 0.5 (now)"),
    ("control", {"nnUNet_max_num_epochs": "3", "FINETUNE_LR": "0.002"}, "budget.epochs: 2 (the model) -> 3 (now)"),
    ("control", {"FINETUNE_LR": "0.004"}, "settings.finetune.initial_lr: 0.002 (the model) -> 0.004 (now)"),
])
def test_a_trained_model_is_not_reused_under_other_settings(control_workflow, command, env, change):
    folder = control_workflow.model("3d_fullres", MOE_TRAINER if command == "semi" else CONTROL_TRAINER)
    before = (folder / "model_final_checkpoint.model").stat().st_mtime_ns
    result = control_workflow.command(command, *control_workflow.workflow_args(), env_extra=env, expect_ok=False)
    assert result.returncode == 1
    assert "was trained with other settings than those asked for now" in result.stderr
    assert change in result.stderr and "FORCE=1 retrains it" in result.stderr
    assert (folder / "model_final_checkpoint.model").stat().st_mtime_ns == before


def test_weights_refuses_an_initialisation_of_other_settings(moe_workflow):
    init = moe_workflow.root / "results" / "nnUNet" / "3d_fullres" / "Task200_COVID_19_20" / \
        f"{MOE_TRAINER}__{PLANS}" / "moe_init_fold_4.model"
    stored = torch.load(init, map_location="cpu", weights_only=True)
    assert stored["moe"] == DEFAULT_MOE
    assert stored["source_sha256"] == prediction_records.checkpoint_sha256(moe_workflow.model("3d_fullres"))
    result = moe_workflow.command("weights", *moe_workflow.workflow_args(), env_extra={"MOE_NUM_EXPERTS": "4"},
                                  expect_ok=False)
    assert result.returncode == 1 and "the MoE settings" in result.stderr and "'num_experts': 4" in result.stderr


def test_a_retrained_model_is_segmented_again_and_never_scored_on_old_predictions(evaluated_workflow, tmp_path):
    flow = copy_of(evaluated_workflow, tmp_path / "copy")
    control = flow.model("3d_fullres", CONTROL_TRAINER)
    old_record = json.loads((control / "test_predictions" / "made_by.json").read_text())
    shutil.copytree(control / "test_predictions", tmp_path / "old_predictions")
    retrained = flow.command("control", *flow.workflow_args(), "--force", env_extra={"FINETUNE_LR": "0.003"})
    assert "removing the earlier model" in retrained.stdout and not (control / "test_predictions").exists()
    assert json.loads((control / "settings.json").read_text())["settings"]["finetune"]["initial_lr"] == 0.003
    # as if retrained with nnUNet_train itself, which leaves the old test predictions in the fold folder
    shutil.copytree(tmp_path / "old_predictions", control / "test_predictions")

    report = flow.command("report", *flow.workflow_args(), "--output", str(tmp_path / "report"), expect_ok=False)
    assert report.returncode == 1
    assert "the control model's test predictions" in report.stderr and "another checkpoint" in report.stderr
    assert "run 'make evaluate'" in report.stderr and not (tmp_path / "report" / "report.md").exists()

    evaluated = flow.command("evaluate", *flow.workflow_args(), "--disable-tta").stdout
    assert "control: the 2 test prediction(s) in" in evaluated and "made by another checkpoint" in evaluated
    assert "fullres: 2 of 2 test case(s) segmented already" in evaluated
    record = json.loads((control / "test_predictions" / "made_by.json").read_text())
    assert record["checkpoint_sha256"] != old_record["checkpoint_sha256"]
    assert record["checkpoint_sha256"] == prediction_records.checkpoint_sha256(control)
    report = flow.command("report", *flow.workflow_args(), "--output", str(tmp_path / "report")).stdout
    assert "| control | nnUNetTrainerV2_finetune | 2 epochs x 3 iterations, initial LR 0.003 |" in report
    assert "WARNING: moe and control were trained with different budgets" in report


def test_a_truncated_test_prediction_is_segmented_again(evaluated_workflow, tmp_path):
    flow = copy_of(evaluated_workflow, tmp_path / "copy")
    predictions = flow.model("3d_fullres", MOE_TRAINER) / "test_predictions"
    case = sorted(predictions.glob("*.nii.gz"))[0]
    case.write_bytes(case.read_bytes()[: case.stat().st_size // 2])
    out = flow.command("evaluate", *flow.workflow_args(), "--disable-tta").stdout
    assert f"moe: {case.name} does not read in full" in out
    assert "moe: 1 of 2 test case(s) segmented already" in out
    assert "fullres: 2 of 2 test case(s) segmented already" in out  # a moved results folder keeps its predictions
    with gzip.open(case) as f:
        f.read()  # complete again


def test_a_model_from_before_settings_were_recorded_still_predicts(moe_workflow, tmp_path):
    """An old MoE: no settings.json, its .pkl with the settings as positional init args and no 'settings'."""
    flow = copy_of(moe_workflow, tmp_path / "copy")
    folder = flow.model("3d_fullres", MOE_TRAINER)
    (folder / "settings.json").unlink()
    pkl = Path(str(folder / "model_final_checkpoint.model") + ".pkl")
    info = pickle.loads(pkl.read_bytes())
    # old models record 3 fields and read the bottleneck (RECORD_DEFAULTS); this checkpoint's gate reads the stem
    old_moe = {"num_experts": 3, "top_k": 2, "balance_alpha": 0.01, "gate_features": "stem"}
    info["init"] = tuple(info["init"]) + (old_moe, info["settings"]["consistency"])
    del info["settings"]
    pkl.write_bytes(pickle.dumps(info))
    again = flow.command("semi", *flow.workflow_args(), "--no-validation", env_extra={"MOE_TOP_K": "1"}).stdout
    assert "has no settings.json (trained before settings were recorded)" in again and "already trained" in again
    out = tmp_path / "predicted"
    flow.command("predict", "--input", str(flow.raw_task / "imagesVal"), "--output", str(out), "--model", "moe",
                 *flow.workflow_args(), "--disable-tta")
    assert len(list(out.glob("*.nii.gz"))) == len(list((flow.raw_task / "imagesVal").glob("*.nii.gz")))


@pytest.mark.parametrize("model", ["control", "ensemble"])
def test_predict_takes_any_trained_method(control_workflow, tmp_path, model):
    images = control_workflow.raw_task / "imagesVal"
    control_workflow.command("predict", "--input", str(images), "--output", str(tmp_path), "--model", model,
                             *control_workflow.workflow_args(), "--disable-tta")
    assert len(list(tmp_path.glob("*.nii.gz"))) == len(list(images.glob("*.nii.gz")))


def test_predict_names_the_target_of_an_untrained_method(control_workflow, tmp_path):
    result = control_workflow.command("predict", "--input", str(control_workflow.raw_task / "imagesVal"), "--output",
                                      str(tmp_path / "out"), "--model", "moe_cps",
                                      *control_workflow.workflow_args(), expect_ok=False)
    assert result.returncode == 1
    assert "run 'make semi MOE_TRAINER=nnUNetTrainerV2_moe_cps' first" in result.stderr


def test_prediction_records_compare_checkpoints_and_members(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "model_final_checkpoint.model").write_bytes(b"weights")
    expected = prediction_records.model_record(model, tta=False)
    predictions = tmp_path / "predictions"
    predictions.mkdir()
    (predictions / "case_1.nii.gz").write_bytes(b"made before records")
    prediction_records.prepare_folder(predictions, expected, "fullres")
    assert not (predictions / "case_1.nii.gz").exists()  # no record: removed
    prediction_records.verify_folder(predictions, expected, "fullres")
    (model / "model_final_checkpoint.model").write_bytes(b"retrained")
    with pytest.raises(Exception, match="another checkpoint"):
        prediction_records.verify_folder(predictions, prediction_records.model_record(model, tta=False), "fullres")
    ensemble = prediction_records.ensemble_record({"fullres": expected})
    assert prediction_records.same_checkpoint(ensemble, prediction_records.ensemble_record({"fullres": expected}))
    assert not prediction_records.same_checkpoint(ensemble, prediction_records.ensemble_record(
        {"fullres": prediction_records.model_record(model, tta=False)}))
