"""The commands of the models that continue the 3d_fullres baseline on the same budget (`make control`,
`make selftrain`, `make meanteacher`): train (or resume, or skip) the method's trainer from the baseline's final
checkpoint, validate the fold, print its Dice beside the baseline's and the other models' on the same cases."""
import argparse
from typing import Optional, Sequence

from covidseg.core.distributed import Launch, add_launch_arguments, launch_from_arguments
from covidseg.core.methods import METHODS
from covidseg.core.nnunet_runs import add_validation_argument, continue_from_baseline, print_validation_table
from covidseg.core.workspace import add_model_arguments, ground_truth_dir, model_dir, task_name


def main_for(method: str, description: str, argv: Optional[Sequence[str]], distributed: bool = False) -> None:
    """distributed: the method's trainer has a DDP variant, so the command takes the launch arguments
    (covidseg.core.distributed)."""
    parser = argparse.ArgumentParser(description=description)
    add_model_arguments(parser)
    parser.add_argument("--force", action="store_true", help=f"train {method} again from the baseline")
    add_validation_argument(parser)
    if distributed:
        add_launch_arguments(parser)
    args = parser.parse_args(argv)

    trainer = args.control_trainer if method == "control" else METHODS[method].trainer
    folder = continue_from_baseline(args, trainer, launch_from_arguments(args) if distributed else Launch())
    if args.no_validation:
        return
    task = task_name(args.task)
    trainers = {"fullres": args.trainer, "control": args.control_trainer, "moe": args.moe_trainer,
                **{name: METHODS[name].trainer for name in ("selftrain", "meanteacher")}}
    models = {name: model_dir("3d_fullres", task, t, args.plans, args.fold) for name, t in trainers.items()}
    models[method] = folder
    print_validation_table(models, ground_truth_dir(task), method,
                           folder.parent / f"{method}_vs_baseline_dice_fold_{args.fold}.csv")
