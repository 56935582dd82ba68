"""What patches/ gives the pinned nnU-Net, shown on the trained workflow: each test fails on the unpatched 1.6.6
tree (the patch headers name them). The patches' tests without a trained model are tests/unit/test_patches.py."""
import json
import pickle
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from tests.helpers import (BASELINE_ITERATIONS, FOLD, FULLRES_EPOCHS, PLANS, TASK, write_payload_checkpoint,
                           write_payload_pickle)


# ------------------------------------------------------------------ 0009 settings by name

def test_nnunet_train_writes_settings_json(workflow):
    for configuration in ("3d_fullres", "3d_lowres"):
        record = json.loads((workflow.model(configuration) / "settings.json").read_text())
        assert record["model"]["configuration"] == configuration and record["model"]["trainer"] == "nnUNetTrainerV2"
        assert record["budget"] == {"epochs": FULLRES_EPOCHS, "iterations_per_epoch": BASELINE_ITERATIONS,
                                    "validation_iterations_per_epoch": 1, "initial_lr": 0.01}
        assert record["plan"]["patch_size"] and len(record["plan"]["sha256"]) == 64


# ------------------------------------------------------------------ 0010 daemon preprocessing workers

def test_nnunet_predict_fails_instead_of_hanging_when_the_checkpoint_does_not_fit(workflow, tmp_path):
    """Patch 0010: the checkpoint is loaded after the preprocessing workers started; without daemon workers the
    failed nnUNet_predict waited forever for a worker blocked on its full queue."""
    checkpoint = workflow.copy_model("3d_fullres", tmp_path / "results") / "model_final_checkpoint.model"
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    saved["state_dict"].pop(next(iter(saved["state_dict"])))  # a network this checkpoint does not fit
    torch.save(saved, checkpoint)
    images = tmp_path / "images"
    images.mkdir()
    for case in sorted((workflow.raw_task / "imagesVal").glob("*.nii.gz"))[:1] * 3:  # more cases than the queue holds
        shutil.copy(case, images / f"copy{len(list(images.iterdir()))}_0000.nii.gz")
    env = dict(workflow.env, RESULTS_FOLDER=str(tmp_path / "results"))
    result = nnunet_predict(images, tmp_path / "out", env)
    assert result.returncode != 0
    assert "Missing key(s) in state_dict" in result.stderr


def nnunet_predict(images: Path, output: Path, env: dict) -> subprocess.CompletedProcess:
    """nnUNet_predict with the workflow's 3d_fullres model (a copy under env's RESULTS_FOLDER)."""
    return subprocess.run(["nnUNet_predict", "-i", str(images), "-o", str(output), "-t", str(TASK), "-m",
                           "3d_fullres", "-f", str(FOLD), "-p", PLANS, "--disable_tta"], env=env, capture_output=True,
                          text=True, timeout=120)


# ------------------------------------------------------------------ 0011 safe loading

def tamper(fold: Path, kind: str, marker: Path) -> Path:
    """Replace one file of a copied model by one with the same content plus a value that runs a command when
    loaded; the file."""
    path = fold.parent / kind if kind == "plans.pkl" else fold / kind
    if kind.endswith(".pkl"):
        with open(path, "rb") as f:
            write_payload_pickle(path, marker, pickle.load(f))
    else:
        write_payload_checkpoint(path, marker, torch.load(path, map_location="cpu", weights_only=False))
    return path


MODEL_FILE_KINDS = ("plans.pkl", "model_final_checkpoint.model.pkl", "model_final_checkpoint.model")


@pytest.mark.parametrize("kind", MODEL_FILE_KINDS)
def test_nnunet_predict_refuses_a_model_file_that_runs_code(workflow, tmp_path, kind):
    marker = tmp_path / "ran"
    tampered = tamper(workflow.copy_model("3d_fullres", tmp_path / "results"), kind, marker)
    images = tmp_path / "images"
    images.mkdir()
    case = sorted((workflow.raw_task / "imagesVal").glob("*.nii.gz"))[0]
    shutil.copy(case, images / case.name)
    result = nnunet_predict(images, tmp_path / "out", dict(workflow.env, RESULTS_FOLDER=str(tmp_path / "results")))
    assert not marker.exists(), f"nnUNet_predict ran the command in {kind}"
    assert result.returncode != 0
    assert f"refused to load {tampered}: it asks for the global 'posix.system'" in result.stderr
    assert not list((tmp_path / "out").glob("*.nii.gz"))
