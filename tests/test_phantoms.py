"""covidseg.synthetic / covidseg.data.phantoms: the synthetic download has the challenge's layout and a plausible
chest CT content."""
import hashlib

import numpy as np
import pandas as pd
import SimpleITK as sitk

from covidseg.core.challenge import FILENAME_COLUMN, TRAIN_SHEET, VALIDATION_SHEET, WORKBOOK_NAME
from covidseg.data.phantoms import HU_LUNG, write_download
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
