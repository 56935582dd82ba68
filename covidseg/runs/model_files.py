"""A model folder's files are data: each command reads them through nnU-Net's safe loaders (patch 0011,
nnunet/utilities/safe_loading.py) before anything else uses them, so a tampered file is refused by name, with exit
status 1, before a process is started or an output is written.

The files a trained model is: <trainer folder>/plans.pkl and, per fold, model_final_checkpoint.model, its .pkl (the
trainer's name, constructor arguments and plans), the mean teacher's .teacher and settings.json.
"""
from pathlib import Path
from typing import Iterable, List

from covidseg.core.errors import ProblemsError

FINAL_CHECKPOINT = "model_final_checkpoint"
# the files of a fold folder that prediction and provenance read; the teacher exists for the mean teacher only
FOLD_FILES = (f"{FINAL_CHECKPOINT}.model", f"{FINAL_CHECKPOINT}.model.pkl", f"{FINAL_CHECKPOINT}.model.teacher",
              "settings.json")
TRAINER_FOLDER_FILES = ("plans.pkl", "postprocessing.json")


def model_files(fold_folder: Path) -> List[Path]:
    """The files of one trained fold that exist: its trainer folder's plans.pkl (and postprocessing.json), then the
    fold's FOLD_FILES."""
    candidates = [fold_folder.parent / name for name in TRAINER_FOLDER_FILES] + [fold_folder / n for n in FOLD_FILES]
    return [path for path in candidates if path.is_file()]


def load_refusal(path: Path):
    """None when `path` loads with the safe loaders, else the reason it is refused (naming the file and what it
    asked for). JSON files are left to their readers."""
    from nnunet.utilities.safe_loading import UnsafeFileError, load_checkpoint_safely, load_pickle_safely
    name = path.name
    loader = load_pickle_safely if name.endswith(".pkl") else \
        load_checkpoint_safely if name.endswith((".model", ".teacher")) else None
    if loader is None:
        return None
    try:
        loader(str(path))
    except UnsafeFileError as e:
        return str(e)
    except Exception as e:  # truncated, not a pickle, not a torch file: damaged, not dangerous, still refused
        return f"{path} cannot be read ({type(e).__name__}: {e}); the model folder is damaged"
    return None


def check_model_files(paths: Iterable[Path], what: str) -> None:
    """Load every file safely; a ProblemsError lists every file refused (`what`: the model, for the message)."""
    problems = [reason for reason in map(load_refusal, paths) if reason]
    if problems:
        raise ProblemsError(f"{what} was not used: its files may hold only data", problems)


def check_trained_fold(fold_folder: Path, what: str = "") -> None:
    """check_model_files of one trained fold (model_files)."""
    check_model_files(model_files(fold_folder), what or f"the model in {fold_folder}")
