"""covidseg.data.external_sets: each layout an external labelled test set comes in is recognised, checked and stored
with a binary lesion reference; what cannot be a 3D test set is refused with the reason."""
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from covidseg.core.errors import ProblemsError, WorkflowError
from covidseg.data.external_sets import recognise, store, stored_sets
from covidseg.data.phantoms import write_mosmed_download
from tests.helpers import TINY


def write_pair(image_path: Path, label_path: Path, values=(0, 1, 2, 3), seed: int = 0) -> np.ndarray:
    """A small CT and a label holding `values` in its first slices; the label array."""
    rng = np.random.default_rng(seed)
    ct = sitk.GetImageFromArray(rng.integers(-1000, 300, (8, 16, 16)).astype(np.int16))
    ct.SetSpacing((0.8, 0.8, 5.0))
    ct.SetOrigin((-6.0, -6.0, 10.0))
    label = np.zeros((8, 16, 16), np.uint8)
    for i, v in enumerate(values):
        label[i, 2:6, 2:6] = v
    image = sitk.GetImageFromArray(label)
    image.CopyInformation(ct)
    image_path.parent.mkdir(parents=True, exist_ok=True)
    label_path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(ct, str(image_path))
    sitk.WriteImage(image, str(label_path))
    return label


def medseg(root: Path, n: int = 2) -> Path:
    for i in range(1, n + 1):
        write_pair(root / "rp_im" / f"{i}.nii.gz", root / "rp_msk" / f"{i}.nii.gz", seed=i)
    (root / "rp_lung_msk").mkdir()
    return root


def test_medseg_dataset_2_counts_ground_glass_and_consolidation_but_not_effusion(tmp_path):
    source = medseg(tmp_path / "medseg")
    assert recognise(source).layout == "medseg"
    stored = store(source, tmp_path / "Task200_X", "medseg")
    assert sorted(p.name for p in (stored / "images").iterdir()) == ["1_0000.nii.gz", "2_0000.nii.gz"]
    assert (stored / "images" / "1_0000.nii.gz").read_bytes() == (source / "rp_im" / "1.nii.gz").read_bytes()
    label = sitk.ReadImage(str(stored / "labels" / "1.nii.gz"))
    values = sitk.GetArrayFromImage(label)
    assert values[1].max() == 1 and values[2].max() == 1, "labels 1 and 2 are lesion"
    assert values[3].max() == 0, "label 3 (pleural effusion) is not lesion"
    reference = sitk.ReadImage(str(source / "rp_msk" / "1.nii.gz"))
    assert label.GetOrigin() == reference.GetOrigin() and label.GetSpacing() == reference.GetSpacing()
    record = json.loads((stored / "source.json").read_text())
    assert record["layout"] == "medseg" and record["lesion_labels"] == [1, 2]
    assert stored_sets(tmp_path / "Task200_X") == {"medseg": stored}


def test_medseg_dataset_1_is_refused_with_the_reason(tmp_path):
    write_pair(tmp_path / "tr_im.nii.gz", tmp_path / "tr_mask.nii.gz")
    with pytest.raises(WorkflowError, match="MedSeg dataset 1 .* not a CT volume"):
        recognise(tmp_path)


def test_mosmed_masked_studies_are_the_set(tmp_path):
    write_mosmed_download(tmp_path / "mosmed", n_masked=2, n_unmasked=2, seed=1, settings=TINY)
    found = recognise(tmp_path / "mosmed")
    assert found.layout == "mosmed" and sorted(found.cases) == ["study_0255", "study_0256"]


def test_a_covid_train_folder_and_an_images_labels_pair(tmp_path):
    write_pair(tmp_path / "c" / "Train" / "volume-covid19-A-0003_ct.nii.gz",
               tmp_path / "c" / "Train" / "volume-covid19-A-0003_seg.nii.gz", values=(0, 1))
    assert list(recognise(tmp_path / "c").cases) == ["volume-covid19-A-0003"]
    write_pair(tmp_path / "p" / "images" / "p1_0000.nii.gz", tmp_path / "p" / "labels" / "p1.nii.gz", values=(0, 4, 5))
    stored = store(tmp_path / "p", tmp_path / "Task", "plain", lesion_labels=(5,))
    values = sitk.GetArrayFromImage(sitk.ReadImage(str(stored / "labels" / "p1.nii.gz")))
    assert values[1].max() == 0 and values[2].max() == 1


def test_an_unknown_folder_names_what_was_looked_for(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(WorkflowError, match=r"looked for rp_im/ \+ rp_msk/ \(MedSeg dataset 2\), "
                                            r"dataset_registry.xlsx \(MosMed-1110\)"):
        recognise(tmp_path / "x")


def test_unpaired_files_and_a_label_off_its_grid_are_named(tmp_path):
    source = medseg(tmp_path / "medseg", n=3)
    (source / "rp_msk" / "3.nii.gz").unlink()
    label = sitk.ReadImage(str(source / "rp_msk" / "2.nii.gz"))
    label.SetOrigin((0.0, 0.0, 0.0))
    sitk.WriteImage(label, str(source / "rp_msk" / "2.nii.gz"))
    with pytest.raises(ProblemsError) as raised:
        store(source, tmp_path / "Task", "medseg")
    assert any("3.nii.gz: no label of case 3" in p for p in raised.value.problems)
    (source / "rp_im" / "3.nii.gz").unlink()
    with pytest.raises(ProblemsError) as raised:
        store(source, tmp_path / "Task", "medseg")
    moved = source / "rp_msk" / "2.nii.gz"
    assert raised.value.problems == [f"2: the label's origin differs from the image's ({moved})"]
    assert not (tmp_path / "Task").exists()


def test_a_stored_set_is_reused_refused_from_elsewhere_and_replaced_with_force(tmp_path, capsys):
    first, second = medseg(tmp_path / "a"), medseg(tmp_path / "b", n=1)
    store(first, tmp_path / "Task", "ext")
    store(first, tmp_path / "Task", "ext")
    assert "stored already" in capsys.readouterr().out
    with pytest.raises(WorkflowError, match="holds the external set 'ext' from .*give another EXTERNAL_NAME"):
        store(second, tmp_path / "Task", "ext")
    stored = store(second, tmp_path / "Task", "ext", force=True)
    assert sorted(p.name for p in (stored / "labels").iterdir()) == ["1.nii.gz"]
