"""Running nnUNet_train the way the workflow targets need it, and showing what came out.

train_or_resume: a configuration whose final checkpoint exists is not trained again (force retrains it
from scratch); one with only a latest checkpoint (an interrupted run) resumes with -c; otherwise a
fresh training starts. Always with --npz, so validation keeps the softmax for nnUNet_ensemble.
"""
import csv
import io
import shutil
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from nnunet.utilities.atomic_files import replace_atomically

from covidseg.runs.distributed import Launch
from covidseg.runs.model_files import check_trained_fold
from covidseg.core.errors import WorkflowError, translate_errors
from covidseg.runs.provenance import SETTINGS_FILE, read_record, refuse_changed, requested_record, setting_changes
from covidseg.core.workspace import load_plans, model_dir, run, run_in_parallel, task_name, trained_model_dir
from covidseg.evaluation.metrics import CaseFileError, dice_per_case


def has_npz_validation(folder: Path) -> bool:
    validation = folder / "validation_raw"
    niftis = list(validation.glob("*.nii.gz"))
    return bool(niftis) and all((validation / (p.name[:-7] + ".npz")).is_file() for p in niftis)


def refuse_or_retrain_changed(configuration: str, task: str, trainer: str, plans: str, fold, folder: Path,
                              initialised_from: Optional[Path], retrain_changed: bool) -> bool:
    """Whether a model that exists in `folder` (finished or interrupted) must be trained again because it was trained
    with other settings than those asked for now (covidseg.runs.provenance): refused with the list of differences,
    unless `retrain_changed`. A model without settings.json (trained before they were recorded) is used as it is,
    with a note."""
    recorded = read_record(folder)
    if recorded is None:
        print(f"NOTE: {configuration} {trainer} in {folder} has no {SETTINGS_FILE} (trained before settings were "
              f"recorded), so its settings cannot be checked; FORCE=1 retrains it")
        return False
    changes = setting_changes(recorded, requested_record(configuration, task, trainer, plans, fold, initialised_from))
    if not changes:
        return False
    if not retrain_changed:
        refuse_changed(folder, f"{configuration} {trainer}", changes)
    print(f"{configuration} {trainer}: trained with other settings, training it again:\n"
          + "\n".join(f"  - {c}" for c in changes), flush=True)
    return True


def remove_model(folder: Path) -> None:
    """A model trained again starts from an empty fold folder: no earlier checkpoint can pass for the new one's if
    the new training is interrupted, and no earlier pseudo-label, teacher or prediction is reused."""
    if folder.is_dir():
        print(f"removing the earlier model in {folder}", flush=True)
        shutil.rmtree(folder)


def remove_unfinished_writes(folder: Path) -> None:
    """The *.tmp files a killed run left in its fold folder: atomic writes (patch 0007) that never got renamed, so
    never a checkpoint; the resumed run would leave them beside its own."""
    for stale in folder.glob("*.tmp"):
        stale.unlink()


def train_or_resume(configuration: str, task_id: int, task: str, trainer: str, plans: str, fold, force: bool,
                    first_start_args: List[str] = (), validate: bool = True, launch: Launch = Launch(),
                    initialised_from: Optional[Path] = None, retrain_changed: bool = False) -> Path:
    """Train (or resume, or skip) one configuration; returns its fold folder. first_start_args only for a fresh start.
    validate=False: no inference on the fold's validation cases after training (patch 0006), for fold `all`.
    launch: how many processes (covidseg.runs.distributed; the model folder is the same for any number).
    initialised_from: the -pretrained_weights file of a fresh start (compared with the model's record).
    A model trained with other settings is refused, or trained again with retrain_changed (or force)."""
    folder = model_dir(configuration, task, trainer, plans, fold)
    # --disable_next_stage_pred (patch 0005): the workflow ensembles 3d_lowres, it never trains the cascade
    command = launch.command([configuration, trainer, str(task_id), str(fold), "-p", plans, "--npz",
                              "--disable_next_stage_pred"] + ([] if validate else ["--disable_validation_inference"]))
    finished = (folder / "model_final_checkpoint.model").is_file()
    started = finished or (folder / "model_latest.model").is_file()
    if started and not force:
        force = refuse_or_retrain_changed(configuration, task, trainer, plans, fold, folder, initialised_from,
                                          retrain_changed)
    if force and launch.node_rank == 0:
        remove_model(folder)
    if finished and not force:
        print(f"{configuration} {trainer}: already trained ({folder}); FORCE=1 retrains it")
        if validate and not has_npz_validation(folder):
            run(command + ["-val"])
    elif started and not force:
        print(f"{configuration} {trainer}: resuming the interrupted training in {folder}")
        if launch.node_rank == 0:
            remove_unfinished_writes(folder)
        run(command + ["-c"])
    else:
        run(command + list(first_start_args))
    return folder


def continue_from_baseline(args, trainer: str, launch: Launch = Launch()) -> Path:
    """Train (or resume, or skip) a 3d_fullres `trainer` that starts from the baseline's final checkpoint
    (-pretrained_weights), as the control, the self-training and the mean teacher do; returns its fold folder.
    `args`: the model arguments (covidseg.core.workspace.add_model_arguments), --force, --retrain-changed and
    --no-validation."""
    task = task_name(args.task)
    load_plans(task, args.plans)  # names 'make preprocess' when missing
    baseline = trained_model_dir("3d_fullres", task, args.trainer, args.plans, args.fold, "make baseline")
    check_trained_fold(baseline, f"the baseline in {baseline}")
    checkpoint = baseline / "model_final_checkpoint.model"
    return train_or_resume("3d_fullres", args.task, task, trainer, args.plans, args.fold, args.force,
                           first_start_args=["-pretrained_weights", str(checkpoint)],
                           validate=not args.no_validation, launch=launch, initialised_from=checkpoint,
                           retrain_changed=args.retrain_changed)


def nnunet_predict(images: Path, output: Path, task_id: int, configuration: str, trainer: str, plans: str, fold,
                   npz: bool, tta: bool, gpus: Sequence[str] = ()) -> None:
    """nnUNet_predict of every <case>_0000.nii.gz in `images` with a model's final checkpoint; cases whose
    segmentation is already in `output` are skipped (nnU-Net's own rule), so an interrupted run resumes.
    gpus: with several, the cases are split into one part per GPU (nnU-Net's --part_id / --num_parts), each
    predicted by its own process that sees only its GPU (CUDA_VISIBLE_DEVICES). The model's files are loaded
    safely first (check_trained_fold): a tampered one is refused by name before nnUNet_predict starts."""
    check_trained_fold(model_dir(configuration, task_name(task_id), trainer, plans, fold),
                       f"{configuration} {trainer} fold {fold}")
    command = ["nnUNet_predict", "-i", str(images), "-o", str(output), "-t", str(task_id), "-m", configuration,
               "-tr", trainer, "-p", plans, "-f", str(fold), "-chk", "model_final_checkpoint"]
    command += (["--save_npz"] if npz else []) + ([] if tta else ["--disable_tta"])
    if len(gpus) <= 1:
        run(command, env={"CUDA_VISIBLE_DEVICES": gpus[0]} if gpus else None)
    else:
        run_in_parallel([command + ["--part_id", str(i), "--num_parts", str(len(gpus))] for i in range(len(gpus))],
                        [{"CUDA_VISIBLE_DEVICES": gpu} for gpu in gpus])


def validation_dice(predictions: Path, references: Path) -> Dict[str, float]:
    """case -> Dice of every prediction in `predictions` against the same-named reference segmentation."""
    with translate_errors(CaseFileError, context=f"cannot score the predictions in {predictions}"):
        return dice_per_case(predictions, references)


def add_training_arguments(parser, what: str) -> None:
    """--force and --retrain-changed of the training commands; `what`: what --force trains again."""
    parser.add_argument("--force", action="store_true", help=f"train {what} again, from the start")
    parser.add_argument("--retrain-changed", action="store_true",
                        help="train again a model trained with other settings than those asked for now (without it: "
                             "refused, with the list of differences)")


def add_validation_argument(parser) -> None:
    parser.add_argument("--no-validation", action="store_true",
                        help="no inference on the fold's validation cases after training (for fold 'all', where they "
                             "are the training cases; make experiment evaluates on the held-out test set instead)")


def print_validation_table(models: Dict[str, Path], references: Path, required: str, csv_path: Path) -> None:
    """Validation Dice of the models (name -> fold folder) that have validation predictions, on the same cases;
    the `required` one must have them."""
    results = {name: validation_dice(folder / "validation_raw", references) for name, folder in models.items()
               if any((folder / "validation_raw").glob("*.nii.gz"))}
    if not results.get(required):
        raise WorkflowError(f"no validation predictions in {models[required] / 'validation_raw'}")
    print_and_save_dice_table(results, csv_path)


def print_and_save_dice_table(results: Dict[str, Dict[str, float]], csv_path: Path,
                              title: str = "Validation Dice (lesion)") -> None:
    """results: model -> case -> Dice. Prints the mean per model; writes per-case rows and the means as CSV."""
    cases = sorted(next(iter(results.values())))
    print(f"\n{title}, {len(cases)} case(s):")
    print(f"  {'model':<10} {'mean Dice':>9}")
    for model, scores in results.items():
        print(f"  {model:<10} {np.mean(list(scores.values())):>9.4f}")
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    table = io.StringIO(newline="")
    writer = csv.writer(table)
    writer.writerow(["case"] + list(results))
    for case in cases:
        writer.writerow([case] + ["%.6f" % results[m][case] for m in results])
    writer.writerow(["mean"] + ["%.6f" % np.mean(list(results[m].values())) for m in results])
    # in one step: jobs of one run may write it at once (SLURM)
    replace_atomically(str(csv_path), lambda f: f.write(table.getvalue().encode()))
    print(f"per-case table: {csv_path}")
