"""DICOM CT series as the workflow's inputs: found at any depth of a folder, checked, read with SimpleITK's series
reader (GDCM) and written as one NIfTI per series with exactly the geometry that reader gives it.

A patient export holds more than the CT: localizers (scouts), other reconstructions, structured reports, RTSTRUCT
or SEG objects, DICOMDIR indexes. Every file is opened as DICOM (headers only, pydicom); files are grouped by their
SeriesInstanceUID. What is not a CT image series (another modality, a non-image object, a localizer, a file that is
not DICOM at all) is skipped and listed. A CT image series is refused, by name and with every reason, when it cannot
be one volume on a regular grid:

- too few slices (MIN_SLICES), or slices of different sizes, pixel spacings or orientations;
- gantry tilt (the slices' positions do not move along the normal of their plane, or GantryDetectorTilt is not 0);
- missing slices or a slice spacing that varies by more than SPACING_TOLERANCE (two slices at the same position too);
- an enhanced (multi-frame) CT file, whose geometry the series reader does not take apart;
- pixel data that cannot be decoded (an unsupported transfer syntax), found by reading the series in full.

The case id of a series is the path of its folder below INPUT with '/' as '_' (INPUT's own name when the files lie
in INPUT itself), followed by '_s<SeriesNumber>' when its folder holds more than one CT series (or the UID's last
digits when the numbers do not tell them apart). Characters other than letters, digits, '.', '-' and '_' become '_'.
"""
import locale
import re
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

MIN_SLICES = 10
SPACING_TOLERANCE = 0.05       # relative deviation of a slice gap from the median gap
TILT_TOLERANCE_DEGREES = 0.5
ORIENTATION_TOLERANCE = 1e-3   # of the direction cosines
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"


@dataclass
class SliceHeader:
    path: Path
    series_uid: str
    series_number: Optional[int]
    rows: int
    columns: int
    pixel_spacing: Tuple[float, float]
    orientation: np.ndarray          # the 6 direction cosines (row, column)
    position: np.ndarray             # ImagePositionPatient, mm
    gantry_tilt: float


@dataclass
class DicomScan:
    """What a folder holds: CT series by UID (their slices' headers) and what was skipped, with the reason."""
    series: Dict[str, List[SliceHeader]] = field(default_factory=dict)
    skipped: List[str] = field(default_factory=list)


def is_dicom(path: Path) -> bool:
    """A DICOM Part 10 file ('DICM' after the 128-byte preamble)."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def skip_reason(header) -> Optional[str]:
    """Why a DICOM file is not a slice of a CT image series (None when it is one)."""
    modality = str(getattr(header, "Modality", "") or "unknown")
    sop_class = str(getattr(header, "SOPClassUID", ""))
    image_type = [str(v).upper() for v in (getattr(header, "ImageType", None) or [])]
    if modality != "CT":
        return f"modality {modality}, not a CT image"
    if sop_class == ENHANCED_CT_IMAGE_STORAGE:
        return None  # refused as a series, with its reason
    if "Rows" not in header or "ImagePositionPatient" not in header:
        return "a CT object without an image (no Rows / ImagePositionPatient)"
    if "LOCALIZER" in image_type:
        return "a localizer (scout) image"
    return None


def read_header(path: Path):
    import pydicom
    return pydicom.dcmread(str(path), stop_before_pixels=True)


def slice_header(path: Path, header) -> SliceHeader:
    spacing = getattr(header, "PixelSpacing", None) or (0.0, 0.0)
    orientation = getattr(header, "ImageOrientationPatient", None) or [1, 0, 0, 0, 1, 0]
    number = getattr(header, "SeriesNumber", None)
    return SliceHeader(path=path, series_uid=str(header.SeriesInstanceUID),
                       series_number=int(number) if number not in (None, "") else None,
                       rows=int(header.Rows), columns=int(header.Columns),
                       pixel_spacing=(float(spacing[0]), float(spacing[1])),
                       orientation=np.asarray([float(v) for v in orientation]),
                       position=np.asarray([float(v) for v in header.ImagePositionPatient]),
                       gantry_tilt=float(getattr(header, "GantryDetectorTilt", 0) or 0))


def scan_folder(folder: Path, files: Sequence[Path]) -> DicomScan:
    """Group the DICOM files among `files` (below `folder`) into CT series; everything else is skipped with its
    reason."""
    scan = DicomScan()
    enhanced = set()
    for path in files:
        shown = path.relative_to(folder) if path != folder else path.name
        if not is_dicom(path):
            scan.skipped.append(f"{shown}: not a DICOM file")
            continue
        try:
            header = read_header(path)
        except Exception as e:  # pydicom raises many types for a damaged header
            scan.skipped.append(f"{shown}: not a readable DICOM file ({type(e).__name__}: {e})")
            continue
        reason = skip_reason(header)
        if reason:
            scan.skipped.append(f"{shown}: {reason}")
            continue
        if str(getattr(header, "SOPClassUID", "")) == ENHANCED_CT_IMAGE_STORAGE:
            enhanced.add(str(header.SeriesInstanceUID))
        scan.series.setdefault(str(header.SeriesInstanceUID), []).append(slice_header(path, header))
    for uid in enhanced:
        for entry in scan.series[uid]:
            entry.rows = -1  # marks the series as enhanced for series_problems
    return scan


def slice_normal(orientation: np.ndarray) -> np.ndarray:
    return np.cross(orientation[:3], orientation[3:])


def sorted_slices(slices: List[SliceHeader]) -> List[SliceHeader]:
    """Slices in the order of their position along the normal of their plane (what GDCM's sorter does)."""
    normal = slice_normal(slices[0].orientation)
    return sorted(slices, key=lambda s: float(np.dot(s.position, normal)))


def series_problems(slices: List[SliceHeader]) -> List[str]:
    """Why a CT series cannot be one volume on a regular grid (empty when it can)."""
    if any(s.rows == -1 for s in slices):
        return ["an enhanced (multi-frame) CT image; convert it to NIfTI first (e.g. dcm2niix)"]
    problems = []
    if len(slices) < MIN_SLICES:
        problems.append(f"too few slices ({len(slices)}; a CT volume here has at least {MIN_SLICES})")
    sizes = sorted({(s.rows, s.columns) for s in slices})
    if len(sizes) > 1:
        problems.append(f"slices of different sizes ({', '.join(f'{r}x{c}' for r, c in sizes)})")
    spacings = sorted({s.pixel_spacing for s in slices})
    if len(spacings) > 1:
        problems.append(f"slices with different pixel spacings ({', '.join(f'{a:g}x{b:g} mm' for a, b in spacings)})")
    reference = slices[0].orientation
    if any(np.abs(s.orientation - reference).max() > ORIENTATION_TOLERANCE for s in slices):
        problems.append("slices with different orientations (ImageOrientationPatient)")
        return problems
    tilts = sorted({round(s.gantry_tilt, 2) for s in slices if abs(s.gantry_tilt) > 1e-3})
    if tilts:
        problems.append(f"gantry tilt ({', '.join(f'{t:g}' for t in tilts)} degrees in GantryDetectorTilt)")
    if len(slices) < 2:
        return problems
    ordered = sorted_slices(slices)
    normal = slice_normal(reference)
    steps = np.diff(np.stack([s.position for s in ordered]), axis=0)
    along = steps @ normal
    travel = ordered[-1].position - ordered[0].position
    if np.linalg.norm(travel) > 0:
        angle = np.degrees(np.arccos(min(1.0, abs(float(travel @ normal)) / float(np.linalg.norm(travel)))))
        if angle > TILT_TOLERANCE_DEGREES and not tilts:
            problems.append(f"gantry tilt (the slices move {angle:.1f} degrees off the normal of their plane)")
    if np.any(np.isclose(along, 0, atol=1e-3)):
        i = int(np.argmax(np.isclose(along, 0, atol=1e-3)))
        problems.append(f"two slices at the same position ({ordered[i].path.name}, {ordered[i + 1].path.name})")
        return problems
    median = float(np.median(along))
    deviation = np.abs(along - median) / median
    if deviation.max() > SPACING_TOLERANCE:
        i = int(np.argmax(deviation))
        gap = float(along[i])
        missing = f"; {round(gap / median) - 1} slice(s) missing?" if gap > 1.5 * median else ""
        problems.append(f"slice spacing varies: {gap:.3g} mm between {ordered[i].path.name} and "
                        f"{ordered[i + 1].path.name}, {median:.3g} mm elsewhere (tolerance {SPACING_TOLERANCE:.0%})"
                        f"{missing}")
    return problems


def clean_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text).strip("_") or "series"


def series_case_ids(source: Path, series: Dict[str, List[SliceHeader]]) -> Dict[str, str]:
    """UID -> case id (the module's naming rule)."""
    folder_of = {uid: common_folder([s.path for s in slices]) for uid, slices in series.items()}
    by_folder: Dict[Path, List[str]] = defaultdict(list)
    for uid, folder in folder_of.items():
        by_folder[folder].append(uid)
    names = {}
    for folder, uids in by_folder.items():
        relative = folder.relative_to(source) if folder != source else Path(source.name)
        base = clean_name("_".join(relative.parts) if relative.parts else source.name)
        if len(uids) == 1:
            names[uids[0]] = base
            continue
        numbers = [series[uid][0].series_number for uid in uids]
        distinct = None not in numbers and len(set(numbers)) == len(numbers)
        for uid, number in zip(uids, numbers):
            names[uid] = f"{base}_s{number}" if distinct else f"{base}_{clean_name(uid.split('.')[-1])}"
    return names


def common_folder(paths: Sequence[Path]) -> Path:
    folders = [p.parent for p in paths]
    common = folders[0]
    while not all(common == f or common in f.parents for f in folders):
        common = common.parent
    return common


@contextmanager
def locale_kept() -> Iterator[None]:
    """GDCM (SimpleITK's DICOM IO) sets the process locale to "C" for its number formats (writing sets all of it),
    which makes ASCII Python's default text encoding for the rest of the process; the locale is put back."""
    saved = locale.setlocale(locale.LC_ALL)
    try:
        yield
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def read_series(slices: List[SliceHeader]):
    """The series as one SimpleITK image, read by ImageSeriesReader (GDCM) from its files in position order."""
    import SimpleITK as sitk
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(s.path) for s in sorted_slices(slices)])
    with locale_kept():
        return reader.Execute()
