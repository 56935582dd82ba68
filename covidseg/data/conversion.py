"""The COVID-19-20 challenge download -> an nnU-Net v1 raw task (the library behind `make convert`).

Input (the download):
    COVID-19-20_TrainValidation.xlsx  sheets "Train set", "Validation set", column FILENAME
    Train/<name>_ct.nii.gz, Train/<name>_seg.nii.gz, Validation/<name>_ct.nii.gz

Output: $nnUNet_raw_data_base/nnUNet_raw_data/Task<ID>_<NAME>/
    imagesTs/<name>_0000.nii.gz, labelsTs/<name>.nii.gz   the held-out test set: --test-fraction of the
                                                           train set, with labels, never trained on
    imagesTr/<name>_0000.nii.gz, labelsTr/<name>.nii.gz   the labelled fraction of the rest of the train set
    imagesUnlabeled/<name>_0000.nii.gz                     the remaining train cases and any
                                                           --extra-unlabeled scans, images only
    imagesVal/<name>_0000.nii.gz                           the validation set (no labels exist)
    dataset.json                                           nnU-Net's, plus "unlabeled" and "validation"
    split.json                                             fractions, seed and the ids of each group (and,
                                                           with a site table, each case's site)

A download may carry a site table, <download>/sites.csv (columns case, site; `make synthetic SITES=3` writes one):
then --labeled-site S draws the labelled cases mostly from site S (a share --labeled-site-share of them) while the
test set and the unlabelled pool span all sites: a hospital that labels its own scans and has unlabelled ones
from elsewhere.

Everything is checked before anything is written; every problem is reported with its case. Every CT and mask
is read in full, in parallel (covidseg.data.image_checks: complete gzip stream, every voxel read, none NaN or
infinite), because SimpleITK alone fills a truncated file with zeros without a word. The task
is built in a temporary folder and renamed into place at the end, so an interrupted run leaves no
half-made task. Images are copied byte for byte, so their geometry is exactly the download's.
"""
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional

import numpy as np
import pandas as pd
import SimpleITK as sitk
from tqdm import tqdm

from covidseg.core.challenge import (SITES_FILE, FILENAME_COLUMN, LABELS, LESION_LABEL, BACKGROUND_LABEL, TRAIN_FOLDER,
                                     TRAIN_SHEET, VALIDATION_FOLDER, VALIDATION_SHEET, WORKBOOK_NAME, case_id,
                                     ct_file, seg_file)
from covidseg.core.errors import ProblemsError, WorkflowError
from covidseg.data import mosmed
from covidseg.data.image_checks import check_image, parallel_map

GEOMETRY_TOLERANCE = 1e-4  # relative, for spacing, origin and direction


class ConversionError(ProblemsError):
    """Every problem found in the input; nothing was written."""

    def __init__(self, problems: List[str]):
        super().__init__(f"{len(problems)} problem(s) in the input, nothing was written", problems)


@dataclass
class Download:
    train: List[str]
    validation: List[str]
    extra_unlabeled: Dict[str, Path] = field(default_factory=dict)  # case id -> file
    extra_origins: Dict[str, str] = field(default_factory=dict)  # case id -> its source (a DICOM series' folder)
    root: Optional[Path] = None
    site_bias: Optional["SiteBias"] = None
    sites: Dict[str, str] = field(default_factory=dict)  # case id -> site, from the site table when there is one
    source: str = "covid19_20"                            # a key of SOURCES
    images: Dict[str, Path] = field(default_factory=dict)  # case id -> CT, where the layout does not say (MosMed)
    masks: Dict[str, Path] = field(default_factory=dict)   # case id -> mask, likewise

    def ct(self, name: str) -> Path:
        if name in self.extra_unlabeled:
            return self.extra_unlabeled[name]
        if name in self.images:
            return self.images[name]
        return ct_file(self.root, TRAIN_FOLDER if name in self.train else VALIDATION_FOLDER, name)

    def seg(self, name: str) -> Path:
        return self.masks[name] if name in self.masks else seg_file(self.root, name)


SOURCES = {"covid19_20": "COVID-19-20 lung lesion segmentation (grand-challenge.org COVID-19-20)",
           "mosmed": mosmed.DESCRIPTION}


def detect_source(root: Path, source: str = "auto") -> str:
    """The download's layout, recognised by its files (source 'auto'), or the one named."""
    if source != "auto":
        if source not in SOURCES:
            raise WorkflowError(f"unknown SOURCE '{source}'; known: auto, {', '.join(SOURCES)}")
        return source
    if (root / WORKBOOK_NAME).is_file() or (root / TRAIN_FOLDER).is_dir():  # a Train/ without workbook: named as such
        return "covid19_20"
    if mosmed.is_mosmed(root):
        return "mosmed"
    raise ConversionError([f"{root}: not a download this workspace knows; looked for {root / WORKBOOK_NAME} "
                           f"(COVID-19-20: with Train/ and Validation/) and {root / mosmed.REGISTRY} (MosMed-1110: "
                           f"with studies/ and masks/, or their flattened copies). SOURCE=covid19_20|mosmed "
                           f"(--source) names the layout"])


def read_workbook(root: Path, problems: List[str]) -> Dict[str, List[str]]:
    workbook = root / WORKBOOK_NAME
    if not workbook.is_file():
        problems.append(f"{workbook}: workbook not found (is {root} the COVID-19-20 download folder?)")
        return {}
    try:
        sheets = pd.read_excel(workbook, sheet_name=None)
    except Exception as e:  # openpyxl raises many types for broken files
        problems.append(f"{workbook}: cannot be read as an .xlsx workbook ({e})")
        return {}
    names = {}
    for sheet in (TRAIN_SHEET, VALIDATION_SHEET):
        if sheet not in sheets:
            problems.append(f"{workbook}: sheet '{sheet}' is missing (found: {', '.join(sheets)})")
            continue
        frame = sheets[sheet]
        if FILENAME_COLUMN not in frame.columns:
            problems.append(f"{workbook}: sheet '{sheet}' has no column '{FILENAME_COLUMN}' "
                            f"(found: {', '.join(map(str, frame.columns))})")
            continue
        names[sheet] = [case_id(str(f)) for f in frame[FILENAME_COLUMN].dropna()]
    return names


def find_duplicates(names: List[str]) -> List[str]:
    seen, duplicates = set(), []
    for name in names:
        if name in seen and name not in duplicates:
            duplicates.append(name)
        seen.add(name)
    return duplicates


def read_image(path: Path, case: str, problems: List[str]) -> Optional[sitk.Image]:
    """The image at `path` read in full (covidseg.data.image_checks), or None with its problems added."""
    check = check_image(path, keep_image=True)
    problems.extend(f"{case}: {path}: {problem}" for problem in check.problems)
    return check.image


def geometry_differences(a: sitk.Image, b: sitk.Image) -> List[str]:
    differences = []
    if a.GetSize() != b.GetSize():
        differences.append(f"size {a.GetSize()} vs {b.GetSize()}")
    for what in ("Spacing", "Origin", "Direction"):
        va, vb = np.array(getattr(a, "Get" + what)()), np.array(getattr(b, "Get" + what)())
        scale = max(1.0, float(np.abs(va).max()))
        if not np.allclose(va, vb, rtol=0, atol=GEOMETRY_TOLERANCE * scale):
            differences.append(f"{what.lower()} {tuple(np.round(va, 4))} vs {tuple(np.round(vb, 4))}")
    return differences


def labeled_case_problems(download: Download, name: str) -> List[str]:
    """Problems of a train case: both files complete and finite, same geometry, mask values 0/1."""
    problems: List[str] = []
    ct = read_image(download.ct(name), name, problems)
    seg = read_image(download.seg(name), name, problems)
    if ct is None or seg is None:
        return problems
    differences = geometry_differences(ct, seg)
    if differences:
        problems.append(f"{name}: CT and mask geometry differ: {'; '.join(differences)}")
    values = np.unique(sitk.GetArrayViewFromImage(seg))
    allowed = (BACKGROUND_LABEL, LESION_LABEL)
    unexpected = [v for v in values.tolist() if v not in allowed]
    if unexpected:
        problems.append(f"{name}: mask has values {unexpected[:10]} outside {{{', '.join(map(str, allowed))}}} "
                        f"({download.seg(name)})")
    return problems


def image_problems(download: Download, name: str) -> List[str]:
    """Problems of an image without a mask (validation, extra unlabelled)."""
    problems: List[str] = []
    read_image(download.ct(name), name, problems)
    return problems


def collect_extra_unlabeled(folder: Path, problems: List[str], staging: Optional[Path],
                            origins: Dict[str, str]) -> Dict[str, Path]:
    """EXTRA_UNLABELED: NIfTI files and DICOM series at any depth, checked as predict's inputs are
    (covidseg.data.ct_inputs; each DICOM CT series written as NIfTI into `staging`). `origins` gets each case's
    source (the file, or the series and its folder) for split.json."""
    from covidseg.data.ct_inputs import collect_inputs
    if not folder.is_dir():
        problems.append(f"--extra-unlabeled {folder}: not a folder")
        return {}
    try:
        return collect_inputs(folder, staging, origins)
    except ProblemsError as e:
        problems.extend(f"--extra-unlabeled {p}" for p in e.problems)
    except WorkflowError as e:
        problems.append(f"--extra-unlabeled: {e}")
    return {}


def validate(root: Path, extra_unlabeled: Optional[Path], labeled_site: Optional[str] = None,
             labeled_site_share: float = 0.8, staging: Optional[Path] = None, source: str = "auto") -> Download:
    """Check the whole input; raise ConversionError listing every problem found. staging: where EXTRA_UNLABELED's
    DICOM series are written as NIfTI (it must outlive write_task)."""
    problems: List[str] = []
    if not root.is_dir():
        raise ConversionError([f"{root}: download folder not found"])
    source = detect_source(root, source)
    origins: Dict[str, str] = {}
    extra = collect_extra_unlabeled(extra_unlabeled, problems, staging, origins) if extra_unlabeled else {}
    images, masks, categories = {}, {}, {}
    if source == "mosmed":
        studies = mosmed.read_studies(root, problems)
        train, validation, categories = sorted(studies.masked), [], studies.category
        images = {case: files[0] for case, files in studies.masked.items()}
        masks = {case: files[1] for case, files in studies.masked.items()}
        for name in find_duplicates(list(studies.unmasked) + list(extra)):
            problems.append(f"{name}: an EXTRA_UNLABELED case has the name of a study of {root}")
        extra = dict(studies.unmasked, **extra)
    else:
        sheets = read_workbook(root, problems)
        train, validation = sheets.get(TRAIN_SHEET, []), sheets.get(VALIDATION_SHEET, [])
        if sheets and not train:
            problems.append(f"{root / WORKBOOK_NAME}: sheet '{TRAIN_SHEET}' lists no case")
    for name in find_duplicates(train + validation + list(extra)):
        problems.append(f"{name}: listed more than once (train, validation and extra unlabelled names must be unique)")
    download = Download(train=list(dict.fromkeys(train)), validation=list(dict.fromkeys(validation)),
                        extra_unlabeled=extra, extra_origins=origins, root=root, source=source, images=images,
                        masks=masks)
    if categories:  # MosMed: the category is the site
        download.sites = categories
        if labeled_site is not None:
            download.site_bias = site_bias_from(categories, labeled_site, labeled_site_share, download.train,
                                                f"the categories of {root / mosmed.REGISTRY}", problems)
    elif labeled_site is not None:
        download.site_bias = read_site_bias(root, labeled_site, labeled_site_share, download.train, problems)
        download.sites = download.site_bias.sites if download.site_bias else {}
    elif (root / SITES_FILE).is_file():
        download.sites = read_site_table(root / SITES_FILE, problems) or {}
    for found in parallel_map(lambda name: labeled_case_problems(download, name), download.train,
                              desc="checking train cases", unit="case"):
        problems.extend(found)
    for found in parallel_map(lambda name: image_problems(download, name), download.validation + list(extra),
                              desc="checking images", unit="case"):
        problems.extend(found)
    if problems:
        raise ConversionError(problems)
    return download


class Split(NamedTuple):
    """The train set's cases by role, each sorted."""
    test: List[str]       # held out with their labels: imagesTs/, labelsTs/
    labeled: List[str]    # imagesTr/, labelsTr/
    unlabeled: List[str]  # imagesUnlabeled/ (their masks are never copied)


@dataclass(frozen=True)
class SiteBias:
    """Labelled cases drawn mostly from one site of the download's site table."""
    site: str
    share: float            # fraction of the labelled cases from `site` (as far as it has cases)
    sites: Dict[str, str]   # case id -> site


def read_site_table(path: Path, problems: List[str]) -> Optional[Dict[str, str]]:
    """Case id -> site from a site table (columns case, site); None, with the problem noted, when unreadable."""
    try:
        table = pd.read_csv(path, dtype=str)
    except Exception as e:
        problems.append(f"{path}: cannot be read as CSV ({e})")
        return None
    missing_columns = [c for c in ("case", "site") if c not in table.columns]
    if missing_columns:
        problems.append(f"{path}: no column {', '.join(missing_columns)} (found: {', '.join(table.columns)})")
        return None
    return {case_id(str(c)): str(s) for c, s in zip(table["case"], table["site"])}


def read_site_bias(root: Path, site: str, share: float, train: List[str], problems: List[str]) -> Optional[SiteBias]:
    path = root / SITES_FILE
    if not path.is_file():
        problems.append(f"{path}: site table not found (--labeled-site / LABELED_SITE needs one: columns case, site; "
                        f"'make synthetic SITES=3' writes it)")
        return None
    sites = read_site_table(path, problems)
    if sites is None:
        return None
    return site_bias_from(sites, site, share, train, str(path), problems)


def site_bias_from(sites: Dict[str, str], site: str, share: float, train: List[str], where: str,
                   problems: List[str]) -> SiteBias:
    unlisted = [n for n in train if n not in sites]
    if unlisted:
        problems.append(f"{where}: {len(unlisted)} train case(s) have no site, e.g. {', '.join(unlisted[:3])}")
    if site not in {sites.get(n) for n in train}:
        problems.append(f"{where}: no labelled case from site '{site}' (sites: "
                        f"{', '.join(sorted(set(sites.values())))})")
    if not 0 < share <= 1:
        problems.append(f"--labeled-site-share {share}: expected a fraction in (0, 1]")
    return SiteBias(site, share, sites)


def site_first_order(cases: List[str], bias: SiteBias) -> List[str]:
    """`cases` reordered so that every prefix holds about `share` cases from the site (rounded), in the given order
    within each group: the labelled cases of any fraction are a prefix, so smaller fractions stay nested."""
    on_site = [c for c in cases if bias.sites.get(c) == bias.site]
    elsewhere = [c for c in cases if bias.sites.get(c) != bias.site]
    order: List[str] = []
    taken = 0
    while on_site or elsewhere:
        if on_site and (taken < int(round(bias.share * (len(order) + 1))) or not elsewhere):
            order.append(on_site.pop(0))
            taken += 1
        else:
            order.append(elsewhere.pop(0))
    return order


def split_train_cases(train: List[str], labeled_fraction: float, seed: int, test_fraction: float = 0.0,
                      site_bias: Optional[SiteBias] = None) -> Split:
    """Deterministic split of the train cases into test, labelled and unlabelled cases.

    One permutation of the sorted names per seed: the test set is its first round(test_fraction * N) cases
    (at least one when test_fraction > 0), so it depends on the seed and the test fraction only; the
    labelled cases are the next round(labeled_fraction * the rest) (at least one), so with one seed a smaller
    labelled fraction is a subset of a larger one and curves over fractions compare like with like; the
    unlabelled pool is what remains. test_fraction=0 gives exactly the labelled/unlabelled split of earlier
    versions. With a site bias the rest is reordered site-first (site_first_order) before the labelled cases are
    taken; the test set does not change.
    """
    order = np.random.RandomState(seed).permutation(sorted(train)).tolist()
    n_test = max(1, int(round(test_fraction * len(order)))) if test_fraction > 0 else 0
    if n_test >= len(order):
        raise WorkflowError(f"a test fraction of {test_fraction} of {len(order)} train cases leaves no case to train "
                            f"on (TEST_FRACTION / --test-fraction)")
    rest = order[n_test:]
    if site_bias is not None:
        rest = site_first_order(rest, site_bias)
    n_labeled = max(1, int(round(labeled_fraction * len(rest))))
    return Split(sorted(order[:n_test]), sorted(rest[:n_labeled]), sorted(rest[n_labeled:]))


def dataset_json(task_name: str, split: Split, unlabeled: List[str], validation: List[str],
                 source: str = "covid19_20") -> dict:
    """nnU-Net's dataset.json; `unlabeled`: the split's unlabelled cases and any extra unlabelled scans."""
    return {
        "name": task_name,
        "description": SOURCES[source],
        "reference": "https://covid-segmentation.grand-challenge.org",
        "licence": "see the challenge's data terms",
        "release": "1.0",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": LABELS,
        "numTraining": len(split.labeled),
        "numTest": len(split.test),
        "training": [{"image": f"./imagesTr/{n}.nii.gz", "label": f"./labelsTr/{n}.nii.gz"} for n in split.labeled],
        "test": [f"./imagesTs/{n}.nii.gz" for n in split.test],
        "numUnlabeled": len(unlabeled),
        "unlabeled": [f"./imagesUnlabeled/{n}.nii.gz" for n in unlabeled],
        "numValidation": len(validation),
        "validation": [f"./imagesVal/{n}.nii.gz" for n in validation],
    }


def site_record(download: Download) -> dict:
    """split.json's record of each case's site (when the download has a site table: the MoE's routing diagnostics
    and the per-site results read it) and of the site bias (when one is used)."""
    bias = download.site_bias
    cases = download.train + download.validation + sorted(download.extra_unlabeled)
    sites = {n: download.sites[n] for n in cases if n in download.sites}
    record = {"sites": sites} if sites else {}
    if bias is not None:
        record.update({"labeled_site": bias.site, "labeled_site_share": bias.share})
    return record


def write_task(download: Download, task_dir: Path, labeled_fraction: float, seed: int, force: bool,
               test_fraction: float = 0.0) -> None:
    split = split_train_cases(download.train, labeled_fraction, seed, test_fraction, download.site_bias)
    labeled, held_back = split.labeled, split.unlabeled
    extra = sorted(download.extra_unlabeled)
    task_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{task_dir.name}.", dir=task_dir.parent))
    try:
        copies = [(download.ct(n), tmp / "imagesTr" / f"{n}_0000.nii.gz") for n in labeled]
        copies += [(download.seg(n), tmp / "labelsTr" / f"{n}.nii.gz") for n in labeled]
        copies += [(download.ct(n), tmp / "imagesUnlabeled" / f"{n}_0000.nii.gz") for n in held_back + extra]
        copies += [(download.ct(n), tmp / "imagesVal" / f"{n}_0000.nii.gz") for n in download.validation]
        copies += [(download.ct(n), tmp / "imagesTs" / f"{n}_0000.nii.gz") for n in split.test]
        copies += [(download.seg(n), tmp / "labelsTs" / f"{n}.nii.gz") for n in split.test]
        for sub in ("imagesTr", "labelsTr", "imagesUnlabeled", "imagesVal") + (("imagesTs", "labelsTs") if split.test
                                                                                else ()):
            (tmp / sub).mkdir()
        for src, dst in tqdm(copies, desc=f"writing {task_dir.name}", unit="file", disable=None):
            dst_tmp = dst.with_name(dst.name + ".part")
            shutil.copyfile(src, dst_tmp)
            os.replace(dst_tmp, dst)
        (tmp / "dataset.json").write_text(json.dumps(
            dataset_json(task_dir.name, split, held_back + extra, download.validation, download.source), indent=2))
        record = site_record(download)
        if record.get("sites"):  # the sites (MosMed: the categories) as a table too
            pd.DataFrame({"case": list(record["sites"]), "site": list(record["sites"].values())}).to_csv(
                tmp / SITES_FILE, index=False)
        (tmp / "split.json").write_text(json.dumps({
            "source": download.source, "labeled_fraction": labeled_fraction, "test_fraction": test_fraction,
            "seed": seed,
            "test": split.test, "labeled": labeled, "unlabeled_from_train": held_back,
            "extra_unlabeled": {n: download.extra_origins.get(n, str(download.extra_unlabeled[n])) for n in extra},
            "validation": download.validation, **record}, indent=2))
        os.chmod(tmp, 0o755)
        if task_dir.exists():
            if not force:
                raise WorkflowError(f"{task_dir} appeared while converting; use FORCE=1 (--force) to replace it")
            old = task_dir.with_name(f".{task_dir.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(task_dir, old)
            os.replace(tmp, task_dir)
            shutil.rmtree(old)
        else:
            os.replace(tmp, task_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{task_dir}: {len(labeled)} labelled, {len(held_back)} held-back unlabelled, "
          f"{len(extra)} extra unlabelled, {len(split.test)} test, {len(download.validation)} validation cases")
    if len(labeled) < 5:
        print(f"WARNING: only {len(labeled)} labelled cases: nnU-Net's 5-fold cross-validation needs at least 5")

