"""Metrics between a predicted and a reference lesion mask, in physical units from the NIfTI geometry.

- Dice.
- Normalised surface Dice (NSD) at a tolerance in mm (default 1 mm): the fraction of both surfaces that
  lies within the tolerance of the other surface (Nikolov et al. 2021).
- HD95: the 95th percentile of the symmetric surface distances in mm (medpy.metric.binary.hd95).
- Volume error: predicted minus reference lesion volume in ml.

Surfaces are the mask voxels with a background neighbour (face connectivity); distances come from
Euclidean distance transforms with the voxel spacing.

Empty masks (there is no official rule for them in COVID-19-20's evaluation code that we could check,
so this is ours, and such cases are counted, never dropped):
- both empty: Dice 1, NSD 1, HD95 0, volume error 0 (the prediction is right);
- only one empty: Dice 0, NSD 0, HD95 undefined (NaN: left out of the HD95 mean, and counted);
  the volume error is still defined.
"""
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
from medpy.metric.binary import hd95
from scipy.ndimage import binary_erosion, distance_transform_edt, generate_binary_structure

from covidseg.core.challenge import LESION_LABEL


class CaseFileError(Exception):
    """A prediction without its reference, or one on another voxel grid."""


@dataclass
class CaseMetrics:
    dice: float
    nsd: float
    hd95_mm: float
    volume_error_ml: float
    reference_ml: float
    predicted_ml: float
    reference_empty: bool
    prediction_empty: bool

    def as_row(self) -> dict:
        return asdict(self)


def dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    prediction, reference = prediction.astype(bool), reference.astype(bool)
    total = prediction.sum() + reference.sum()
    if total == 0:
        return 1.0
    return float(2.0 * np.logical_and(prediction, reference).sum() / total)


def surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~binary_erosion(mask, structure=generate_binary_structure(mask.ndim, 1), border_value=0)


def distances_to(mask_surface: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Distance (mm) of every voxel to the nearest voxel of `mask_surface`."""
    return distance_transform_edt(~mask_surface, sampling=spacing)


def normalised_surface_dice(prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float],
                            tolerance_mm: float) -> float:
    prediction, reference = prediction.astype(bool), reference.astype(bool)
    if not prediction.any() and not reference.any():
        return 1.0
    if not prediction.any() or not reference.any():
        return 0.0
    surface_p, surface_r = surface(prediction), surface(reference)
    close_p = (distances_to(surface_r, spacing)[surface_p] <= tolerance_mm).sum()
    close_r = (distances_to(surface_p, spacing)[surface_r] <= tolerance_mm).sum()
    return float((close_p + close_r) / (surface_p.sum() + surface_r.sum()))


def hausdorff95(prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float]) -> float:
    if not prediction.any() and not reference.any():
        return 0.0
    if not prediction.any() or not reference.any():
        return float("nan")
    return float(hd95(prediction, reference, voxelspacing=spacing))


def case_metrics(prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float],
                 tolerance_mm: float = 1.0) -> CaseMetrics:
    """Masks as arrays in the same voxel grid; spacing in mm, in the arrays' axis order."""
    prediction, reference = prediction.astype(bool), reference.astype(bool)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    predicted_ml, reference_ml = prediction.sum() * voxel_ml, reference.sum() * voxel_ml
    return CaseMetrics(dice=dice(prediction, reference),
                       nsd=normalised_surface_dice(prediction, reference, spacing, tolerance_mm),
                       hd95_mm=hausdorff95(prediction, reference, spacing),
                       volume_error_ml=float(predicted_ml - reference_ml), reference_ml=float(reference_ml),
                       predicted_ml=float(predicted_ml), reference_empty=not reference.any(),
                       prediction_empty=not prediction.any())


def case_ids(folder: Path) -> List[str]:
    return sorted(p.name[: -len(".nii.gz")] for p in folder.glob("*.nii.gz"))


CaseMasks = Tuple[np.ndarray, np.ndarray, List[float]]  # prediction, reference, spacing


def read_case(prediction: Path, reference: Path) -> CaseMasks:
    """Both lesion masks of a case, checked to share one grid, and the voxel spacing in the arrays' axis order
    (z, y, x); each file is read once."""
    if not reference.is_file():
        raise CaseFileError(f"{prediction}: no reference segmentation {reference}")
    a, b = sitk.ReadImage(str(prediction)), sitk.ReadImage(str(reference))
    if a.GetSize() != b.GetSize() or not np.allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-4):
        raise CaseFileError(f"{prediction}: prediction grid {a.GetSize()} {a.GetSpacing()} differs from the "
                            f"reference's {b.GetSize()} {b.GetSpacing()}")
    return (sitk.GetArrayFromImage(a) == LESION_LABEL, sitk.GetArrayFromImage(b) == LESION_LABEL,
            list(b.GetSpacing())[::-1])


def read_cases(prediction_dir: Path, reference_dir: Path) -> Iterator[Tuple[str, CaseMasks]]:
    """(case, read_case(...)) for every prediction in `prediction_dir` and its same-named reference."""
    for case in case_ids(prediction_dir):
        yield case, read_case(prediction_dir / f"{case}.nii.gz", reference_dir / f"{case}.nii.gz")


def metrics_per_case(prediction_dir: Path, reference_dir: Path, tolerance_mm: float = 1.0) -> Dict[str, CaseMetrics]:
    return {case: case_metrics(prediction, reference, spacing, tolerance_mm)
            for case, (prediction, reference, spacing) in read_cases(prediction_dir, reference_dir)}


def dice_per_case(prediction_dir: Path, reference_dir: Path) -> Dict[str, float]:
    """Dice of every prediction in ``prediction_dir`` against the same-named reference."""
    return {case: dice(prediction, reference)
            for case, (prediction, reference, _) in read_cases(prediction_dir, reference_dir)}
