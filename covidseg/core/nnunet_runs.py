"""Running nnUNet_train the way the workflow targets need it, and showing what came out.

train_or_resume: a configuration whose final checkpoint exists is not trained again (force retrains it
from scratch); one with only a latest checkpoint (an interrupted run) resumes with -c; otherwise a
fresh training starts. Always with --npz, so validation keeps the softmax for nnUNet_ensemble.
"""
import csv
from pathlib import Path
from typing import Dict, List

import numpy as np

from covidseg.core.errors import translate_errors
from covidseg.core.workspace import model_dir, run
from covidseg.evaluation.metrics import CaseFileError, dice_per_case


def has_npz_validation(folder: Path) -> bool:
    validation = folder / "validation_raw"
    niftis = list(validation.glob("*.nii.gz"))
    return bool(niftis) and all((validation / (p.name[:-7] + ".npz")).is_file() for p in niftis)


def train_or_resume(configuration: str, task_id: int, task: str, trainer: str, plans: str, fold, force: bool,
                    first_start_args: List[str] = ()) -> Path:
    """Train (or resume, or skip) one configuration; returns its fold folder. first_start_args only for a fresh start."""
    folder = model_dir(configuration, task, trainer, plans, fold)
    # --disable_next_stage_pred (patch 0005): the workflow ensembles 3d_lowres, it never trains the cascade
    command = ["nnUNet_train", configuration, trainer, str(task_id), str(fold), "-p", plans, "--npz",
               "--disable_next_stage_pred"]
    if (folder / "model_final_checkpoint.model").is_file() and not force:
        print(f"{configuration} {trainer}: already trained ({folder}); FORCE=1 retrains it")
        if not has_npz_validation(folder):
            run(command + ["-val"])
    elif (folder / "model_latest.model").is_file() and not force:
        print(f"{configuration} {trainer}: resuming the interrupted training in {folder}")
        run(command + ["-c"])
    else:
        run(command + list(first_start_args))
    return folder


def validation_dice(predictions: Path, references: Path) -> Dict[str, float]:
    """case -> Dice of every validation prediction in `predictions` against nnU-Net's reference segmentations."""
    with translate_errors(CaseFileError, context=f"cannot score the predictions in {predictions}"):
        return dice_per_case(predictions, references)


def print_and_save_dice_table(results: Dict[str, Dict[str, float]], csv_path: Path) -> None:
    """results: model -> case -> Dice. Prints the mean per model; writes per-case rows and the means as CSV."""
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
