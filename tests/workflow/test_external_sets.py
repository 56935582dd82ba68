"""make evaluate EXTERNAL=... and make report on the evaluated workflow: an external set in MedSeg's layout (the
held-out test cases, lesion as consolidation, plus a pleural effusion) is segmented by every model and reported
with the test set's table; effusion is not lesion, so every number equals the test set's."""
import shutil

import numpy as np
import SimpleITK as sitk

from tests.helpers import MOE_TRAINER, run_command

EFFUSION = 3


def medseg_copy_of_the_test_set(workflow, folder):
    """rp_im/<n>.nii.gz + rp_msk/<n>.nii.gz: the test CTs, their lesion as label 2 and a block of effusion."""
    (folder / "rp_im").mkdir(parents=True)
    (folder / "rp_msk").mkdir()
    names = {}
    for number, image in enumerate(sorted((workflow.raw_task / "imagesTs").glob("*_0000.nii.gz")), start=1):
        case = image.name[: -len("_0000.nii.gz")]
        shutil.copy(image, folder / "rp_im" / f"{number}.nii.gz")
        label = sitk.ReadImage(str(workflow.raw_task / "labelsTs" / f"{case}.nii.gz"))
        values = sitk.GetArrayFromImage(label).astype(np.uint8) * 2
        corner = values[:, :4, :4]  # a block of effusion in a corner, where there is no lesion
        corner[corner == 0] = EFFUSION
        medseg_label = sitk.GetImageFromArray(values)
        medseg_label.CopyInformation(label)
        sitk.WriteImage(medseg_label, str(folder / "rp_msk" / f"{number}.nii.gz"))
        names[str(number)] = case
    return names


def section(text: str, title: str) -> str:
    return text.split(f"## {title}")[1].split("\n## ")[0]


def test_an_external_medseg_set_is_segmented_by_every_model_and_reported_like_the_test_set(evaluated_workflow,
                                                                                         tmp_path):
    flow = evaluated_workflow
    for sub in ("raw", "preprocessed", "results"):  # a copy: the shared fixture keeps its folders
        shutil.copytree(flow.root / sub, tmp_path / sub)
    env = dict(flow.env, nnUNet_raw_data_base=str(tmp_path / "raw"), nnUNet_preprocessed=str(tmp_path / "preprocessed"),
               RESULTS_FOLDER=str(tmp_path / "results"))
    names = medseg_copy_of_the_test_set(flow, tmp_path / "MedSeg")
    evaluated = run_command("evaluate", *flow.workflow_args(), "--moe-trainer", MOE_TRAINER, "--disable-tta",
                            "--external", tmp_path / "MedSeg", "--external-name", "medseg", env=env)
    assert "External test set medseg: Dice (lesion)" in evaluated.stdout
    stored = tmp_path / "raw" / "nnUNet_raw_data" / flow.raw_task.name / "external" / "medseg"
    for number, case in names.items():  # effusion left out: the reference is the test set's own
        ours = sitk.GetArrayFromImage(sitk.ReadImage(str(stored / "labels" / f"{number}.nii.gz")))
        theirs = sitk.GetArrayFromImage(sitk.ReadImage(str(flow.raw_task / "labelsTs" / f"{case}.nii.gz")))
        assert np.array_equal(ours, theirs)
    fullres = next((tmp_path / "results").rglob("3d_fullres/*/nnUNetTrainerV2__*/fold_4"))
    assert sorted(p.name for p in (fullres / "external_predictions" / "medseg").glob("*.nii.gz")) == \
        sorted(f"{n}.nii.gz" for n in names)

    out = tmp_path / "report"
    text = run_command("report", *flow.workflow_args(), "--moe-trainer", MOE_TRAINER, "--output", out, env=env).stdout
    external = section(text, "External test set: medseg")
    assert f"{len(names)} case(s) from {tmp_path / 'MedSeg'} (medseg; lesion = label(s) 1, 2), never trained on" \
        in external
    rows = [line for line in external.splitlines() if line.startswith("| ") and "[" in line]
    test_rows = [line for line in section(text, "Test set").splitlines() if line.startswith("| ") and "[" in line]
    assert rows and rows == test_rows, "same CTs, same references, same models: the same numbers"
    assert (out / "external_medseg_metrics.csv").is_file()
