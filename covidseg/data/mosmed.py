"""The MosMed-1110 download (MosMedData COVID19_1110) -> the same raw task as the COVID-19-20 one.

Input: <download>/dataset_registry.xlsx, one sheet (MosMedData COVID19_1110) with the columns
study_id | category | study_file | mask_file; paths with a leading slash (/studies/CT-1/study_0255.nii.gz,
/masks/study_0255_mask.nii.gz), mask_file empty where a study has no mask. Copies in the wild flatten the folders
(ct0..ct4/) or decompress the files to .nii: a file not at its registry path is looked up by its name (.nii.gz or
.nii) anywhere in the download.

The masked studies (50 in the release: lesion = ground glass and consolidation, one label) are the cases with a
label: the test set (TEST_FRACTION) and the labelled cases (LABELED_FRACTION of the rest, nested over fractions as
for COVID-19-20) are drawn from them, and the rest of them joins the unlabelled pool as images only. Every study
without a mask joins the unlabelled pool. Each case's category (CT-0..CT-4) is its site: split.json's "sites" and
the task's sites.csv, so results can be broken down by it. Checks are the COVID-19-20 ones (covidseg.data
.conversion): every file read in full, a mask on its study's grid with values in {0, 1}, a missing file named by
study.
"""
from pathlib import Path
from typing import Dict, List, Optional

import pandas as pd

from covidseg.core.challenge import case_id
from covidseg.data.image_checks import NIFTI_SUFFIXES, is_nifti

REGISTRY = "dataset_registry.xlsx"
REGISTRY_SHEET = "MosMedData COVID19_1110"
COLUMNS = ("study_id", "category", "study_file", "mask_file")
DESCRIPTION = "MosMedData COVID19_1110: chest CT of COVID-19 patients, Moscow (CC BY-NC-ND 3.0)"


def is_mosmed(root: Path) -> bool:
    return (root / REGISTRY).is_file()


def read_registry(root: Path, problems: List[str]) -> Optional[pd.DataFrame]:
    path = root / REGISTRY
    try:
        sheets = pd.read_excel(path, sheet_name=None, dtype=str)
    except Exception as e:  # openpyxl raises many types for broken files
        problems.append(f"{path}: cannot be read as an .xlsx workbook ({e})")
        return None
    frame = sheets.get(REGISTRY_SHEET, next(iter(sheets.values())) if len(sheets) == 1 else None)
    if frame is None:
        problems.append(f"{path}: no sheet '{REGISTRY_SHEET}' (found: {', '.join(sheets)})")
        return None
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        problems.append(f"{path}: no column {', '.join(missing)} (found: {', '.join(map(str, frame.columns))})")
        return None
    return frame


def nifti_index(root: Path) -> Dict[str, List[Path]]:
    """name without .nii.gz / .nii -> the NIfTI files of that name anywhere in the download."""
    index: Dict[str, List[Path]] = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and is_nifti(path):
            index.setdefault(strip_suffix(path.name), []).append(path)
    return index


def strip_suffix(name: str) -> str:
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[:-len(suffix)]
    return name


def locate(root: Path, registry_path: str, index: Dict[str, List[Path]], what: str, problems: List[str]
           ) -> Optional[Path]:
    """The file a registry path names: at that path below the download, else the one file of its name."""
    relative = registry_path.strip().lstrip("/\\")
    direct = root / relative
    if direct.is_file():
        return direct
    found = index.get(strip_suffix(Path(relative).name), [])
    if len(found) == 1:
        return found[0]
    if not found:
        problems.append(f"{what}: {registry_path} not found (not at {direct}, and no file of that name (.nii.gz or "
                        f".nii) anywhere in {root})")
    else:
        problems.append(f"{what}: {registry_path} is ambiguous: {', '.join(str(p) for p in found)}")
    return None


class Studies:
    """The registry's studies, resolved to files: masked (case -> (image, mask)), unmasked (case -> image), and
    each case's category."""

    def __init__(self):
        self.masked: Dict[str, tuple] = {}
        self.unmasked: Dict[str, Path] = {}
        self.category: Dict[str, str] = {}


def read_studies(root: Path, problems: List[str]) -> Studies:
    studies = Studies()
    frame = read_registry(root, problems)
    if frame is None:
        return studies
    index = nifti_index(root)
    for row in frame.itertuples(index=False):
        study_file = getattr(row, "study_file")
        if not isinstance(study_file, str) or not study_file.strip():
            problems.append(f"{root / REGISTRY}: study {getattr(row, 'study_id')} has no study_file")
            continue
        case = case_id(Path(study_file.strip()))
        if case in studies.category:
            problems.append(f"{case}: listed more than once in {root / REGISTRY}")
            continue
        studies.category[case] = str(getattr(row, "category"))
        image = locate(root, study_file, index, case, problems)
        mask_file = getattr(row, "mask_file")
        if isinstance(mask_file, str) and mask_file.strip():
            mask = locate(root, mask_file, index, f"{case} (mask)", problems)
            if image is not None and mask is not None:
                studies.masked[case] = (image, mask)
        elif image is not None:
            studies.unmasked[case] = image
    if not studies.masked and not problems:
        problems.append(f"{root / REGISTRY}: no study has a mask_file: a task needs labelled cases")
    return studies
