"""covidseg.runs.model_zip: what `make export` writes and every way `make import` refuses a zip, on model folders
of small stand-in files (loading a real model on import: tests/workflow/test_sharing.py)."""
import hashlib
import json
import pickle
import zipfile
from pathlib import Path

import pytest
import torch

from covidseg.core.errors import ProblemsError, WorkflowError
from covidseg.runs.model_zip import (MANIFEST, NNUNET_PIN, check_model_zip, import_model_zip, model_members,
                                     write_model_zip)
from tests.helpers import REPO, write_payload_pickle

TRAINER_FOLDER = "3d_fullres/Task200_COVID_19_20/nnUNetTrainerV2__nnUNetPlans_CPUDemo"


def stand_in_model(results: Path, folds=("fold_4",)) -> Path:
    """A trainer folder with the files of a trained model (not loadable as a network)."""
    trainer_folder = results / TRAINER_FOLDER
    for fold in folds:
        folder = trainer_folder / fold
        folder.mkdir(parents=True)
        torch.save({"epoch": 1, "state_dict": {"w": torch.ones(2)}}, folder / "model_final_checkpoint.model")
        (folder / "model_final_checkpoint.model.pkl").write_bytes(pickle.dumps({"name": "nnUNetTrainerV2"}))
        (folder / "settings.json").write_text("{}")
        (folder / "progress.png").write_bytes(b"not shared")
    (trainer_folder / "plans.pkl").write_bytes(pickle.dumps({"num_modalities": 1}))
    return trainer_folder


@pytest.fixture
def exported(tmp_path) -> Path:
    results = tmp_path / "lab_a" / "nnUNet"
    folder = stand_in_model(results, folds=("fold_3", "fold_4"))
    zip_path = tmp_path / "model.zip"
    write_model_zip(zip_path, "fullres", model_members(results, [folder]))
    return zip_path


def test_export_holds_every_trained_file_and_its_sha256(exported):
    with zipfile.ZipFile(exported) as archive:
        manifest = json.loads(archive.read(MANIFEST))
        names = set(archive.namelist()) - {MANIFEST}
        digests = {name: hashlib.sha256(archive.read(name)).hexdigest() for name in names}
    assert names == {f"{TRAINER_FOLDER}/plans.pkl"} | {
        f"{TRAINER_FOLDER}/{fold}/{f}" for fold in ("fold_3", "fold_4")
        for f in ("model_final_checkpoint.model", "model_final_checkpoint.model.pkl", "settings.json")}
    assert {name: entry["sha256"] for name, entry in manifest["files"].items()} == digests
    assert manifest["model"] == "fullres" and manifest["torch"] == torch.__version__
    assert manifest["nnunet"]["pin"] == NNUNET_PIN and manifest["nnunet"]["version"] == "1.6.6"
    assert manifest["nnunet"]["patches"] == sorted(p.name for p in (REPO / "patches").glob("0*.patch"))
    assert set(manifest["workspace"]) == {"commit", "modified"}


def rewritten(source: Path, target: Path, drop=(), replace=None, add=None, manifest_files=None) -> Path:
    """A copy of a model zip with members dropped, replaced or added (the manifest kept unless given)."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        manifest = json.loads(old.read(MANIFEST))
        if manifest_files is not None:
            manifest["files"] = manifest_files(manifest["files"])
        new.writestr(MANIFEST, json.dumps(manifest))
        for name in old.namelist():
            if name != MANIFEST and name not in drop:
                data = old.read(name)
                change = (replace or {}).get(name)
                new.writestr(name, change(data) if callable(change) else data if change is None else change)
        for name, data in (add or {}).items():
            info = zipfile.ZipInfo(name)
            if isinstance(data, tuple):  # (bytes, unix mode)
                data, mode = data
                info.create_system, info.external_attr = 3, mode << 16
            new.writestr(info, data)
    return target


CHECKPOINT = f"{TRAINER_FOLDER}/fold_4/model_final_checkpoint.model"


@pytest.mark.parametrize("change, problem", [
    (dict(replace={CHECKPOINT: b"other weights"}), f"{CHECKPOINT}: changed since export (its size"),
    (dict(replace={CHECKPOINT: lambda data: data[:-1] + bytes([data[-1] ^ 1])}),
     f"{CHECKPOINT}: changed since export (its sha256"),
    (dict(drop=(CHECKPOINT,)), f"{CHECKPOINT}: in the manifest but not in the zip (a missing file)"),
    (dict(add={f"{TRAINER_FOLDER}/fold_4/notes.txt": b"x"}), f"{TRAINER_FOLDER}/fold_4/notes.txt: in the zip but "
                                                             f"not in the manifest (an extra file)"),
    (dict(add={f"{TRAINER_FOLDER}/fold_4/run.py": b"import os"},
          manifest_files=lambda files: dict(files, **{f"{TRAINER_FOLDER}/fold_4/run.py": {"sha256": hashlib.sha256(
              b"import os").hexdigest()}})), f"{TRAINER_FOLDER}/fold_4/run.py: not a file a model folder shares"),
    (dict(add={"../../outside.pkl": b"x"}), "../../outside.pkl: a '..' path component"),
    (dict(add={"/etc/cron.d/x": b"x"}), "/etc/cron.d/x: an absolute path"),
    (dict(add={f"{TRAINER_FOLDER}/fold_4/link": (b"/home", 0o120777)}), f"{TRAINER_FOLDER}/fold_4/link: a symlink"),
], ids=["resized", "changed", "missing", "extra", "not-a-model-file", "dotdot", "absolute", "symlink"])
def test_import_refuses_a_zip_that_is_not_what_was_exported(exported, tmp_path, change, problem):
    tampered = rewritten(exported, tmp_path / "tampered.zip", **change)
    results = tmp_path / "lab_b" / "nnUNet"
    with pytest.raises(ProblemsError) as refused:
        import_model_zip(tampered, results)
    assert f"{tampered} was not imported" in str(refused.value)
    assert any(p.startswith(problem) for p in refused.value.problems), refused.value.problems
    assert not results.exists()


def test_import_refuses_a_zip_without_a_manifest(tmp_path):
    plain = tmp_path / "plain.zip"
    with zipfile.ZipFile(plain, "w") as archive:
        archive.writestr(f"{TRAINER_FOLDER}/plans.pkl", b"x")
    with pytest.raises(WorkflowError, match=f"it has no {MANIFEST}"):
        check_model_zip(plain)


def test_import_refuses_a_model_file_that_runs_code_and_installs_nothing(tmp_path):
    results_a = tmp_path / "lab_a" / "nnUNet"
    folder = stand_in_model(results_a)
    marker = tmp_path / "ran"
    write_payload_pickle(folder / "plans.pkl", marker, {"num_modalities": 1})
    zip_path = tmp_path / "model.zip"
    write_model_zip(zip_path, "fullres", model_members(results_a, [folder]))  # a manifest that matches the payload
    results_b = tmp_path / "lab_b" / "nnUNet"
    with pytest.raises(ProblemsError) as refused:
        import_model_zip(zip_path, results_b)
    assert not marker.exists()
    assert any("plans.pkl: it asks for the global 'posix.system'" in p for p in refused.value.problems)
    assert list(results_b.iterdir()) == []  # the staging folder is gone, nothing was moved into place


def test_import_refuses_to_replace_a_trained_fold_without_force(exported, tmp_path):
    results = tmp_path / "lab_b" / "nnUNet"
    mine = stand_in_model(results, folds=("fold_4",))
    (mine / "plans.pkl").write_bytes(pickle.dumps({"num_modalities": 2}))
    before = {p: p.read_bytes() for p in mine.rglob("*") if p.is_file()}
    with pytest.raises(ProblemsError, match=r"FORCE=1 replaces it") as refused:
        import_model_zip(exported, results)
    assert refused.value.problems == [str(mine / "fold_4"), f"{mine / 'plans.pkl'} (differs from the zip's)"]
    assert {p: p.read_bytes() for p in mine.rglob("*") if p.is_file()} == before
