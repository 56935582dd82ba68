"""covidseg.data.image_checks: a NIfTI file is read in full, 2D and 3D images alike."""
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from covidseg.data.image_checks import check_image, check_images, parallel_map


def write_ct(path: Path, shape=(6, 16, 16), dtype=np.int16) -> Path:
    voxels = (np.arange(np.prod(shape)) % 1000 - 500).reshape(shape).astype(dtype)
    image = sitk.GetImageFromArray(voxels)
    image.SetSpacing([0.8, 0.8, 5.0][: len(shape)])
    sitk.WriteImage(image, str(path))
    return path


def truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_a_complete_ct_passes_and_keeps_its_image(tmp_path, suffix):
    path = write_ct(tmp_path / f"ct{suffix}")
    check = check_image(path, keep_image=True)
    assert check.problems == [] and check.image.GetSize() == (16, 16, 6)
    assert check_image(path).image is None  # dropped unless asked for


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_a_truncated_file_is_refused_although_simpleitk_reads_it(tmp_path, suffix):
    path = truncate(write_ct(tmp_path / f"ct{suffix}"), keep=0.6)
    sitk.ReadImage(str(path))  # the reason for the check: no error, zeros instead of the lost voxels
    problems = check_image(path).problems
    assert len(problems) == 1 and "truncated" in problems[0]


def test_a_text_file_named_nii_gz_is_refused(tmp_path):
    path = tmp_path / "notes.nii.gz"
    path.write_text("patient notes")
    assert "not gzip-compressed" in check_image(path).problems[0]


@pytest.mark.parametrize("damage", [64, 4096])
def test_a_damaged_gzip_stream_is_refused(tmp_path, damage):
    path = write_ct(tmp_path / "ct.nii.gz", shape=(20, 64, 64))
    data = bytearray(path.read_bytes())
    data[len(data) // 2: len(data) // 2 + damage] = bytes(damage)
    path.write_bytes(bytes(data))
    assert "the compressed stream is incomplete or corrupt" in check_image(path).problems[0]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_voxels_are_counted_although_simpleitk_reads_them_as_zero(tmp_path, bad):
    voxels = np.zeros((6, 16, 16), np.float32)
    voxels[2, 3, 4:6] = bad
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(voxels.T, np.eye(4)), str(path))
    assert check_image(path).problems == ["2 voxel(s) are NaN or infinite"]


@pytest.mark.parametrize("shape,dimension", [((16, 16), 2), ((2, 6, 16, 16), 4)])
def test_images_that_are_not_3d_are_refused(tmp_path, shape, dimension):
    path = tmp_path / "x.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros(shape, np.int16), isVector=False), str(path))
    assert f"not a 3D single-channel image (dimension {dimension}" in check_image(path).problems[0]


def test_a_missing_file_is_named(tmp_path):
    assert check_image(tmp_path / "gone.nii.gz").problems == ["file not found"]


def test_check_images_reports_every_file_in_order(tmp_path):
    good = write_ct(tmp_path / "a.nii.gz")
    bad = truncate(write_ct(tmp_path / "b.nii.gz"))
    result = check_images([bad, good])
    assert list(result) == [bad, good] and result[good] == [] and "truncated" in result[bad][0]


def test_parallel_map_keeps_the_order():
    assert parallel_map(lambda x: x * x, list(range(20)), desc="squares", workers=4) == [x * x for x in range(20)]
