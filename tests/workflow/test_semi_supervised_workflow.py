"""make weights / semi / predict through their commands (python -m covidseg.<target>) and nnU-Net's CLI, on the
tiny trained baseline."""
import subprocess

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from covidseg.core.challenge import case_id
from tests.helpers import FOLD, MOE_TRAINER, PLANS, TASK, run_command
from tests.unit.test_image_checks import truncate


def geometry(path):
    image = sitk.ReadImage(str(path))
    return image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection()


def test_weights_reports_the_copy_and_the_forced_expert_equality(moe_workflow):
    out = moe_workflow.outputs["weights"]
    copied, total = [int(w) for w in out.split("copied ")[1].split(" MoE tensors")[0].split(" of ")]
    assert copied == total - 5  # the gate stays fresh: its two linear layers, its standardiser's 3 running moments
    lines = [line for line in out.splitlines() if line.startswith("gate forced to expert")]
    assert len(lines) == 3
    assert float(lines[0].split("= ")[1].split()[0]) == 0.0 and lines[0].endswith("(an exact copy)")
    # experts 1 and 2 are partly re-initialised on purpose (TRANSFER_REINIT 0.25): their outputs differ
    assert all(line.endswith("(reinit 0.25, noise 0.001)") for line in lines[1:])


def test_weights_again_keeps_the_existing_file(moe_workflow):
    out = moe_workflow.command("weights", *moe_workflow.workflow_args()).stdout
    assert "exists; keeping it" in out


def test_weights_with_impossible_moe_settings_is_a_user_error(moe_workflow):
    init = next((moe_workflow.root / "results").rglob("moe_init_fold_*.model"))
    before = init.read_bytes()
    result = run_command("weights", *moe_workflow.workflow_args(), "--force", env=dict(moe_workflow.env, MOE_TOP_K="4"),
                         expect_ok=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("ERROR: the MoE settings") and "top_k must be in [1, num_experts=3], got 4" in \
        result.stderr
    assert init.read_bytes() == before  # nothing was written


def test_semi_trains_from_the_baseline_and_validates(moe_workflow):
    folder = moe_workflow.model("3d_fullres", MOE_TRAINER)
    assert "Loaded pretrained weights" in moe_workflow.outputs["semi"]
    saved = torch.load(folder / "model_final_checkpoint.model", map_location="cpu", weights_only=False)
    assert saved["epoch"] == 2
    assert (folder / "moe_progress.png").is_file() and (folder / "progress.png").is_file()
    assert len(list((folder / "validation_raw").glob("*.npz"))) >= 1
    table = moe_workflow.outputs["semi"].split("Validation Dice")[1]
    assert "fullres" in table and "moe" in table


def test_nnunet_predict_with_the_moe_trainer_keeps_the_geometry(moe_workflow, tmp_path):
    images = moe_workflow.raw_task / "imagesVal"
    result = subprocess.run(["nnUNet_predict", "-i", str(images), "-o", str(tmp_path), "-t", str(TASK), "-m",
                             "3d_fullres", "-p", PLANS, "-tr", MOE_TRAINER, "-f", str(FOLD), "--disable_tta"],
                            env=moe_workflow.env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    inputs = sorted(images.glob("*_0000.nii.gz"))
    assert inputs
    for image in inputs:
        assert geometry(tmp_path / image.name.replace("_0000", "")) == geometry(image)


@pytest.mark.parametrize("model", ["moe", "ensemble"])
def test_make_predict_segments_a_folder_with_any_file_names(moe_workflow, tmp_path, model):
    download = moe_workflow.root / "download" / "Validation"
    out = tmp_path / "segmentations"
    moe_workflow.command("predict", "--input", str(download), "--output", str(out), "--model", model,
                        "--disable-tta", *moe_workflow.workflow_args())
    cts = sorted(download.glob("*_ct.nii.gz"))
    assert len(cts) == 2
    # <case>.nii.gz: the challenge's case id, as in the converted task and nnU-Net's own outputs
    assert sorted(p.name for p in out.iterdir()) == [f"{case_id(ct)}.nii.gz" for ct in cts]
    for ct in cts:
        segmentation = out / f"{case_id(ct)}.nii.gz"
        assert geometry(segmentation) == geometry(ct)
        assert set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(segmentation))))) <= {0, 1}


def test_make_predict_refuses_to_overwrite_and_names_bad_input(moe_workflow, tmp_path):
    ct = next((moe_workflow.root / "download" / "Validation").glob("*_ct.nii.gz"))
    out = tmp_path / "out"
    out.mkdir()
    (out / f"{case_id(ct)}.nii.gz").write_text("my earlier result")
    result = moe_workflow.command("predict", "--input", str(ct), "--output", str(out), "--disable-tta",
                                 *moe_workflow.workflow_args(), expect_ok=False)
    assert result.returncode == 1 and "FORCE=1" in result.stderr
    assert (out / f"{case_id(ct)}.nii.gz").read_text() == "my earlier result"

    flat = tmp_path / "flat.nii.gz"
    sitk.WriteImage(sitk.ReadImage(str(ct))[:, :, 0], str(flat))
    result = moe_workflow.command("predict", "--input", str(flat), "--output", str(tmp_path / "o2"),
                                 *moe_workflow.workflow_args(), expect_ok=False)
    assert result.returncode == 1 and "flat.nii.gz: not a 3D" in result.stderr


def test_missing_prerequisites_name_the_target_to_run(workflow, tmp_path):
    result = workflow.command("predict", "--input", str(tmp_path), "--output", str(tmp_path / "o"), "--model",
                             "moe", "--task", str(TASK), "--fold", "0", "--plans", PLANS, expect_ok=False)
    assert result.returncode == 1 and "run 'make semi' first" in result.stderr
    result = workflow.command("weights", "--task", str(TASK), "--fold", "0", "--plans", PLANS, expect_ok=False)
    assert result.returncode == 1 and "run 'make baseline' first" in result.stderr
    result = workflow.command("semi", "--task", str(TASK), "--fold", "0", "--plans", PLANS, expect_ok=False)
    assert result.returncode == 1 and "run 'make weights' first" in result.stderr


def broken_inputs(workflow, folder):
    """A good CT, a truncated copy and a copy with NaN voxels, in `folder`."""
    folder.mkdir()
    ct = sorted((workflow.root / "download" / "Validation").glob("*_ct.nii.gz"))[0]
    (folder / "good.nii.gz").write_bytes(ct.read_bytes())
    truncate(folder / "good.nii.gz").rename(folder / "cut.nii.gz")
    (folder / "good.nii.gz").write_bytes(ct.read_bytes())
    image = sitk.ReadImage(str(ct))
    voxels = sitk.GetArrayFromImage(image).astype(np.float32)
    voxels[0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(voxels.T, np.diag(list(image.GetSpacing()) + [1.0])), str(folder / "nan.nii.gz"))
    return folder


def test_make_predict_checks_every_input_before_segmenting_any(moe_workflow, tmp_path):
    inputs = broken_inputs(moe_workflow, tmp_path / "in")
    result = moe_workflow.command("predict", "--input", str(inputs), "--output", str(tmp_path / "out"),
                                 "--disable-tta", *moe_workflow.workflow_args(), expect_ok=False)
    assert result.returncode == 1 and "2 problem(s)" in result.stderr and "Traceback" not in result.stderr
    assert "cut.nii.gz: the compressed stream is incomplete" in result.stderr
    assert "nan.nii.gz: 1 voxel(s) are NaN or infinite" in result.stderr
    assert not (tmp_path / "out").exists()
