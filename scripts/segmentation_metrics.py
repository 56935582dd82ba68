"""Overlap metrics between predicted and reference lesion masks, read from NIfTI folders.

Convention for empty masks: when both the prediction and the reference of a case have no lesion,
Dice is 1 (the prediction is right); when only one of them is empty, Dice is 0. Such cases are
counted, never dropped.
"""
from pathlib import Path
from typing import Dict, List

import numpy as np
import SimpleITK as sitk

LESION_LABEL = 1


def dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    prediction, reference = prediction.astype(bool), reference.astype(bool)
    total = prediction.sum() + reference.sum()
    if total == 0:
        return 1.0
    return float(2.0 * np.logical_and(prediction, reference).sum() / total)


def read_mask(path: Path, label: int = LESION_LABEL) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path))) == label


def case_ids(folder: Path) -> List[str]:
    return sorted(p.name[: -len(".nii.gz")] for p in folder.glob("*.nii.gz"))


def dice_per_case(prediction_dir: Path, reference_dir: Path) -> Dict[str, float]:
    """Dice of every prediction in ``prediction_dir`` against the same-named reference."""
    scores = {}
    for case in case_ids(prediction_dir):
        reference = reference_dir / f"{case}.nii.gz"
        if not reference.is_file():
            raise FileNotFoundError(f"{case}: no reference segmentation {reference}")
        scores[case] = dice(read_mask(prediction_dir / f"{case}.nii.gz"), read_mask(reference))
    return scores
