"""A tiny run of the whole supervised workflow on the CPU, through the workflow scripts and nnU-Net's CLI:

synthetic download -> convert -> plan and preprocess (CPU demo planner) -> train 3d_fullres and 3d_lowres for
2 epochs with --npz -> nnUNet_ensemble -> Dice table -> nnUNet_predict on new CTs.
"""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import SCRIPTS, run_env
from make_synthetic_covid import PhantomSettings, write_download

TASK, FOLD, PLANS, TRAINER = 200, 4, "nnUNetPlans_CPUDemo", "nnUNetTrainerV2"
TASK_NAME = "Task200_COVID_19_20"
# large enough against the demo planner's patch for nnU-Net to plan a 3d_lowres stage
E2E_PHANTOMS = PhantomSettings(xy_range=(100, 108), z_range=(32, 36), spacing_xy_range=(2.9, 3.1))


def run_script(script: str, *args: str, env: dict) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, str(SCRIPTS / script), *args], env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{script} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="session")
def workflow(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    env = run_env(nnUNet_raw_data_base=root / "raw", nnUNet_preprocessed=root / "preprocessed",
                  RESULTS_FOLDER=root / "results", nnUNet_max_num_epochs=2, nnUNet_num_batches_per_epoch=3,
                  nnUNet_num_val_batches_per_epoch=1, nnUNet_n_proc_DA=1, nnUNet_def_n_proc=2)
    write_download(root / "download", n_train=10, n_validation=2, seed=5, settings=E2E_PHANTOMS)
    run_script("COVID_19_20.py", str(root / "download"), "--output-base", str(root / "raw" / "nnUNet_raw_data"),
               "--labeled-fraction", "1.0", env=env)
    preprocess = run_script("preprocess.py", "--task", str(TASK), "--planner3d", "ExperimentPlanner3D_v21_CPUDemo",
                            "--plans", PLANS, "--tl", "1", "--tf", "1", env=env)
    baseline = run_script("baseline.py", "--task", str(TASK), "--fold", str(FOLD), "--plans", PLANS,
                          "--trainer", TRAINER, env=env)
    return {"root": root, "env": env, "preprocess": preprocess.stdout, "baseline": baseline.stdout}


def folder(workflow, configuration: str) -> Path:
    """nnU-Net's output folder of a trained configuration (RESULTS_FOLDER/nnUNet/<config>/<task>/<trainer>__<plans>)."""
    return (Path(workflow["env"]["RESULTS_FOLDER"]) / "nnUNet" / configuration / TASK_NAME / f"{TRAINER}__{PLANS}" /
            f"fold_{FOLD}")


def geometry(path: Path):
    image = sitk.ReadImage(str(path))
    return image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection()


def test_planner_made_both_3d_stages_with_a_capped_patch(workflow):
    assert "3d_lowres: patch" in workflow["preprocess"] and "3d_fullres: patch" in workflow["preprocess"]
    for line in workflow["preprocess"].splitlines():
        if ": patch [" in line:
            patch = json.loads(line.split("patch ")[1].split("]")[0] + "]")
            assert all(p <= cap for p, cap in zip(patch, (16, 48, 48)))


def test_training_length_and_checkpoints(workflow):
    for configuration in ("3d_fullres", "3d_lowres"):
        checkpoint = folder(workflow, configuration) / "model_final_checkpoint.model"
        saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
        assert saved["epoch"] == 2
        assert len(saved["plot_stuff"][0]) == 2  # one training loss per epoch


def test_validation_predictions_with_npz_keep_the_reference_geometry(workflow):
    references = Path(workflow["env"]["nnUNet_preprocessed"]) / TASK_NAME / "gt_segmentations"
    for configuration in ("3d_fullres", "3d_lowres"):
        validation = folder(workflow, configuration) / "validation_raw"
        cases = sorted(validation.glob("*.nii.gz"))
        assert len(cases) == 2
        for case in cases:
            assert (validation / case.name.replace(".nii.gz", ".npz")).is_file()
            assert geometry(case) == geometry(references / case.name)


def test_ensemble_and_dice_table(workflow):
    out = workflow["baseline"]
    table = out[out.index("Validation Dice"):]
    for model in ("fullres", "lowres", "ensemble"):
        line = next(l for l in table.splitlines() if l.strip().startswith(model))
        assert 0.0 <= float(line.split()[-1]) <= 1.0
    ensemble = Path(workflow["env"]["RESULTS_FOLDER"]) / "nnUNet" / "ensembles" / TASK_NAME
    assert len(list(ensemble.rglob("*.nii.gz"))) == 2


def test_baseline_again_does_not_retrain(workflow):
    checkpoint = folder(workflow, "3d_fullres") / "model_final_checkpoint.model"
    before = checkpoint.stat().st_mtime_ns
    result = run_script("baseline.py", "--task", str(TASK), "--fold", str(FOLD), "--plans", PLANS,
                        "--trainer", TRAINER, env=workflow["env"])
    assert "3d_fullres: already trained" in result.stdout
    assert checkpoint.stat().st_mtime_ns == before


def test_nnunet_predict_keeps_the_input_geometry(workflow, tmp_path):
    images = Path(workflow["env"]["nnUNet_raw_data_base"]) / "nnUNet_raw_data" / TASK_NAME / "imagesVal"
    result = subprocess.run(["nnUNet_predict", "-i", str(images), "-o", str(tmp_path), "-t", str(TASK),
                             "-m", "3d_fullres", "-p", PLANS, "-tr", TRAINER, "-f", str(FOLD), "--disable_tta"],
                            env=workflow["env"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    for image in sorted(images.glob("*_0000.nii.gz")):
        prediction = tmp_path / image.name.replace("_0000.nii.gz", ".nii.gz")
        assert geometry(prediction) == geometry(image)
        assert set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(prediction))))) <= {0, 1}
