"""Preprocess a task's unlabelled pool with the task's own plans.

The raw task (`make convert`) keeps unlabelled CTs in `imagesUnlabeled/`. This runs each of
them through the same cropping, resampling (per plan stage) and normalisation that nnU-Net applies to
a case it predicts (GenericPreprocessor.preprocess_test_case, with the plans' normalisation scheme,
transposition and intensity statistics), and writes nnU-Net's preprocessed format beside the labelled
data:

    $nnUNet_preprocessed/<task>/unlabeled/<data_identifier>_stage<k>/<case>.npz (+ .pkl)

The segmentation channel nnU-Net's data loader expects is filled with -1 ("no label") everywhere and
no class locations are stored: nothing about a lesion of an unlabelled case exists in these files (the
conversion never copied their masks in the first place).
"""
import argparse
import os
from multiprocessing import Pool
from pathlib import Path
from typing import List

import numpy as np
from tqdm import tqdm

import nnunet
from nnunet.training.model_restore import recursive_find_python_class
from nnunet.utilities.atomic_files import replace_atomically, write_pickle_atomically
from nnunet.utilities.safe_loading import load_pickle_safely

UNLABELED_SUBFOLDER = "unlabeled"
NO_LABEL = -1


def unlabeled_stage_folder(preprocessed_task_dir: str, data_identifier: str, stage: int) -> str:
    return os.path.join(preprocessed_task_dir, UNLABELED_SUBFOLDER, f"{data_identifier}_stage{stage}")


def unlabeled_images(raw_task_dir: Path) -> List[Path]:
    return sorted((raw_task_dir / "imagesUnlabeled").glob("*_0000.nii.gz"))


def make_preprocessor(plans: dict):
    name = plans.get("preprocessor_name", "GenericPreprocessor")
    preprocessor_class = recursive_find_python_class([os.path.join(nnunet.__path__[0], "preprocessing")], name,
                                                     current_module="nnunet.preprocessing")
    return preprocessor_class(plans["normalization_schemes"], plans["use_mask_for_norm"], plans["transpose_forward"],
                              plans["dataset_properties"]["intensityproperties"])


def preprocess_case(preprocessor, classes: List[int], image: Path, output_folder: str, target_spacing) -> str:
    case = image.name[: -len("_0000.nii.gz")]
    data, _, properties = preprocessor.preprocess_test_case([str(image)], target_spacing)
    no_label = np.full((1,) + data.shape[1:], NO_LABEL, dtype=np.float32)
    properties["class_locations"] = {c: [] for c in classes}
    properties["seg_file"] = None
    # both files atomically (patch 0007), the .pkl first: the pool is the set of .npz files, and each one found
    # has its complete .pkl beside it whenever the run was killed
    write_pickle_atomically(properties, os.path.join(output_folder, f"{case}.pkl"))
    replace_atomically(os.path.join(output_folder, f"{case}.npz"),
                       lambda f: np.savez_compressed(f, data=np.vstack((data, no_label)).astype(np.float32)))
    return case


def _preprocess_job(job: tuple) -> str:
    return preprocess_case(*job)


def preprocess_unlabeled_pool(raw_task_dir: Path, preprocessed_task_dir: Path, plans_file: Path,
                              num_processes: int = 2) -> int:
    """Preprocess every image of imagesUnlabeled/ for every stage of the plans; returns the number of cases."""
    plans = load_pickle_safely(str(plans_file))
    images = unlabeled_images(raw_task_dir)
    preprocessor = make_preprocessor(plans)
    for stage, stage_plans in plans["plans_per_stage"].items():
        folder = unlabeled_stage_folder(str(preprocessed_task_dir), plans["data_identifier"], stage)
        os.makedirs(folder, exist_ok=True)
        jobs = [(preprocessor, plans["all_classes"], image, folder, stage_plans["current_spacing"]) for image in images]
        with Pool(max(1, num_processes)) as pool:
            list(tqdm(pool.imap_unordered(_preprocess_job, jobs), total=len(jobs), disable=None,
                      desc=f"unlabelled pool, stage {stage}", unit="case"))
    return len(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("raw_task_dir", type=Path)
    parser.add_argument("preprocessed_task_dir", type=Path)
    parser.add_argument("plans_file", type=Path)
    parser.add_argument("-p", "--processes", type=int, default=2)
    args = parser.parse_args()
    n = preprocess_unlabeled_pool(args.raw_task_dir, args.preprocessed_task_dir, args.plans_file, args.processes)
    print(f"preprocessed {n} unlabelled case(s) into {args.preprocessed_task_dir / UNLABELED_SUBFOLDER}")


if __name__ == "__main__":
    main()
