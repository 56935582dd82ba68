"""covidseg.synthetic / covidseg.data.phantoms: the synthetic download has the challenge's layout and a plausible
chest CT content."""
import hashlib

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from covidseg.core.challenge import FILENAME_COLUMN, TRAIN_SHEET, VALIDATION_SHEET, WORKBOOK_NAME
from covidseg.data.phantoms import DISTRIBUTIONS, HU_LUNG, PATTERNS, SITES_FILE, Site, draw_sites, write_download
from covidseg.synthetic import main
from tests.helpers import TINY, exit_status


def test_layout_matches_the_challenge_download(synthetic_download):
    sheets = pd.read_excel(synthetic_download / WORKBOOK_NAME, sheet_name=None)
    assert set(sheets) == {TRAIN_SHEET, VALIDATION_SHEET}
    train = [f[: -len("_ct.nii.gz")] for f in sheets[TRAIN_SHEET][FILENAME_COLUMN]]
    validation = [f[: -len("_ct.nii.gz")] for f in sheets[VALIDATION_SHEET][FILENAME_COLUMN]]
    assert len(train) == 8 and len(validation) == 2
    assert all(n.startswith("volume-covid19-A-") and len(n) == len("volume-covid19-A-0003") for n in train)
    for name in train:
        assert (synthetic_download / "Train" / f"{name}_ct.nii.gz").is_file()
        assert (synthetic_download / "Train" / f"{name}_seg.nii.gz").is_file()
    for name in validation:
        assert (synthetic_download / "Validation" / f"{name}_ct.nii.gz").is_file()
    assert not list((synthetic_download / "Validation").glob("*_seg.nii.gz"))


def test_ct_and_mask_share_geometry_and_look_like_a_chest(synthetic_download):
    lesion_cases = 0
    for seg_path in sorted((synthetic_download / "Train").glob("*_seg.nii.gz")):
        ct = sitk.ReadImage(str(seg_path).replace("_seg", "_ct"))
        seg = sitk.ReadImage(str(seg_path))
        assert ct.GetSize() == seg.GetSize() and ct.GetSpacing() == seg.GetSpacing()
        assert ct.GetOrigin() == seg.GetOrigin() and ct.GetDirection() == seg.GetDirection()
        assert ct.GetSpacing()[2] == 5.0 and ct.GetSpacing()[0] < 5.0  # anisotropic, like the challenge
        hu, mask = sitk.GetArrayFromImage(ct), sitk.GetArrayFromImage(seg)
        assert hu.dtype == np.int16 and hu.min() >= -1024
        assert set(np.unique(mask)) <= {0, 1}
        assert (hu < -900).mean() > 0.2  # air around the body
        assert ((hu > HU_LUNG - 100) & (hu < HU_LUNG + 100)).mean() > 0.03  # lungs
        if mask.any():
            lesion_cases += 1
            assert -700 < hu[mask > 0].mean() < 100  # ground glass / consolidation, not lung or air
    assert 0 < lesion_cases < 8  # every fifth case is lesion-free


def digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*.nii.gz"))}


def test_deterministic_per_seed(tmp_path):
    for name in ("a", "b"):
        write_download(tmp_path / name, n_train=3, n_validation=1, seed=7, settings=TINY)
    write_download(tmp_path / "c", n_train=3, n_validation=1, seed=8, settings=TINY)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert digest(tmp_path / "a") != digest(tmp_path / "c")


def test_refuses_a_non_empty_folder(tmp_path, capsys):
    (tmp_path / "something").write_text("mine")
    assert exit_status(main, str(tmp_path), "--n-train", "1", "--n-validation", "1") == 1
    assert "not empty" in capsys.readouterr().err
    assert (tmp_path / "something").read_text() == "mine"


def test_one_site_writes_no_site_table(synthetic_download):
    assert not (synthetic_download / SITES_FILE).exists()


def test_a_multi_site_download_lists_each_cases_site_and_lesion_style(tmp_path):
    from dataclasses import replace
    write_download(tmp_path, n_train=12, n_validation=2, seed=3, settings=replace(TINY, sites=3))
    table = pd.read_csv(tmp_path / SITES_FILE)
    assert list(table.columns) == ["case", "site", "pattern", "distribution"] and len(table) == 14
    assert set(table.site) == {"A", "B", "C"}
    lesion = table[table.pattern != "none"]
    assert set(lesion.pattern) <= set(PATTERNS) and set(lesion.distribution) <= set(DISTRIBUTIONS)
    sites = draw_sites(3, seed=3)
    assert sites[0] == Site("A")  # the single-site scanner
    assert all(getattr(sites[1], f) != getattr(sites[0], f) for f in ("noise_hu", "hu_scale", "hu_offset", "blur_xy",
                                                                      "blur_z", "lesion_contrast"))


def case_arrays(site, with_lesions=True):
    from covidseg.data.phantoms import make_case
    ct, seg = make_case(TINY, np.random.RandomState(0), with_lesions, site)
    return sitk.GetArrayFromImage(ct).astype(float), sitk.GetArrayFromImage(seg)


def test_a_site_changes_calibration_noise_and_lesion_contrast():
    reference, mask = case_arrays(Site("A"))
    calibrated, _ = case_arrays(Site("X", hu_scale=1.1, hu_offset=30))
    inside = reference > -900  # away from the clipping at -1024
    assert np.abs(calibrated[inside] - (1.1 * reference[inside] + 30)).max() <= 2.2  # both truncated to int16
    noisy, _ = case_arrays(Site("X", noise_hu=60))
    assert (noisy - reference)[inside].std() == pytest.approx(35, rel=0.1)  # the same noise field, 60 instead of 25 HU
    faint, faint_mask = case_arrays(Site("X", lesion_contrast=0.5))
    assert np.array_equal(faint_mask, mask) and mask.any()
    lesion = mask > 0
    assert (faint[lesion].mean() - HU_LUNG) == pytest.approx(0.5 * (reference[lesion].mean() - HU_LUNG), rel=0.15)


def test_peripheral_lesions_lie_at_the_lungs_rim_and_crazy_paving_has_septa():
    from covidseg.data.phantoms import LesionStyle, add_lesions, make_anatomy
    from scipy.ndimage import distance_transform_edt
    depths = {}
    for distribution in ("peripheral", "diffuse"):
        hu, lungs = make_anatomy((24, 96, 96), np.random.RandomState(0))
        mask = add_lesions(hu, lungs, 12, np.random.RandomState(1), LesionStyle("crazy_paving", distribution)) > 0
        depths[distribution] = distance_transform_edt(lungs, sampling=(3.0, 1.0, 1.0))[mask].mean()
        values = hu[mask]
        assert values.std() > 80 and values.max() - values.min() >= 200  # septa over the ground glass
    assert depths["peripheral"] < 0.8 * depths["diffuse"]

