"""`make evaluate`: segment the held-out test set (imagesTs/, `make convert TEST_FRACTION=...`) with every
trained model, into the model folders:

    <model fold folder>/test_predictions/<case>.nii.gz     lowres, fullres, control, moe (nnUNet_predict)
    <ensemble folder>/test_predictions/<case>.nii.gz        lowres + fullres softmax averaged (nnUNet_ensemble)

`--extra-model NAME=TRAINER` adds another 3d_fullres model of the task (e.g. `selftrain=nnUNetTrainerV2_selftrain`;
`make experiment` passes its methods this way). A model that is not trained is skipped; a case already segmented
is not segmented again, so an interrupted run
resumes. Prints each model's mean test Dice; `make report` gives the full test-set comparison.
"""
import argparse
from pathlib import Path
from typing import Dict, Optional, Sequence

from covidseg.core.errors import WorkflowError, main_guard
from covidseg.core.nnunet_runs import nnunet_predict, print_and_save_dice_table, validation_dice
from covidseg.core.workspace import (ENSEMBLE, add_model_arguments, model_dir, model_folders, run, task_name,
                                     test_images_dir, test_labels_dir, test_predictions_dir)

# name -> (configuration, which trainer argument); the ensemble is made from lowres and fullres
PREDICTED = {"lowres": ("3d_lowres", "trainer"), "fullres": ("3d_fullres", "trainer"),
             "control": ("3d_fullres", "control_trainer"), "moe": ("3d_fullres", "moe_trainer")}


def test_cases(task: str) -> Sequence[str]:
    images = test_images_dir(task)
    cases = sorted(p.name[: -len("_0000.nii.gz")] for p in images.glob("*_0000.nii.gz"))
    if not cases:
        raise WorkflowError(f"{task} has no held-out test set ({images} holds no CT): convert with a test fraction, "
                            f"e.g. 'make convert DATA=<download> TEST_FRACTION=0.2 FORCE=1'")
    return cases


def extra_models(entries: Sequence[str]) -> Dict[str, str]:
    """'NAME=TRAINER' entries -> {NAME: TRAINER}; a name of the standard models or a malformed entry is an error."""
    models = {}
    for entry in entries:
        name, _, trainer = entry.partition("=")
        if not name or not trainer or name in PREDICTED or name == ENSEMBLE:
            raise WorkflowError(f"--extra-model {entry!r}: expected NAME=TRAINER with a NAME other than "
                                f"{', '.join(list(PREDICTED) + [ENSEMBLE])}")
        models[name] = trainer
    return models


def missing_cases(folder: Path, cases: Sequence[str]) -> Sequence[str]:
    return [c for c in cases if not (folder / f"{c}.nii.gz").is_file()]


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_arguments(parser)
    parser.add_argument("--disable-tta", action="store_true", help="no mirroring at test time (8x faster in 3D)")
    parser.add_argument("--extra-model", action="append", default=[], metavar="NAME=TRAINER",
                        help="another 3d_fullres model to segment the test set with (repeatable)")
    args = parser.parse_args(argv)
    extra = extra_models(args.extra_model)

    task = task_name(args.task)
    cases = test_cases(task)
    folders = model_folders(task, args.plans, args.fold, args.trainer, args.control_trainer, args.moe_trainer)
    folders.update({name: model_dir("3d_fullres", task, trainer, args.plans, args.fold)
                    for name, trainer in extra.items()})
    trained = {name: folders[name] for name in list(PREDICTED) + list(extra)
               if (folders[name] / "model_final_checkpoint.model").is_file()}
    if not trained:
        raise WorkflowError(f"no trained model of {task} fold {args.fold}: run 'make baseline' first")
    ensemble = "lowres" in trained and "fullres" in trained
    for name, folder in trained.items():
        output = test_predictions_dir(folder)
        todo = missing_cases(output, cases)
        print(f"{name}: {len(cases) - len(todo)} of {len(cases)} test case(s) segmented already", flush=True)
        if todo:
            configuration, trainer_argument = PREDICTED.get(name, ("3d_fullres", None))
            trainer = extra[name] if name in extra else getattr(args, trainer_argument)
            nnunet_predict(test_images_dir(task), output, args.task, configuration, trainer,
                           args.plans, args.fold, npz=ensemble and name in ("lowres", "fullres"),
                           tta=not args.disable_tta)
    if ensemble:
        output = test_predictions_dir(folders[ENSEMBLE])
        if missing_cases(output, cases):
            output.mkdir(parents=True, exist_ok=True)
            run(["nnUNet_ensemble", "-f", str(test_predictions_dir(trained["lowres"])),
                 str(test_predictions_dir(trained["fullres"])), "-o", str(output)])
        trained[ENSEMBLE] = folders[ENSEMBLE]

    results: Dict[str, Dict[str, float]] = {}
    for name in folders:  # report order
        if name in trained:
            if missing_cases(test_predictions_dir(trained[name]), cases):
                raise WorkflowError(f"{name}: nnU-Net left test cases unsegmented in "
                                    f"{test_predictions_dir(trained[name])}")
            results[name] = validation_dice(test_predictions_dir(trained[name]), test_labels_dir(task))
    print_and_save_dice_table(results, folders["fullres"].parent.parent / f"test_dice_fold_{args.fold}.csv",
                              title="Test-set Dice (lesion; all test cases, see make report for CIs)")


if __name__ == "__main__":
    main_guard(main)
