"""covidseg.runs.model_files and the trainers' own files: every file of a model folder that a command reads is loaded
as data, a file that would run code is refused by name and its code never runs."""
from types import SimpleNamespace

import numpy as np
import pytest

from covidseg.core.errors import ProblemsError
from covidseg.runs.model_files import check_trained_fold, model_files
from tests.helpers import write_payload_checkpoint, write_payload_pickle
from tests.unit.test_model_zip import TRAINER_FOLDER, stand_in_model

KINDS = ("plans.pkl", "model_final_checkpoint.model.pkl", "model_final_checkpoint.model",
         "model_final_checkpoint.model.teacher")


def test_model_files_are_the_trained_folds_files_and_its_plans(tmp_path):
    fold = stand_in_model(tmp_path) / "fold_4"
    assert [p.relative_to(tmp_path / TRAINER_FOLDER).as_posix() for p in model_files(fold)] == [
        "plans.pkl", "fold_4/model_final_checkpoint.model", "fold_4/model_final_checkpoint.model.pkl",
        "fold_4/settings.json"]
    check_trained_fold(fold)  # nnU-Net's values and tensors load


@pytest.mark.parametrize("kinds", [KINDS[:1], KINDS[1:2], KINDS[2:3], KINDS[3:], KINDS],
                         ids=["plans", "model.pkl", "model", "teacher", "all"])
def test_every_file_that_would_run_code_is_refused_by_name(tmp_path, kinds):
    fold = stand_in_model(tmp_path) / "fold_4"
    marker = tmp_path / "ran"
    tampered = []
    for kind in kinds:
        path = fold.parent / kind if kind == "plans.pkl" else fold / kind
        (write_payload_pickle if kind.endswith(".pkl") else write_payload_checkpoint)(path, marker)
        tampered.append(path)
    with pytest.raises(ProblemsError) as refused:
        check_trained_fold(fold, "the fullres model")
    assert not marker.exists()
    assert str(refused.value).startswith("the fullres model was not used: its files may hold only data:")
    assert [p.split(":")[0] for p in refused.value.problems] == [f"refused to load {p}" for p in
                                                                 sorted(tampered, key=model_files(fold).index)]
    assert all("asks for the global 'posix.system'" in p for p in refused.value.problems)


def test_a_damaged_checkpoint_is_refused_as_damaged(tmp_path):
    fold = stand_in_model(tmp_path) / "fold_4"
    (fold / "model_final_checkpoint.model").write_bytes(b"truncated")
    with pytest.raises(ProblemsError, match=r"model_final_checkpoint\.model cannot be read .*damaged"):
        check_trained_fold(fold)


def test_self_training_refuses_a_pseudo_label_case_whose_properties_run_code(tmp_path):
    from nnunet.training.network_training.nnUNetTrainerV2_selftrain import nnUNetTrainerV2_selftrain
    from nnunet.utilities.safe_loading import UnsafeFileError
    marker = tmp_path / "ran"
    np.savez(tmp_path / "case.npz", data=np.zeros((2, 4, 8, 8), dtype=np.float32))
    write_payload_pickle(tmp_path / "case.pkl", marker, {"original_size_of_raw_data": (4, 8, 8)})
    entry = {"data_file": str(tmp_path / "case.npz"), "properties_file": str(tmp_path / "case.pkl")}
    with pytest.raises(UnsafeFileError, match=r"case\.pkl: it asks for the global 'posix\.system'"):
        nnUNetTrainerV2_selftrain.pseudo_label_case(SimpleNamespace(), "case", entry, str(tmp_path))
    assert not marker.exists()


def test_the_mean_teacher_refuses_a_teacher_that_runs_code(tmp_path, monkeypatch):
    from nnunet.training.network_training.nnUNetTrainerV2 import nnUNetTrainerV2
    from nnunet.training.network_training.nnUNetTrainerV2_meanteacher import nnUNetTrainerV2_meanteacher
    from nnunet.utilities.safe_loading import UnsafeFileError
    from tests.helpers import tiny_unet
    monkeypatch.setattr(nnUNetTrainerV2, "load_checkpoint", lambda self, fname, train=True: None)
    marker = tmp_path / "ran"
    checkpoint = tmp_path / "model_latest.model"
    write_payload_checkpoint(tmp_path / "model_latest.model.teacher", marker, tiny_unet(3).state_dict())
    trainer = nnUNetTrainerV2_meanteacher.__new__(nnUNetTrainerV2_meanteacher)  # no plans, no data: only the teacher
    trainer.network = tiny_unet(3)
    with pytest.raises(UnsafeFileError, match=r"model_latest\.model\.teacher: it asks for the global 'posix\.system'"):
        trainer.load_checkpoint(str(checkpoint), train=True)
    assert not marker.exists()
