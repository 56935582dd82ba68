"""`make baseline`: fully supervised nnU-Net, as in the seed workflow.

    nnUNet_train 3d_fullres <trainer> <task> <fold> --npz
    nnUNet_train 3d_lowres  <trainer> <task> <fold> --npz     (when the planner made a 3d_lowres stage)
    nnUNet_ensemble -f <lowres validation_raw> <fullres validation_raw> -o <ensemble folder>

then prints the validation Dice of fullres, lowres and their ensemble (and writes it as CSV).

A configuration whose final checkpoint exists is not trained again (FORCE=1 retrains it from scratch);
one with only a latest checkpoint (an interrupted run) resumes with -c.
"""
import argparse
import csv
from pathlib import Path
from typing import Dict

import numpy as np

from segmentation_metrics import dice_per_case
from workspace import (WorkflowError, configurations, ensemble_dir, ground_truth_dir, load_plans, main_guard,
                       model_dir, run, task_name)


def has_npz_validation(folder: Path) -> bool:
    validation = folder / "validation_raw"
    niftis = list(validation.glob("*.nii.gz"))
    return bool(niftis) and all((validation / (p.name[:-7] + ".npz")).is_file() for p in niftis)


def train(configuration: str, task_id: int, task: str, trainer: str, plans: str, fold, force: bool) -> Path:
    folder = model_dir(configuration, task, trainer, plans, fold)
    command = ["nnUNet_train", configuration, trainer, str(task_id), str(fold), "-p", plans, "--npz"]
    if (folder / "model_final_checkpoint.model").is_file() and not force:
        print(f"{configuration}: already trained ({folder}); FORCE=1 retrains it")
        if not has_npz_validation(folder):
            run(command + ["-val"])
    elif (folder / "model_latest.model").is_file() and not force:
        print(f"{configuration}: resuming the interrupted training in {folder}")
        run(command + ["-c"])
    else:
        run(command)
    return folder


def ensemble(fullres: Path, lowres: Path, output: Path) -> None:
    output.mkdir(parents=True, exist_ok=True)
    run(["nnUNet_ensemble", "-f", str(lowres / "validation_raw"), str(fullres / "validation_raw"), "-o", str(output)])


def print_and_save_table(results: Dict[str, Dict[str, float]], csv_path: Path) -> None:
    cases = sorted(next(iter(results.values())))
    print(f"\nValidation Dice (lesion), {len(cases)} case(s):")
    print(f"  {'model':<10} {'mean Dice':>9}")
    for model, scores in results.items():
        print(f"  {model:<10} {np.mean(list(scores.values())):>9.4f}")
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["case"] + list(results))
        for case in cases:
            writer.writerow([case] + ["%.6f" % results[m][case] for m in results])
        writer.writerow(["mean"] + ["%.6f" % np.mean(list(results[m].values())) for m in results])
    print(f"per-case table: {csv_path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", type=int, required=True)
    parser.add_argument("--fold", default="4")
    parser.add_argument("--plans", default="nnUNetPlansv2.1")
    parser.add_argument("--trainer", default="nnUNetTrainerV2")
    parser.add_argument("--force", action="store_true", help="retrain configurations that are already trained")
    args = parser.parse_args()

    task = task_name(args.task)
    plans = load_plans(task, args.plans)
    trained = {}
    for configuration in configurations(plans):
        trained[configuration] = train(configuration, args.task, task, args.trainer, args.plans, args.fold, args.force)
    if "3d_lowres" not in trained:
        print("NOTE: the plans have no 3d_lowres stage, so there is no lowres model and no ensemble; "
              "continuing with 3d_fullres only.")

    references = ground_truth_dir(task)
    results = {"fullres": dice_per_case(trained["3d_fullres"] / "validation_raw", references)}
    if "3d_lowres" in trained:
        output = ensemble_dir(task, args.trainer, args.plans, args.fold)
        ensemble(trained["3d_fullres"], trained["3d_lowres"], output)
        results["lowres"] = dice_per_case(trained["3d_lowres"] / "validation_raw", references)
        results["ensemble"] = dice_per_case(output, references)
    if not results["fullres"]:
        raise WorkflowError(f"no validation predictions in {trained['3d_fullres'] / 'validation_raw'}")
    print_and_save_table(results, trained["3d_fullres"].parent.parent / f"baseline_dice_fold_{args.fold}.csv")


if __name__ == "__main__":
    main_guard(main)
