"""What patches/ gives the pinned nnU-Net, shown on the trained workflow: each test fails on the unpatched 1.6.6
tree (the patch headers name them). The patches' tests without a trained model are tests/unit/test_patches.py."""
import json
import shutil
import subprocess

import torch

from tests.helpers import BASELINE_ITERATIONS, FULLRES_EPOCHS


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
    model = workflow.model("3d_fullres").parent
    results = tmp_path / "results" / "nnUNet" / "3d_fullres" / model.parent.name / model.name
    shutil.copytree(model, results, ignore=shutil.ignore_patterns("validation_raw*", "test_predictions"))
    checkpoint = results / f"fold_{workflow.model('3d_fullres').name[5:]}" / "model_final_checkpoint.model"
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    saved["state_dict"].pop(next(iter(saved["state_dict"])))  # a network this checkpoint does not fit
    torch.save(saved, checkpoint)
    images = tmp_path / "images"
    images.mkdir()
    for case in sorted((workflow.raw_task / "imagesVal").glob("*.nii.gz"))[:1] * 3:  # more cases than the queue holds
        shutil.copy(case, images / f"copy{len(list(images.iterdir()))}_0000.nii.gz")
    env = dict(workflow.env, RESULTS_FOLDER=str(tmp_path / "results"))
    result = subprocess.run(["nnUNet_predict", "-i", str(images), "-o", str(tmp_path / "out"), "-t", "200", "-m",
                             "3d_fullres", "-f", workflow.model("3d_fullres").name[5:], "-p", model.name.split("__")[1],
                             "--disable_tta"], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "Missing key(s) in state_dict" in result.stderr
