"""covidseg.data.ct_inputs: what `make predict` / `make gradcam` accept as INPUT, one test per bad-input class."""
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from covidseg.core.errors import ProblemsError, WorkflowError
from covidseg.data.ct_inputs import collect_inputs
from tests.unit.test_image_checks import truncate, write_ct


def problems_of(source: Path) -> str:
    with pytest.raises(ProblemsError) as raised:
        collect_inputs(source)
    assert "nothing was done" in str(raised.value)
    return "\n".join(raised.value.problems)


def test_names_with_spaces_and_dots_become_case_ids(tmp_path):
    a = write_ct(tmp_path / "patient 1.v2.nii.gz")
    b = write_ct(tmp_path / "scan_0000.nii")
    (tmp_path / ".DS_Store").write_text("hidden files are ignored")
    assert collect_inputs(tmp_path) == {"patient 1.v2": a, "scan": b}


def test_a_single_file_is_an_input(tmp_path):
    path = write_ct(tmp_path / "ct.nii.gz")
    assert collect_inputs(path) == {"ct": path}


def test_an_empty_folder_is_an_error(tmp_path):
    with pytest.raises(WorkflowError, match="is empty"):
        collect_inputs(tmp_path)


def test_a_missing_input_is_an_error(tmp_path):
    with pytest.raises(WorkflowError, match="does not exist"):
        collect_inputs(tmp_path / "nowhere")


def test_a_truncated_file_beside_a_good_one_is_named_alone(tmp_path):
    write_ct(tmp_path / "good.nii.gz")
    truncate(write_ct(tmp_path / "cut.nii.gz"))
    problems = problems_of(tmp_path)
    assert "cut.nii.gz: the compressed stream is incomplete" in problems and "good.nii.gz" not in problems


def test_nan_voxels_are_refused(tmp_path):
    voxels = np.zeros((6, 16, 16), np.float32)
    voxels[1, 1, 1] = np.nan
    nib.save(nib.Nifti1Image(voxels.T, np.eye(4)), str(tmp_path / "nan.nii.gz"))
    assert "nan.nii.gz: 1 voxel(s) are NaN or infinite" in problems_of(tmp_path)


def test_other_formats_and_folders_are_refused_by_name(tmp_path):
    write_ct(tmp_path / "ct.nii.gz")
    sitk.WriteImage(sitk.ReadImage(str(tmp_path / "ct.nii.gz")), str(tmp_path / "other.mha"))
    (tmp_path / "dicom_series").mkdir()
    problems = problems_of(tmp_path)
    assert "other.mha: neither a NIfTI file" in problems and "dicom_series: an empty folder" in problems


@pytest.mark.parametrize("shape", [(16, 16), (2, 6, 16, 16)])
def test_2d_and_4d_images_are_refused(tmp_path, shape):
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros(shape, np.int16), isVector=False), str(tmp_path / "x.nii.gz"))
    assert "x.nii.gz: not a 3D single-channel image" in problems_of(tmp_path)


def test_a_text_file_named_like_a_ct_is_refused(tmp_path):
    (tmp_path / "ct.nii.gz").write_text("not an image")
    assert "ct.nii.gz: not gzip-compressed" in problems_of(tmp_path)


def test_two_files_with_one_case_id_are_refused(tmp_path):
    write_ct(tmp_path / "a.nii.gz")
    write_ct(tmp_path / "a_0000.nii")
    assert "its case id 'a' is also that of" in problems_of(tmp_path)


def test_every_problem_is_listed(tmp_path):
    truncate(write_ct(tmp_path / "cut.nii.gz"))
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "fake.nii").write_text("x")
    with pytest.raises(ProblemsError) as raised:
        collect_inputs(tmp_path)
    assert len(raised.value.problems) == 3
