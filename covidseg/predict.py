"""`make predict`: segment new CTs with a trained model; outputs keep each input's geometry.

INPUT is one CT .nii.gz / .nii file, or a folder of them and of DICOM series at any depth (each CT series one
case, written as NIfTI with the geometry of SimpleITK's series reader), every one read in full before anything runs
(covidseg.data.ct_inputs, covidseg.data.dicom_series: any other entry is refused by name, all problems listed,
nothing written). Names
need not follow nnU-Net's <case>_0000.nii.gz convention: the inputs are linked into a temporary folder under
that name, and each segmentation is written as <case>.nii.gz, where <case> is the input's case id
(covidseg.core.challenge.case_id: the name without .nii.gz / .nii, nnU-Net's _0000 and the challenge's _ct).

GPUS="0 1 ...": the inputs are split over one nnUNet_predict process per GPU (nnU-Net's --part_id / --num_parts).

MODEL: any trained model of the method registry (covidseg.runs.methods.METHODS): moe, moe_cps, control, selftrain,
meanteacher, fullres, lowres, or ensemble (fullres + lowres, averaged softmax through nnUNet_ensemble). Existing
segmentations in OUTPUT are not overwritten without --force.
"""
import argparse
import os
import shutil
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from covidseg.core.errors import WorkflowError, main_guard
from covidseg.runs.methods import METHODS, Method
from covidseg.runs.model_files import check_trained_fold
from covidseg.runs.nnunet_runs import nnunet_predict
from covidseg.core.workspace import add_model_arguments, run, task_name, trained_model_dir
from covidseg.data.ct_inputs import collect_inputs, ensure_writable, refuse_overwrite

def check_models(task: str, method: Method, args) -> List[Tuple[Method, Path]]:
    """(method, fold folder) of each model that segments: the method's own, or an ensemble's members; a WorkflowError
    names the make target when one is not trained, a ProblemsError every file that does not load safely."""
    parts = [METHODS[m] for m in method.members] if method.is_ensemble else [method]
    models = [(m, trained_model_dir(m.configuration, task, m.trainer_for(args), args.plans, args.fold,
                                    m.make_target)) for m in parts]
    for part, folder in models:
        check_trained_fold(folder, f"the {part.name} model ({folder})")
    return models


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--model", choices=list(METHODS), default="moe")
    add_model_arguments(parser)
    parser.add_argument("--disable-tta", action="store_true", help="no mirroring at test time (8x faster in 3D)")
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--gpus", nargs="+", default=[], metavar="GPU",
                        help="CUDA device ids; with several, the inputs are split over one process per GPU")
    args = parser.parse_args(argv)

    task = task_name(args.task)
    method = METHODS[args.model]
    models = check_models(task, method, args)
    with tempfile.TemporaryDirectory(prefix="covidseg-inputs-") as staging:  # DICOM series as NIfTI
        inputs = collect_inputs(args.input, Path(staging))
        if not args.force:
            refuse_overwrite([c for c in inputs if (args.output / f"{c}.nii.gz").exists()], args.output)
        ensure_writable(args.output)
        segment(inputs, models, method, args)


def segment(inputs: Dict[str, Path], models: List[Tuple[Method, Path]], method: Method, args) -> None:
    """Each input's segmentation by the model (an ensemble: its members' averaged softmax) into OUTPUT."""
    with tempfile.TemporaryDirectory(prefix="predict-", dir=args.output) as tmp:
        staged = Path(tmp) / "input"
        staged.mkdir()
        for case, path in inputs.items():
            os.symlink(path.resolve(), staged / f"{case}_0000.nii.gz")
        parts = []
        for part_method, _folder in models:
            part = Path(tmp) / part_method.name
            nnunet_predict(staged, part, args.task, part_method.configuration, part_method.trainer_for(args),
                           args.plans, args.fold, npz=method.is_ensemble, tta=not args.disable_tta, gpus=args.gpus)
            parts.append(part)
        result = parts[0]
        if method.is_ensemble:
            result = Path(tmp) / "ensemble"
            run(["nnUNet_ensemble", "-f", *map(str, parts), "-o", str(result)])
        for case in inputs:
            produced = result / f"{case}.nii.gz"
            if not produced.is_file():
                raise WorkflowError(f"nnU-Net wrote no segmentation for {case}")
            shutil.move(str(produced), args.output / f"{case}.nii.gz")
    print(f"{len(inputs)} segmentation(s) ({args.model}) written to {args.output}")


if __name__ == "__main__":
    main_guard(main)
