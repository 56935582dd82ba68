"""`make export`: a trained model, every fold of it that is trained, as one zip with a manifest, to share.

MODEL: a method of the registry (covidseg.runs.methods.METHODS); an ensemble exports the models it averages. ZIP:
the file to write; an existing one is replaced only with --force. Every file is loaded safely first
(covidseg.runs.model_files), so a tampered model is not passed on. What the zip holds and how `make import` checks
it: covidseg.runs.model_zip.
"""
import argparse
from pathlib import Path
from typing import Optional, Sequence

from covidseg.core.errors import WorkflowError, main_guard
from covidseg.core.workspace import add_model_arguments, env_folder, model_dir, task_name
from covidseg.runs.methods import METHODS
from covidseg.runs.model_files import check_model_files
from covidseg.runs.model_zip import model_members, trained_folds, write_model_zip


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zip", type=Path, required=True, help="the zip file to write")
    parser.add_argument("--model", choices=list(METHODS), default="moe")
    add_model_arguments(parser)
    parser.add_argument("--force", action="store_true", help="replace an existing zip")
    args = parser.parse_args(argv)

    task = task_name(args.task)
    method = METHODS[args.model]
    parts = [METHODS[m] for m in method.members] if method.is_ensemble else [method]
    trainer_folders = []
    for part in parts:
        folder = model_dir(part.configuration, task, part.trainer_for(args), args.plans, args.fold).parent
        if not trained_folds(folder):
            raise WorkflowError(f"no trained fold of the {part.name} model in {folder}: run '{part.make_target}' first")
        trainer_folders.append(folder)
    if args.zip.exists() and not args.force:
        raise WorkflowError(f"{args.zip} exists; FORCE=1 replaces it")
    results = env_folder("RESULTS_FOLDER") / "nnUNet"
    members = model_members(results, trainer_folders)
    check_model_files(members.values(), f"the {args.model} model")
    manifest = write_model_zip(args.zip, args.model, members)
    folds = sorted({name.rsplit("/", 1)[0] for name in members if name.count("/") == 4})
    size = args.zip.stat().st_size / 2 ** 20
    print(f"exported {args.model}: {len(members)} files of {len(folds)} trained fold(s) to {args.zip} "
          f"({size:.1f} MiB)")
    for fold in folds:
        print(f"  {fold}")
    commit = manifest["workspace"]["commit"] or "not a git checkout"
    print(f"manifest: sha256 of every file, nnU-Net {manifest['nnunet']['version']} with "
          f"{len(manifest['nnunet']['patches'])} patches, workspace {commit}"
          f"{' (with local changes)' if manifest['workspace']['modified'] else ''}, torch {manifest['torch']}")


if __name__ == "__main__":
    main_guard(main)
