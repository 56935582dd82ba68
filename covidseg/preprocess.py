"""`make preprocess`: nnUNet_plan_and_preprocess for the task, with a check of what it planned."""
import argparse
from typing import Optional, Sequence

from covidseg.core.errors import WorkflowError, main_guard
from covidseg.core.workspace import (configurations, load_plans, plans_file, preprocessed_dir, raw_data_dir, run,
                                     task_name)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", type=int, required=True)
    parser.add_argument("--planner3d", default="ExperimentPlanner3D_v21")
    parser.add_argument("--plans", default="nnUNetPlansv2.1", help="the plans identifier the 3D planner writes")
    parser.add_argument("--tl", type=int, default=8, help="processes for 3d_lowres preprocessing")
    parser.add_argument("--tf", type=int, default=8, help="processes for 3d_fullres preprocessing")
    parser.add_argument("--force", action="store_true", help="preprocess again over existing plans")
    args = parser.parse_args(argv)

    task = task_name(args.task)
    if plans_file(task, args.plans).exists() and not args.force:
        raise WorkflowError(f"{plans_file(task, args.plans)} exists: the task is preprocessed. "
                            f"Use FORCE=1 to preprocess again (trained models keep their own copy of the plans)")
    run(["nnUNet_plan_and_preprocess", "-t", str(args.task), "-pl3d", args.planner3d, "-pl2d", "None",
         "-tl", str(args.tl), "-tf", str(args.tf), "--verify_dataset_integrity"])
    if not plans_file(task, args.plans).exists():
        written = sorted(p.name for p in preprocessed_dir(task).glob("*_plans_3D.pkl"))
        raise WorkflowError(f"planner {args.planner3d} wrote {written}, not {plans_file(task, args.plans).name}: "
                            f"set PLANS to the identifier of that planner")
    plans = load_plans(task, args.plans)
    stages = plans["plans_per_stage"]
    for configuration, stage in zip(configurations(plans)[::-1], stages.values()):
        spacing = ", ".join("%.2f" % s for s in stage["current_spacing"])
        print(f"{configuration}: patch {[int(p) for p in stage['patch_size']]}, spacing ({spacing}) mm, "
              f"batch {stage['batch_size']}")
    if len(stages) == 1:
        print("The planner made no 3d_lowres stage (3d_fullres sees enough of each image); "
              "'make baseline' will train 3d_fullres only.")
    preprocess_unlabeled(task, args.plans, args.tf)


def preprocess_unlabeled(task: str, plans: str, processes: int) -> None:
    """The unlabelled pool, with the task's own plans, into <preprocessed>/<task>/unlabeled/ (for the MoE)."""
    from nnunet.preprocessing.unlabeled_preprocessing import (UNLABELED_SUBFOLDER, preprocess_unlabeled_pool,
                                                              unlabeled_images)
    raw_task = raw_data_dir() / task
    if not unlabeled_images(raw_task):
        print(f"no unlabelled pool in {raw_task / 'imagesUnlabeled'} (fine for the baseline; the MoE needs one)")
        return
    count = preprocess_unlabeled_pool(raw_task, preprocessed_dir(task), plans_file(task, plans), processes)
    print(f"unlabelled pool: {count} case(s) preprocessed into {preprocessed_dir(task) / UNLABELED_SUBFOLDER}")


if __name__ == "__main__":
    main_guard(main)
