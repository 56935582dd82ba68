"""`make import`: install a model zip made by `make export` into RESULTS_FOLDER, after checking it.

Refused, with every problem listed and nothing written: a member with an absolute path, '..', a symlink or a device;
no manifest; a file changed, missing or extra against the manifest; a file that is not one of a model folder's;
a fold that is trained here already, or a different plans.pkl (--force replaces them). The model is then loaded
safely once (every file, every fold as nnUNet_predict loads it) before it is moved into place, with the manifest
kept beside it as imported_from.json. Details: covidseg.runs.model_zip. (The module is named after its make target,
like every command: `python -m covidseg.import`.)
"""
import argparse
from pathlib import Path
from typing import Optional, Sequence

from covidseg.core.errors import WorkflowError, main_guard
from covidseg.core.workspace import env_folder
from covidseg.runs.model_zip import import_model_zip


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zip", type=Path, required=True, help="the zip file made by make export")
    parser.add_argument("--force", action="store_true", help="replace trained folds that exist")
    args = parser.parse_args(argv)
    if not args.zip.is_file():
        raise WorkflowError(f"{args.zip} not found")
    results = env_folder("RESULTS_FOLDER") / "nnUNet"
    print(f"checking {args.zip}")
    installed = import_model_zip(args.zip, results, force=args.force)
    print(f"imported {len(installed)} trained fold(s) into {results}:")
    for folder in installed:
        print(f"  {folder}")


if __name__ == "__main__":
    main_guard(main)
