"""The commands of the models that continue the 3d_fullres baseline on the same budget (`make control`,
`make selftrain`, `make meanteacher`): train (or resume, or skip) the method's trainer from the baseline's final
checkpoint, validate the fold, print its Dice beside the baseline's and the other models' on the same cases."""
import argparse
from typing import Optional, Sequence

from covidseg.runs.distributed import Launch, add_launch_arguments, launch_from_arguments
from covidseg.runs.methods import METHODS
from covidseg.runs.nnunet_runs import (add_training_arguments, add_validation_argument, continue_from_baseline,
                                      print_validation_table)
from covidseg.core.workspace import (add_model_arguments, ground_truth_dir, task_name)
from covidseg.runs.methods import model_folders
def main_for(method: str, description: str, argv: Optional[Sequence[str]], distributed: bool = False) -> None:
    """distributed: the method's trainer has a DDP variant, so the command takes the launch arguments
    (covidseg.runs.distributed)."""
    parser = argparse.ArgumentParser(description=description)
    add_model_arguments(parser)
    add_training_arguments(parser, f"{method} from the baseline")
    add_validation_argument(parser)
    if distributed:
        add_launch_arguments(parser)
    args = parser.parse_args(argv)

    folder = continue_from_baseline(args, METHODS[method].trainer_for(args),
                                    launch_from_arguments(args) if distributed else Launch())
    if args.no_validation:
        return
    task = task_name(args.task)
    models = {name: f for name, f in model_folders(task, args.plans, args.fold, args).items()
              if METHODS[name].configuration == "3d_fullres" and not METHODS[name].is_ensemble}
    print_validation_table(models, ground_truth_dir(task), method,
                           folder.parent / f"{method}_vs_baseline_dice_fold_{args.fold}.csv")
