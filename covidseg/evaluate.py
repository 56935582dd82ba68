"""`make evaluate`: segment the held-out test set (imagesTs/, `make convert TEST_FRACTION=...`) with every
trained model, into the model folders:

    <model fold folder>/test_predictions/<case>.nii.gz     every trained model of covidseg.runs.methods.METHODS
                                                            (nnUNet_predict)
    <ensemble folder>/test_predictions/<case>.nii.gz        lowres + fullres softmax averaged (nnUNet_ensemble)
    .../test_predictions/made_by.json                       the checkpoint(s) that made them

EXTERNAL=<folder> (--external): an external labelled test set instead (covidseg.data.external_sets: MedSeg dataset 2,
MosMed's masked studies, a COVID-19-20 Train/ folder, or images/ + labels/ with LESION_LABELS), stored beside the
task as external/<name>/ (name: EXTERNAL_NAME, else the folder's name) and segmented by every model into
<model folder>/external_predictions/<name>/, with the same records and resume rules; `make report` adds its section.

`--extra-model NAME=TRAINER` adds another 3d_fullres model of the task (a trainer outside the registry). A model
that is not trained is skipped; a case already segmented by the model's current checkpoint is not segmented again,
so an interrupted run resumes; predictions another checkpoint made (the model was trained again), made with other
test-time augmentation, or that do not read in full are segmented again, and an ensemble is made again when a
member's predictions changed (covidseg.evaluation.prediction_records). Prints each model's mean test Dice;
`make report` gives the full test-set comparison.
"""
import argparse
from functools import partial
from pathlib import Path
from typing import Dict, Optional, Sequence

from covidseg.core.errors import WorkflowError, main_guard
from covidseg.runs.methods import METHODS, Method
from covidseg.runs.nnunet_runs import nnunet_predict, print_and_save_dice_table, validation_dice
from covidseg.core.workspace import (add_model_arguments, external_predictions_dir, model_dir, raw_data_dir, run,
                                     task_name, test_images_dir, test_labels_dir, test_predictions_dir)
from covidseg.data import external_sets
from covidseg.runs.methods import model_folders
from covidseg.evaluation.prediction_records import ensemble_record, model_record, prepare_folder, read_record


def test_cases(task: str) -> Sequence[str]:
    images = test_images_dir(task)
    cases = sorted(p.name[: -len("_0000.nii.gz")] for p in images.glob("*_0000.nii.gz"))
    if not cases:
        raise WorkflowError(f"{task} has no held-out test set ({images} holds no CT): convert with a test fraction, "
                            f"e.g. 'make convert DATA=<download> TEST_FRACTION=0.2 FORCE=1'")
    return cases


def extra_models(entries: Sequence[str]) -> Dict[str, Method]:
    """'NAME=TRAINER' entries -> {NAME: a 3d_fullres method of that trainer}; a registered name or a malformed
    entry is an error."""
    models = {}
    for entry in entries:
        name, _, trainer = entry.partition("=")
        if not name or not trainer or name in METHODS:
            raise WorkflowError(f"--extra-model {entry!r}: expected NAME=TRAINER with a NAME other than "
                                f"{', '.join(METHODS)}")
        models[name] = Method(name, f"3d_fullres {trainer}", trainer, f"nnUNet_train 3d_fullres {trainer}")
    return models


def missing_cases(folder: Path, cases: Sequence[str]) -> Sequence[str]:
    return [c for c in cases if not (folder / f"{c}.nii.gz").is_file()]


def segment_test_set(name: str, method: Method, folder: Path, task: str, args, cases: Sequence[str],
                     npz: bool, images: Optional[Path] = None, output: Optional[Path] = None) -> None:
    """The model's segmentation of every test case (of `images`, into `output`: by default the held-out test
    set, into test_predictions/), by its current checkpoint (covidseg.evaluation.prediction_records): what another
    checkpoint made, or what does not read in full, is segmented again."""
    images = images or test_images_dir(task)
    output = output or test_predictions_dir(folder)
    prepare_folder(output, model_record(folder, tta=not args.disable_tta), name)
    todo = missing_cases(output, cases)
    if npz:  # the ensemble needs every member's softmax
        todo = [c for c in cases if c in todo or not (output / f"{c}.npz").is_file()]
    print(f"{name}: {len(cases) - len(todo)} of {len(cases)} test case(s) segmented already by its current "
          f"checkpoint", flush=True)
    if todo:
        nnunet_predict(images, output, args.task, method.configuration, method.trainer_for(args),
                       args.plans, args.fold, npz=npz, tta=not args.disable_tta)


def ensemble_test_set(name: str, folder: Path, members: Dict[str, Path], cases: Sequence[str],
                      predictions_of=test_predictions_dir) -> None:
    """nnUNet_ensemble of the members' test softmax (predictions_of: a model folder's predictions folder); made
    again when a member's predictions changed."""
    output = predictions_of(folder)
    prepare_folder(output, ensemble_record({m: read_record(predictions_of(f)) for m, f in members.items()}), name)
    if missing_cases(output, cases):
        run(["nnUNet_ensemble", "-f", *[str(predictions_of(f)) for f in members.values()], "-o", str(output)])


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_arguments(parser)
    parser.add_argument("--disable-tta", action="store_true", help="no mirroring at test time (8x faster in 3D)")
    parser.add_argument("--extra-model", action="append", default=[], metavar="NAME=TRAINER",
                        help="another 3d_fullres model to segment the test set with (repeatable)")
    parser.add_argument("--external", type=Path, default=None,
                        help="an external labelled test set to segment instead of the held-out test set")
    parser.add_argument("--external-name", default=None, help="its name (default: the folder's name)")
    parser.add_argument("--lesion-labels", type=int, nargs="+", default=[1],
                        help="the label values that are lesion, for an images/ + labels/ external set")
    parser.add_argument("--force", action="store_true", help="replace a stored external set of that name")
    parser.add_argument("--models", nargs="+", default=None, metavar="NAME",
                        help="only these models of the method registry (default: every trained one); what `make "
                             "experiment` passes, so that jobs of one run on a cluster never segment each other's "
                             "models")
    args = parser.parse_args(argv)
    extra = extra_models(args.extra_model)

    task = task_name(args.task)
    scope = f"_{'_'.join(args.models)}" if args.models else ""  # one table per job of the experiment
    if args.external is not None:
        name = args.external_name or args.external.resolve().name
        stored = external_sets.store(args.external, raw_data_dir() / task, name, args.lesion_labels, args.force)
        images, labels = stored / "images", stored / "labels"
        cases = sorted(p.name[: -len("_0000.nii.gz")] for p in images.glob("*_0000.nii.gz"))
        predictions_of = partial(external_predictions_dir, name=name)
        title = f"External test set {name}: Dice (lesion)"
        csv_name = f"external_dice_{name}{scope}_fold_{args.fold}.csv"
    else:
        images, labels, cases, predictions_of = test_images_dir(task), test_labels_dir(task), test_cases(task), \
            test_predictions_dir
        title, csv_name = "Test-set Dice (lesion; all test cases, see make report for CIs)", \
            f"test_dice{scope}_fold_{args.fold}.csv"
    methods = {**METHODS, **extra}
    if args.models is not None:
        unknown = sorted(set(args.models) - set(methods))
        if unknown:
            raise WorkflowError(f"--models: unknown model(s) {', '.join(unknown)}; known: {', '.join(methods)}")
        methods = {name: m for name, m in methods.items() if name in args.models}
    folders = model_folders(task, args.plans, args.fold, args)
    folders.update({name: model_dir("3d_fullres", task, m.trainer, args.plans, args.fold) for name, m in extra.items()})
    trained = {name: folders[name] for name, m in methods.items()
               if not m.is_ensemble and (folders[name] / "model_final_checkpoint.model").is_file()}
    if not trained:
        raise WorkflowError(f"no trained model of {task} fold {args.fold}: run 'make baseline' first")
    ensembles = {name: m for name, m in methods.items() if m.is_ensemble and all(x in trained for x in m.members)}
    ensemble_members = {member for m in ensembles.values() for member in m.members}
    for model, folder in trained.items():
        segment_test_set(model, methods[model], folder, task, args, cases, npz=model in ensemble_members,
                         images=images, output=predictions_of(folder))
    for model, method in ensembles.items():
        ensemble_test_set(model, folders[model], {m: trained[m] for m in method.members}, cases, predictions_of)
        trained[model] = folders[model]

    results: Dict[str, Dict[str, float]] = {}
    for model in folders:  # report order
        if model in trained and model in methods:
            if missing_cases(predictions_of(trained[model]), cases):
                raise WorkflowError(f"{model}: nnU-Net left test cases unsegmented in {predictions_of(trained[model])}")
            results[model] = validation_dice(predictions_of(trained[model]), labels)
    print_and_save_dice_table(results, folders["fullres"].parent.parent / csv_name, title=title)


if __name__ == "__main__":
    main_guard(main)
