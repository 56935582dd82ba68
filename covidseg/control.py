"""`make control`: the MoE's same-budget control, nnU-Net's own network fine-tuned on the labelled cases only.

    nnUNet_train 3d_fullres nnUNetTrainerV2_finetune <task> <fold> --npz -pretrained_weights <baseline checkpoint>

It continues the 3d_fullres baseline (`make baseline`) from its final checkpoint for EPOCHS x ITERS with the
initial learning rate FINETUNE_LR, exactly the MoE's budget and schedule when both are run with the same
settings (`make semi`), but without experts and without unlabelled scans. Prints the validation Dice of the
baseline, the control and (when trained) the MoE on the same cases.
"""
import argparse
from typing import Optional, Sequence

from covidseg.core.errors import main_guard
from covidseg.core.nnunet_runs import add_validation_argument, print_validation_table, train_or_resume
from covidseg.core.workspace import add_model_arguments, ground_truth_dir, load_plans, model_dir, task_name, \
    trained_model_dir


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_arguments(parser)
    parser.add_argument("--force", action="store_true", help="train the control again from the baseline")
    add_validation_argument(parser)
    args = parser.parse_args(argv)

    task = task_name(args.task)
    load_plans(task, args.plans)  # names 'make preprocess' when missing
    baseline = trained_model_dir("3d_fullres", task, args.trainer, args.plans, args.fold, "make baseline")
    control = train_or_resume("3d_fullres", args.task, task, args.control_trainer, args.plans, args.fold, args.force,
                              first_start_args=["-pretrained_weights", str(baseline / "model_final_checkpoint.model")],
                              validate=not args.no_validation)
    if args.no_validation:
        return
    models = {"fullres": baseline, "control": control,
              "moe": model_dir("3d_fullres", task, args.moe_trainer, args.plans, args.fold)}
    print_validation_table(models, ground_truth_dir(task), "control",
                           control.parent / f"control_vs_baseline_dice_fold_{args.fold}.csv")


if __name__ == "__main__":
    main_guard(main)
