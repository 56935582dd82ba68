"""settings.json: what made a model, written into its fold folder when training starts (patch 0009).

    {"model":    task, configuration, trainer (its folder's name, also for a DDP run), plans identifier, fold,
     "plan":     the stage's network plan (patch size, batch size, spacing, pooling) and its sha256,
     "budget":   epochs, iterations per epoch, validation iterations per epoch, initial learning rate,
     "settings": the trainer's settings by name (nnunet.training.settings; {} for nnU-Net's own trainers),
     "data":     the sha256 of the task's split.json (which cases are labelled, unlabelled and held out),
     "initialised_from": the -pretrained_weights file and its sha256 (None for a run from scratch),
     "software": the workspace's git commit ("unknown" outside a checkout) and whether it had local changes,
                 torch / nnU-Net / numpy / Python versions,
     "processes": the number of training processes, "written": when}

The first six entries (COMPARED) are what a model *is*: the workspace refuses to resume or reuse a model whose
recorded entries differ from those asked for (covidseg.runs.provenance). The others are for the record only: a
code update or a new torch does not make a model another one, and a DDP run trains the same model as one process.
"""
import hashlib
import json
import os
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Optional

import numpy as np

SETTINGS_FILE = "settings.json"
COMPARED = ("model", "plan", "budget", "settings", "data", "initialised_from")


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def plain(value):
    """numpy arrays and scalars, tuples -> JSON types, so that records compare equal after a JSON round trip."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return plain(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value


def stage_plan(plans: dict, stage: int) -> dict:
    """What of the plans shapes the network and its batches: the stage's patch, batch, spacing and pooling."""
    per_stage = plans["plans_per_stage"][stage]
    keys = ("batch_size", "patch_size", "current_spacing", "pool_op_kernel_sizes", "conv_kernel_sizes")
    plan = {k: plain(per_stage[k]) for k in keys if k in per_stage}
    plan.update({"stage": int(stage), "base_num_features": plain(plans.get("base_num_features")),
                 "num_classes": plain(plans.get("num_classes"))})
    plan["sha256"] = hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()
    return plan


def split_digest(task: str) -> Optional[str]:
    """sha256 of the raw task's split.json (written by `make convert`), None when the task has none."""
    from nnunet.paths import nnUNet_raw_data
    if nnUNet_raw_data is None:
        return None
    path = Path(nnUNet_raw_data) / task / "split.json"
    return file_sha256(path) if path.is_file() else None


def workspace_commit() -> dict:
    """The git commit of the workspace nnU-Net is installed from (nnUNet/ sits in it), "unknown" outside a
    checkout; `modified`: tracked files differ from it (the nnUNet/ submodule's patched tree is not counted)."""
    import nnunet
    workspace = Path(nnunet.__file__).resolve().parents[2]

    def git(*args: str) -> Optional[str]:
        try:
            result = subprocess.run(["git", "-C", str(workspace), *args], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return result.stdout.strip() if result.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": "unknown", "modified": None}
    status = git("status", "--porcelain", "--untracked-files=no", "--ignore-submodules=all")
    return {"commit": commit, "modified": bool(status) if status is not None else None}


def package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"


def model_identity(trainer) -> dict:
    """task, configuration, trainer and plans from the fold folder's path:
    <RESULTS_FOLDER>/nnUNet/<configuration>/<task>/<trainer>__<plans>/<fold folder>."""
    folder = Path(trainer.output_folder)
    trainer_name, _, plans = folder.parent.name.partition("__")
    return {"task": folder.parent.parent.name, "configuration": folder.parent.parent.parent.name,
            "trainer": trainer_name, "plans": plans, "fold": str(trainer.fold)}


def pretrained_source(path: Optional[str]) -> Optional[dict]:
    if not path:
        return None
    return {"file": str(Path(path).resolve()), "sha256": file_sha256(path)}


def settings_record(trainer, initialised_from: Optional[dict] = None) -> dict:
    """The record of a constructed trainer (before or after initialize: the plans are read from its plans file
    when it has not processed them yet)."""
    plans = trainer.plans
    if plans is None:
        from nnunet.utilities.safe_loading import load_pickle_safely
        plans = load_pickle_safely(trainer.plans_file)
    identity = model_identity(trainer)
    stage = trainer.stage if trainer.stage is not None else len(plans["plans_per_stage"]) - 1
    return {
        "model": identity,
        "plan": stage_plan(plans, stage),
        "budget": {"epochs": int(trainer.max_num_epochs), "iterations_per_epoch": int(trainer.num_batches_per_epoch),
                   "validation_iterations_per_epoch": int(trainer.num_val_batches_per_epoch),
                   "initial_lr": float(trainer.initial_lr)},
        "settings": plain(trainer.method_settings()),
        "data": {"split_json_sha256": split_digest(identity["task"])},
        "initialised_from": initialised_from,
        "software": {"workspace": workspace_commit(), "torch": package_version("torch"),
                     "nnunet": package_version("nnunet"), "numpy": np.__version__,
                     "python": platform.python_version()},
        "processes": int(getattr(trainer, "world_size", 1)),
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def read_settings_record(folder) -> Optional[dict]:
    path = Path(folder) / SETTINGS_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def write_settings_record(trainer) -> dict:
    """settings.json of a training that starts now (run_training, rank 0). A resumed run (-c) keeps the
    initialisation its first start recorded: -c is given no -pretrained_weights."""
    initialised_from = pretrained_source(getattr(trainer, "pretrained_weights_file", None))
    previous = read_settings_record(trainer.output_folder)
    if getattr(trainer, "continued_training", False) and previous is not None and initialised_from is None:
        initialised_from = previous.get("initialised_from")
    record = settings_record(trainer, initialised_from)
    path = os.path.join(trainer.output_folder, SETTINGS_FILE)
    os.makedirs(trainer.output_folder, exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(record, f, indent=1)
    os.replace(path + ".tmp", path)
    return record
