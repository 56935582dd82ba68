"""The preprocessed unlabelled pool: made with the task's plans, and free of any label information."""
import json
import pickle

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import load_pickle

from tests.helpers import PLANS


def test_every_unlabelled_case_is_preprocessed_for_every_stage(workflow):
    split = json.loads((workflow.raw_task / "split.json").read_text())
    plans = load_pickle(str(workflow.preprocessed_task / f"{PLANS}_plans_3D.pkl"))
    assert len(split["unlabeled_from_train"]) == 4
    for stage in plans["plans_per_stage"]:
        folder = workflow.preprocessed_task / "unlabeled" / f"{plans['data_identifier']}_stage{stage}"
        assert sorted(p.stem for p in folder.glob("*.npz")) == sorted(split["unlabeled_from_train"])


def test_unlabelled_files_hold_no_label_information(workflow):
    split = json.loads((workflow.raw_task / "split.json").read_text())
    unlabeled = set(split["unlabeled_from_train"])
    files = sorted((workflow.preprocessed_task / "unlabeled").rglob("*.npz"))
    assert len(files) == 2 * len(unlabeled)  # both stages of the plans
    for npz in files:
        data = np.load(npz)["data"]
        assert data.shape[0] == 2 and np.all(data[-1] == -1)  # image channel + an all "no label" channel
        with open(npz.with_suffix(".pkl"), "rb") as f:
            properties = pickle.load(f)
        assert all(len(v) == 0 for v in properties["class_locations"].values())
        assert properties["seg_file"] is None
    # and no unlabelled case appears among the labelled data or the references
    for path in workflow.preprocessed_task.rglob("*"):
        if "unlabeled" not in path.parts:
            assert path.name.split(".")[0] not in unlabeled, path


def test_unlabelled_data_are_normalised_like_the_labelled_data(workflow):
    plans = load_pickle(str(workflow.preprocessed_task / f"{PLANS}_plans_3D.pkl"))
    stage = max(plans["plans_per_stage"])
    labelled = workflow.preprocessed_task / f"{plans['data_identifier']}_stage{stage}"
    unlabelled = workflow.preprocessed_task / "unlabeled" / f"{plans['data_identifier']}_stage{stage}"
    means = [np.mean([np.load(p)["data"][0].mean() for p in folder.glob("*.npz")]) for folder in (labelled, unlabelled)]
    stds = [np.mean([np.load(p)["data"][0].std() for p in folder.glob("*.npz")]) for folder in (labelled, unlabelled)]
    assert abs(means[0] - means[1]) < 0.3 and abs(stds[0] - stds[1]) < 0.3
