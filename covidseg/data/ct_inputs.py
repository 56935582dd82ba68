"""Checking the CTs a user hands to `make predict` / `make gradcam`, and the folder they want results in.

INPUT is one NIfTI file (.nii.gz / .nii), a folder of DICOM series, or a folder holding NIfTI files and DICOM at any
depth (a patient export; hidden files are ignored). Each DICOM CT series becomes one case, read with SimpleITK's
series reader and written as NIfTI into a staging folder (covidseg.data.dicom_series: what is skipped, what is
refused, how its case is named). Any other file at the top of INPUT is refused by name rather than silently skipped,
and every image is read in full before any model runs: a truncated or damaged file, NaN/infinite voxels, a 2D or 4D
image, a series with missing slices is reported with its file or series, all at once, and nothing is written."""
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from covidseg.core.challenge import case_id
from covidseg.core.errors import ProblemsError, WorkflowError
from covidseg.data import dicom_series
from covidseg.data.image_checks import check_images, first_line, is_nifti

LUNG_WINDOW = (-1350, 150)  # HU shown in overlays: level -600, width 1500
SHOWN_SKIPPED = 20  # skipped DICOM files listed by name; the rest are counted


def visible_files(folder: Path) -> List[Path]:
    """Every file below `folder` whose path has no hidden part."""
    return sorted(p for p in folder.rglob("*") if p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def candidate_files(source: Path, problems: List[str]) -> Tuple[List[Path], List[Path]]:
    """(the NIfTI files, the files to look at as DICOM) that INPUT names; any other top-level file is a problem."""
    if source.is_file():
        if dicom_series.is_dicom(source):
            raise WorkflowError(f"INPUT {source} is one DICOM file: give the folder that holds its series")
        entries = [source]
    elif source.is_dir():
        entries = sorted(p for p in source.iterdir() if not p.name.startswith("."))
        if not entries:
            raise WorkflowError(f"INPUT {source} is empty: put the CTs to segment there (.nii.gz or .nii, or "
                                f"DICOM series)")
    else:
        raise WorkflowError(f"INPUT {source} does not exist")
    niftis, dicoms = [], []
    for entry in entries:
        if entry.is_dir():
            found = visible_files(entry)
            if not found:
                problems.append(f"{entry}: an empty folder")
            dicoms.extend(found)
        elif is_nifti(entry):
            niftis.append(entry)
        elif dicom_series.is_dicom(entry):
            dicoms.append(entry)
        else:
            problems.append(f"{entry}: neither a NIfTI file (.nii.gz / .nii) nor DICOM; other formats are not read, "
                            f"convert it first, e.g. python -c \"import SimpleITK as s; "
                            f"s.WriteImage(s.ReadImage('in.mha'), 'out.nii.gz')\" (keeps its geometry)")
    return niftis, dicoms


def stage_dicom_series(source: Path, files: List[Path], staging: Optional[Path],
                       problems: List[str]) -> Tuple[Dict[str, Path], Dict[str, str]]:
    """(case id -> the NIfTI written into `staging`, case id -> 'DICOM series <uid> in <folder>') of every good CT
    series among `files`; a refused series adds its problems; skipped files are listed on stdout."""
    scan = dicom_series.scan_folder(source, files)
    if scan.skipped:
        print(f"NOTE: {len(scan.skipped)} DICOM file(s) skipped, not slices of a CT image series:")
        for line in scan.skipped[:SHOWN_SKIPPED]:
            print(f"  - {line}")
        if len(scan.skipped) > SHOWN_SKIPPED:
            print(f"  ... and {len(scan.skipped) - SHOWN_SKIPPED} more")
    names = dicom_series.series_case_ids(source, scan.series)
    staged, origins = {}, {}
    for uid, slices in scan.series.items():
        folder = dicom_series.common_folder([s.path for s in slices])
        what = f"DICOM series {names[uid]} ({len(slices)} file(s) in {folder}, SeriesInstanceUID {uid})"
        found = dicom_series.series_problems(slices)
        image = None
        if not found:
            try:
                image = dicom_series.read_series(slices)
            except RuntimeError as e:
                found = [f"its pixel data cannot be read ({first_line(e)}); an unsupported transfer syntax?"]
        if found:
            problems.extend(f"{what}: {problem}" for problem in found)
            continue
        if staging is None:
            raise WorkflowError(f"{what}: DICOM input needs a staging folder here")
        import SimpleITK as sitk
        path = staging / f"{names[uid]}.nii.gz"
        sitk.WriteImage(image, str(path), True)
        staged[names[uid]] = path
        origins[names[uid]] = f"DICOM series {uid} in {folder}"
    if not scan.series and not problems:
        problems.append(f"{source}: no DICOM CT image series found (of {len(files)} file(s), "
                        f"{len(scan.skipped)} skipped)")
    return staged, origins


def collect_inputs(source: Path, staging: Optional[Path] = None,
                   origins: Optional[Dict[str, str]] = None) -> Dict[str, Path]:
    """case id -> NIfTI file, for a CT file or a folder of NIfTI files and DICOM series (each series written as NIfTI
    into `staging`). Every image is read in full (covidseg.data.image_checks) and every problem of every file and
    series is reported at once. `origins`, when given, gets each case's source: its file, or its series' UID and
    folder."""
    problems: List[str] = []
    niftis, dicoms = candidate_files(source, problems)
    inputs: Dict[str, Path] = {}
    origin: Dict[str, str] = {}  # case -> what it was made of, for the messages
    sources: Dict[str, str] = {}
    for f in niftis:
        case = case_id(f)
        if case in inputs:
            problems.append(f"{f}: its case id '{case}' is also that of {origin[case]} (their outputs would "
                            f"have the same name)")
        inputs[case], origin[case], sources[case] = f, f.name, str(f)
    for path, found in check_images(niftis, desc="checking inputs").items():
        problems.extend(f"{path}: {problem}" for problem in found)
    if dicoms:
        staged, series_sources = stage_dicom_series(source, dicoms, staging, problems)
        sources.update(series_sources)
        for case, path in staged.items():
            if case in inputs:
                problems.append(f"DICOM series {case}: its case id is also that of {origin[case]} (their outputs "
                                f"would have the same name)")
            inputs[case], origin[case] = path, f"the DICOM series {case}"
    if problems:
        raise ProblemsError(f"{len(problems)} problem(s) in INPUT {source}, nothing was done", problems)
    if origins is not None:
        origins.update(sources)
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
