"""`make experiment`: the whole comparison protocol in one command, over labelled fractions and seeds.

For every labelled fraction x seed (a run, in <dir>/runs/lf<fraction>_seed<seed>/, with its own nnU-Net folders):
    convert (the test set held out first, so it is the same for every fraction of a seed; smaller labelled
    fractions nested in larger ones) -> preprocess -> for each method (covidseg.runs.methods): train it (nnU-Net's
    fold `all`: every labelled case trains, the held-out test set does the evaluating) -> segment the test set
then, over all runs:
    <dir>/results.csv                  one row per fraction, seed, method and test case
    <dir>/results.md                   per fraction: each method's mean Dice, NSD, HD95 over the test cases with a
                                       lesion (95% bootstrap CI over seed x case), lesion-free cases apart, and the
                                       paired differences (MoE - control, ...) with CI and Wilcoxon p; with a
                                       site table, the same per scanner site (results.csv has the site too)
    <dir>/dice_vs_labeled_fraction.png mean test Dice and its CI per method over the labelled fractions

PRESET=multisite (--preset multisite): a synthetic download from 3 scanner sites (made in <dir>/download when
DATA is not given; a given DATA needs a sites.csv) in which the labelled cases come mostly (80%) from site A,
while the unlabelled pool and the test set span all sites: the case where unlabelled scans from other hospitals
should help.

Every stage skips what is finished (a converted and preprocessed run, a trained model, a segmented case) and an
interrupted training resumes, so calling it again continues where it stopped. A model trained with other settings
than those asked for now (another budget, another MoE setting: its settings.json) is refused, naming the settings;
FORCE=1 (--force) trains such models again, and only those. results.md states each method's budget and settings as
its models record them, and test predictions are scored only when their model's current checkpoint made them.
All methods of a run share one RESULTS_FOLDER (<run>/results), each in its trainer's folder.

With --gpus, independent runs go in parallel, one per GPU (CUDA_VISIBLE_DEVICES); without, one after another.
Each run logs its commands' output to <run>/log.txt.

--scheduler slurm (SCHEDULER=slurm) submits the same protocol to SLURM instead (covidseg.runs.slurm): one job per run
and method, each after the jobs of the methods it starts from, then one job that collects the results; each job's
log is <run>/slurm/<method>-<job id>.log. Calling it again submits only what is neither finished nor queued;
--wait (WAIT=1) waits for the jobs and prints the table.
"""
import argparse
import csv
import json
import os
import queue
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import matplotlib

matplotlib.use("agg")
import matplotlib.pyplot as plt

from covidseg.core.errors import WorkflowError, main_guard, translate_errors
from covidseg.runs import slurm
from covidseg.runs.methods import EXPERIMENT_METHODS, METHODS, Method, resolve
from covidseg.runs.provenance import budget_line, read_record, settings_line
from covidseg.core.workspace import file_sha256, fold_folder
from covidseg.evaluation import held_out
from covidseg.evaluation.metrics import CaseFileError, CaseMetrics, metrics_per_case
from covidseg.evaluation.prediction_records import model_record, verify_folder

TASK_ID, TASK = 200, "Task200_COVID_19_20"
FOLD = "all"
BASE_TRAINER = METHODS["fullres"].trainer
TRAINING_COMMANDS = ("baseline", "control", "semi", "selftrain", "meanteacher")


@dataclass(frozen=True)
class Budget:
    """What SIZE sets: the planner and the training length (None: nnU-Net's or the trainer's own)."""
    planner: str
    plans: str
    epochs: Optional[int]            # the baseline's
    finetune_epochs: Optional[int]   # the control's and the MoE's (the same budget)
    iterations: Optional[int]
    val_iterations: Optional[int]
    warmup_epochs: Optional[int]
    rampup_epochs: Optional[int]
    tta: bool
    processes: int


SIZES = {
    # the CPU demo's planner and lengths: a 2-fraction, 1-seed run on a small synthetic download in about an hour
    "cpu": Budget("ExperimentPlanner3D_v21_CPUDemo", "nnUNetPlans_CPUDemo", epochs=25, finetune_epochs=10,
                  iterations=25, val_iterations=4, warmup_epochs=2, rampup_epochs=5, tta=False, processes=2),
    # nnU-Net's own planner and 1000 x 250 baseline; fine-tuning for a quarter of that
    "gpu": Budget("ExperimentPlanner3D_v21", "nnUNetPlansv2.1", epochs=None, finetune_epochs=250, iterations=None,
                  val_iterations=None, warmup_epochs=25, rampup_epochs=100, tta=True, processes=8),
}


# the Budget fields that command-line options override (--epochs, --finetune-epochs, ...)
BUDGET_OVERRIDES = ("epochs", "finetune_epochs", "iterations", "val_iterations", "warmup_epochs", "rampup_epochs")


@dataclass(frozen=True)
class Preset:
    """A named setting of the experiment: a site bias of the labelled cases, and the synthetic download it uses
    when no DATA is given (per SIZE: arguments of `python -m covidseg.synthetic`)."""
    description: str
    labeled_site: str
    labeled_site_share: float
    synthetic: Dict[str, Tuple[str, ...]]


PRESETS = {
    "multisite": Preset("labelled cases mostly (80%) from site A; unlabelled pool and test set from all 3 sites",
                        labeled_site="A", labeled_site_share=0.8, synthetic={
                            "cpu": ("--n-train", "40", "--n-validation", "1", "--sites", "3", "--seed", "11",
                                    "--xy", "88", "104", "--z", "26", "32"),
                            "gpu": ("--n-train", "100", "--n-validation", "1", "--sites", "3", "--seed", "11",
                                    "--xy", "192", "256", "--z", "40", "62", "--spacing-xy", "1.3", "1.6")}),
}


@dataclass(frozen=True)
class Run:
    labeled_fraction: float
    seed: int
    folder: Path

    @property
    def name(self) -> str:
        return f"lf={self.labeled_fraction:g} seed={self.seed}"

    @property
    def raw_task(self) -> Path:
        return self.folder / "raw" / "nnUNet_raw_data" / TASK

    @property
    def results(self) -> Path:
        """The run's RESULTS_FOLDER: every method's model in its trainer's folder, as nnU-Net names them."""
        return self.folder / "results"

    def model(self, method: Method, plans: str) -> Path:
        return (self.results / "nnUNet" / method.configuration / TASK / f"{method.trainer}__{plans}"
                / fold_folder(FOLD))


def runs_of(folder: Path, fractions: Sequence[float], seeds: Sequence[int]) -> List[Run]:
    return [Run(f, s, folder / "runs" / f"lf{f:g}_seed{s}") for s in seeds for f in fractions]


class Runner:
    """Runs the workflow's commands for one run, each in the run's folders, logging to <run>/log.txt."""

    def __init__(self, run: Run, budget: Budget, download: Path, test_fraction: float, gpu: Optional[str] = None,
                 preset: Optional[Preset] = None, retrain_changed: bool = False, log: Optional[Path] = None):
        self.run, self.budget, self.download, self.test_fraction, self.gpu = run, budget, download, test_fraction, gpu
        self.preset, self.retrain_changed = preset, retrain_changed
        self.log = log or run.folder / "log.txt"

    def say(self, message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {self.run.name}: {message}", flush=True)

    def environment(self, method: Optional[Method]) -> Dict[str, str]:
        budget, env = self.budget, dict(os.environ)
        epochs = budget.finetune_epochs if method is not None and method.finetunes else budget.epochs
        settings = {"nnUNet_raw_data_base": self.run.folder / "raw",
                    "nnUNet_preprocessed": self.run.folder / "preprocessed", "RESULTS_FOLDER": self.run.results,
                    "nnUNet_max_num_epochs": epochs, "nnUNet_num_batches_per_epoch": budget.iterations,
                    "nnUNet_num_val_batches_per_epoch": budget.val_iterations,
                    "CONSISTENCY_WARMUP_EPOCHS": budget.warmup_epochs,
                    "CONSISTENCY_RAMPUP_EPOCHS": budget.rampup_epochs}
        env.update({k: "" if v is None else str(v) for k, v in settings.items()})
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        if self.gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = self.gpu
        return env

    def command(self, name: str, *args: str, method: Optional[Method] = None) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "a") as log:
            log.write(f"\n$ python -m covidseg.{name} {' '.join(args)}\n")
            log.flush()
            result = subprocess.run([sys.executable, "-m", f"covidseg.{name}", *args], env=self.environment(method),
                                    stdout=log, stderr=subprocess.STDOUT)
        if result.returncode != 0:
            tail = self.log.read_text(errors="replace").splitlines()[-15:]
            raise WorkflowError(f"{self.run.name}: 'python -m covidseg.{name}' failed (exit {result.returncode}); "
                                f"the run's log is {self.log}; its end:\n    " + "\n    ".join(tail))

    def model_arguments(self, command: str, method: Optional[Method] = None) -> List[str]:
        args = ["--task", str(TASK_ID), "--fold", FOLD, "--plans", self.budget.plans, "--trainer", BASE_TRAINER]
        if command == "baseline":
            args += ["--fullres-only"]
        else:  # the MoE variants (moe_cps) train their own trainer through `weights` and `semi`
            moe = method if method is not None and "semi" in method.commands else METHODS["moe"]
            args += ["--moe-trainer", moe.trainer, "--control-trainer", METHODS["control"].trainer]
        if command in TRAINING_COMMANDS + ("weights",) and self.retrain_changed:
            args += ["--retrain-changed"]
        # fold `all` validates on its own training cases: the held-out test set does the evaluating
        return args + (["--no-validation"] if command in TRAINING_COMMANDS else [])

    # ------------------------------------------------------------------ stages
    def convert(self) -> None:
        split = self.run.raw_task / "split.json"
        if split.is_file():
            recorded = json.loads(split.read_text())
            wanted = {"labeled_fraction": self.run.labeled_fraction, "test_fraction": self.test_fraction,
                      "seed": self.run.seed, "labeled_site": self.preset.labeled_site if self.preset else None}
            if any(recorded.get(k) != v for k, v in wanted.items()):
                raise WorkflowError(f"{self.run.raw_task} was converted with other settings "
                                    f"({ {k: recorded.get(k) for k in wanted} }, not {wanted}): use another "
                                    f"EXPERIMENT_DIR, or remove {self.run.folder}")
            return
        self.say("convert")
        site = ["--labeled-site", self.preset.labeled_site, "--labeled-site-share",
                str(self.preset.labeled_site_share)] if self.preset else []
        self.command("convert", str(self.download), "--task-id", str(TASK_ID), "--labeled-fraction",
                     str(self.run.labeled_fraction), "--test-fraction", str(self.test_fraction), "--seed",
                     str(self.run.seed), *site)

    def preprocess(self) -> None:
        done = self.run.folder / "preprocessed" / ".complete"
        if done.is_file():
            return
        self.say("preprocess")
        processes = str(self.budget.processes)
        self.command("preprocess", "--task", str(TASK_ID), "--planner3d", self.budget.planner, "--plans",
                     self.budget.plans, "--tl", processes, "--tf", processes, "--force")
        done.write_text("preprocessing finished\n")

    def note_earlier_layout(self) -> None:
        """Runs made before one RESULTS_FOLDER per run kept each method's models in results/<method>/."""
        earlier = [p for p in self.run.results.glob("*/nnUNet") if p.parent.name in METHODS]
        if earlier:
            self.say(f"NOTE: {', '.join(str(p.parent) for p in earlier)} hold models of the earlier per-method layout; "
                     f"they are not used (the methods train into {self.run.results / 'nnUNet'}); remove them")

    def train_and_evaluate(self, method: Method) -> None:
        finished = (self.run.model(method, self.budget.plans) / "model_final_checkpoint.model").is_file()
        self.say(f"{method.name}: {'trained, checking its settings' if finished else 'training'} "
                 f"({', '.join(method.commands)})")
        for command in method.commands:
            self.command(command, *self.model_arguments(command, method), method=method)
        self.say(f"{method.name}: segmenting the test set")
        self.command("evaluate", *self.model_arguments("evaluate"), *([] if self.budget.tta else ["--disable-tta"]),
                     "--models", method.name, method=method)

    def all_stages(self, methods: Sequence[Method]) -> None:
        self.convert()
        self.preprocess()
        self.note_earlier_layout()
        for method in methods:
            self.train_and_evaluate(method)
        self.say("done")


# ------------------------------------------------------------------ results

def sites_of(run: Run) -> Dict[str, str]:
    """Case -> scanner site, as the run's split.json records it (empty without a site table)."""
    split = run.raw_task / "split.json"
    return (json.loads(split.read_text()).get("sites") or {}) if split.is_file() else {}


def collect(runs: Sequence[Run], methods: Sequence[Method], plans: str) -> List[dict]:
    """One row per run, method and test case, from the test-set segmentations on disk."""
    rows = []
    for run in runs:
        labels = run.raw_task / "labelsTs"
        sites = sites_of(run)
        for method in methods:
            model = run.model(method, plans)
            predictions = model / "test_predictions"
            verify_folder(predictions, model_record(model, tta=True), f"{run.name} {method.name}", "make experiment")
            with translate_errors(CaseFileError, context=f"{run.name}: cannot score {method.name}"):
                scores = metrics_per_case(predictions, labels)
            for case, m in sorted(scores.items()):
                rows.append({"labeled_fraction": run.labeled_fraction, "seed": run.seed, "method": method.name,
                             "case": case, "site": sites.get(case, ""), **m.as_row()})
    return rows


def write_results_csv(rows: List[dict], path: Path) -> None:
    fields = ["labeled_fraction", "seed", "method", "case", "site", "dice", "nsd", "hd95_mm", "volume_error_ml",
              "reference_ml", "predicted_ml", "reference_empty", "prediction_empty"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows({k: row[k] for k in fields} for row in rows)


def scores_by_method(rows: List[dict], fraction: float) -> Dict[str, Dict[str, CaseMetrics]]:
    """method -> '<seed>/<case>' -> metrics: the cases of every seed pooled, paired across methods."""
    fields = list(CaseMetrics.__dataclass_fields__)
    scores: Dict[str, Dict[str, CaseMetrics]] = {}
    for row in rows:
        if row["labeled_fraction"] == fraction:
            scores.setdefault(row["method"], {})[f"{row['seed']}/{row['case']}"] = \
                CaseMetrics(**{k: row[k] for k in fields})
    return scores


ScoresByFraction = Dict[float, Dict[str, Dict[str, CaseMetrics]]]  # fraction -> method -> '<seed>/<case>' -> metrics


def site_by_key(rows: List[dict]) -> Dict[str, str]:
    """'<seed>/<case>' (the keys of scores_by_method) -> site, for the rows that have one."""
    return {f"{row['seed']}/{row['case']}": row["site"] for row in rows if row.get("site")}


def recorded_budgets(runs: Sequence[Run], methods: Sequence[Method], plans: str) -> Dict[str, Dict[str, str]]:
    """method -> 'budget' and 'settings', as the runs' models' settings.json record them (the distinct values over
    the runs, joined by ' | ' when runs differ)."""
    recorded = {}
    for method in methods:
        records = [read_record(run.model(method, plans)) for run in runs]
        budgets = list(dict.fromkeys(budget_line(r) for r in records))
        settings = list(dict.fromkeys(settings_line(r) for r in records))
        recorded[method.name] = {"budget": " | ".join(budgets), "settings": " | ".join(settings)}
    return recorded


def results_markdown(scores: ScoresByFraction, seeds: Sequence[int], size: str, planner: str, test_fraction: float,
                     methods: Sequence[Method], recorded: Dict[str, Dict[str, str]],
                     preset: Optional[Preset] = None, site_of: Optional[Dict[str, str]] = None) -> List[str]:
    """site_of: '<seed>/<case>' -> site; with two sites or more each fraction gets the Dice per site too."""
    lines = ["# Experiment: test-set results per labelled fraction", "",
             f"- SIZE={size} (planner {planner}); test fraction {test_fraction:g}; seeds {list(seeds)}"
             + (f"; preset: {preset.description}" if preset else ""),
             "- methods: " + "; ".join(f"{m.name} ({m.description})" for m in methods),
             "- confidence intervals: 95% bootstrap over the test cases with a lesion, pooled over seeds "
             "(each seed has its own test set); paired differences on the same (seed, case)", "",
             "Budgets and settings as the models' settings.json record them (over all runs; the methods after "
             "fullres continue its weights):", "", "| method | budget | settings |", "|---|---|---|"]
    lines += [f"| {m.name} | {recorded[m.name]['budget']} | {recorded[m.name]['settings']} |" for m in methods]
    lines.append("")
    budgets = {name: r["budget"] for name, r in recorded.items()}
    for fraction, by_method in scores.items():
        if by_method:
            lines += [f"## Labelled fraction {fraction:g}", ""] + held_out.markdown(by_method, 1.0, budgets) + [""]
            per_site = held_out.by_site_markdown(by_method, site_of or {})
            lines += per_site + ([""] if per_site else [])
    return lines


def plot_dice_vs_fraction(scores: ScoresByFraction, methods: Sequence[Method], path: Path) -> None:
    fractions = list(scores)
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for offset, method in enumerate(methods):
        points = [(fraction, held_out.summarise(by_method[method.name]).dice)
                  for fraction, by_method in scores.items() if by_method.get(method.name)]
        if points:
            x = [f * (1 + 0.02 * (offset - (len(methods) - 1) / 2)) for f, _ in points]  # dodge the error bars
            y = [e.mean for _, e in points]
            errors = [[e.mean - e.low for _, e in points], [e.high - e.mean for _, e in points]]
            ax.errorbar(x, y, yerr=errors, marker="o", capsize=3, label=method.name)
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(list(fractions))
    ax.set_xticklabels([f"{f:g}" for f in fractions])
    ax.set_xlabel("labelled fraction of the train set")
    ax.set_ylabel("test Dice (cases with a lesion)")
    ax.set_title("Mean test Dice with 95% CI")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------ command

def parse_arguments(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("download", type=Path, nargs="?", default=None,
                        help="the COVID-19-20 download (or a synthetic one); optional with --preset")
    presets = "; ".join(f"{name}: {preset.description}" for name, preset in PRESETS.items())
    # argparse %-formats a help text: a literal % is written %%
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None, help=presets.replace("%", "%%"))
    parser.add_argument("--dir", type=Path, required=True, help="the experiment's folder (EXPERIMENT_DIR)")
    parser.add_argument("--labeled-fractions", type=float, nargs="+", default=[0.1, 0.25, 0.5])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--methods", nargs="+", default=["fullres", "control", "selftrain", "meanteacher", "moe"],
                        help=", ".join(EXPERIMENT_METHODS))
    parser.add_argument("--size", choices=sorted(SIZES), default="gpu")
    parser.add_argument("--gpus", nargs="*", default=[], help="GPU ids: runs in parallel, one per GPU")
    parser.add_argument("--force", action="store_true",
                        help="train again every model trained with other settings than those asked for now (without "
                             "it such a model is refused, naming the settings)")
    for field_name in BUDGET_OVERRIDES:
        parser.add_argument(f"--{field_name.replace('_', '-')}", type=int, default=None,
                            help="overrides SIZE's setting")
    cluster = parser.add_argument_group("SLURM (--scheduler slurm)")
    cluster.add_argument("--scheduler", choices=("local", "slurm"), default="local",
                         help="local: the runs on this machine; slurm: one sbatch job per run and method")
    cluster.add_argument("--wait", action="store_true", help="wait for the jobs, then print the table (WAIT=1)")
    cluster.add_argument("--poll-seconds", type=float, default=15.0, help="how often --wait asks squeue")
    cluster.add_argument("--slurm-partition", default=None, help="SLURM_PARTITION (empty: the cluster's default)")
    cluster.add_argument("--slurm-gpus-per-job", type=int, default=None,
                         help="SLURM_GPUS_PER_JOB (--gres=gpu:N; default 1 for SIZE=gpu, 0 for SIZE=cpu)")
    cluster.add_argument("--slurm-time", default=None, help="SLURM_TIME: each job's time limit (sbatch --time)")
    cluster.add_argument("--slurm-account", default=None, help="SLURM_ACCOUNT (sbatch --account)")
    cluster.add_argument("--slurm-options", default="",
                         help="SLURM_OPTIONS: any other sbatch options, one string (e.g. '--qos=long --mem=64G')")
    internal = parser.add_argument_group("what the SLURM jobs run (one fraction, one seed)")
    internal.add_argument("--job", default=None, metavar="METHOD", help="train and evaluate this method only")
    internal.add_argument("--collect", action="store_true", help="only collect the results of finished runs")
    return parser.parse_args(argv)


def budget_of(args: argparse.Namespace) -> Budget:
    overrides = {field: getattr(args, field) for field in BUDGET_OVERRIDES if getattr(args, field) is not None}
    return replace(SIZES[args.size], **overrides)


def make_preset_download(preset: Preset, size: str, folder: Path) -> Path:
    """The preset's synthetic download in `folder` (made once; a half-made one is made again)."""
    done = folder / ".complete"
    if not done.is_file():
        print(f"making the preset's synthetic download in {folder}", flush=True)
        subprocess.run([sys.executable, "-m", "covidseg.synthetic", str(folder), *preset.synthetic[size], "--force"],
                       check=True)
        done.write_text("made by make experiment PRESET\n")
    return folder


def run_all(runs: Sequence[Run], methods: Sequence[Method], args: argparse.Namespace, budget: Budget) -> None:
    preset = PRESETS[args.preset] if args.preset else None
    if not args.gpus:
        for run in runs:
            Runner(run, budget, args.download, args.test_fraction, preset=preset,
                   retrain_changed=args.force).all_stages(methods)
        return
    free: "queue.Queue[str]" = queue.Queue()
    for gpu in args.gpus:
        free.put(str(gpu))

    def on_a_free_gpu(run: Run) -> None:
        gpu = free.get()
        try:
            Runner(run, budget, args.download, args.test_fraction, gpu, preset, args.force).all_stages(methods)
        finally:
            free.put(gpu)

    with ThreadPoolExecutor(max_workers=len(args.gpus)) as pool:
        for future in [pool.submit(on_a_free_gpu, run) for run in runs]:
            future.result()


def write_results(args: argparse.Namespace, runs: Sequence[Run], methods: Sequence[Method], budget: Budget,
                  fractions: Sequence[float], seeds: Sequence[int]) -> None:
    rows = collect(runs, methods, budget.plans)
    write_results_csv(rows, args.dir / "results.csv")
    scores = {fraction: scores_by_method(rows, fraction) for fraction in fractions}
    lines = results_markdown(scores, seeds, args.size, budget.planner, args.test_fraction, methods,
                             recorded_budgets(runs, methods, budget.plans), PRESETS.get(args.preset),
                             site_by_key(rows))
    plot_dice_vs_fraction(scores, methods, args.dir / "dice_vs_labeled_fraction.png")
    lines += ["![dice_vs_labeled_fraction.png](dice_vs_labeled_fraction.png)", ""]
    (args.dir / "results.md").write_text("\n".join(lines))
    print_results(args.dir)


def print_results(folder: Path) -> None:
    lines = (folder / "results.md").read_text().splitlines()
    print("\n".join(line for line in lines if not line.startswith("![")))
    print(f"results: {folder / 'results.csv'}, {folder / 'results.md'}, {folder / 'dice_vs_labeled_fraction.png'}")


# ------------------------------------------------------------------ SLURM

def job_command(args: argparse.Namespace, budget: Budget, fractions: Sequence[float], seeds: Sequence[int],
                methods: Sequence[Method], *mode: str) -> List[str]:
    """The command line of a SLURM job: this command for the given runs and methods, with the budget spelt out."""
    command = [sys.executable, "-m", "covidseg.experiment", str(args.download), "--dir", str(args.dir),
               "--labeled-fractions", *[repr(f) for f in fractions], "--seeds", *[str(s) for s in seeds],
               "--test-fraction", repr(args.test_fraction), "--size", args.size,
               "--methods", *[m.name for m in methods]]
    for option in BUDGET_OVERRIDES:
        if getattr(budget, option) is not None:
            command += [f"--{option.replace('_', '-')}", str(getattr(budget, option))]
    command += ["--preset", args.preset] if args.preset else []
    return command + (["--force"] if args.force else []) + list(mode)


def method_stage(args: argparse.Namespace, budget: Budget, run: Run, method: Method) -> slurm.Stage:
    request = {"download": str(args.download), "run": run.folder.name, "labeled_fraction": run.labeled_fraction,
               "seed": run.seed, "test_fraction": args.test_fraction, "preset": args.preset, "size": args.size,
               "budget": asdict(budget), "method": method.name, "settings": slurm.settings_environment()}
    return slurm.Stage(name=f"{run.name} {method.name}", key=method.name, folder=run.folder / "slurm",
                       command=job_command(args, budget, [run.labeled_fraction], [run.seed], [method],
                                           "--job", method.name),
                       request=request, outputs=slurm.checkpoint_outputs(run.model(method, budget.plans)),
                       after=[f"{run.name} {required}" for required in method.requires])


def collect_stage(args: argparse.Namespace, budget: Budget, runs: Sequence[Run], methods: Sequence[Method],
                  fractions: Sequence[float], seeds: Sequence[int],
                  method_stages: Sequence[slurm.Stage]) -> slurm.Stage:
    def outputs() -> Dict[str, str]:
        results = args.dir / "results.csv"
        if not results.is_file():
            return {}
        if not (args.dir / "results.md").is_file():
            return {}
        made = {str(results): file_sha256(results)}
        for stage in method_stages:  # the checkpoints scored (their stages hash them): a retrained model makes the
            made.update(slurm.recorded_outputs(stage))  # results stale
        return made

    request = {"download": str(args.download), "runs": [r.folder.name for r in runs], "size": args.size,
               "test_fraction": args.test_fraction, "methods": [m.name for m in methods], "preset": args.preset}
    return slurm.Stage(name="collect", key="collect", folder=args.dir / "slurm",
                       command=job_command(args, budget, fractions, seeds, methods, "--collect"),
                       request=request, outputs=outputs, after=[s.name for s in method_stages], light=True)


def slurm_options(args: argparse.Namespace, budget: Budget) -> slurm.SlurmOptions:
    gpus = args.slurm_gpus_per_job if args.slurm_gpus_per_job is not None else (1 if args.size == "gpu" else 0)
    if not 0 <= gpus <= 1:
        raise WorkflowError(f"SLURM_GPUS_PER_JOB={gpus}: each job trains one method in one process, on one GPU "
                            f"(0 or 1); the experiment's jobs run side by side instead")
    return slurm.SlurmOptions(partition=args.slurm_partition or None, gpus_per_job=gpus,
                              cpus_per_job=budget.processes, time_limit=args.slurm_time or None,
                              account=args.slurm_account or None, extra=tuple(shlex.split(args.slurm_options)))


def unpack_unlabeled_pool(run: Run) -> None:
    """Unpack the run's unlabelled pool (.npz -> .npy) in the job every other method starts from: the jobs after it
    may run at once on a cluster, and nnU-Net's unpacking, run by each of them, writes the .npy files in place
    while another job may be reading them."""
    from nnunet.training.dataloading.dataset_loading import unpack_dataset

    for folder in sorted((run.folder / "preprocessed" / TASK / "unlabeled").glob("*")):
        if folder.is_dir() and any(folder.glob("*.npz")):
            unpack_dataset(str(folder))


def run_job(args: argparse.Namespace, runs: Sequence[Run], budget: Budget) -> None:
    """What a SLURM job runs: one method of one run (the stages it needs first skip what is done)."""
    if len(runs) != 1:
        raise WorkflowError("--job trains one method of one run: give one labelled fraction and one seed")
    run, method = runs[0], METHODS[args.job]
    stage = method_stage(args, budget, run, method)
    runner = Runner(run, budget, args.download, args.test_fraction, preset=PRESETS.get(args.preset),
                    retrain_changed=args.force, log=stage.log(os.environ.get("SLURM_JOB_ID", "manual")))
    runner.convert()
    runner.preprocess()
    runner.note_earlier_layout()
    runner.train_and_evaluate(method)
    if not method.requires:
        unpack_unlabeled_pool(run)
    slurm.mark_done(stage)
    runner.say(f"{method.name}: done")


def submit_to_slurm(args: argparse.Namespace, runs: Sequence[Run], methods: Sequence[Method], budget: Budget,
                    fractions: Sequence[float], seeds: Sequence[int]) -> None:
    method_stages = [method_stage(args, budget, run, method) for run in runs for method in methods]
    stages = method_stages + [collect_stage(args, budget, runs, methods, fractions, seeds, method_stages)]
    options = slurm_options(args, budget)
    with slurm.submission_lock(args.dir / "slurm"):
        submission = slurm.submit_protocol(stages, options, workdir=Path.cwd())
    if not submission.jobs:
        print(f"every job has finished ({len(submission.finished)} stages); nothing submitted")
        print_results(args.dir)
        return
    jobs = ",".join(submission.jobs.values())
    print(f"{len(submission.submitted)} job(s) submitted, {len(submission.jobs) - len(submission.submitted)} kept "
          f"in the queue, {len(submission.finished)} finished before. Follow them with\n"
          f"    squeue -j {jobs}\n    tail -f {args.dir}/runs/*/slurm/*.log {args.dir}/slurm/*.log\n"
          f"results.md is written by the collect job ({submission.jobs['collect']}). Call the same command again to "
          f"submit what failed or was cancelled; WAIT=1 (--wait) waits for them.", flush=True)
    if args.wait:
        slurm.wait_for(stages, submission, args.poll_seconds)
        print_results(args.dir)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_arguments(argv)
    args.dir = args.dir.resolve()
    if args.download is None:
        if args.preset is None:
            raise WorkflowError("give the download (DATA) or a preset (PRESET=multisite)")
        args.download = make_preset_download(PRESETS[args.preset], args.size, args.dir / "download")
    args.download = args.download.resolve()
    if not args.download.is_dir():
        raise WorkflowError(f"{args.download}: download folder not found (DATA)")
    if not 0 < args.test_fraction < 1:
        raise WorkflowError(f"the experiment needs a held-out test set: TEST_FRACTION must be in (0, 1), "
                            f"got {args.test_fraction}")
    bad = [f for f in args.labeled_fractions if not 0 < f <= 1]
    if bad:
        raise WorkflowError(f"labelled fractions must be in (0, 1], got {bad} (LABELED_FRACTIONS)")
    if args.scheduler == "slurm" and args.gpus:
        raise WorkflowError("GPUS places runs on this machine's GPUs; with SCHEDULER=slurm the cluster places the "
                            "jobs: set SLURM_GPUS_PER_JOB instead")
    if args.job is not None and args.job not in EXPERIMENT_METHODS:
        raise WorkflowError(f"--job {args.job}: not a method of the experiment ({', '.join(EXPERIMENT_METHODS)})")
    with translate_errors(ValueError, context="METHODS"):
        methods = resolve(args.methods)
    budget = budget_of(args)
    fractions, seeds = sorted(set(args.labeled_fractions)), list(dict.fromkeys(args.seeds))
    runs = runs_of(args.dir, fractions, seeds)
    if args.job is not None:
        run_job(args, runs, budget)
        return
    if args.collect:
        write_results(args, runs, methods, budget, fractions, seeds)
        stages = [method_stage(args, budget, run, method) for run in runs for method in methods]
        slurm.mark_done(collect_stage(args, budget, runs, methods, fractions, seeds, stages))
        return
    print(f"experiment in {args.dir}: {len(runs)} run(s) (labelled fractions {[f'{f:g}' for f in fractions]} x "
          f"seeds {seeds}), methods {', '.join(m.name for m in methods)}, SIZE={args.size}"
          + (", on SLURM" if args.scheduler == "slurm" else ""), flush=True)
    if args.scheduler == "slurm":
        submit_to_slurm(args, runs, methods, budget, fractions, seeds)
        return
    run_all(runs, methods, args, budget)
    write_results(args, runs, methods, budget, fractions, seeds)


if __name__ == "__main__":
    main_guard(main)
