"""Sharing a trained model: a tampered model file is refused by name by the workspace's commands without running it,
and a model exported by `make export` and installed by `make import` elsewhere predicts the same segmentation."""
import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from covidseg.runs.model_zip import IMPORT_RECORD, MANIFEST
from tests.helpers import FOLD, PLANS, TASK
from tests.workflow.test_patches import MODEL_FILE_KINDS, tamper


def one_case(workflow, folder):
    folder.mkdir()
    case = sorted((workflow.raw_task / "imagesVal").glob("*.nii.gz"))[0]
    shutil.copy(case, folder / case.name)
    return folder


def predict_args(images, output):
    return ["--input", images, "--output", output, "--model", "fullres", "--task", TASK, "--fold", FOLD,
            "--plans", PLANS, "--disable-tta"]


@pytest.mark.parametrize("kind", MODEL_FILE_KINDS)
def test_make_predict_refuses_a_model_file_that_runs_code(workflow, tmp_path, kind):
    marker = tmp_path / "ran"
    tampered = tamper(workflow.copy_model("3d_fullres", tmp_path / "results"), kind, marker)
    output = tmp_path / "out"
    result = workflow.command("predict", *predict_args(one_case(workflow, tmp_path / "images"), output),
                              expect_ok=False, env_extra={"RESULTS_FOLDER": str(tmp_path / "results")})
    assert not marker.exists()
    assert result.returncode == 1
    assert f"its files may hold only data:\n  - refused to load {tampered}: it asks for the global 'posix.system'" \
        in result.stderr
    assert "Traceback" not in result.stderr and not output.exists()


def test_an_exported_model_imported_elsewhere_predicts_the_same_segmentation(workflow, tmp_path):
    zip_path = tmp_path / "fullres.zip"
    exported = workflow.command("export", "--zip", zip_path, "--model", "fullres", "--task", TASK, "--plans", PLANS)
    assert "exported fullres: " in exported.stdout and zip_path.is_file()
    elsewhere = {"RESULTS_FOLDER": str(tmp_path / "lab_b"), "nnUNet_raw_data_base": str(tmp_path / "lab_b_raw"),
                 "nnUNet_preprocessed": str(tmp_path / "lab_b_preprocessed")}  # another lab: only the model
    imported = workflow.command("import", "--zip", zip_path, env_extra=elsewhere)
    assert "loaded safely: 3d_fullres/" in imported.stdout
    installed = workflow.model("3d_fullres").relative_to(workflow.root / "results")
    record = json.loads((tmp_path / "lab_b" / installed.parent / IMPORT_RECORD).read_text())
    assert record["model"] == "fullres" and record["imported"]["zip"] == str(zip_path)

    again = workflow.command("import", "--zip", zip_path, expect_ok=False, env_extra=elsewhere)
    assert again.returncode == 1 and "FORCE=1 replaces it" in again.stderr

    images = one_case(workflow, tmp_path / "images")
    workflow.command("predict", *predict_args(images, tmp_path / "here"))
    workflow.command("predict", *predict_args(images, tmp_path / "there"), env_extra=elsewhere)
    [here], [there] = sorted((tmp_path / "here").glob("*.nii.gz")), sorted((tmp_path / "there").glob("*.nii.gz"))
    a, b = sitk.ReadImage(str(here)), sitk.ReadImage(str(there))
    assert np.array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))
    assert (a.GetSpacing(), a.GetOrigin(), a.GetDirection()) == (b.GetSpacing(), b.GetOrigin(), b.GetDirection())
    assert MANIFEST not in {p.name for p in (tmp_path / "lab_b").rglob("*")}
