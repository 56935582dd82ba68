"""Test-set predictions tied to the checkpoint that made them.

Every `test_predictions/` folder holds `made_by.json`:
    a model's:      {"checkpoint": <path of model_final_checkpoint.model>, "checkpoint_sha256": <its sha256>,
                     "tta": <mirroring at test time>}
    an ensemble's:  {"members": {<member>: <that member's record>}}
The checkpoint is identified by the sha256 of its .model file: a retrained model has another one even when it was
trained for the same epochs into the same folder (size + mtime + epoch could not tell a copy from a retrained
file). `make evaluate` writes the record *before* it segments (after removing every prediction of another
checkpoint), so every prediction in a folder whose record matches was made by that checkpoint, and an interrupted
run resumes. `make report` and `make experiment` refuse to score a folder whose record does not match the model.
"""
import hashlib
import json
import os
from pathlib import Path
from typing import Dict, List, Optional

from covidseg.core.errors import WorkflowError
from covidseg.data.image_checks import check_images

RECORD_FILE = "made_by.json"
CHECKPOINT = "model_final_checkpoint.model"

_digests: Dict[tuple, str] = {}


def checkpoint_sha256(model_folder: Path) -> str:
    """sha256 of the model's final checkpoint (remembered per path, size and mtime within a process)."""
    path = model_folder / CHECKPOINT
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _digests:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _digests[key] = digest.hexdigest()
    return _digests[key]


def model_record(model_folder: Path, tta: bool) -> dict:
    return {"checkpoint": str(model_folder / CHECKPOINT), "checkpoint_sha256": checkpoint_sha256(model_folder),
            "tta": bool(tta)}


def ensemble_record(member_records: Dict[str, dict]) -> dict:
    return {"members": dict(member_records)}


def read_record(predictions: Path) -> Optional[dict]:
    path = predictions / RECORD_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None


def write_record(predictions: Path, record: dict) -> None:
    predictions.mkdir(parents=True, exist_ok=True)
    path = predictions / RECORD_FILE
    with open(path.with_name(path.name + ".tmp"), "w") as f:
        json.dump(record, f, indent=1)
    os.replace(path.with_name(path.name + ".tmp"), path)


def prediction_files(predictions: Path) -> List[Path]:
    """What a segmentation run leaves per case: <case>.nii.gz, the softmax <case>.npz / .pkl (--npz)."""
    return sorted(p for pattern in ("*.nii.gz", "*.npz", "*.pkl") for p in predictions.glob(pattern))


def maker(record: Optional[dict]):
    """What identifies the maker of predictions: the checkpoint's sha256 and the mirroring (an ensemble: its
    members'); not the checkpoint's path, so a results folder moved elsewhere keeps its predictions."""
    if record is None:
        return None
    if "members" in record:
        return tuple(sorted((name, maker(member)) for name, member in (record["members"] or {}).items()))
    return record.get("checkpoint_sha256"), record.get("tta")


def same_checkpoint(recorded: Optional[dict], expected: dict) -> bool:
    """Whether a folder's record names the expected checkpoint(s); test-time augmentation is not compared."""
    if recorded is None:
        return False
    if "members" in expected:
        members = recorded.get("members") or {}
        return set(members) == set(expected["members"]) and all(
            same_checkpoint(members[name], record) for name, record in expected["members"].items())
    return recorded.get("checkpoint_sha256") == expected["checkpoint_sha256"]


def prepare_folder(predictions: Path, expected: dict, name: str) -> None:
    """Before segmenting into `predictions`: remove every prediction another checkpoint (or other test-time
    augmentation) made, and every prediction that does not read in full, then record the expected maker."""
    recorded = read_record(predictions)
    if maker(recorded) != maker(expected):
        stale = prediction_files(predictions)
        if stale:
            why = "made before predictions were tied to their checkpoint" if recorded is None else \
                "made by another checkpoint" if not same_checkpoint(recorded, expected) else \
                "made with other test-time augmentation"
            cases = sum(p.name.endswith(".nii.gz") for p in stale)
            print(f"{name}: the {cases} test prediction(s) in {predictions} were {why}; removing them to segment "
                  f"again", flush=True)
            for path in stale:
                path.unlink()
        write_record(predictions, expected)
        return
    if recorded != expected:
        write_record(predictions, expected)  # the same maker, found at another path
    segmentations = sorted(predictions.glob("*.nii.gz"))
    for path, problems in check_images(segmentations, desc=f"{name}: checking its test predictions").items():
        if problems:
            print(f"{name}: {path.name} does not read in full ({problems[0]}); segmenting it again", flush=True)
            for companion in (path, path.with_name(path.name[:-7] + ".npz"), path.with_name(path.name[:-7] + ".pkl")):
                companion.unlink(missing_ok=True)


def verify_folder(predictions: Path, expected: dict, name: str, make_target: str = "make evaluate") -> None:
    """Refuse to score predictions that the model's current checkpoint(s) did not make."""
    recorded = read_record(predictions)
    if same_checkpoint(recorded, expected):
        return
    why = ("they were made before predictions were tied to their checkpoint (no " + RECORD_FILE + ")"
           if recorded is None else "they were made by another checkpoint than the model's current one "
           "(it was trained again since)")
    raise WorkflowError(f"the {name} model's test predictions in {predictions} cannot be scored: {why}; run "
                        f"'{make_target}' to segment the test set again with it")
