"""`make semi`: train nnUNetTrainerV2_moe from the baseline's weights, validate, compare with the baseline.

    nnUNet_train 3d_fullres nnUNetTrainerV2_moe <task> <fold> --npz -pretrained_weights <moe_init_fold_F.model>

The initialisation comes from `make weights`; the unlabelled pool from `make preprocess`. Prints the
validation Dice of the baseline 3d_fullres model, its same-budget control (when `make control` trained it)
and the MoE on the same cases.
"""
import argparse
from typing import Optional, Sequence

from covidseg.runs.distributed import add_launch_arguments, launch_from_arguments
from covidseg.core.errors import WorkflowError, main_guard
from covidseg.runs.nnunet_runs import (add_training_arguments, add_validation_argument, print_validation_table,
                                      train_or_resume)
from covidseg.core.workspace import add_model_arguments, ground_truth_dir, load_plans, moe_init_file, task_name
from covidseg.runs.methods import model_folders


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_arguments(parser)
    add_training_arguments(parser, "the MoE from its initialisation")
    add_validation_argument(parser)
    add_launch_arguments(parser)
    args = parser.parse_args(argv)

    task = task_name(args.task)
    load_plans(task, args.plans)  # names 'make preprocess' when missing
    init = moe_init_file(task, args.moe_trainer, args.plans, args.fold)
    if not init.is_file():
        raise WorkflowError(f"no MoE initialisation {init}: run 'make weights' first")
    moe = train_or_resume("3d_fullres", args.task, task, args.moe_trainer, args.plans, args.fold, args.force,
                          first_start_args=["-pretrained_weights", str(init)], validate=not args.no_validation,
                          launch=launch_from_arguments(args), initialised_from=init,
                          retrain_changed=args.retrain_changed)
    if args.no_validation:
        return

    models = {name: model_folders(task, args.plans, args.fold, args)[name] for name in ("fullres", "control")}
    models["moe"] = moe
    print_validation_table(models, ground_truth_dir(task), "moe",
                           moe.parent / f"moe_vs_baseline_dice_fold_{args.fold}.csv")


if __name__ == "__main__":
    main_guard(main)
