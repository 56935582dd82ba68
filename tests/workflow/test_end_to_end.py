"""The supervised workflow on the CPU, through the workflow scripts and nnU-Net's CLI (the `workflow` fixture:
synthetic download -> convert -> plan and preprocess -> 3d_fullres and 3d_lowres for 2 epochs with --npz ->
nnUNet_ensemble -> Dice table), then nnUNet_predict on new CTs.
"""
import json
import subprocess
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

import pytest

from tests.helpers import FOLD, FULLRES_EPOCHS, PLANS, TASK, TRAINER


def geometry(path: Path):
    image = sitk.ReadImage(str(path))
    return image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection()


def test_planner_made_both_3d_stages_with_a_capped_patch(workflow):
    out = workflow.outputs["preprocess"]
    assert "3d_lowres: patch" in out and "3d_fullres: patch" in out
    for line in out.splitlines():
        if ": patch [" in line:
            patch = json.loads(line.split("patch ")[1].split("]")[0] + "]")
            assert all(p <= cap for p, cap in zip(patch, (16, 48, 48)))


@pytest.mark.parametrize("configuration,epochs", [("3d_fullres", FULLRES_EPOCHS), ("3d_lowres", FULLRES_EPOCHS)])
def test_training_length_and_checkpoints(workflow, configuration, epochs):
    checkpoint = workflow.model(configuration) / "model_final_checkpoint.model"
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    assert saved["epoch"] == epochs
    assert len(saved["plot_stuff"][0]) == epochs  # one training loss per epoch


def test_validation_predictions_with_npz_keep_the_reference_geometry(workflow):
    references = workflow.preprocessed_task / "gt_segmentations"
    for configuration in ("3d_fullres", "3d_lowres"):
        validation = workflow.model(configuration) / "validation_raw"
        cases = sorted(validation.glob("*.nii.gz"))
        assert len(cases) >= 1
        for case in cases:
            assert (validation / case.name.replace(".nii.gz", ".npz")).is_file()
            assert geometry(case) == geometry(references / case.name)


def test_lowres_skips_the_cascade_next_stage_prediction(workflow):
    assert workflow.model("3d_lowres").parent.is_dir()
    assert not (workflow.model("3d_lowres").parent / "pred_next_stage").exists()


def test_ensemble_and_dice_table(workflow):
    out = workflow.outputs["baseline"]
    table = out[out.index("Validation Dice"):]
    for model in ("fullres", "lowres", "ensemble"):
        line = next(row for row in table.splitlines() if row.strip().startswith(model))
        assert 0.0 <= float(line.split()[-1]) <= 1.0
    ensemble = workflow.root / "results" / "nnUNet" / "ensembles"
    validated = list((workflow.model("3d_fullres") / "validation_raw").glob("*.nii.gz"))
    assert len(list(ensemble.rglob("*.nii.gz"))) == len(validated)


def test_baseline_again_does_not_retrain(workflow):
    checkpoint = workflow.model("3d_fullres") / "model_final_checkpoint.model"
    before = checkpoint.stat().st_mtime_ns
    result = workflow.command("baseline", *workflow.workflow_args(), env_extra=workflow.baseline_env)
    assert "3d_fullres nnUNetTrainerV2: already trained" in result.stdout
    assert checkpoint.stat().st_mtime_ns == before


def test_nnunet_predict_keeps_the_input_geometry(workflow, tmp_path):
    images = workflow.raw_task / "imagesVal"
    result = subprocess.run(["nnUNet_predict", "-i", str(images), "-o", str(tmp_path), "-t", str(TASK),
                             "-m", "3d_fullres", "-p", PLANS, "-tr", TRAINER, "-f", str(FOLD), "--disable_tta"],
                            env=workflow.env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    inputs = sorted(images.glob("*_0000.nii.gz"))
    assert len(inputs) == 2
    for image in inputs:
        prediction = tmp_path / image.name.replace("_0000.nii.gz", ".nii.gz")
        assert geometry(prediction) == geometry(image)
        assert set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(prediction))))) <= {0, 1}
