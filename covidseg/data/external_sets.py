"""External labelled test sets: recognised by their files, checked in full, and stored beside the task with binary
lesion references, so that `make evaluate EXTERNAL=<folder>` segments them with every model and `make report` scores
them as it scores the held-out test set.

Recognised layouts (the first that matches):
    MedSeg dataset 2     rp_im/<n>.nii.gz + rp_msk/<n>.nii.gz; labels 1 ground glass, 2 consolidation (lesion),
                         3 pleural effusion (not lesion)
    MedSeg dataset 1     tr_im.nii.gz + tr_mask.nii.gz: refused, it is 100 slices of different patients taken from
                         JPEGs, not a volume, with HU only approximated
    MosMed-1110          dataset_registry.xlsx: its masked studies (covidseg.data.mosmed); label 1
    COVID-19-20 Train    <case>_ct.nii.gz + <case>_seg.nii.gz (the folder itself, or its Train/); label 1
    images + labels      images/<case>.nii.gz + labels/<case>.nii.gz (case ids as for predict); LESION_LABELS

Stored as $nnUNet_raw_data_base/nnUNet_raw_data/<task>/external/<name>/: images/<case>_0000.nii.gz (copied byte for
byte), labels/<case>.nii.gz (1 where the source label is a lesion label, else 0, on the image's grid) and
source.json (the folder, the layout, the lesion labels, each file's sha256). A set stored from another folder or
with other lesion labels is refused unless force; one stored from the same files is reused.
"""
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from covidseg.core.challenge import case_id
from covidseg.core.errors import ProblemsError, WorkflowError
from covidseg.core.workspace import file_sha256
from covidseg.data import mosmed
from covidseg.data.image_checks import check_image, is_nifti, parallel_map

EXTERNAL = "external"
SOURCE_RECORD = "source.json"
GEOMETRY_TOLERANCE = 1e-4


@dataclass
class ExternalSet:
    layout: str
    cases: Dict[str, Tuple[Path, Path]]   # case -> (CT, label)
    lesion_labels: Tuple[int, ...]


def niftis(folder: Path) -> Dict[str, Path]:
    return {case_id(p): p for p in sorted(folder.iterdir()) if p.is_file() and is_nifti(p)} if folder.is_dir() else {}


def paired(images: Dict[str, Path], labels: Dict[str, Path], where: Path, problems: List[str]
           ) -> Dict[str, Tuple[Path, Path]]:
    problems += [f"{images[c]}: no label of case {c} in {where}" for c in sorted(set(images) - set(labels))]
    problems += [f"{labels[c]}: a label without an image" for c in sorted(set(labels) - set(images))]
    return {c: (images[c], labels[c]) for c in sorted(set(images) & set(labels))}


def recognise(folder: Path, lesion_labels: Sequence[int] = (1,)) -> ExternalSet:
    """The layout of an external set and its (CT, label) pairs; a WorkflowError naming what was looked for when
    none matches, a ProblemsError listing unpaired files."""
    if not folder.is_dir():
        raise WorkflowError(f"EXTERNAL {folder} is not a folder")
    problems: List[str] = []
    if (folder / "rp_im").is_dir() and (folder / "rp_msk").is_dir():
        found = ExternalSet("medseg", paired(niftis(folder / "rp_im"), niftis(folder / "rp_msk"), folder / "rp_msk",
                                             problems), (1, 2))
    elif (folder / "tr_im.nii.gz").is_file() or (folder / "tr_mask.nii.gz").is_file():
        raise WorkflowError(f"{folder} is MedSeg dataset 1 (tr_im.nii.gz / tr_mask.nii.gz): 100 axial slices of "
                            f"different patients, converted from JPEG with HU only approximated, not a CT volume; "
                            f"it cannot be a 3D test set (use MedSeg dataset 2, rp_im/ and rp_msk/)")
    elif mosmed.is_mosmed(folder):
        studies = mosmed.read_studies(folder, problems)
        found = ExternalSet("mosmed", dict(sorted(studies.masked.items())), (1,))
    elif (folder / "Train").is_dir() or any(folder.glob("*_seg.nii.gz")):
        train = folder / "Train" if (folder / "Train").is_dir() else folder
        files = sorted(p for p in train.iterdir() if p.is_file() and is_nifti(p))
        images = {p.name.split("_ct.nii")[0]: p for p in files if re.search(r"_ct\.nii(\.gz)?$", p.name)}
        labels = {p.name.split("_seg.nii")[0]: p for p in files if re.search(r"_seg\.nii(\.gz)?$", p.name)}
        found = ExternalSet("covid19_20", paired(images, labels, train, problems), (1,))
    elif (folder / "images").is_dir() and (folder / "labels").is_dir():
        found = ExternalSet("images_labels", paired(niftis(folder / "images"), niftis(folder / "labels"),
                                                    folder / "labels", problems), tuple(lesion_labels))
    else:
        raise WorkflowError(f"EXTERNAL {folder}: not a labelled set this workspace knows; looked for rp_im/ + rp_msk/ "
                            f"(MedSeg dataset 2), dataset_registry.xlsx (MosMed-1110), Train/ or *_ct.nii.gz + "
                            f"*_seg.nii.gz (COVID-19-20), images/ + labels/ (any other; LESION_LABELS)")
    if not found.cases and not problems:
        problems.append(f"{folder}: no case with both an image and a label")
    if problems:
        raise ProblemsError(f"EXTERNAL {folder} ({found.layout}): {len(problems)} problem(s), nothing was written",
                            problems)
    return found


def case_problems(case: str, image_path: Path, label_path: Path) -> List[str]:
    """Both files complete and finite, the label on the image's grid and integer-valued."""
    problems = []
    image, label = check_image(image_path, keep_image=False), check_image(label_path, keep_image=True)
    problems += [f"{case}: {image_path}: {p}" for p in image.problems]
    problems += [f"{case}: {label_path}: {p}" for p in label.problems]
    if problems:
        return problems
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(image_path))
    reader.ReadImageInformation()
    ours = label.image
    if reader.GetSize() != ours.GetSize():
        return [f"{case}: the label's size {ours.GetSize()} is not the image's {reader.GetSize()} ({label_path})"]
    for what in ("Spacing", "Origin", "Direction"):
        a, b = np.array(getattr(reader, "Get" + what)()), np.array(getattr(ours, "Get" + what)())
        if not np.allclose(a, b, rtol=0, atol=GEOMETRY_TOLERANCE * max(1.0, float(np.abs(a).max()))):
            problems.append(f"{case}: the label's {what.lower()} differs from the image's ({label_path})")
    values = sitk.GetArrayViewFromImage(ours)
    if not np.array_equal(values, np.round(values)):
        problems.append(f"{case}: the label holds non-integer values ({label_path})")
    return problems


def source_record(folder: Path, found: ExternalSet) -> dict:
    return {"folder": str(folder.resolve()), "layout": found.layout, "lesion_labels": list(found.lesion_labels),
            "files": {case: {"image": str(image), "image_sha256": file_sha256(image), "label": str(label),
                             "label_sha256": file_sha256(label)} for case, (image, label) in found.cases.items()}}


def external_dir(raw_task: Path, name: str) -> Path:
    return raw_task / EXTERNAL / name


def stored_sets(raw_task: Path) -> Dict[str, Path]:
    """name -> folder of every external set stored beside the task."""
    root = raw_task / EXTERNAL
    return {p.name: p for p in sorted(root.iterdir()) if (p / SOURCE_RECORD).is_file()} if root.is_dir() else {}


def store(folder: Path, raw_task: Path, name: str, lesion_labels: Sequence[int] = (1,), force: bool = False) -> Path:
    """Recognise, check and store an external set (the module's layout); the stored folder."""
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise WorkflowError(f"EXTERNAL_NAME '{name}': use letters, digits, '.', '-' and '_'")
    found = recognise(folder, lesion_labels)
    target = external_dir(raw_task, name)
    record = source_record(folder, found)
    if (target / SOURCE_RECORD).is_file():
        stored = json.loads((target / SOURCE_RECORD).read_text())
        if stored == record:
            print(f"external set {name}: {len(found.cases)} case(s), stored already from {folder}")
            return target
        if not force:
            raise WorkflowError(f"{target} holds the external set '{name}' from {stored.get('folder')} (layout "
                                f"{stored.get('layout')}, lesion labels {stored.get('lesion_labels')}), not this one: "
                                f"give another EXTERNAL_NAME, or FORCE=1 to replace it")
    problems = [p for found_problems in parallel_map(lambda item: case_problems(item[0], *item[1]),
                                                      list(found.cases.items()), desc=f"checking {name}",
                                                      unit="case") for p in found_problems]
    if problems:
        raise ProblemsError(f"EXTERNAL {folder}: {len(problems)} problem(s), nothing was written", problems)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=target.parent))
    try:
        (tmp / "images").mkdir()
        (tmp / "labels").mkdir()
        for case, (image, label) in found.cases.items():
            if image.name.lower().endswith(".gz"):
                shutil.copyfile(image, tmp / "images" / f"{case}_0000.nii.gz")
            else:  # nnU-Net reads .nii.gz only; SimpleITK keeps the geometry and the voxels
                sitk.WriteImage(sitk.ReadImage(str(image)), str(tmp / "images" / f"{case}_0000.nii.gz"), True)
            source = sitk.ReadImage(str(label))
            lesion = np.isin(sitk.GetArrayFromImage(source), list(found.lesion_labels)).astype(np.uint8)
            binary = sitk.GetImageFromArray(lesion)
            binary.CopyInformation(source)
            sitk.WriteImage(binary, str(tmp / "labels" / f"{case}.nii.gz"), True)
        (tmp / SOURCE_RECORD).write_text(json.dumps(record, indent=1))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"external set {name}: {len(found.cases)} case(s) from {folder} ({found.layout}; lesion = label(s) "
          f"{', '.join(map(str, found.lesion_labels))}) stored in {target}")
    return target
