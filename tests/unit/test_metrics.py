"""Metrics against cases with known answers, in 2D and 3D and with anisotropic spacing."""
import math

import numpy as np
import pytest
import SimpleITK as sitk

from covidseg.evaluation.metrics import case_metrics, metrics_per_case


def ball(shape, center, radius_mm, spacing):
    grids = np.meshgrid(*[(np.arange(n) - c) * s for n, c, s in zip(shape, center, spacing)], indexing="ij")
    return sum(g ** 2 for g in grids) <= radius_mm ** 2


@pytest.mark.parametrize("shape,spacing", [((64, 64), (1.0, 1.0)), ((40, 48, 48), (1.0, 1.0, 1.0)),
                                           ((24, 64, 64), (2.0, 1.0, 1.0))])
def test_identical_masks(shape, spacing):
    mask = ball(shape, [n / 2 for n in shape], 10, spacing)
    m = case_metrics(mask, mask, spacing)
    assert (m.dice, m.nsd, m.hd95_mm, m.volume_error_ml) == (1.0, 1.0, 0.0, 0.0)


@pytest.mark.parametrize("shift_voxels,spacing", [(3, (1.0, 1.0, 1.0)), (2, (1.0, 1.0, 2.0))])
def test_sphere_shifted_by_a_known_distance(shift_voxels, spacing):
    shape = (48, 48, 48)
    center = [24, 24, 20]
    reference = ball(shape, center, 12, spacing)
    prediction = ball(shape, center[:2] + [center[2] + shift_voxels], 12, spacing)
    shift_mm = shift_voxels * spacing[2]
    m = case_metrics(prediction, reference, spacing, tolerance_mm=1.0)
    # the far side of the sphere moves by the full shift: the 95th percentile distance is close to it
    assert shift_mm * 0.6 <= m.hd95_mm <= shift_mm + math.sqrt(sum(s ** 2 for s in spacing))
    assert 0 < m.nsd < 1 and 0 < m.dice < 1
    assert abs(m.volume_error_ml) < 0.02 * m.reference_ml  # same sphere, same volume (up to voxelisation)
    wide = case_metrics(prediction, reference, spacing, tolerance_mm=shift_mm + 2 * max(spacing))
    assert wide.nsd == 1.0


def test_volume_in_ml_uses_the_spacing():
    mask = np.zeros((10, 10, 10), bool)
    mask[:5, :4, :2] = True  # 40 voxels of 2 x 1 x 0.5 mm = 40 mm^3
    m = case_metrics(mask, np.zeros_like(mask), (2.0, 1.0, 0.5))
    assert m.predicted_ml == pytest.approx(0.04) and m.volume_error_ml == pytest.approx(0.04)


def test_disjoint_masks():
    reference = ball((40, 40, 40), (10, 20, 20), 5, (1, 1, 1))
    prediction = ball((40, 40, 40), (30, 20, 20), 5, (1, 1, 1))
    m = case_metrics(prediction, reference, (1, 1, 1))
    assert m.dice == 0 and m.nsd == 0 and m.hd95_mm >= 15


def test_empty_masks_follow_the_documented_convention():
    empty = np.zeros((20, 20, 20), bool)
    lesion = ball((20, 20, 20), (10, 10, 10), 4, (1, 1, 1))
    both = case_metrics(empty, empty, (1, 1, 1))
    assert (both.dice, both.nsd, both.hd95_mm, both.volume_error_ml) == (1.0, 1.0, 0.0, 0.0)
    assert both.reference_empty and both.prediction_empty
    missed = case_metrics(empty, lesion, (1, 1, 1))
    assert missed.dice == 0 and missed.nsd == 0 and math.isnan(missed.hd95_mm)
    assert missed.volume_error_ml == pytest.approx(-missed.reference_ml) and missed.prediction_empty
    false_alarm = case_metrics(lesion, empty, (1, 1, 1))
    assert false_alarm.dice == 0 and math.isnan(false_alarm.hd95_mm) and false_alarm.reference_empty


def test_folders_are_read_with_their_geometry(tmp_path):
    spacing_xyz = (0.8, 0.8, 5.0)
    reference = ball((12, 40, 40), (6, 20, 20), 8, spacing_xyz[::-1])
    for folder, mask in (("ref", reference), ("pred", reference)):
        (tmp_path / folder).mkdir()
        image = sitk.GetImageFromArray(mask.astype(np.uint8))
        image.SetSpacing(spacing_xyz)
        sitk.WriteImage(image, str(tmp_path / folder / "case_1.nii.gz"))
    scores = metrics_per_case(tmp_path / "pred", tmp_path / "ref")
    assert scores["case_1"].dice == 1.0
    assert scores["case_1"].reference_ml == pytest.approx(reference.sum() * 0.8 * 0.8 * 5.0 / 1000)
