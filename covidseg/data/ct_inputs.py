"""Checking the CTs a user hands to `make predict` / `make gradcam`, and the folder they want results in.

INPUT is one NIfTI file or a folder of them (.nii.gz / .nii; hidden files are ignored). Anything else in the folder
(another format, a sub-folder such as a DICOM series) is refused by name rather than silently skipped, and every
file is read in full before any model runs: a truncated or damaged file, NaN/infinite voxels, a 2D or 4D image is
reported with its file, all at once, and nothing is written."""
import tempfile
from pathlib import Path
from typing import Dict, List

from covidseg.core.challenge import case_id
from covidseg.core.errors import ProblemsError, WorkflowError
from covidseg.data.image_checks import check_images, is_nifti

LUNG_WINDOW = (-1350, 150)  # HU shown in overlays: level -600, width 1500


def candidate_files(source: Path, problems: List[str]) -> List[Path]:
    """The NIfTI files INPUT names; every other entry of a folder (hidden ones aside) is a problem."""
    if source.is_file():
        entries = [source]
    elif source.is_dir():
        entries = sorted(p for p in source.iterdir() if not p.name.startswith("."))
        if not entries:
            raise WorkflowError(f"INPUT {source} is empty: put the CTs to segment there (.nii.gz or .nii)")
    else:
        raise WorkflowError(f"INPUT {source} does not exist")
    files = []
    for entry in entries:
        if entry.is_dir():
            problems.append(f"{entry}: a folder; INPUT is read flat (for a DICOM series, convert it to one NIfTI "
                            f"file first)")
        elif not is_nifti(entry):
            problems.append(f"{entry}: not a NIfTI file (.nii.gz / .nii); other formats are not read, convert it "
                            f"first, e.g. python -c \"import SimpleITK as s; s.WriteImage(s.ReadImage('in.mha'), "
                            f"'out.nii.gz')\" (keeps its geometry)")
        else:
            files.append(entry)
    return files


def collect_inputs(source: Path) -> Dict[str, Path]:
    """case id (covidseg.core.challenge.case_id) -> file, for a CT file or a folder of them. Every file is read in
    full (covidseg.data.image_checks) and every problem of every file is reported at once."""
    problems: List[str] = []
    files = candidate_files(source, problems)
    inputs: Dict[str, Path] = {}
    for f in files:
        case = case_id(f)
        if case in inputs:
            problems.append(f"{f}: its case id '{case}' is also that of {inputs[case].name} (their outputs would "
                            f"have the same name)")
        inputs[case] = f
    for path, found in check_images(files, desc="checking inputs").items():
        problems.extend(f"{path}: {problem}" for problem in found)
    if problems:
        raise ProblemsError(f"{len(problems)} problem(s) in INPUT {source}, nothing was done", problems)
    return inputs


def ensure_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise WorkflowError(f"OUTPUT {folder} is not writable ({e})")


def refuse_overwrite(existing, folder: Path) -> None:
    if existing:
        raise WorkflowError(f"{folder} already holds results for {', '.join(sorted(existing)[:5])}: "
                            f"use FORCE=1 to overwrite them")
