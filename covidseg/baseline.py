"""`make baseline`: fully supervised nnU-Net, as in the seed workflow.

    nnUNet_train 3d_fullres <trainer> <task> <fold> --npz
    nnUNet_train 3d_lowres  <trainer> <task> <fold> --npz     (when the planner made a 3d_lowres stage)
    nnUNet_ensemble -f <lowres validation_raw> <fullres validation_raw> -o <ensemble folder>

then prints the validation Dice of fullres, lowres and their ensemble (and writes it as CSV).

Trained configurations are skipped and interrupted ones resumed (see nnunet_runs.train_or_resume).
"""
import argparse
from pathlib import Path
from typing import Optional, Sequence

from covidseg.runs.distributed import add_launch_arguments, launch_from_arguments
from covidseg.core.errors import WorkflowError, main_guard
from covidseg.runs.nnunet_runs import (add_training_arguments, add_validation_argument, print_and_save_dice_table,
                                      train_or_resume, validation_dice)
from covidseg.core.workspace import (add_model_arguments, configurations, ensemble_dir, ground_truth_dir, load_plans,
                                     run, task_name)


def ensemble(fullres: Path, lowres: Path, output: Path) -> None:
    output.mkdir(parents=True, exist_ok=True)
    run(["nnUNet_ensemble", "-f", str(lowres / "validation_raw"), str(fullres / "validation_raw"), "-o", str(output)])


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_arguments(parser, moe=False)
    add_training_arguments(parser, "configurations that are already trained")
    parser.add_argument("--fullres-only", action="store_true",
                        help="train 3d_fullres only (no 3d_lowres, no ensemble): what `make experiment` compares")
    add_validation_argument(parser)
    add_launch_arguments(parser)
    args = parser.parse_args(argv)
    launch = launch_from_arguments(args)

    task = task_name(args.task)
    plans = load_plans(task, args.plans)
    trained = {}
    for configuration in ["3d_fullres"] if args.fullres_only else configurations(plans):
        trained[configuration] = train_or_resume(configuration, args.task, task, args.trainer, args.plans, args.fold,
                                                 args.force, validate=not args.no_validation, launch=launch,
                                                 retrain_changed=args.retrain_changed)
    if "3d_lowres" not in trained and not args.fullres_only:
        print("NOTE: the plans have no 3d_lowres stage, so there is no lowres model and no ensemble; "
              "continuing with 3d_fullres only.")

    if args.no_validation:
        print("validation skipped (--no-validation)")
        return
    references = ground_truth_dir(task)
    results = {"fullres": validation_dice(trained["3d_fullres"] / "validation_raw", references)}
    if "3d_lowres" in trained:
        output = ensemble_dir(task, args.trainer, args.plans, args.fold)
        ensemble(trained["3d_fullres"], trained["3d_lowres"], output)
        results["lowres"] = validation_dice(trained["3d_lowres"] / "validation_raw", references)
        results["ensemble"] = validation_dice(output, references)
    if not results["fullres"]:
        raise WorkflowError(f"no validation predictions in {trained['3d_fullres'] / 'validation_raw'}")
    print_and_save_dice_table(results, trained["3d_fullres"].parent.parent / f"baseline_dice_fold_{args.fold}.csv")


if __name__ == "__main__":
    main_guard(main)
