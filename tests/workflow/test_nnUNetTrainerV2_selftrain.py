"""nnUNetTrainerV2_selftrain: the round schedule, case confidence, and `make selftrain` end to end (pseudo-labels
in the CT's geometry, never in the task)."""
import hashlib
import json
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk

from tests.helpers import TASK_NAME


def schedule(epochs: int, rounds: int):
    from nnunet.training.network_training.nnUNetTrainerV2_selftrain import nnUNetTrainerV2_selftrain
    fake = SimpleNamespace(max_num_epochs=epochs, rounds=rounds)
    return [nnUNetTrainerV2_selftrain.phase(fake, e) for e in range(epochs)]


def test_each_round_trains_the_student_with_pseudo_labels_then_fine_tunes():
    assert schedule(4, 1) == [(0, True), (0, True), (0, False), (0, False)]
    assert schedule(8, 2) == [(0, True), (0, True), (0, False), (0, False), (1, True), (1, True), (1, False),
                              (1, False)]
    assert schedule(5, 1) == [(0, True), (0, True), (0, True), (0, False), (0, False)]


def test_case_confidence_looks_at_the_uncertain_voxels_only():
    from nnunet.training.network_training.nnUNetTrainerV2_selftrain import case_confidence, class_locations
    background = np.zeros((2, 4, 8, 8), dtype=np.float32)
    background[0] = 1.0
    assert case_confidence(background) == 1.0  # confidently lesion-free
    unsure = background.copy()
    unsure[:, :, :2, :2] = 0.5
    assert case_confidence(unsure) == pytest.approx(0.5)
    seg = np.zeros((4, 8, 8), dtype=np.int64)
    seg[1, 2:4, 2:4] = 1
    locations = class_locations(seg, [1])
    assert len(locations[1]) == 4 and all(seg[tuple(v)] == 1 for v in locations[1])


def digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_make_selftrain_pseudo_labels_the_pool_in_its_own_folder_and_trains(workflow):
    labels_before = digest(workflow.raw_task / "labelsTr")
    output = workflow.command("selftrain", *workflow.workflow_args(), env_extra={"SELFTRAIN_THRESHOLD": "0"}).stdout
    assert "selftrain" in output and "Validation Dice" in output
    assert digest(workflow.raw_task / "labelsTr") == labels_before  # pseudo-labels never enter the task
    model = workflow.model("3d_fullres", "nnUNetTrainerV2_selftrain")
    assert (model / "model_final_checkpoint.model").is_file()
    folder = model / "pseudo_labels" / "round_1"
    record = json.loads((folder / "pseudo_labels.json").read_text())
    pool = sorted(p.name[: -len("_0000.nii.gz")] for p in (workflow.raw_task / "imagesUnlabeled").iterdir())
    assert sorted(record["cases"]) == pool and record["threshold"] == 0.0
    assert all(entry["kept"] for entry in record["cases"].values())
    for case in pool:
        ct = sitk.ReadImage(str(workflow.raw_task / "imagesUnlabeled" / f"{case}_0000.nii.gz"))
        pseudo = sitk.ReadImage(str(folder / f"{case}.nii.gz"))
        assert pseudo.GetSize() == ct.GetSize() and pseudo.GetSpacing() == pytest.approx(ct.GetSpacing())
        assert pseudo.GetOrigin() == pytest.approx(ct.GetOrigin())
        assert pseudo.GetDirection() == pytest.approx(ct.GetDirection())
        assert set(np.unique(sitk.GetArrayFromImage(pseudo))) <= {0, 1}
        assert (folder / f"{case}.npz").is_file()  # what the student trained on
    log = "".join(p.read_text() for p in model.glob("training_log_*.txt"))
    assert "student on labelled + pseudo-labelled cases" in log and "fine-tuning on labelled cases" in log
    assert TASK_NAME in str(model)
