"""covidseg.data.dicom_series through covidseg.data.ct_inputs: DICOM series as `make predict` / `make gradcam` inputs.
Every series here is written by SimpleITK (tests.helpers.write_dicom_series); the non-image objects by pydicom."""
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import FileDataset, FileMetaDataset

from covidseg.core.errors import ProblemsError
from covidseg.data.ct_inputs import collect_inputs
from tests.helpers import ct_volume, write_dicom_series
from tests.unit.test_image_checks import write_ct

UID = "1.2.826.0.1.3680043.8.498.7"


def gdcm_reading(folder: Path, uid: str) -> sitk.Image:
    """The reference: SimpleITK's series reader with GDCM's own file order for the series."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))
    return reader.Execute()


def assert_same_image(a: sitk.Image, b: sitk.Image):
    assert a.GetSize() == b.GetSize()
    assert np.allclose(a.GetSpacing(), b.GetSpacing()) and np.allclose(a.GetOrigin(), b.GetOrigin())
    assert np.allclose(a.GetDirection(), b.GetDirection())
    assert np.array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))


@pytest.mark.parametrize("direction", [(1, 0, 0, 0, 1, 0, 0, 0, 1), (-1, 0, 0, 0, -1, 0, 0, 0, 1),
                                       (1, 0, 0, 0, 0, 1, 0, -1, 0)], ids=["axial", "flipped", "coronal"])
def test_a_series_folder_becomes_one_case_with_the_series_readers_geometry(tmp_path, direction):
    volume = ct_volume(direction=direction)
    write_dicom_series(tmp_path / "CT_chest", volume, UID)
    staging = tmp_path / "staging"
    staging.mkdir()
    inputs = collect_inputs(tmp_path / "CT_chest", staging)
    assert list(inputs) == ["CT_chest"] and inputs["CT_chest"].parent == staging
    staged = sitk.ReadImage(str(inputs["CT_chest"]))
    assert_same_image(staged, gdcm_reading(tmp_path / "CT_chest", UID))
    # the same voxels in the same places as the volume the series was written from
    corner = volume.TransformIndexToPhysicalPoint((0, 0, 0))
    index = staged.TransformPhysicalPointToIndex(corner)
    assert staged[index] == volume[0, 0, 0]
    assert sorted(np.round(staged.GetSpacing(), 4)) == sorted(np.round(volume.GetSpacing(), 4))


def write_rtstruct(path: Path) -> None:
    """A non-image object beside the series, as a planning system exports it (modality RTSTRUCT, no pixels)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.481.3"
    meta.MediaStorageSOPInstanceUID = f"{UID}.900"
    meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID, ds.StructureSetLabel = "RTSTRUCT", f"{UID}.90", "lesions"
    ds.save_as(str(path), enforce_file_format=True)


def test_a_patient_folder_gives_its_ct_series_and_lists_what_it_skips(tmp_path, capsys):
    patient = tmp_path / "patient_042"
    write_dicom_series(patient / "study" / "thorax", ct_volume(seed=1), f"{UID}.1", series_number=3)
    write_dicom_series(patient / "study" / "thorax", ct_volume(seed=2, spacing=(0.8, 0.7, 1.25)), f"{UID}.2",
                       series_number=4, prefix="SE4_")
    write_dicom_series(patient / "study" / "scout", ct_volume(shape=(2, 24, 20)), f"{UID}.3", series_number=1,
                       image_type="ORIGINAL\\PRIMARY\\LOCALIZER")
    write_dicom_series(patient / "study" / "pet", ct_volume(), f"{UID}.4", modality="PT")
    write_rtstruct(patient / "study" / "RS_lesions.dcm")
    (patient / "DICOMDIR.txt").write_text("an index")
    write_ct(tmp_path / "other.nii.gz")
    staging = tmp_path.parent / f"{tmp_path.name}_staging"
    staging.mkdir()
    inputs = collect_inputs(tmp_path, staging)
    assert sorted(inputs) == ["other", "patient_042_study_thorax_s3", "patient_042_study_thorax_s4"]
    assert_same_image(sitk.ReadImage(str(inputs["patient_042_study_thorax_s4"])),
                      gdcm_reading(patient / "study" / "thorax", f"{UID}.2"))
    shown = capsys.readouterr().out
    assert "NOTE: 16 DICOM file(s) skipped, not slices of a CT image series:" in shown
    assert "patient_042/study/scout/IM0001.dcm: a localizer (scout) image" in shown
    assert "patient_042/study/RS_lesions.dcm: modality RTSTRUCT, not a CT image" in shown
    assert "patient_042/DICOMDIR.txt: not a DICOM file" in shown and "modality PT" in shown


def refused(source: Path, tmp_path: Path) -> str:
    """The problems collect_inputs lists for `source` (staging beside it, never written into)."""
    staging = tmp_path / "staging"
    staging.mkdir(exist_ok=True)
    with pytest.raises(ProblemsError) as raised:
        collect_inputs(source, staging)

    assert "nothing was done" in str(raised.value)
    return "\n".join(raised.value.problems)


def test_a_series_with_a_missing_slice_is_refused(tmp_path):
    source = tmp_path / "in"
    files = write_dicom_series(source / "ct", ct_volume(), UID)
    files[5].unlink()
    problems = refused(source, tmp_path)
    assert f"DICOM series ct (11 file(s) in {source / 'ct'}, SeriesInstanceUID {UID}): slice spacing varies: 5 mm " \
           f"between IM0007.dcm and IM0005.dcm, 2.5 mm elsewhere (tolerance 5%); 1 slice(s) missing?" in problems


def test_too_few_slices_are_refused(tmp_path):
    source = tmp_path / "in"
    write_dicom_series(source / "ct", ct_volume(shape=(4, 24, 20)), UID)
    assert "too few slices (4; a CT volume here has at least 10)" in refused(source, tmp_path)


def test_gantry_tilt_is_refused(tmp_path):
    source = tmp_path / "in"
    write_dicom_series(source / "ct", ct_volume(), UID, extra_tags={"0018|1120": "15"})
    assert "gantry tilt (15 degrees in GantryDetectorTilt)" in refused(source, tmp_path)


def test_slices_that_move_off_their_normal_are_refused_as_tilted(tmp_path):
    source = tmp_path / "in"
    volume = ct_volume()
    files = write_dicom_series(source / "ct", volume, UID)
    for z, path in enumerate(files):  # what a tilted gantry exports: each slice shifted along y
        ds = pydicom.dcmread(str(path))
        ds.ImagePositionPatient = [-10.0, 20.0 + 0.8 * z, -300.0 + 2.5 * z]
        ds.save_as(str(path))
    assert "gantry tilt (the slices move 17.7 degrees off the normal of their plane)" in refused(source, tmp_path)


def test_slices_of_different_sizes_are_refused(tmp_path):
    source = tmp_path / "in"
    write_dicom_series(source / "ct", ct_volume(), UID)
    bigger = write_dicom_series(source / "tmp", ct_volume(shape=(12, 30, 20)), UID)
    bigger[0].rename(source / "ct" / "IM0001.dcm")
    for path in bigger[1:]:
        path.unlink()
    (source / "tmp").rmdir()
    assert "slices of different sizes (24x20, 30x20)" in refused(source, tmp_path)


def test_pixel_data_that_cannot_be_decoded_is_refused(tmp_path):
    source = tmp_path / "in"
    files = write_dicom_series(source / "ct", ct_volume(), UID)
    ds = pydicom.dcmread(str(files[3]))
    ds.file_meta.TransferSyntaxUID = pydicom.uid.JPEG2000Lossless  # a compressed stream that does not decode
    ds.PixelData = pydicom.encaps.encapsulate([b"\xff\x4f\xff\x51 not a JPEG 2000 codestream"])
    ds["PixelData"].VR = "OB"
    ds.save_as(str(files[3]), enforce_file_format=True)
    assert "its pixel data cannot be read" in refused(source, tmp_path)


def test_every_refused_series_and_file_is_listed_at_once(tmp_path):
    source = tmp_path / "in"
    write_dicom_series(source / "a", ct_volume(shape=(3, 24, 20)), f"{UID}.1")
    write_dicom_series(source / "b", ct_volume(), f"{UID}.2", extra_tags={"0018|1120": "-20"})
    write_dicom_series(source / "good", ct_volume(), f"{UID}.3")
    (source / "notes.docx").write_text("x")
    problems = refused(source, tmp_path)
    assert "DICOM series a (" in problems and "DICOM series b (" in problems and "notes.docx: neither" in problems
    assert "good" not in problems.replace(str(tmp_path), "")


def test_a_folder_without_a_ct_series_is_refused(tmp_path):
    source = tmp_path / "in"
    write_dicom_series(source / "mr", ct_volume(), UID, modality="MR")
    assert "no DICOM CT image series found (of 12 file(s), 12 skipped)" in refused(source, tmp_path)


def test_a_series_named_like_a_nifti_case_is_refused(tmp_path):
    source = tmp_path / "in"
    write_dicom_series(source / "ct", ct_volume(), UID)
    write_ct(source / "ct.nii.gz")
    assert "DICOM series ct: its case id is also that of ct.nii.gz" in refused(source, tmp_path)


def test_reading_and_writing_dicom_keeps_the_process_locale(tmp_path):
    """GDCM sets the locale to "C", which made every later subprocess output decode as ASCII (and fail on tqdm's
    bars) in the process that read a series."""
    import locale
    before = locale.setlocale(locale.LC_ALL)
    write_dicom_series(tmp_path / "ct", ct_volume(), UID)
    staging = tmp_path / "staging"
    staging.mkdir()
    collect_inputs(tmp_path / "ct", staging)
    assert locale.setlocale(locale.LC_ALL) == before
