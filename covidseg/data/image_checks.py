"""Checking a NIfTI image in full before the workflow relies on it.

SimpleITK reads a truncated NIfTI (.nii.gz whose gzip stream ends early, or a .nii cut short) without an error
and fills the missing voxels with zeros, so reading the voxels is no check. Here the file is read to its end
(the gzip stream must be complete) and its size compared with what its header announces; then SimpleITK reads it
(geometry, dimension, channels), and no stored voxel may be NaN or infinite: SimpleITK reads those as zeros,
so a damaged scan would otherwise be segmented as if it were whole.

`check_images` runs `check_image` over many files in parallel threads (zlib, SimpleITK and numpy release the
GIL) with a progress bar and returns every problem, so a command can report them all at once.
"""
import gzip
import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, TypeVar

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

NIFTI_SUFFIXES = (".nii.gz", ".nii")
CHUNK = 1 << 22
GZIP_MAGIC = b"\x1f\x8b"

T = TypeVar("T")


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def first_line(error: BaseException) -> str:
    """The informative line of a library error (SimpleITK's end with the reason)."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def starts_like_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == GZIP_MAGIC


def stored_bytes(path: Path) -> int:
    """Bytes of the (decompressed) file, read to the end; a gzip stream that ends early or is corrupt raises."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    total = 0
    with opener(path, "rb") as f:
        while True:
            chunk = f.read(CHUNK)
            if not chunk:
                return total
            total += len(chunk)


def announced_bytes(path: Path) -> int:
    """Header offset + voxel count x voxel size: what a complete NIfTI file holds at least."""
    header = nib.load(str(path)).header
    return int(header.get_data_offset()) + int(np.prod(header.get_data_shape(), dtype=np.int64)) * \
        header.get_data_dtype().itemsize


def completeness_problem(path: Path) -> Optional[str]:
    """Why the file is not complete, or None."""
    try:
        if path.name.lower().endswith(".gz") and not starts_like_gzip(path):
            return "not gzip-compressed although its name ends in .gz"
        size = stored_bytes(path)
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        return f"the compressed stream is incomplete or corrupt ({first_line(e)}): the file is truncated or damaged"
    except OSError as e:
        return f"cannot be read ({first_line(e)})"
    try:
        expected = announced_bytes(path)
    except Exception as e:  # nibabel raises several types for a broken header
        return f"not a NIfTI image ({first_line(e)})"
    if size < expected:
        return f"truncated: it holds {size} bytes, its header announces {expected}"
    return None


@dataclass
class ImageCheck:
    """The outcome of checking one file: the image when it is usable, else the problems."""
    path: Path
    image: Optional[sitk.Image] = None
    problems: List[str] = field(default_factory=list)


def count_nonfinite(voxels: np.ndarray) -> int:
    if not np.issubdtype(voxels.dtype, np.floating):
        return 0
    return int(voxels.size - np.count_nonzero(np.isfinite(voxels)))


def nonfinite_voxels(path: Path, image: sitk.Image) -> int:
    """NaN / infinite voxels. For NIfTI they are counted in the stored values (nibabel): SimpleITK's NIfTI
    reader turns them into zeros."""
    if not is_nifti(path):
        return count_nonfinite(sitk.GetArrayViewFromImage(image))
    stored = nib.load(str(path))
    header = stored.header
    slope, intercept = header.get_slope_inter()
    scaled = slope not in (None, 0, 1) or intercept not in (None, 0)
    if not np.issubdtype(header.get_data_dtype(), np.floating) and not scaled:
        return 0
    return count_nonfinite(np.asanyarray(stored.dataobj))


def check_image(path: Path, keep_image: bool = False) -> ImageCheck:
    """Read `path` in full: a complete NIfTI file, readable by SimpleITK, 3D, one channel, every voxel finite.
    keep_image: return the SimpleITK image (else it is dropped to save memory)."""
    check = ImageCheck(path)
    if not path.is_file():
        check.problems.append("file not found")
        return check
    problem = completeness_problem(path) if is_nifti(path) else None
    if problem:
        check.problems.append(problem)
        return check
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as e:
        check.problems.append(f"cannot be read ({first_line(e)})")
        return check
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        check.problems.append(f"not a 3D single-channel image (dimension {image.GetDimension()}, "
                              f"{image.GetNumberOfComponentsPerPixel()} channel(s), size {image.GetSize()})")
        return check
    bad = nonfinite_voxels(path, image)
    if bad:
        check.problems.append(f"{bad} voxel(s) are NaN or infinite")
        return check
    if keep_image:
        check.image = image
    return check


def parallel_map(function: Callable[..., T], items: Sequence, desc: str, unit: str = "file",
                 workers: Optional[int] = None) -> List[T]:
    """[function(item) for item in items], in threads, in the items' order, with a progress bar."""
    if not items:
        return []
    workers = workers or min(len(items), os.cpu_count() or 1, 8)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(tqdm(pool.map(function, items), total=len(items), desc=desc, unit=unit, disable=None))


def check_images(paths: Sequence[Path], desc: str = "checking images") -> Dict[Path, List[str]]:
    """path -> its problems (empty when it is fine), for every path, checked in parallel."""
    return {check.path: check.problems for check in parallel_map(check_image, list(paths), desc)}
