"""Checking the CTs a user hands to `make predict` / `make gradcam`, and the folder they want results in."""
import tempfile
from pathlib import Path
from typing import Dict

import SimpleITK as sitk

from covidseg.core.challenge import case_id
from covidseg.core.errors import ProblemsError, WorkflowError

LUNG_WINDOW = (-1350, 150)  # HU shown in overlays: level -600, width 1500


def collect_inputs(source: Path) -> Dict[str, Path]:
    """case id (covidseg.core.challenge.case_id) -> file, for a CT file or a folder of them; every problem is
    reported at once."""
    if source.is_file():
        files = [source]
    elif source.is_dir():
        files = sorted(list(source.glob("*.nii.gz")) + list(source.glob("*.nii")))
    else:
        raise WorkflowError(f"INPUT {source} does not exist")
    if not files:
        raise WorkflowError(f"INPUT {source} holds no .nii.gz / .nii file")
    inputs, problems = {}, []
    for f in files:
        try:
            info = sitk.ImageFileReader()
            info.SetFileName(str(f))
            info.ReadImageInformation()
            if info.GetDimension() != 3 or info.GetNumberOfComponents() != 1:
                problems.append(f"{f}: not a 3D single-channel image (dimension {info.GetDimension()})")
        except RuntimeError as e:
            problems.append(f"{f}: cannot be read ({str(e).strip().splitlines()[-1]})")
        case = case_id(f)
        if case in inputs:
            problems.append(f"{f}: its case id '{case}' is also that of {inputs[case].name} (their outputs would "
                            f"have the same name)")
        inputs[case] = f
    if problems:
        raise ProblemsError(f"{len(problems)} problem(s) in INPUT {source}, nothing was predicted", problems)
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
