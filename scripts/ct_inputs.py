"""Checking the CTs a user hands to `make predict` / `make gradcam`, and the folder they want results in."""
import tempfile
from pathlib import Path
from typing import Dict

import SimpleITK as sitk

from workspace import WorkflowError

LUNG_WINDOW = (-1350, 150)  # HU shown in overlays: level -600, width 1500


def case_id(path: Path) -> str:
    """'volume-covid19-A-0003_ct.nii.gz' -> 'volume-covid19-A-0003_ct'; nnU-Net's '_0000' suffix is dropped."""
    name = path.name
    for suffix in (".nii.gz", ".nii", "_0000"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name


def collect_inputs(source: Path) -> Dict[str, Path]:
    """case id -> file, for a CT file or a folder of them; every problem is reported at once."""
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
        if case_id(f) in inputs:
            problems.append(f"{f}: case id {case_id(f)} given twice")
        inputs[case_id(f)] = f
    if problems:
        raise WorkflowError("bad input:\n  " + "\n  ".join(problems))
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
