"""A trained model is never reused under other settings: what a training command asks for, against the model's
settings.json (nnunet/training/provenance.py, written by the trainer when training starts, patch 0009).

The record asked for is made exactly as nnUNet_train makes the trainer's: the trainer class is constructed (no
data is loaded) with the same plans and environment, the training length applied from nnUNet_max_num_epochs & co.,
and its record taken; so a setting that the trainer reads is compared without this module knowing it.
"""
import contextlib
import io
import json
from pathlib import Path
from typing import Dict, List, Optional

from covidseg.core.errors import WorkflowError, translate_errors

SETTINGS_FILE = "settings.json"


def read_record(folder: Path) -> Optional[dict]:
    path = folder / SETTINGS_FILE
    if not path.is_file():
        return None
    with translate_errors(ValueError, context=f"{path} is not a settings record"):
        return json.loads(path.read_text())


def requested_record(configuration: str, task: str, trainer: str, plans: str, fold,
                     initialised_from: Optional[Path] = None) -> dict:
    """The settings.json that `nnUNet_train <configuration> <trainer> <task> <fold> -p <plans>` would write now, in
    this environment (-pretrained_weights `initialised_from`)."""
    with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net's configuration lookup prints a page
        from nnunet.run.default_configuration import get_default_configuration
        from nnunet.run.run_training import apply_training_length_from_environment
        from nnunet.training.provenance import pretrained_source, settings_record
        plans_file, output_folder, dataset_directory, batch_dice, stage, trainer_class = \
            get_default_configuration(configuration, task, trainer, plans)
    if trainer_class is None:
        raise WorkflowError(f"no trainer class {trainer} in nnunet.training.network_training (make setup copies the "
                            f"workspace's trainers there)")
    with translate_errors(ValueError, context=f"the settings of {trainer}"), \
            contextlib.redirect_stdout(io.StringIO()):
        instance = trainer_class(plans_file, fold if fold == "all" else int(fold), output_folder=output_folder,
                                 dataset_directory=dataset_directory, batch_dice=batch_dice, stage=stage)
        apply_training_length_from_environment(instance)
        return json.loads(json.dumps(settings_record(instance, pretrained_source(
            str(initialised_from) if initialised_from else None))))


def flatten(value, prefix: str = "") -> Dict[str, object]:
    if isinstance(value, dict):
        flat = {}
        for key, item in value.items():
            flat.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat or {prefix: {}}
    return {prefix: value}


def setting_changes(recorded: dict, requested: dict) -> List[str]:
    """'<setting>: <recorded> (the model) -> <requested> (now)' for every compared setting that differs."""
    from nnunet.training.provenance import COMPARED
    old = flatten({k: recorded.get(k) for k in COMPARED})
    new = flatten({k: requested.get(k) for k in COMPARED})

    def shown(value) -> str:
        return "not recorded" if value is None else json.dumps(value)

    changed = [key for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key) and not key.endswith(".file")]
    if "settings.finetune.initial_lr" in changed and "budget.initial_lr" in changed:  # one number: named once
        changed.remove("budget.initial_lr")
    return [f"{key}: {shown(old.get(key))} (the model) -> {shown(new.get(key))} (now)" for key in changed]


def refuse_changed(folder: Path, what: str, changes: List[str]) -> None:
    raise WorkflowError(f"{what} in {folder} was trained with other settings than those asked for now:\n"
                        + "\n".join(f"  - {c}" for c in changes)
                        + "\nFORCE=1 retrains it (make experiment: FORCE=1 retrains what changed); or ask for the "
                          "recorded settings")


def budget_line(record: Optional[dict]) -> str:
    """'25 epochs x 25 iterations, initial LR 0.01' of a record, or why there is none."""
    if record is None:
        return "not recorded (trained before settings.json)"
    b = record["budget"]
    return f"{b['epochs']} epochs x {b['iterations_per_epoch']} iterations, initial LR {b['initial_lr']:g}"


def start_line(record: Optional[dict]) -> str:
    """Where a recorded training started: from scratch, or the -pretrained_weights file (and its sha256's start)."""
    if record is None:
        return "not recorded"
    start = record.get("initialised_from")
    if not start:
        return "from scratch"
    path = Path(start["file"])
    return f"from {path.parent.parent.name}/{path.parent.name}/{path.name} (sha256 {start['sha256'][:12]})"


def settings_line(record: Optional[dict]) -> str:
    """The trainer's own settings of a record, 'group.setting=value' joined by spaces ('-' when none)."""
    if record is None:
        return "not recorded"
    flat = flatten(record.get("settings") or {})
    return " ".join(f"{k}={v}" for k, v in flat.items() if k) or "-"
