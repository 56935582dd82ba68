"""Where nnU-Net v1 keeps a task's files, and running nnU-Net's commands from the workflow.

The folders follow nnU-Net's own environment variables (nnUNet_raw_data_base, nnUNet_preprocessed,
RESULTS_FOLDER), so everything made here is also found by the plain nnU-Net commands.
"""
import argparse
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

from covidseg.core.errors import WorkflowError, translate_errors


def file_sha256(path: Path) -> str:
    """sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def env_folder(variable: str) -> Path:
    value = os.environ.get(variable)
    if not value:
        raise WorkflowError(f"the environment variable {variable} is not set (the Makefile sets it; "
                            "see docs/getting-started.md, section Folders)")
    return Path(value)


def raw_data_dir() -> Path:
    return env_folder("nnUNet_raw_data_base") / "nnUNet_raw_data"


def find_task_name(task_id: int) -> Optional[str]:
    """The 'TaskXXX_Name' folder of a task id, looked up like nnU-Net does (raw, preprocessed, results)."""
    prefix = "Task%03d_" % task_id
    roots = [raw_data_dir(), env_folder("nnUNet_preprocessed"), env_folder("RESULTS_FOLDER") / "nnUNet" / "3d_fullres"]
    names = sorted({p.name for root in roots if root.is_dir() for p in root.iterdir()
                    if p.is_dir() and p.name.startswith(prefix)})
    if len(names) > 1:
        raise WorkflowError(f"task id {task_id} is ambiguous: {', '.join(names)}")
    return names[0] if names else None


def task_name(task_id: int) -> str:
    name = find_task_name(task_id)
    if name is None:
        raise WorkflowError(f"no task {task_id} in {raw_data_dir()}: run 'make convert DATA=<download>' first")
    return name


def preprocessed_dir(task: str) -> Path:
    return env_folder("nnUNet_preprocessed") / task


def plans_file(task: str, plans: str) -> Path:
    return preprocessed_dir(task) / f"{plans}_plans_3D.pkl"


def load_plans(task: str, plans: str) -> dict:
    path = plans_file(task, plans)
    if not path.is_file():
        raise WorkflowError(f"{path} not found: run 'make preprocess' first (with the planner of PLANS={plans})")
    from nnunet.utilities.safe_loading import UnsafeFileError, load_pickle_safely
    with translate_errors(UnsafeFileError, context="the plans were not used"):
        return load_pickle_safely(str(path))


def configurations(plans: dict) -> List[str]:
    """3D configurations the plans provide: 3d_fullres always, 3d_lowres when there are two stages."""
    return ["3d_fullres", "3d_lowres"] if len(plans["plans_per_stage"]) > 1 else ["3d_fullres"]


def fold_folder(fold) -> str:
    """nnU-Net's name of a fold's folder: fold_<F>, or all for the fold that trains on every case."""
    return "all" if str(fold) == "all" else f"fold_{fold}"


def model_dir(configuration: str, task: str, trainer: str, plans: str, fold) -> Path:
    return env_folder("RESULTS_FOLDER") / "nnUNet" / configuration / task / f"{trainer}__{plans}" / fold_folder(fold)


def trained_model_dir(configuration: str, task: str, trainer: str, plans: str, fold, make_target: str) -> Path:
    """A model's fold folder; a WorkflowError naming the make target to run if it holds no final checkpoint."""
    folder = model_dir(configuration, task, trainer, plans, fold)
    if not (folder / "model_final_checkpoint.model").is_file():
        raise WorkflowError(f"no trained {configuration} {trainer} model for fold {fold} in {folder}: "
                            f"run '{make_target}' first")
    return folder


def moe_init_file(task: str, moe_trainer: str, plans: str, fold) -> Path:
    """Where `make weights` writes the MoE's initialisation and `make semi` reads it."""
    return model_dir("3d_fullres", task, moe_trainer, plans, fold).parent / f"moe_init_fold_{fold}.model"


def ensemble_dir(task: str, trainer: str, plans: str, fold) -> Path:
    return (env_folder("RESULTS_FOLDER") / "nnUNet" / "ensembles" / task /
            f"ensemble_3d_fullres_3d_lowres__{trainer}__{plans}" / f"fold_{fold}")


ENSEMBLE = "ensemble"
TEST_PREDICTIONS = "test_predictions"


def validation_predictions_dir(name: str, folder: Path) -> Path:
    return folder if name == ENSEMBLE else folder / "validation_raw"


def test_predictions_dir(folder: Path) -> Path:
    """Where `make evaluate` writes a model's segmentations of the held-out test set."""
    return folder / TEST_PREDICTIONS


def external_predictions_dir(folder: Path, name: str) -> Path:
    """Where `make evaluate EXTERNAL=...` writes a model's segmentations of the external test set `name`."""
    return folder / "external_predictions" / name


def test_images_dir(task: str) -> Path:
    return raw_data_dir() / task / "imagesTs"


def test_labels_dir(task: str) -> Path:
    return raw_data_dir() / task / "labelsTs"


def ground_truth_dir(task: str) -> Path:
    """nnU-Net copies the training labels here during preprocessing."""
    return preprocessed_dir(task) / "gt_segmentations"


def executable(name: str) -> str:
    """A console script (nnUNet_train, ...) from PATH, or else from beside this Python (an unactivated venv)."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        raise WorkflowError(f"'{name}' not found: run 'make setup' (it installs nnU-Net's commands)")
    return found


def add_model_arguments(parser: argparse.ArgumentParser, moe: bool = True) -> None:
    """The arguments that name a task's models: --task, --fold, --plans, --trainer (and --moe-trainer,
    --control-trainer)."""
    parser.add_argument("--task", type=int, required=True, help="task id, e.g. 200")
    parser.add_argument("--fold", default="4")
    parser.add_argument("--plans", default="nnUNetPlansv2.1", help="plans identifier")
    parser.add_argument("--trainer", default="nnUNetTrainerV2", help="the baseline's trainer")
    if moe:
        parser.add_argument("--moe-trainer", default="nnUNetTrainerV2_moe")
        parser.add_argument("--control-trainer", default="nnUNetTrainerV2_finetune",
                            help="the MoE's same-budget control (make control)")


def run(command: List[str], env: Optional[Dict[str, str]] = None) -> None:
    """Run a command (a console script or a path); env: variables to set on top of this process's."""
    print("$ " + " ".join(command), flush=True)
    result = subprocess.run([executable(command[0])] + command[1:], env=dict(os.environ, **env) if env else None)
    if result.returncode != 0:
        raise WorkflowError(f"'{' '.join(command)}' failed with exit status {result.returncode}")


def run_in_parallel(commands: List[List[str]], envs: List[Dict[str, str]]) -> None:
    """Run the commands at the same time (each with its extra variables); all must succeed."""
    processes = []
    for command, env in zip(commands, envs):
        print("$ " + " ".join(f"{k}={v}" for k, v in env.items()) + " " + " ".join(command), flush=True)
        processes.append(subprocess.Popen([executable(command[0])] + command[1:], env=dict(os.environ, **env)))
    failed = [(command, env, p.wait()) for command, env, p in zip(commands, envs, processes)]
    failed = [(command, env, code) for command, env, code in failed if code != 0]
    if failed:
        raise WorkflowError("; ".join(f"'{' '.join(command)}' ({', '.join(f'{k}={v}' for k, v in env.items())}) "
                                      f"failed with exit status {code}" for command, env, code in failed))

