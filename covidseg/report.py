"""`make report`: compare 3d_lowres, 3d_fullres, their ensemble, the same-budget control and the MoE from disk.

Reads every model's predictions (nothing is retrained), computes per-case metrics against the references in
physical space (covidseg.evaluation.metrics: Dice, NSD at a tolerance, HD95 in mm, volume error in ml) and
writes into the report folder:

    report.md               header (task, fractions, case counts, each model's budget and settings from its
                            settings.json), then
                            "Test set": the held-out cases that `make evaluate` segmented, with 95% bootstrap
                            CIs and paired differences (covidseg.evaluation.held_out), when there is a test set;
                            "Validation": the fold's validation cases, as nnU-Net's training validated them
    test_metrics.csv        one row per model and test case
    paired_test_dice.png    per test case, MoE vs control (or vs 3d_fullres when there is no control)
    metrics.csv             one row per model and validation case, plus a mean row per model
    dice_boxplot.png        validation Dice over cases per model
    paired_dice.png         per validation case, baseline 3d_fullres vs MoE
    moe_training.png        the MoE's losses, lambda and expert usage per epoch (its moe_log.json)
    overlay_<case>.png      the validation cases where MoE and baseline differ most: CT, reference, both contours

A model that does not exist is listed as missing; one whose predictions miss cases the others have is
reported with the cases it lacks. Test predictions that the model's current checkpoint did not make (their
made_by.json, covidseg.evaluation.prediction_records) are refused, naming the model and 'make evaluate'; a
comparison of two models trained with different budgets carries a warning line.
"""
import argparse
import csv
import json
import math
from functools import partial
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import matplotlib

matplotlib.use("agg")
import matplotlib.pyplot as plt
import numpy as np
import SimpleITK as sitk

from covidseg.core.challenge import LESION_LABEL
from covidseg.core.errors import WorkflowError, main_guard, translate_errors
from covidseg.runs.methods import METHODS
from covidseg.runs.provenance import budget_line, read_record, settings_line, start_line
from covidseg.data import external_sets
from covidseg.core.workspace import (add_model_arguments, external_predictions_dir, ground_truth_dir, raw_data_dir,
                                     task_name, test_labels_dir, test_predictions_dir, validation_predictions_dir)
from covidseg.runs.methods import model_folders
from covidseg.data.ct_inputs import LUNG_WINDOW
from covidseg.evaluation import held_out
from covidseg.evaluation.metrics import CaseFileError, CaseMetrics, metrics_per_case
from covidseg.evaluation.prediction_records import (CHECKPOINT, ensemble_record, model_record,
                                                    verify_folder)


def mean(values: List[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def summarise(scores: Dict[str, CaseMetrics]) -> dict:
    rows = list(scores.values())
    return {"cases": len(rows), "dice": mean([r.dice for r in rows]), "nsd": mean([r.nsd for r in rows]),
            "hd95_mm": mean([r.hd95_mm for r in rows]),
            "hd95_undefined": sum(math.isnan(r.hd95_mm) for r in rows),
            "abs_volume_error_ml": mean([abs(r.volume_error_ml) for r in rows]),
            "empty_reference": sum(r.reference_empty for r in rows),
            "empty_prediction": sum(r.prediction_empty for r in rows)}


def header(task: str, fold, folders: Dict[str, Path]) -> List[str]:
    raw = raw_data_dir() / task
    split = json.loads((raw / "split.json").read_text()) if (raw / "split.json").is_file() else {}
    dataset = json.loads((raw / "dataset.json").read_text()) if (raw / "dataset.json").is_file() else {}
    lines = [f"# Report: {task}, fold {fold}", "",
             f"- labelled fraction: {split.get('labeled_fraction', '?')} (seed {split.get('seed', '?')}); "
             f"test fraction: {split.get('test_fraction', 0)}",
             f"- labelled cases: {dataset.get('numTraining', '?')}; unlabelled cases: "
             f"{dataset.get('numUnlabeled', len(dataset.get('unlabeled', [])))}; held-out test cases: "
             f"{dataset.get('numTest', 0)}"]
    lines += ["", "Models, as their settings.json records them (budget: epochs x iterations per epoch, initial "
              "learning rate; the trainer's own settings by name):", "",
              "| model | trainer | budget | started | settings | workspace commit |", "|---|---|---|---|---|---|"]
    for name, folder in folders.items():
        if METHODS[name].is_ensemble or not (folder / "model_final_checkpoint.model").is_file():
            continue
        record = read_record(folder)
        commit = (record or {}).get("software", {}).get("workspace", {}).get("commit", "-")
        lines.append(f"| {name} | {folder.parent.name.split('__')[0]} | {budget_line(record)} | {start_line(record)} "
                     f"| {settings_line(record)} | {commit[:12]} |")
    return lines


def model_budgets(folders: Dict[str, Path]) -> Dict[str, str]:
    """model -> its recorded budget, for the comparisons' warnings (an ensemble: its members' budget)."""
    budgets = {name: budget_line(read_record(folder)) for name, folder in folders.items()
               if not METHODS[name].is_ensemble and read_record(folder) is not None}
    for name, method in METHODS.items():
        members = {budgets.get(m) for m in method.members}
        if method.is_ensemble and len(members) == 1 and None not in members:
            budgets[name] = members.pop()
    return budgets


def expected_test_record(name: str, folders: Dict[str, Path]) -> dict:
    """The checkpoint(s) the model's test predictions must come from (covidseg.evaluation.prediction_records)."""
    method = METHODS[name]
    parts = method.members if method.is_ensemble else (name,)
    for part in parts:
        if not (folders[part] / CHECKPOINT).is_file():
            raise WorkflowError(f"the {name} model's test predictions cannot be scored: {folders[part]} holds no "
                                f"{CHECKPOINT} (run '{METHODS[part].make_target}', then 'make evaluate')")
    if method.is_ensemble:
        return ensemble_record({m: model_record(folders[m], tta=True) for m in method.members})
    return model_record(folders[name], tta=True)


def markdown_table(summaries: Dict[str, dict], missing: List[str], lacking: Dict[str, List[str]],
                   tolerance: float) -> List[str]:
    lines = [f"| model | cases | Dice | NSD@{tolerance:g}mm | HD95 (mm) | HD95 undefined | abs. volume error (ml) "
             f"| empty ref. | empty pred. |", "|---|---|---|---|---|---|---|---|---|"]
    for name, s in summaries.items():
        lines.append(f"| {name} | {s['cases']} | {s['dice']:.4f} | {s['nsd']:.4f} | {s['hd95_mm']:.2f} | "
                     f"{s['hd95_undefined']} | {s['abs_volume_error_ml']:.2f} | {s['empty_reference']} | "
                     f"{s['empty_prediction']} |")
    lines.append("")
    for name in missing:
        lines.append(f"- {name}: missing (no validation predictions)")
    for name, cases in lacking.items():
        lines.append(f"- {name}: lacks {len(cases)} case(s) the others have: {', '.join(cases)}")
    return lines


def write_csv(scores: Dict[str, Dict[str, CaseMetrics]], path: Path, summaries: Optional[Dict[str, dict]] = None
              ) -> None:
    """One row per model and case; with `summaries`, a mean row per model after its cases."""
    fields = list(CaseMetrics.__dataclass_fields__)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["model", "case"] + fields)
        for name, per_case in scores.items():
            for case, m in sorted(per_case.items()):
                writer.writerow([name, case] + [m.as_row()[k] for k in fields])
            if summaries is not None:
                s = summaries[name]
                writer.writerow([name, "mean", s["dice"], s["nsd"], s["hd95_mm"], "", "", "", "", ""])


def plot_dice_boxplot(scores: Dict[str, Dict[str, CaseMetrics]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    names = list(scores)
    ax.boxplot([[m.dice for m in scores[n].values()] for n in names], tick_labels=names)
    for i, n in enumerate(names):
        values = [m.dice for m in scores[n].values()]
        ax.scatter(np.full(len(values), i + 1) + np.linspace(-0.08, 0.08, len(values)), values, s=12, alpha=0.6)
    ax.set_ylabel("Dice (lesion)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Validation Dice per model")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_paired_dice(x_scores: Dict[str, CaseMetrics], y_scores: Dict[str, CaseMetrics], x_name: str, y_name: str,
                     path: Path, cases: Optional[List[str]] = None) -> None:
    """Per-case Dice of two models on their common cases (or `cases`): above the diagonal `y_name` is better."""
    cases = sorted(set(x_scores) & set(y_scores)) if cases is None else cases
    fig, ax = plt.subplots(figsize=(5, 5))
    b, m = [x_scores[c].dice for c in cases], [y_scores[c].dice for c in cases]
    colours = ["tab:green" if y > x else "tab:red" if y < x else "tab:grey" for x, y in zip(b, m)]
    ax.scatter(b, m, c=colours)
    for x, y, c in zip(b, m, cases):
        ax.annotate(c.replace("volume-covid19-", ""), (x, y), fontsize=7, alpha=0.7)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set_xlabel(f"Dice, {x_name}")
    ax.set_ylabel(f"Dice, {y_name}")
    ax.set_title(f"Per case ({len(cases)}): above the line {y_name} is better", fontsize=10)
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_moe_training(moe_log: Path, path: Path) -> bool:
    """The MoE's training curves from its moe_log.json (the trainer's own plot); False when there is no log."""
    from nnunet.utilities.moe_progress import plot_moe_progress
    log = json.loads(moe_log.read_text()) if moe_log.is_file() else []
    if log:
        plot_moe_progress(log, str(path))
    return bool(log)


DIAGNOSTIC_ROWS = ("expert_lesion_dice", "consistency_grad_share", "consistency_grad_cosine", "disagreement",
                   "confident_fraction", "confident_fraction_lesion", "gate_entropy", "gate_entropy_noisy",
                   "gate_signal_to_noise", "route_site_mi")


def unlabelled_signal_section(moe_log: Path) -> List[str]:
    """What the unlabelled term did after the ramp-up (the MoE's moe_log.json), as a Markdown section."""
    from nnunet.utilities.moe_progress import diagnostics_after_rampup
    log = json.loads(moe_log.read_text()) if moe_log.is_file() else []
    summary = diagnostics_after_rampup(log)
    if not summary["epochs"]:
        return []
    lines = ["## The MoE's unlabelled signal after the ramp-up", "",
             f"Epochs {summary['epochs'][0]}-{summary['epochs'][-1]} at full consistency weight (moe_log.json; "
             f"moe_training.png plots every epoch). expert_lesion_dice: Dice between the chosen experts' lesion "
             f"predictions on the unlabelled weak view (1: the experts are copies; goal <= 0.90). "
             f"consistency_grad_share: |gradient of lambda x consistency| / |gradient of the supervised loss| over "
             f"the shared weights (target >= 0.05). gate_entropy is the noise-free gate's (log E = "
             f"{np.log(len(log[-1]['usage'])):.2f}: it cannot tell the experts apart); gate_signal_to_noise below 1: "
             f"the training noise, not the scan, routes. route_site_mi: bits between the noise-free top-1 expert "
             f"and the scanner site (needs a site table).", "",
             f"| diagnostic | mean | min | max | last epoch ({log[-1]['epoch']}) |", "|---|---|---|---|---|"]
    for key in DIAGNOSTIC_ROWS:
        values, last = summary.get(key), log[-1].get(key)
        lines.append(f"| {key} | " + (" | ".join(f"{v:.4f}" for v in values) if values else "- | - | -")
                     + f" | {'-' if last is None else f'{last:.4f}'} |")
    return lines + [""]


def plot_overlay(case: str, ct_path: Path, reference: Path, baseline: Path, moe: Path, path: Path) -> None:
    ct = sitk.GetArrayFromImage(sitk.ReadImage(str(ct_path)))
    masks = {name: sitk.GetArrayFromImage(sitk.ReadImage(str(p))) == LESION_LABEL
             for name, p in (("reference", reference), ("baseline", baseline), ("moe", moe))}
    difference = (masks["baseline"] ^ masks["moe"]).sum(axis=(1, 2))
    z = int(np.argmax(difference)) if difference.any() else int(np.argmax(masks["reference"].sum(axis=(1, 2))))
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.imshow(np.clip(ct[z], *LUNG_WINDOW), cmap="gray")
    for (name, mask), colour in zip(masks.items(), ("yellow", "tab:red", "tab:cyan")):
        if mask[z].any():
            ax.contour(mask[z], levels=[0.5], colors=colour, linewidths=1.2)
        ax.plot([], [], color=colour, label=name)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"{case}, axial slice {z}")
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def score(folders: Dict[str, Path], predictions_of, references: Path, tolerance_mm: float, what: str
          ) -> Tuple[Dict[str, Dict[str, CaseMetrics]], List[str]]:
    """Per-case metrics of every model whose predictions folder (predictions_of(name, folder)) holds any, and the
    names of those that have none."""
    scores, missing = {}, []
    for name, folder in folders.items():
        predictions = predictions_of(name, folder)
        if predictions.is_dir() and any(predictions.glob("*.nii.gz")):
            with translate_errors(CaseFileError, context=f"cannot score the {name} model's {what} predictions"):
                scores[name] = metrics_per_case(predictions, references, tolerance_mm)
        else:
            missing.append(name)
    return scores, missing


def trained_models(folders: Dict[str, Path]) -> Dict[str, Path]:
    """The models of `folders` that are trained (an ensemble: when its members are)."""
    def trained(name: str) -> bool:
        method = METHODS[name]
        if method.is_ensemble:
            return all(trained(m) for m in method.members)
        return (folders[name] / CHECKPOINT).is_file()
    return {name: folder for name, folder in folders.items() if trained(name)}


def held_out_section(task: str, folders: Dict[str, Path], tolerance_mm: float,
                     out: Path) -> Tuple[List[str], List[str]]:
    """(the report's "Test set" lines, its figures); nothing when the task has no held-out test set."""
    return labelled_set_section(folders, test_labels_dir(task), test_predictions_dir, tolerance_mm, out,
                                title="Test set", intro="held-out case(s) with labels, never trained on (labelsTs/)",
                                stem="test", command="make evaluate")


def labelled_set_section(folders: Dict[str, Path], labels: Path, predictions_of, tolerance_mm: float, out: Path,
                         title: str, intro: str, stem: str, command: str) -> Tuple[List[str], List[str]]:
    """(the lines of a section that scores every model on a labelled set, its figures): the held-out test set or an
    external one (predictions_of: a model folder's predictions of the set; stem: of the CSV and plot names)."""
    if not labels.is_dir() or not any(labels.glob("*.nii.gz")):
        return [], []
    for name, folder in folders.items():
        predictions = predictions_of(folder)
        if predictions.is_dir() and any(predictions.glob("*.nii.gz")):
            verify_folder(predictions, expected_test_record(name, folders), name, command)
    scores, missing = score(folders, lambda _name, folder: predictions_of(folder), labels, tolerance_mm, stem)
    n_cases = len(list(labels.glob("*.nii.gz")))
    lines = [f"## {title}", "", f"{n_cases} {intro}."]
    if not scores:
        return lines + ["", f"No model has segmented them yet: run '{command}'."], []
    lines += [""] + held_out.markdown(scores, tolerance_mm, model_budgets(folders)) + [""]
    lines += [f"- {name}: not evaluated on this set (run '{command}')" for name in missing]
    lines += [f"- {name}: segmented {len(s)} of {n_cases} cases" for name, s in scores.items()
              if len(s) != n_cases]
    write_csv(scores, out / f"{stem}_metrics.csv")
    figures = []
    reference = "control" if "control" in scores else "fullres"
    if "moe" in scores and reference in scores:
        cases = sorted(set(held_out.lesion_cases(scores["moe"])) & set(held_out.lesion_cases(scores[reference])))
        plot_paired_dice(scores[reference], scores["moe"], reference, "moe", out / f"paired_{stem}_dice.png", cases)
        figures.append(f"paired_{stem}_dice.png")
    return lines + ["", f"Per-case values: {stem}_metrics.csv", ""], figures


def external_sections(task: str, folders: Dict[str, Path], tolerance_mm: float,
                      out: Path) -> Tuple[List[str], List[str]]:
    """One "External test set: <name>" section per set stored by `make evaluate EXTERNAL=...`."""
    lines, figures = [], []
    for name, stored in external_sets.stored_sets(raw_data_dir() / task).items():
        source = json.loads((stored / external_sets.SOURCE_RECORD).read_text())
        section, plots = labelled_set_section(
            folders, stored / "labels", partial(external_predictions_dir, name=name), tolerance_mm, out,
            title=f"External test set: {name}",
            intro=(f"case(s) from {source['folder']} ({source['layout']}; lesion = label(s) "
                   f"{', '.join(map(str, source['lesion_labels']))}), never trained on"),
            stem=f"external_{name}", command=f"make evaluate EXTERNAL={source['folder']} EXTERNAL_NAME={name}")
        lines += section
        figures += plots
    return lines, figures


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_arguments(parser)
    parser.add_argument("--output", type=Path, default=Path("report"))
    parser.add_argument("--tolerance-mm", type=float, default=1.0, help="NSD tolerance")
    parser.add_argument("--overlays", type=int, default=3, help="overlay images of the most different cases")
    args = parser.parse_args(argv)

    task = task_name(args.task)
    references = ground_truth_dir(task)
    if not references.is_dir():
        raise WorkflowError(f"no reference segmentations in {references}: run 'make preprocess' first")
    every_model = model_folders(task, args.plans, args.fold, args)
    folders = trained_models(every_model)
    untrained = [name for name in every_model if name not in folders]
    scores, missing = score(folders, validation_predictions_dir, references, args.tolerance_mm, "validation")
    if not scores:
        raise WorkflowError(f"no model of {task} fold {args.fold} has validation predictions: run 'make baseline'")
    all_cases = sorted(set().union(*[set(s) for s in scores.values()]))
    lacking = {n: sorted(set(all_cases) - set(s)) for n, s in scores.items() if set(all_cases) - set(s)}
    summaries = {name: summarise(s) for name, s in scores.items()}

    out = args.output
    out.mkdir(parents=True, exist_ok=True)
    test_lines, figures = held_out_section(task, folders, args.tolerance_mm, out)
    external_lines, external_figures = external_sections(task, folders, args.tolerance_mm, out)
    test_lines += external_lines
    figures += external_figures
    validation = [f"## Validation (fold {args.fold})", ""] + markdown_table(summaries, missing, lacking,
                                                                           args.tolerance_mm)
    if untrained:
        validation.append(f"- not trained (no final checkpoint under RESULTS_FOLDER): {', '.join(untrained)}")
    signal = unlabelled_signal_section(every_model["moe"] / "moe_log.json")
    summary = header(task, args.fold, folders) + [""] + test_lines + signal + validation
    lines = list(summary)
    write_csv(scores, out / "metrics.csv", summaries)
    plot_dice_boxplot(scores, out / "dice_boxplot.png")
    figures.append("dice_boxplot.png")
    if "fullres" in scores and "moe" in scores:
        plot_paired_dice(scores["fullres"], scores["moe"], "baseline 3d_fullres", "MoE", out / "paired_dice.png")
        figures.append("paired_dice.png")
        common = sorted(set(scores["fullres"]) & set(scores["moe"]),
                        key=lambda c: -abs(scores["moe"][c].dice - scores["fullres"][c].dice))
        for case in common[:args.overlays]:
            plot_overlay(case, raw_data_dir() / task / "imagesTr" / f"{case}_0000.nii.gz",
                         references / f"{case}.nii.gz",
                         validation_predictions_dir("fullres", folders["fullres"]) / f"{case}.nii.gz",
                         validation_predictions_dir("moe", folders["moe"]) / f"{case}.nii.gz",
                         out / f"overlay_{case}.png")
            figures.append(f"overlay_{case}.png")
    if "moe" in scores and plot_moe_training(folders["moe"] / "moe_log.json", out / "moe_training.png"):
        figures.append("moe_training.png")
    lines += ["", "Metrics: Dice; normalised surface Dice (NSD) at the tolerance; HD95 in mm; volume error in ml. "
              "Both masks empty: Dice = NSD = 1, HD95 = 0. One empty: Dice = NSD = 0, HD95 undefined (counted, "
              "left out of its mean).", "", "Per-case values: metrics.csv", ""]
    lines += [f"![{f}]({f})" for f in figures]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(summary))
    print(f"report written to {out / 'report.md'}")


if __name__ == "__main__":
    main_guard(main)
