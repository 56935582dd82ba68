"""The COVID-19-20 challenge's layout, its label, and the workspace's case-id rule, written once.

The download:
    COVID-19-20_TrainValidation.xlsx   sheets "Train set" and "Validation set", column FILENAME
    Train/<case>_ct.nii.gz, Train/<case>_seg.nii.gz, Validation/<case>_ct.nii.gz
"""
from pathlib import Path
from typing import Union

WORKBOOK_NAME = "COVID-19-20_TrainValidation.xlsx"
TRAIN_SHEET = "Train set"
VALIDATION_SHEET = "Validation set"
FILENAME_COLUMN = "FILENAME"
TRAIN_FOLDER = "Train"
VALIDATION_FOLDER = "Validation"
CT_SUFFIX = "_ct"
SEG_SUFFIX = "_seg"

BACKGROUND_LABEL = 0
LESION_LABEL = 1
LABELS = {str(BACKGROUND_LABEL): "background", str(LESION_LABEL): "lesion"}

NIFTI_EXTENSIONS = (".nii.gz", ".nii")
NNUNET_CHANNEL_SUFFIX = "_0000"  # nnU-Net's modality suffix of an image file: <case>_0000.nii.gz


def case_id(name: Union[str, Path]) -> str:
    """The case a file or workbook entry belongs to, everywhere in the workspace.

    Strips, in this order, a NIfTI extension, nnU-Net's '_0000' channel suffix and the challenge's '_ct'
    suffix: 'volume-covid19-A-0003_ct.nii.gz', 'volume-covid19-A-0003_0000.nii.gz' and
    'volume-covid19-A-0003' all give 'volume-covid19-A-0003'. Any other name (spaces and dots included)
    is kept as it is: 'patient 7.v2.nii' gives 'patient 7.v2'.
    """
    name = Path(name).name if isinstance(name, Path) else str(name).strip()
    for suffix in NIFTI_EXTENSIONS + (NNUNET_CHANNEL_SUFFIX, CT_SUFFIX):
        if name.endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
    return name


def ct_file(root: Path, folder: str, case: str) -> Path:
    return root / folder / f"{case}{CT_SUFFIX}.nii.gz"


def seg_file(root: Path, case: str) -> Path:
    return root / TRAIN_FOLDER / f"{case}{SEG_SUFFIX}.nii.gz"

# not the challenge's: the workspace's optional site table of a download (case, site, ...), see make synthetic SITES
SITES_FILE = "sites.csv"
