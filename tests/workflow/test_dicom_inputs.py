"""`make predict` on DICOM: a patient's export (a CT series beside a localizer and an RTSTRUCT-like object) is
segmented, the segmentation on exactly the grid SimpleITK's series reader gives the series."""
import numpy as np
import SimpleITK as sitk

from tests.helpers import FOLD, PLANS, TASK, write_dicom_series
from tests.unit.test_dicom_series import gdcm_reading, write_rtstruct

UID = "1.2.826.0.1.3680043.8.498.4242"


def test_make_predict_segments_a_patients_dicom_export_in_the_series_geometry(workflow, tmp_path):
    case = sorted((workflow.raw_task / "imagesVal").glob("*.nii.gz"))[0]
    ct = sitk.Cast(sitk.ReadImage(str(case)), sitk.sitkInt16)
    series = tmp_path / "export" / "patient_1" / "CT_1.25mm"
    write_dicom_series(series, ct, UID)
    write_dicom_series(tmp_path / "export" / "patient_1" / "scout", ct[:, :, :2], f"{UID}.9",
                       image_type="ORIGINAL\\PRIMARY\\LOCALIZER")
    write_rtstruct(tmp_path / "export" / "patient_1" / "RS.dcm")
    output = tmp_path / "out"
    result = workflow.command("predict", "--input", tmp_path / "export", "--output", output, "--model", "fullres",
                              "--task", TASK, "--fold", FOLD, "--plans", PLANS, "--disable-tta")
    assert "NOTE: 3 DICOM file(s) skipped" in result.stdout
    assert sorted(p.name for p in output.iterdir()) == ["patient_1_CT_1.25mm.nii.gz"]
    segmentation = sitk.ReadImage(str(output / "patient_1_CT_1.25mm.nii.gz"))
    reference = gdcm_reading(series, UID)
    assert segmentation.GetSize() == reference.GetSize()
    assert np.allclose(segmentation.GetSpacing(), reference.GetSpacing())
    assert np.allclose(segmentation.GetOrigin(), reference.GetOrigin())
    assert np.allclose(segmentation.GetDirection(), reference.GetDirection())
    assert set(np.unique(sitk.GetArrayFromImage(segmentation))) <= {0, 1}
