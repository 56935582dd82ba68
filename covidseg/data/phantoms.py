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

Scanner sites (`sites` > 1, `make synthetic SITES=3`): each case comes from one of several sites, each with its
own noise level, HU calibration (stored = scale x HU + offset), blur (in-plane and through-plane, like a softer
kernel or thicker slices) and lesion contrast (how far lesions stand out from the lung); site A is the
single-site generator's scanner. Each case also gets a lesion pattern (ground glass, consolidation, crazy paving:
ground glass crossed by thickened septa, or mixed) and a distribution (peripheral: near the pleura, as is typical
of COVID-19, or diffuse). <out>/sites.csv lists case, site, pattern and distribution. With one site the
generator writes exactly what earlier versions wrote (and no sites.csv).
"""
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import pandas as pd
import SimpleITK as sitk
from scipy.ndimage import distance_transform_edt, gaussian_filter
from tqdm import tqdm

from covidseg.core.challenge import (SITES_FILE, CT_SUFFIX, FILENAME_COLUMN, LESION_LABEL, TRAIN_FOLDER, TRAIN_SHEET,
                                     VALIDATION_FOLDER, VALIDATION_SHEET, WORKBOOK_NAME, ct_file, seg_file)

HU_AIR, HU_LUNG, HU_TISSUE, HU_BONE = -1000.0, -850.0, 40.0, 500.0
PATTERNS = ("ground_glass", "consolidation", "crazy_paving", "mixed")
DISTRIBUTIONS = ("peripheral", "diffuse")


@dataclass(frozen=True)
class Site:
    """A scanner: what it does to every scan it makes."""
    name: str
    noise_hu: float = 25.0        # std of the scanner noise
    hu_scale: float = 1.0         # calibration: stored value = hu_scale * HU + hu_offset
    hu_offset: float = 0.0
    blur_xy: float = 0.7          # Gaussian blur sigma in voxels, in-plane (reconstruction kernel)
    blur_z: float = 0.3           # through-plane (slice thickness)
    lesion_contrast: float = 1.0  # lesion HU = lung HU + lesion_contrast * (drawn lesion HU - lung HU)


def draw_sites(n: int, seed: int) -> List[Site]:
    """Site A is the single-site scanner; the others are drawn (their own random stream, so adding sites does not
    change site A's parameters)."""
    rng = np.random.RandomState(seed + 7919)
    sites = [Site("A")]
    for i in range(1, n):
        sites.append(Site(chr(ord("A") + i), noise_hu=float(rng.uniform(10, 70)),
                          hu_scale=float(rng.uniform(0.85, 1.15)),
                          hu_offset=float(rng.uniform(-60, 60)), blur_xy=float(rng.uniform(0.4, 1.6)),
                          blur_z=float(rng.uniform(0.2, 1.2)), lesion_contrast=float(rng.uniform(0.45, 0.9))))
    return sites


@dataclass(frozen=True)
class LesionStyle:
    """A case's lesion pattern and distribution (None: the single-site generator's mix of blobs)."""
    pattern: Optional[str] = None
    distribution: str = "diffuse"


@dataclass
class PhantomSettings:
    xy_range: Tuple[int, int] = (96, 128)     # in-plane size in voxels (both axes drawn from it)
    z_range: Tuple[int, int] = (28, 40)       # number of slices
    spacing_xy_range: Tuple[float, float] = (2.6, 3.4)  # mm
    spacing_z: float = 5.0                    # mm
    lesion_free_every: int = 5                # every n-th case has no lesion
    sites: int = 1                            # scanner sites (1: the single-site generator)


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


def lesion_centres(lungs: np.ndarray, style: LesionStyle) -> np.ndarray:
    """Voxels a lesion may be centred on: the lungs, or for a peripheral distribution the lungs' outer rim."""
    voxels = np.argwhere(lungs)
    if style.distribution == "peripheral":
        depth = distance_transform_edt(lungs, sampling=(3.0, 1.0, 1.0))  # slices are thick: depth in-plane voxels
        rim = np.argwhere(lungs & (depth <= np.percentile(depth[lungs], 30)))
        voxels = rim if len(rim) else voxels
    return voxels


def lesion_hu(kind: str, rng: np.random.RandomState) -> float:
    return rng.uniform(-100, 50) if kind == "consolidation" else rng.uniform(-600, -300)


def add_lesions(hu: np.ndarray, lungs: np.ndarray, n_lesions: int, rng: np.random.RandomState,
                style: LesionStyle = LesionStyle(), contrast: float = 1.0) -> np.ndarray:
    """Paint ground-glass and consolidation blobs inside the lungs; return the lesion mask (uint8, LESION_LABEL)."""
    mask = np.zeros(hu.shape, dtype=bool)
    centres = lesion_centres(lungs, style)
    for i in range(n_lesions):
        center = centres[rng.randint(len(centres))]
        radii = (rng.uniform(1.5, 3.0), rng.uniform(4, 10), rng.uniform(4, 10))
        blob = ellipsoid(hu.shape, center, radii) & lungs
        if style.pattern is None:
            kind = "consolidation" if rng.rand() < 0.35 else "ground_glass"
        elif style.pattern == "mixed":
            kind = ("consolidation", "ground_glass", "crazy_paving")[rng.randint(3)]
        else:
            kind = style.pattern
        value = lesion_hu(kind, rng)
        value = value if contrast == 1 else HU_LUNG + contrast * (value - HU_LUNG)
        hu[blob] = value
        if kind == "crazy_paving":  # thickened interlobular septa: a reticular grid over the ground glass
            zz, yy, xx = np.nonzero(blob)
            septa = (yy % 3 == 0) | (xx % 3 == 0)
            hu[zz[septa], yy[septa], xx[septa]] = value + contrast * 250
        mask |= blob
    return mask.astype(np.uint8) * LESION_LABEL


def make_case(settings: PhantomSettings, rng: np.random.RandomState, with_lesions: bool, site: Site = Site("A"),
              style: LesionStyle = LesionStyle()):
    """Return (ct_image, seg_image) as SimpleITK images with identical geometry."""
    shape = (rng.randint(settings.z_range[0], settings.z_range[1] + 1),
             rng.randint(settings.xy_range[0], settings.xy_range[1] + 1),
             rng.randint(settings.xy_range[0], settings.xy_range[1] + 1))
    hu, lungs = make_anatomy(shape, rng)
    seg = add_lesions(hu, lungs, rng.randint(3, 8), rng, style, site.lesion_contrast) if with_lesions \
        else np.zeros(shape, np.uint8)
    hu = gaussian_filter(hu, sigma=(site.blur_z, site.blur_xy, site.blur_xy)) + \
        rng.normal(0, site.noise_hu, shape).astype(np.float32)
    hu = np.clip(site.hu_scale * hu + site.hu_offset, -1024, 3071).astype(np.int16)

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


def draw_style(rng: np.random.RandomState) -> LesionStyle:
    return LesionStyle(PATTERNS[rng.randint(len(PATTERNS))], DISTRIBUTIONS[rng.randint(len(DISTRIBUTIONS))])


def write_download(out: Path, n_train: int, n_validation: int, seed: int,
                   settings: PhantomSettings = PhantomSettings()) -> Tuple[List[str], List[str]]:
    """Write the whole download into ``out``; return the train and validation names."""
    rng = np.random.RandomState(seed)
    (out / TRAIN_FOLDER).mkdir(parents=True, exist_ok=True)
    (out / VALIDATION_FOLDER).mkdir(parents=True, exist_ok=True)
    numbers = 3 + np.sort(rng.choice(900, size=n_train + n_validation, replace=False))
    train_names = [case_name(n) for n in numbers[:n_train]]
    validation_names = [case_name(n) for n in numbers[n_train:]]
    sites = draw_sites(settings.sites, seed)
    site_rng = np.random.RandomState(seed + 104729)  # sites and styles: their own stream
    table = []

    for i, name in enumerate(tqdm(train_names + validation_names, desc="synthetic cases", unit="case", disable=None)):
        with_lesions = (i + 1) % settings.lesion_free_every != 0
        site, style = Site("A"), LesionStyle()
        if settings.sites > 1:
            site, style = sites[site_rng.randint(len(sites))], draw_style(site_rng)
            table.append({"case": name, "site": site.name, "pattern": style.pattern if with_lesions else "none",
                          "distribution": style.distribution if with_lesions else "none"})
        ct, seg = make_case(settings, rng, with_lesions, site, style)
        folder = TRAIN_FOLDER if name in train_names else VALIDATION_FOLDER
        sitk.WriteImage(ct, str(ct_file(out, folder, name)))
        if folder == TRAIN_FOLDER:
            sitk.WriteImage(seg, str(seg_file(out, name)))

    if table:
        pd.DataFrame(table).to_csv(out / SITES_FILE, index=False)
    with pd.ExcelWriter(out / WORKBOOK_NAME) as writer:
        for sheet, names in ((TRAIN_SHEET, train_names), (VALIDATION_SHEET, validation_names)):
            pd.DataFrame({FILENAME_COLUMN: [f"{n}{CT_SUFFIX}.nii.gz" for n in names]}).to_excel(
                writer, sheet_name=sheet, index=False)
    return train_names, validation_names


MOSMED_CATEGORIES = ("CT-0", "CT-1", "CT-2", "CT-3", "CT-4")


def write_mosmed_download(out: Path, n_masked: int, n_unmasked: int, seed: int,
                          settings: PhantomSettings = PhantomSettings(), flattened: bool = False,
                          decompressed: bool = False) -> Tuple[List[str], List[str]]:
    """Phantoms in MosMed-1110's layout (covidseg.data.mosmed): dataset_registry.xlsx and studies/CT-k/ + masks/,
    or with `flattened` the folders of copies in the wild (ct0..ct4/, masks/), with `decompressed` .nii files while
    the registry keeps its .nii.gz paths. Masks are int16 {0, 1}. The masked and the unmasked study ids."""
    rng = np.random.RandomState(seed)
    masked = [f"study_{255 + i:04d}" for i in range(n_masked)]  # the release's masked studies start at 0255
    unmasked = [f"study_{1 + i:04d}" for i in range(n_unmasked)]
    suffix = ".nii" if decompressed else ".nii.gz"
    rows = []
    for i, study in enumerate(tqdm(sorted(unmasked + masked), desc="MosMed-layout phantoms", unit="study",
                                   disable=None)):
        category = "CT-1" if study in masked else MOSMED_CATEGORIES[i % len(MOSMED_CATEGORIES)]
        folder = out / (f"ct{category[-1]}" if flattened else f"studies/{category}")
        folder.mkdir(parents=True, exist_ok=True)
        ct, seg = make_case(settings, rng, with_lesions=True)
        sitk.WriteImage(ct, str(folder / f"{study}{suffix}"))
        mask_file = ""
        if study in masked:
            (out / "masks").mkdir(exist_ok=True)
            sitk.WriteImage(sitk.Cast(seg > 0, sitk.sitkInt16), str(out / "masks" / f"{study}_mask{suffix}"))
            mask_file = f"/masks/{study}_mask.nii.gz"
        rows.append({"study_id": study.split("_")[1], "category": category,
                     "study_file": f"/studies/{category}/{study}.nii.gz", "mask_file": mask_file})
    with pd.ExcelWriter(out / "dataset_registry.xlsx") as writer:
        pd.DataFrame(rows).to_excel(writer, sheet_name="MosMedData COVID19_1110", index=False)
    return masked, unmasked
