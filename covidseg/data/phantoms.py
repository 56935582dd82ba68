"""Synthetic COVID-19-20 downloads, in exactly the challenge's layout (the library behind `make synthetic`).

    <out>/COVID-19-20_TrainValidation.xlsx   sheets "Train set" and "Validation set", column FILENAME
    <out>/Train/<name>_ct.nii.gz             CT in Hounsfield units (int16)
    <out>/Train/<name>_seg.nii.gz            lesion mask {0, 1} (uint8), same geometry as the CT
    <out>/Validation/<name>_ct.nii.gz        CT only

Each scan is a chest phantom: air, an elliptic body of soft tissue, a spine, two lungs, and inside the
lungs ground-glass opacities (about -600..-300 HU) and consolidations (about -100..+50 HU) as smooth
blobs. Every fifth case has no lesion. Sizes, spacings and origins vary from case to case, spacing is
anisotropic (5 mm slices, like the challenge's). Deterministic for a given seed.

The real scans are about 512x512x62 at 0.74x0.74x5 mm; the defaults here are small enough for a CPU
demo (in-plane size and spacing are options).
"""
from dataclasses import dataclass
from pathlib import Path
from typing import List, Tuple

import numpy as np
import pandas as pd
import SimpleITK as sitk
from scipy.ndimage import gaussian_filter

from covidseg.core.challenge import (CT_SUFFIX, FILENAME_COLUMN, LESION_LABEL, TRAIN_FOLDER, TRAIN_SHEET,
                                     VALIDATION_FOLDER, VALIDATION_SHEET, WORKBOOK_NAME, ct_file, seg_file)

HU_AIR, HU_LUNG, HU_TISSUE, HU_BONE = -1000.0, -850.0, 40.0, 500.0


@dataclass
class PhantomSettings:
    xy_range: Tuple[int, int] = (96, 128)     # in-plane size in voxels (both axes drawn from it)
    z_range: Tuple[int, int] = (28, 40)       # number of slices
    spacing_xy_range: Tuple[float, float] = (2.6, 3.4)  # mm
    spacing_z: float = 5.0                    # mm
    lesion_free_every: int = 5                # every n-th case has no lesion


def ellipsoid(shape: Tuple[int, int, int], center, radii) -> np.ndarray:
    """Boolean ellipsoid on a (z, y, x) voxel grid; center and radii in voxels."""
    zz, yy, xx = np.ogrid[:shape[0], :shape[1], :shape[2]]
    return ((zz - center[0]) / radii[0]) ** 2 + ((yy - center[1]) / radii[1]) ** 2 + \
        ((xx - center[2]) / radii[2]) ** 2 <= 1.0


def make_anatomy(shape, rng: np.random.RandomState):
    """Return (hu, lung_mask): body, spine and two lungs, without lesions."""
    z, y, x = shape
    hu = np.full(shape, HU_AIR, dtype=np.float32)
    body = ellipsoid(shape, (z / 2, y / 2, x / 2), (z * 4, y * 0.36, x * 0.46))
    hu[body] = HU_TISSUE
    spine = ellipsoid(shape, (z / 2, y * 0.76, x / 2), (z * 4, y * 0.06, x * 0.05))
    hu[spine] = HU_BONE
    lungs = np.zeros(shape, dtype=bool)
    for side in (-1, 1):
        center = (z * rng.uniform(0.45, 0.55), y * rng.uniform(0.45, 0.5), x / 2 + side * x * rng.uniform(0.19, 0.22))
        radii = (z * rng.uniform(0.42, 0.5), y * rng.uniform(0.22, 0.26), x * rng.uniform(0.13, 0.16))
        lungs |= ellipsoid(shape, center, radii)
    lungs &= body
    hu[lungs] = HU_LUNG
    return hu, lungs


def add_lesions(hu: np.ndarray, lungs: np.ndarray, n_lesions: int, rng: np.random.RandomState) -> np.ndarray:
    """Paint ground-glass and consolidation blobs inside the lungs; return the lesion mask (uint8, LESION_LABEL)."""
    mask = np.zeros(hu.shape, dtype=bool)
    lung_voxels = np.argwhere(lungs)
    for i in range(n_lesions):
        center = lung_voxels[rng.randint(len(lung_voxels))]
        radii = (rng.uniform(1.5, 3.0), rng.uniform(4, 10), rng.uniform(4, 10))
        blob = ellipsoid(hu.shape, center, radii) & lungs
        consolidation = rng.rand() < 0.35
        hu[blob] = rng.uniform(-100, 50) if consolidation else rng.uniform(-600, -300)
        mask |= blob
    return mask.astype(np.uint8) * LESION_LABEL


def make_case(settings: PhantomSettings, rng: np.random.RandomState, with_lesions: bool):
    """Return (ct_image, seg_image) as SimpleITK images with identical geometry."""
    shape = (rng.randint(settings.z_range[0], settings.z_range[1] + 1),
             rng.randint(settings.xy_range[0], settings.xy_range[1] + 1),
             rng.randint(settings.xy_range[0], settings.xy_range[1] + 1))
    hu, lungs = make_anatomy(shape, rng)
    seg = add_lesions(hu, lungs, rng.randint(3, 8), rng) if with_lesions else np.zeros(shape, np.uint8)
    hu = gaussian_filter(hu, sigma=(0.3, 0.7, 0.7)) + rng.normal(0, 25, shape).astype(np.float32)
    hu = np.clip(hu, -1024, 3071).astype(np.int16)

    spacing_xy = float(np.round(rng.uniform(*settings.spacing_xy_range), 3))
    spacing = (spacing_xy, spacing_xy, settings.spacing_z)  # SimpleITK order: x, y, z
    origin = (float(np.round(rng.uniform(-200, -150), 2)), float(np.round(rng.uniform(-200, -150), 2)),
              float(np.round(rng.uniform(-400, -100), 2)))
    images = []
    for array in (hu, seg):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(spacing)
        image.SetOrigin(origin)
        images.append(image)
    return images[0], images[1]


def case_name(number: int) -> str:
    return "volume-covid19-A-%04d" % number


def write_download(out: Path, n_train: int, n_validation: int, seed: int,
                   settings: PhantomSettings = PhantomSettings()) -> Tuple[List[str], List[str]]:
    """Write the whole download into ``out``; return the train and validation names."""
    rng = np.random.RandomState(seed)
    (out / TRAIN_FOLDER).mkdir(parents=True, exist_ok=True)
    (out / VALIDATION_FOLDER).mkdir(parents=True, exist_ok=True)
    numbers = 3 + np.sort(rng.choice(900, size=n_train + n_validation, replace=False))
    train_names = [case_name(n) for n in numbers[:n_train]]
    validation_names = [case_name(n) for n in numbers[n_train:]]

    for i, name in enumerate(train_names + validation_names):
        with_lesions = (i + 1) % settings.lesion_free_every != 0
        ct, seg = make_case(settings, rng, with_lesions)
        folder = TRAIN_FOLDER if name in train_names else VALIDATION_FOLDER
        sitk.WriteImage(ct, str(ct_file(out, folder, name)))
        if folder == TRAIN_FOLDER:
            sitk.WriteImage(seg, str(seg_file(out, name)))

    with pd.ExcelWriter(out / WORKBOOK_NAME) as writer:
        for sheet, names in ((TRAIN_SHEET, train_names), (VALIDATION_SHEET, validation_names)):
            pd.DataFrame({FILENAME_COLUMN: [f"{n}{CT_SUFFIX}.nii.gz" for n in names]}).to_excel(
                writer, sheet_name=sheet, index=False)
    return train_names, validation_names

