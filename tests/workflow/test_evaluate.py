"""make evaluate (python -m covidseg.evaluate): every trained model segments the held-out test set into its own
folder, in the test CTs' geometry; a second run segments nothing again."""
import json

import pytest
import SimpleITK as sitk

from covidseg.core.workspace import ENSEMBLE, TEST_PREDICTIONS
from tests.helpers import MOE_TRAINER, TRAINER, run_command

MODELS = {"lowres": ("3d_lowres", TRAINER), "fullres": ("3d_fullres", TRAINER),
          "control": ("3d_fullres", "nnUNetTrainerV2_finetune"), "moe": ("3d_fullres", MOE_TRAINER)}


def geometry(path):
    image = sitk.ReadImage(str(path))
    return image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection()


def test_every_model_segments_every_test_case_in_its_geometry(evaluated_workflow):
    test = json.loads((evaluated_workflow.raw_task / "split.json").read_text())["test"]
    assert len(test) == 2
    folders = [evaluated_workflow.model(*MODELS[name]) for name in MODELS]
    folders.append(next((evaluated_workflow.root / "results" / "nnUNet" / "ensembles").rglob("fold_4")))
    for folder in folders:
        predictions = folder / TEST_PREDICTIONS
        assert sorted(p.name for p in predictions.glob("*.nii.gz")) == [f"{c}.nii.gz" for c in test], folder
        for case in test:
            image = evaluated_workflow.raw_task / "imagesTs" / f"{case}_0000.nii.gz"
            assert geometry(predictions / f"{case}.nii.gz") == geometry(image)


def test_evaluate_prints_the_test_dice_of_every_model(evaluated_workflow):
    table = evaluated_workflow.outputs["evaluate"].split("Test-set Dice")[1]
    for name in ("lowres", "fullres", ENSEMBLE, "control", "moe"):
        line = next(row for row in table.splitlines() if row.strip().startswith(name + " "))
        assert 0 <= float(line.split()[-1]) <= 1


def test_evaluate_again_segments_nothing_again(evaluated_workflow):
    prediction = next((evaluated_workflow.model(*MODELS["moe"]) / TEST_PREDICTIONS).glob("*.nii.gz"))
    before = prediction.stat().st_mtime_ns
    again = evaluated_workflow.command("evaluate", *evaluated_workflow.workflow_args(), "--disable-tta").stdout
    for name in MODELS:
        assert f"{name}: 2 of 2 test case(s) segmented already" in again
    assert "nnUNet_predict" not in again
    assert prediction.stat().st_mtime_ns == before


def test_a_missing_prediction_is_made_again(evaluated_workflow):
    """An interrupted run: the case without a segmentation is segmented, the other is kept."""
    predictions = evaluated_workflow.model(*MODELS["control"]) / TEST_PREDICTIONS
    first, second = sorted(predictions.glob("*.nii.gz"))
    kept = second.stat().st_mtime_ns
    first.unlink()
    again = evaluated_workflow.command("evaluate", *evaluated_workflow.workflow_args(), "--disable-tta").stdout
    assert "control: 1 of 2 test case(s) segmented already" in again
    assert first.is_file() and second.stat().st_mtime_ns == kept


def test_a_task_without_a_test_set_names_the_conversion_setting(workflow, tmp_path):
    (tmp_path / "raw" / "nnUNet_raw_data" / "Task200_COVID_19_20").mkdir(parents=True)
    env = dict(workflow.env, nnUNet_raw_data_base=str(tmp_path / "raw"))
    result = run_command("evaluate", *workflow.workflow_args(), env=env, expect_ok=False)
    assert result.returncode == 1 and "has no held-out test set" in result.stderr and "TEST_FRACTION" in result.stderr


def test_extra_models_are_name_equals_trainer_and_cannot_shadow_the_registered_ones():
    from covidseg.core.errors import WorkflowError
    from covidseg.evaluate import extra_models
    extra = extra_models(["mine=nnUNetTrainerV2_mine", "mt=nnUNetTrainerV2_meanteacher"])
    assert {name: m.trainer for name, m in extra.items()} == {"mine": "nnUNetTrainerV2_mine",
                                                             "mt": "nnUNetTrainerV2_meanteacher"}
    for bad in ("mine", "=nnUNetTrainerV2", "moe=nnUNetTrainerV2_selftrain", "ensemble=x", "selftrain=x"):
        with pytest.raises(WorkflowError, match="expected NAME=TRAINER"):
            extra_models([bad])
