"""covidseg.convert / covidseg.data.conversion: the challenge download into nnU-Net's raw layout, and its
refusals of bad input."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from covidseg.convert import main
from covidseg.core.challenge import TRAIN_SHEET, VALIDATION_SHEET, WORKBOOK_NAME
from covidseg.data.conversion import split_train_cases
from tests.helpers import REPO, exit_status


def convert(download: Path, out: Path, *extra: str) -> int:
    return exit_status(main, str(download), "--output-base", str(out), *extra)


def task_dir(out: Path) -> Path:
    return out / "Task200_COVID_19_20"


def editable_copy(download: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "download"
    shutil.copytree(download, copy)
    return copy


def train_names(download: Path):
    return sorted(p.name[: -len("_seg.nii.gz")] for p in (download / "Train").glob("*_seg.nii.gz"))


def test_layout_and_dataset_json(synthetic_download, tmp_path):
    assert convert(synthetic_download, tmp_path, "--labeled-fraction", "0.5") == 0
    task = task_dir(tmp_path)
    dataset = json.loads((task / "dataset.json").read_text())
    split = json.loads((task / "split.json").read_text())
    assert dataset["modality"] == {"0": "CT"}
    assert dataset["labels"] == {"0": "background", "1": "lesion"}
    assert dataset["numTraining"] == len(split["labeled"]) == 4
    assert len(split["unlabeled_from_train"]) == 4 and len(split["validation"]) == 2
    assert sorted(split["labeled"] + split["unlabeled_from_train"]) == train_names(synthetic_download)
    for name in split["labeled"]:
        assert (task / "imagesTr" / f"{name}_0000.nii.gz").is_file()
        assert (task / "labelsTr" / f"{name}.nii.gz").is_file()
    assert [e["image"] for e in dataset["training"]] == [f"./imagesTr/{n}.nii.gz" for n in split["labeled"]]
    assert dataset["unlabeled"] == [f"./imagesUnlabeled/{n}.nii.gz" for n in split["unlabeled_from_train"]]
    for name in split["unlabeled_from_train"]:
        assert (task / "imagesUnlabeled" / f"{name}_0000.nii.gz").is_file()
    for name in split["validation"]:
        assert (task / "imagesVal" / f"{name}_0000.nii.gz").is_file()
    assert split["labeled_fraction"] == 0.5 and split["seed"] == 0
    assert not list(tmp_path.glob(".Task200*")), "temporary folders must be gone"


def test_images_keep_their_geometry_and_voxels(synthetic_download, tmp_path):
    assert convert(synthetic_download, tmp_path, "--labeled-fraction", "1.0") == 0
    for name in train_names(synthetic_download):
        for src, dst in ((f"Train/{name}_ct.nii.gz", f"imagesTr/{name}_0000.nii.gz"),
                         (f"Train/{name}_seg.nii.gz", f"labelsTr/{name}.nii.gz")):
            a, b = sitk.ReadImage(str(synthetic_download / src)), sitk.ReadImage(str(task_dir(tmp_path) / dst))
            assert (a.GetSize(), a.GetSpacing(), a.GetOrigin(), a.GetDirection()) == \
                   (b.GetSize(), b.GetSpacing(), b.GetOrigin(), b.GetDirection())
            assert np.array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))


def test_fraction_one_is_the_plain_supervised_task(synthetic_download, tmp_path):
    assert convert(synthetic_download, tmp_path, "--labeled-fraction", "1.0") == 0
    dataset = json.loads((task_dir(tmp_path) / "dataset.json").read_text())
    assert dataset["numTraining"] == 8 and dataset["unlabeled"] == []


def test_split_is_reproducible_per_seed():
    names = [f"volume-covid19-A-{i:04d}" for i in range(20)]
    assert split_train_cases(names, 0.5, seed=3) == split_train_cases(list(reversed(names)), 0.5, seed=3)
    assert split_train_cases(names, 0.5, seed=3) != split_train_cases(names, 0.5, seed=4)
    split = split_train_cases(names, 0.3, seed=3)
    assert split.test == [] and len(split.labeled) == 6 and sorted(split.labeled + split.unlabeled) == names


NAMES = [f"volume-covid19-A-{i:04d}" for i in range(3, 203)]


@pytest.mark.parametrize("seed", [0, 1, 7])
@pytest.mark.parametrize("test_fraction", [0.1, 0.2])
def test_test_set_is_disjoint_and_does_not_depend_on_the_labelled_fraction(seed, test_fraction):
    splits = [split_train_cases(NAMES, fraction, seed, test_fraction) for fraction in (0.1, 0.25, 0.5, 1.0)]
    for split in splits:
        assert split.test == splits[0].test and len(split.test) == round(test_fraction * len(NAMES))
        assert not set(split.test) & set(split.labeled) and not set(split.test) & set(split.unlabeled)
        assert not set(split.labeled) & set(split.unlabeled)
        assert sorted(split.test + split.labeled + split.unlabeled) == NAMES
    assert split_train_cases(NAMES, 0.25, seed, test_fraction) == splits[1]  # reproducible


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_smaller_labelled_fractions_are_nested_in_larger_ones(seed):
    labeled = [set(split_train_cases(NAMES, fraction, seed, 0.2).labeled) for fraction in (0.1, 0.25, 0.5, 1.0)]
    assert [len(s) for s in labeled] == [16, 40, 80, 160]
    assert labeled[0] < labeled[1] < labeled[2] < labeled[3]


def test_test_fraction_zero_keeps_the_earlier_split():
    """Tasks converted before the test set existed keep their labelled cases (same seed, same fraction)."""
    order = np.random.RandomState(5).permutation(sorted(NAMES)).tolist()
    assert split_train_cases(NAMES, 0.5, 5, 0.0).labeled == sorted(order[:100])


def site_bias(share=0.8):
    from covidseg.data.conversion import SiteBias
    return SiteBias("A", share, {n: "A" if i % 3 == 0 else "BC"[i % 2] for i, n in enumerate(NAMES)})


@pytest.mark.parametrize("seed", [0, 1])
def test_a_site_bias_draws_labelled_cases_mostly_from_the_site_and_keeps_the_test_set(seed):
    bias = site_bias()
    plain = split_train_cases(NAMES, 0.1, seed, 0.2)
    labeled = []
    for fraction in (0.1, 0.25, 0.5):
        split = split_train_cases(NAMES, fraction, seed, 0.2, bias)
        assert split.test == plain.test  # the test set spans every site, as without the bias
        assert sorted(split.test + split.labeled + split.unlabeled) == NAMES
        assert {bias.sites[n] for n in split.unlabeled} >= {"B", "C"}
        labeled.append(set(split.labeled))
        if fraction < 0.5:
            on_site = sum(bias.sites[n] == "A" for n in split.labeled) / len(split.labeled)
            assert on_site == pytest.approx(0.8, abs=0.05)
        else:  # 80 labelled cases, site A has about 53 outside the test set: all of them are labelled
            assert all(bias.sites[n] != "A" for n in split.unlabeled)
    assert labeled[0] < labeled[1] < labeled[2]  # still nested


def test_a_site_with_too_few_cases_gives_what_it_has_then_the_others():
    split = split_train_cases(NAMES, 0.9, 0, 0.2, site_bias(share=1.0))
    assert len(split.labeled) == 144 and sum(site_bias().sites[n] == "A" for n in split.labeled) < 144
    assert all(site_bias().sites[n] != "A" for n in split.unlabeled)


def test_labeled_site_converts_with_the_site_table(tmp_path):
    from dataclasses import replace
    from covidseg.data.phantoms import write_download
    from tests.helpers import TINY
    download = tmp_path / "download"
    write_download(download, n_train=10, n_validation=1, seed=3, settings=replace(TINY, sites=2))
    assert convert(download, tmp_path / "raw", "--labeled-fraction", "0.5", "--test-fraction", "0.2",
                   "--labeled-site", "B", "--labeled-site-share", "1") == 0
    split = json.loads((task_dir(tmp_path / "raw") / "split.json").read_text())
    table = pd.read_csv(download / "sites.csv")
    sites = dict(zip(table.case, table.site))
    assert split["labeled_site"] == "B" and split["sites"] == {n: sites[n] for n in split["sites"]}
    on_site = [n for n in split["labeled"] if sites[n] == "B"]
    assert len(on_site) == min(len(split["labeled"]),
                               sum(sites[n] == "B" for n in split["labeled"] + split["unlabeled_from_train"]))


def test_a_site_table_is_recorded_in_split_json_without_a_site_bias(tmp_path):
    """The MoE's routing diagnostics (route_site_mi) read each case's site from split.json."""
    from dataclasses import replace
    from covidseg.data.phantoms import write_download
    from tests.helpers import TINY
    download = tmp_path / "download"
    write_download(download, n_train=6, n_validation=1, seed=3, settings=replace(TINY, sites=2))
    assert convert(download, tmp_path / "raw", "--labeled-fraction", "0.5") == 0
    split = json.loads((task_dir(tmp_path / "raw") / "split.json").read_text())
    table = pd.read_csv(download / "sites.csv")
    assert "labeled_site" not in split
    assert split["sites"] == {n: s for n, s in zip(table.case, table.site)}


def test_labeled_site_without_a_site_table_is_refused_by_name(synthetic_download, tmp_path, capsys):
    assert convert(synthetic_download, tmp_path, "--labeled-site", "A") == 1
    err = capsys.readouterr().err
    assert "sites.csv: site table not found" in err and "Traceback" not in err
    assert not task_dir(tmp_path).exists()


def test_held_out_test_set_is_written_with_labels_and_never_trained_on(synthetic_download, tmp_path):
    assert convert(synthetic_download, tmp_path, "--labeled-fraction", "0.5", "--test-fraction", "0.25") == 0
    task = task_dir(tmp_path)
    split = json.loads((task / "split.json").read_text())
    dataset = json.loads((task / "dataset.json").read_text())
    assert len(split["test"]) == 2 and split["test_fraction"] == 0.25
    assert dataset["numTest"] == 2 and dataset["test"] == [f"./imagesTs/{n}.nii.gz" for n in split["test"]]
    assert sorted(split["test"] + split["labeled"] + split["unlabeled_from_train"]) == train_names(synthetic_download)
    assert sorted(p.name for p in (task / "imagesTs").iterdir()) == [f"{n}_0000.nii.gz" for n in split["test"]]
    assert sorted(p.name for p in (task / "labelsTs").iterdir()) == [f"{n}.nii.gz" for n in split["test"]]
    for name in split["test"]:
        for folder in ("imagesTr", "labelsTr", "imagesUnlabeled"):
            assert not any(name in p.name for p in (task / folder).iterdir()), f"{name} in {folder}"
        assert (task / "labelsTs" / f"{name}.nii.gz").read_bytes() == \
            (synthetic_download / "Train" / f"{name}_seg.nii.gz").read_bytes()


@pytest.mark.parametrize("fraction,message", [("1.0", "must be in [0, 1)"), ("0.95", "leaves no case to train on")])
def test_a_test_fraction_that_leaves_nothing_to_train_on_is_refused(synthetic_download, tmp_path, capsys, fraction,
                                                                     message):
    assert convert(synthetic_download, tmp_path, "--test-fraction", fraction) == 1
    err = capsys.readouterr().err
    assert message in err and "TEST_FRACTION" in err
    assert not task_dir(tmp_path).exists() and not list(tmp_path.glob(".Task*"))


def test_no_unlabelled_mask_enters_the_task(synthetic_download, tmp_path):
    assert convert(synthetic_download, tmp_path, "--labeled-fraction", "0.5") == 0
    task = task_dir(tmp_path)
    unlabeled = json.loads((task / "split.json").read_text())["unlabeled_from_train"]
    mask_bytes = {(synthetic_download / "Train" / f"{n}_seg.nii.gz").read_bytes() for n in unlabeled}
    for path in task.rglob("*"):
        if path.is_file():
            assert path.read_bytes() not in mask_bytes, f"{path} is an unlabelled case's mask"
            if path.suffix == ".gz":
                assert not any(n in path.name for n in unlabeled) or path.parent.name == "imagesUnlabeled"
    assert sorted(p.name for p in (task / "labelsTr").iterdir()) == \
        sorted(f"{n}.nii.gz" for n in json.loads((task / "split.json").read_text())["labeled"])


def test_extra_unlabeled_folder_joins_the_pool(synthetic_download, tmp_path):
    extra = tmp_path / "mosmed"
    extra.mkdir()
    shutil.copy(synthetic_download / "Train" / (train_names(synthetic_download)[0] + "_ct.nii.gz"),
                extra / "study_0255.nii.gz")
    out = tmp_path / "out"
    assert convert(synthetic_download, out, "--labeled-fraction", "1.0", "--extra-unlabeled", str(extra)) == 0
    dataset = json.loads((task_dir(out) / "dataset.json").read_text())
    assert dataset["unlabeled"] == ["./imagesUnlabeled/study_0255.nii.gz"]
    assert (task_dir(out) / "imagesUnlabeled" / "study_0255_0000.nii.gz").is_file()


def test_extra_unlabeled_files_of_other_formats_are_refused_by_name(synthetic_download, tmp_path, capsys):
    extra = tmp_path / "mosmed"
    (extra / "dicom").mkdir(parents=True)
    shutil.copy(synthetic_download / "Train" / (train_names(synthetic_download)[0] + "_ct.nii.gz"),
                extra / "study_0255.nii.gz")
    (extra / "study_0256.mha").write_bytes(b"x")
    (extra / ".DS_Store").write_bytes(b"x")
    assert convert(synthetic_download, tmp_path / "out", "--extra-unlabeled", str(extra)) == 1
    err = capsys.readouterr().err
    assert "2 problem(s)" in err and "study_0256.mha: neither a NIfTI file (.nii.gz / .nii) nor DICOM" in err
    assert "dicom: an empty folder" in err
    assert not (tmp_path / "out").exists()


def test_extra_unlabeled_dicom_series_join_the_pool_with_their_origin(synthetic_download, tmp_path):
    from tests.helpers import ct_volume, write_dicom_series
    extra = tmp_path / "hospital"
    write_dicom_series(extra / "patient7" / "CT_thorax", ct_volume(), "1.2.826.0.1.3680043.8.498.55")
    out = tmp_path / "out"
    assert convert(synthetic_download, out, "--labeled-fraction", "1.0", "--extra-unlabeled", str(extra)) == 0
    image = sitk.ReadImage(str(task_dir(out) / "imagesUnlabeled" / "patient7_CT_thorax_0000.nii.gz"))
    assert image.GetSize() == (20, 24, 12) and np.allclose(image.GetSpacing(), (0.8, 0.7, 2.5))
    split = json.loads((task_dir(out) / "split.json").read_text())
    assert split["extra_unlabeled"] == {"patient7_CT_thorax": f"DICOM series 1.2.826.0.1.3680043.8.498.55 in "
                                                             f"{extra / 'patient7' / 'CT_thorax'}"}


def test_existing_task_is_kept_unless_forced(synthetic_download, tmp_path, capsys):
    assert convert(synthetic_download, tmp_path) == 0
    marker = task_dir(tmp_path) / "user_notes.txt"
    marker.write_text("mine")
    assert convert(synthetic_download, tmp_path) == 1
    assert "--force" in capsys.readouterr().err and marker.read_text() == "mine"
    assert convert(synthetic_download, tmp_path, "--force", "--labeled-fraction", "1.0") == 0
    assert not marker.exists()
    assert json.loads((task_dir(tmp_path) / "dataset.json").read_text())["numTraining"] == 8


# ------------------------------------------------------------------ bad input: one test per class

def rewrite_workbook(download: Path, sheets: dict) -> None:
    with pd.ExcelWriter(download / WORKBOOK_NAME) as writer:
        for name, frame in sheets.items():
            frame.to_excel(writer, sheet_name=name, index=False)


def workbook(download: Path) -> dict:
    return pd.read_excel(download / WORKBOOK_NAME, sheet_name=None)


def first_case(download: Path) -> str:
    return train_names(download)[0]


def break_missing_workbook(d):
    (d / WORKBOOK_NAME).unlink()
    return [WORKBOOK_NAME, "not found"]


def break_missing_sheet(d):
    rewrite_workbook(d, {TRAIN_SHEET: workbook(d)[TRAIN_SHEET]})
    return [f"sheet '{VALIDATION_SHEET}' is missing"]


def break_missing_column(d):
    sheets = workbook(d)
    sheets[TRAIN_SHEET] = sheets[TRAIN_SHEET].rename(columns={"FILENAME": "NAME"})
    rewrite_workbook(d, sheets)
    return ["no column 'FILENAME'"]


def break_missing_file(d):
    name = first_case(d)
    (d / "Train" / f"{name}_seg.nii.gz").unlink()
    return [name, "file not found"]


def break_unreadable_file(d):
    name = first_case(d)
    (d / "Train" / f"{name}_ct.nii.gz").write_bytes(b"not a nifti")
    return [name, "not gzip-compressed"]


def break_geometry(d):
    name = first_case(d)
    seg = sitk.ReadImage(str(d / "Train" / f"{name}_seg.nii.gz"))
    seg.SetOrigin([o + 7.5 for o in seg.GetOrigin()])
    sitk.WriteImage(seg, str(d / "Train" / f"{name}_seg.nii.gz"))
    return [name, "geometry differ", "origin"]


def break_mask_values(d):
    name = first_case(d)
    path = d / "Train" / f"{name}_seg.nii.gz"
    seg = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(seg)
    array[0, 0, 0] = 2
    fixed = sitk.GetImageFromArray(array)
    fixed.CopyInformation(seg)
    sitk.WriteImage(fixed, str(path))
    return [name, "outside {0, 1}", "[2]"]


def break_duplicate(d):
    sheets = workbook(d)
    sheets[VALIDATION_SHEET] = pd.concat([sheets[VALIDATION_SHEET], sheets[TRAIN_SHEET].iloc[:1]])
    rewrite_workbook(d, sheets)
    return [first_case(d), "listed more than once"]


def break_2d_image(d):
    name = first_case(d)
    for suffix in ("ct", "seg"):
        path = d / "Train" / f"{name}_{suffix}.nii.gz"
        image = sitk.ReadImage(str(path))
        sitk.WriteImage(image[:, :, 0], str(path))
    return [name, "not a 3D"]


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def break_truncated_ct(d):
    """SimpleITK reads this without an error, the missing voxels as zeros."""
    name = first_case(d)
    truncate(d / "Train" / f"{name}_ct.nii.gz")
    return [name, "incomplete or corrupt", "truncated"]


def break_truncated_mask(d):
    name = train_names(d)[1]
    truncate(d / "Train" / f"{name}_seg.nii.gz", keep=0.9)
    return [name, f"{name}_seg.nii.gz", "truncated"]


def break_nan_voxels_in_a_validation_ct(d):
    path = sorted((d / "Validation").glob("*_ct.nii.gz"))[0]
    ct = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(ct).astype(np.float32)
    array[3, 10:12, 10] = np.nan
    array[4, 0, 0] = np.inf
    broken = sitk.GetImageFromArray(array)
    broken.CopyInformation(ct)
    sitk.WriteImage(broken, str(path))
    return [path.name, "3 voxel(s) are NaN or infinite"]


@pytest.mark.parametrize("breakage", [break_missing_workbook, break_missing_sheet, break_missing_column,
                                      break_missing_file, break_unreadable_file, break_geometry,
                                      break_mask_values, break_duplicate, break_2d_image, break_truncated_ct,
                                      break_truncated_mask, break_nan_voxels_in_a_validation_ct])
def test_bad_input_is_refused_with_the_case_named_and_nothing_written(synthetic_download, tmp_path, capsys,
                                                                      breakage):
    download = editable_copy(synthetic_download, tmp_path)
    expected = breakage(download)
    out = tmp_path / "out"
    assert convert(download, out) == 1
    err = capsys.readouterr().err
    for text in expected:
        assert text in err
    assert "nothing was written" in err
    assert not out.exists() or not any(out.iterdir())


def test_every_problem_is_reported_not_only_the_first(synthetic_download, tmp_path, capsys):
    download = editable_copy(synthetic_download, tmp_path)
    names = train_names(download)
    (download / "Train" / f"{names[0]}_seg.nii.gz").unlink()
    (download / "Train" / f"{names[1]}_ct.nii.gz").write_bytes(b"garbage")
    assert convert(download, tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert names[0] in err and names[1] in err and "2 problem(s)" in err


def test_bad_labeled_fraction_is_refused_by_name(synthetic_download, tmp_path, capsys):
    assert convert(synthetic_download, tmp_path, "--labeled-fraction", "0") == 1
    err = capsys.readouterr().err
    assert err.startswith("ERROR:") and "LABELED_FRACTION" in err and "Traceback" not in err
    assert not task_dir(tmp_path).exists()


def test_the_seed_entry_point_is_the_same_command(synthetic_download, tmp_path):
    """`python scripts/COVID_19_20.py <download>` (the seed workflow's command) converts like `make convert`."""
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "COVID_19_20.py"), str(synthetic_download),
                             "--output-base", str(tmp_path), "--labeled-fraction", "0.5"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert json.loads((task_dir(tmp_path) / "dataset.json").read_text())["numTraining"] == 4
    again = subprocess.run([sys.executable, str(REPO / "scripts" / "COVID_19_20.py"), str(synthetic_download),
                            "--output-base", str(tmp_path)], capture_output=True, text=True)
    assert again.returncode == 1 and again.stderr.startswith("ERROR:") and "FORCE=1" in again.stderr
