"""A trained model as one zip file, to share between labs: written by `make export`, checked and installed by
`make import`.

The zip holds nnU-Net's own layout relative to RESULTS_FOLDER/nnUNet (<configuration>/<task>/<trainer>__<plans>/
...), so nnU-Net's nnUNet_install_pretrained_model_from_zip installs it too: each trainer folder's plans.pkl (and
postprocessing.json) and, of every trained fold, the files covidseg.runs.model_files names (the final checkpoint,
its .pkl, the mean teacher's .teacher, settings.json). Beside them, MANIFEST: each file's sha256 and size, the
nnU-Net version and pin, the patches, the workspace commit and the torch version that made it.

Import refuses, listing every problem and writing nothing: a member with an absolute path, '..', a symlink or a
device (nnunet.utilities.safe_loading.unsafe_zip_members); a zip without a readable manifest; a file changed,
missing or extra against the manifest; a file that is not one of a model folder's; a model that exists already
(unless force). Then it extracts into a staging folder beside RESULTS_FOLDER/nnUNet, loads every file with the safe
loaders and each fold once as nnUNet_predict does, and only then moves the folds into place.
"""
import datetime
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from covidseg.core.errors import ProblemsError, WorkflowError
from covidseg.core.workspace import file_sha256
from covidseg.runs.model_files import FINAL_CHECKPOINT, FOLD_FILES, TRAINER_FOLDER_FILES, check_model_files, \
    model_files

MANIFEST = "covidseg_model_manifest.json"
IMPORT_RECORD = "imported_from.json"  # the manifest of the zip a trainer folder was imported from
FORMAT = "covidseg-model-zip/1"
REPO = Path(__file__).resolve().parents[2]
NNUNET_PIN = "d1247c3d7653e3be5ee5cbf50f618834fad480b5"  # scripts/fetch_nnunet.sh
CONFIGURATIONS = ("2d", "3d_lowres", "3d_fullres", "3d_cascade_fullres")
MEMBER = re.compile(r"^(?P<trainer_folder>(?P<configuration>[^/]+)/Task\d{3}_[^/]+/[^/]+__[^/]+)/"
                    r"(?:(?P<fold>fold_\d+|all)/)?(?P<file>[^/]+)$")


# ------------------------------------------------------------------ what a model is made of

def trained_folds(trainer_folder: Path) -> List[Path]:
    """The fold folders (fold_N, all) of a trainer folder that hold a final checkpoint."""
    return sorted(p for p in trainer_folder.iterdir() if p.is_dir() and re.fullmatch(r"fold_\d+|all", p.name)
                  and (p / f"{FINAL_CHECKPOINT}.model").is_file()) if trainer_folder.is_dir() else []


def model_members(results: Path, trainer_folders: Sequence[Path]) -> Dict[str, Path]:
    """zip name -> file, of every trained fold of the trainer folders (paths relative to RESULTS_FOLDER/nnUNet)."""
    members = {}
    for trainer_folder in trainer_folders:
        for fold in trained_folds(trainer_folder):
            for path in model_files(fold):
                members[path.relative_to(results).as_posix()] = path
    return members


def workspace_commit() -> Dict[str, object]:
    """The workspace's git commit (and whether the checkout had changes), or None outside a git checkout."""
    def git(*args: str) -> Optional[str]:
        try:
            done = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None
    commit = git("rev-parse", "HEAD")
    return {"commit": commit, "modified": bool(git("status", "--porcelain", "--untracked-files=no"))
            if commit else None}


def manifest_for(model: str, members: Dict[str, Path]) -> dict:
    import torch
    from importlib.metadata import version
    return {"format": FORMAT, "model": model, "created": datetime.datetime.now().astimezone().isoformat(),
            "workspace": workspace_commit(), "torch": torch.__version__,
            "nnunet": {"version": version("nnunet"), "pin": NNUNET_PIN,
                       "patches": sorted(p.name for p in (REPO / "patches").glob("[0-9][0-9][0-9][0-9]-*.patch"))},
            "files": {name: {"sha256": file_sha256(path), "bytes": path.stat().st_size}
                      for name, path in sorted(members.items())}}


def write_model_zip(zip_path: Path, model: str, members: Dict[str, Path]) -> dict:
    """The zip of `members` and its manifest, written to a temporary file beside zip_path and renamed over it."""
    manifest = manifest_for(model, members)
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{zip_path.name}.", suffix=".tmp", dir=zip_path.parent)
    os.close(handle)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(MANIFEST, json.dumps(manifest, indent=1))
            for name, path in sorted(members.items()):
                archive.write(path, name)
        os.replace(tmp, zip_path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return manifest


# ------------------------------------------------------------------ checking a zip

@dataclass
class CheckedZip:
    manifest: dict
    files: List[str]            # the model's members, as in the manifest

    @property
    def trainer_folders(self) -> List[str]:
        return sorted({MEMBER.match(name)["trainer_folder"] for name in self.files})

    @property
    def folds(self) -> List[str]:
        """<trainer folder>/<fold> of every fold in the zip."""
        return sorted({f"{m['trainer_folder']}/{m['fold']}" for m in map(MEMBER.match, self.files) if m["fold"]})


def member_problem(name: str) -> Optional[str]:
    """Why `name` is not a file of a model folder (None when it is)."""
    match = MEMBER.match(name)
    if match is None or match["configuration"] not in CONFIGURATIONS:
        return f"{name}: not a file of an nnU-Net model folder (<configuration>/<task>/<trainer>__<plans>/...)"
    allowed = FOLD_FILES if match["fold"] else TRAINER_FOLDER_FILES
    if match["file"] not in allowed:
        return f"{name}: not a file a model folder shares (allowed: {', '.join(allowed)})"
    return None


def check_model_zip(zip_path: Path) -> CheckedZip:
    """The manifest and members of a zip that passes every check; else a ProblemsError listing each problem."""
    from nnunet.utilities.safe_loading import unsafe_zip_members
    try:
        archive = zipfile.ZipFile(zip_path)
    except (OSError, zipfile.BadZipFile) as e:
        raise WorkflowError(f"{zip_path} is not a readable zip file: {e}") from e
    with archive:
        problems = unsafe_zip_members(archive)
        if problems:  # nothing else is looked at in a zip built to escape its folder
            raise ProblemsError(f"{zip_path} was not imported: unsafe members", problems)
        names = [i.filename for i in archive.infolist() if not i.is_dir()]
        if MANIFEST not in names:
            raise WorkflowError(f"{zip_path} was not imported: it has no {MANIFEST} (made by 'make export')")
        try:
            manifest = json.loads(archive.read(MANIFEST))
            listed = manifest["files"]
            assert manifest.get("format") == FORMAT and isinstance(listed, dict)
            assert all(isinstance(entry, dict) and isinstance(entry.get("sha256"), str) for entry in listed.values())
        except (ValueError, KeyError, TypeError, AssertionError) as e:
            raise WorkflowError(f"{zip_path} was not imported: {MANIFEST} is not a {FORMAT} manifest") from e
        present = [n for n in names if n != MANIFEST]
        problems += [f"{n}: in the zip but not in the manifest (an extra file)" for n in present if n not in listed]
        problems += [f"{n}: in the manifest but not in the zip (a missing file)" for n in listed if n not in present]
        problems += [p for p in map(member_problem, listed) if p]
        for name in (n for n in present if n in listed):
            if archive.getinfo(name).file_size != listed[name].get("bytes"):  # not unpacked: no zip bomb
                problems.append(f"{name}: changed since export (its size differs from the manifest's)")
                continue
            digest = hashlib.sha256()
            with archive.open(name) as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            if digest.hexdigest() != listed[name].get("sha256"):
                problems.append(f"{name}: changed since export (its sha256 differs from the manifest's)")
    if problems:
        raise ProblemsError(f"{zip_path} was not imported", problems)
    checked = CheckedZip(manifest, sorted(listed))
    if not checked.folds:
        raise WorkflowError(f"{zip_path} was not imported: it holds no trained fold")
    return checked


# ------------------------------------------------------------------ installing it

def load_fold_once(fold_folder: Path) -> str:
    """Restore the trainer of a fold and load its final checkpoint into the network, as nnUNet_predict does; the
    trainer's name."""
    import contextlib
    import io
    from nnunet.training.model_restore import load_model_and_checkpoint_files
    fold = "all" if fold_folder.name == "all" else [int(fold_folder.name[5:])]
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            trainer, params = load_model_and_checkpoint_files(str(fold_folder.parent), folds=fold,
                                                              mixed_precision=False,
                                                              checkpoint_name=FINAL_CHECKPOINT)
            trainer.load_checkpoint_ram(params[0], False)
    except Exception as e:
        raise WorkflowError(f"{fold_folder}: the model does not load ({type(e).__name__}: {e})") from e
    return type(trainer).__name__


def import_model_zip(zip_path: Path, results: Path, force: bool = False) -> List[Path]:
    """Check the zip (check_model_zip), refuse to replace a trained fold unless `force`, extract it into a staging
    folder under `results`, load every file safely and every fold once, then move the folds into place. The fold
    folders installed."""
    checked = check_model_zip(zip_path)
    existing = [str(results / fold) for fold in checked.folds if (results / fold).exists()]
    existing += [f"{results / name} (differs from the zip's)" for name in checked.files
                 if MEMBER.match(name)["fold"] is None and (results / name).is_file()
                 and file_sha256(results / name) != checked.manifest["files"][name]["sha256"]]
    if existing and not force:
        raise ProblemsError("the zip would replace a model that exists (FORCE=1 replaces it)", existing)
    results.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".import-", dir=results))
    try:
        with zipfile.ZipFile(zip_path) as archive:
            archive.extractall(staging, members=checked.files)
        check_model_files([staging / name for name in checked.files], f"the model in {zip_path}")
        for fold in checked.folds:
            trainer = load_fold_once(staging / fold)
            print(f"  loaded safely: {fold} ({trainer})")
        record = dict(checked.manifest, imported={"zip": str(zip_path.resolve()), "sha256": file_sha256(zip_path),
                                                  "at": datetime.datetime.now().astimezone().isoformat()})
        for trainer_folder in checked.trainer_folders:
            (staging / trainer_folder / IMPORT_RECORD).write_text(json.dumps(record, indent=1))
        for trainer_folder in checked.trainer_folders:
            move_trainer_files(staging, results, trainer_folder)
        return [move_into_place(staging, results, fold) for fold in checked.folds]
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def move_into_place(staging: Path, results: Path, fold: str) -> Path:
    """Replace results/<fold> by the staged one (one rename of the folder, after removing the old one)."""
    target = results / fold
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        shutil.rmtree(target)
    os.replace(staging / fold, target)
    return target


def move_trainer_files(staging: Path, results: Path, trainer_folder: str) -> None:
    """The trainer folder's own files (plans.pkl, postprocessing.json, the import record) replace the old ones."""
    (results / trainer_folder).mkdir(parents=True, exist_ok=True)
    for path in (staging / trainer_folder).iterdir():
        if path.is_file():
            os.replace(path, results / trainer_folder / path.name)
