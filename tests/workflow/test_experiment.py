"""make experiment (python -m covidseg.experiment): a tiny protocol (1 labelled fraction x 1 seed, fullres, control
and MoE) trains, segments the held-out test set, tabulates, and resumes without redoing finished work."""
import csv
import json
import pickle
import subprocess
import sys

from dataclasses import replace

import pytest

from covidseg.data.phantoms import write_download
from tests.helpers import TINY, run_env

METHODS = ("fullres", "control", "moe", "moe_cps", "moe_site")
TINY_BUDGET = ["--size", "cpu", "--epochs", "2", "--finetune-epochs", "2", "--iterations", "3", "--val-iterations",
               "1", "--warmup-epochs", "0", "--rampup-epochs", "1"]


def experiment(download, folder, *args, expect_ok=True):
    result = subprocess.run([sys.executable, "-m", "covidseg.experiment", str(download), "--dir", str(folder),
                             "--labeled-fractions", "0.5", "--seeds", "0", "--test-fraction", "0.2", "--preset",
                             "multisite", *TINY_BUDGET,
                             *args], env=run_env(nnUNet_n_proc_DA=1), capture_output=True, text=True)
    if expect_ok:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def checkpoints(folder):
    return {p: p.stat().st_mtime_ns for p in sorted(folder.rglob("model_final_checkpoint.model"))}


@pytest.fixture(scope="module")
def tiny_experiment(tmp_path_factory):
    """A two-site download (preset multisite: labelled cases mostly from site A); first only fullres (as if
    interrupted after it), then every method."""
    root = tmp_path_factory.mktemp("experiment")
    write_download(root / "download", n_train=10, n_validation=1, seed=3, settings=replace(TINY, sites=2))
    partial = experiment(root / "download", root / "exp", "--methods", "fullres")
    fullres_trained = checkpoints(root / "exp")
    complete = experiment(root / "download", root / "exp", "--methods", *METHODS)
    return root, partial, fullres_trained, complete


def test_experiment_trains_evaluates_and_tabulates_every_method(tiny_experiment):
    root, _, _, complete = tiny_experiment
    rows = list(csv.DictReader(open(root / "exp" / "results.csv")))
    assert {"labeled_fraction", "seed", "method", "case", "site", "dice", "nsd", "hd95_mm"} <= set(rows[0])
    assert {r["site"] for r in rows} <= {"A", "B"} and all(r["site"] for r in rows)  # from split.json's sites
    assert sorted({r["method"] for r in rows}) == sorted(METHODS)
    assert len(rows) == len(METHODS) * 2  # 2 held-out test cases of the 10
    assert all(0 <= float(r["dice"]) <= 1 and r["labeled_fraction"] == "0.5" and r["seed"] == "0" for r in rows)
    text = (root / "exp" / "results.md").read_text()
    assert "## Labelled fraction 0.5" in text and "| moe - control |" in text and "| control - fullres |" in text
    assert "| moe - moe_cps |" in text and "| moe_cps - control |" in text and "preset: labelled cases mostly" in text
    assert text.split("## Labelled fraction 0.5")[1].split("![")[0].strip() in complete.stdout  # printed too
    assert (root / "exp" / "dice_vs_labeled_fraction.png").stat().st_size > 10000
    run = root / "exp" / "runs" / "lf0.5_seed0"
    models = run / "results" / "nnUNet" / "3d_fullres" / "Task200_COVID_19_20"  # one RESULTS_FOLDER per run
    for trainer in ("nnUNetTrainerV2", "nnUNetTrainerV2_finetune", "nnUNetTrainerV2_moe", "nnUNetTrainerV2_moe_cps",
                    "nnUNetTrainerV2_moe_site"):
        model = models / f"{trainer}__nnUNetPlans_CPUDemo" / "all"
        assert (model / "model_final_checkpoint.model").is_file()
        assert not (model / "validation_raw").exists()  # fold all: no inference on its own training cases
        assert len(list((model / "test_predictions").glob("*.nii.gz"))) == 2
        assert json.loads((model / "settings.json").read_text())["model"]["fold"] == "all"
    for trainer, kind in (("nnUNetTrainerV2_moe", "weak_strong"), ("nnUNetTrainerV2_moe_cps", "cps")):
        model = models / f"{trainer}__nnUNetPlans_CPUDemo" / "all"  # each variant its own trainer and folder
        with open(model / "model_final_checkpoint.model.pkl", "rb") as f:
            assert pickle.load(f)["settings"]["consistency"]["kind"] == kind
        assert json.loads((model / "moe_log.json").read_text())[-1]["confident_fraction"] is not None
    for trainer in ("nnUNetTrainerV2_moe", "nnUNetTrainerV2_moe_site"):  # the sites reach the trainers (split.json)
        log = json.loads((models / f"{trainer}__nnUNetPlans_CPUDemo" / "all" / "moe_log.json").read_text())
        assert log[-1]["route_site_samples"] > 0 and 0 <= log[-1]["route_site_mi"] <= 1
    oracle = models / "nnUNetTrainerV2_moe_site__nnUNetPlans_CPUDemo" / "all"
    assert json.loads((oracle / "settings.json").read_text())["settings"]["moe"]["top_k"] == 1
    assert "| moe - moe_site |" in text
    assert "| moe | 2 epochs x 3 iterations, initial LR 0.01 |" in text
    split = json.loads((run / "raw" / "nnUNet_raw_data" / "Task200_COVID_19_20" / "split.json").read_text())
    assert split["labeled_site"] == "A" and split["labeled_site_share"] == 0.8


def test_experiment_resumes_without_redoing_finished_work(tiny_experiment):
    root, partial, fullres_trained, complete = tiny_experiment
    assert "fullres: training" in partial.stdout and "fullres: trained" in complete.stdout
    assert {p: t for p, t in checkpoints(root / "exp").items() if p in fullres_trained} == fullres_trained
    results = (root / "exp" / "results.csv").read_text()
    before = checkpoints(root / "exp")
    again = experiment(root / "download", root / "exp", "--methods", *METHODS)
    assert checkpoints(root / "exp") == before  # nothing retrained
    assert not [line for line in again.stdout.splitlines() if line.endswith((": convert", ": preprocess"))]
    assert (root / "exp" / "results.csv").read_text() == results


def test_a_run_converted_with_other_settings_is_refused(tiny_experiment):
    root = tiny_experiment[0]
    result = experiment(root / "download", root / "exp", "--methods", "fullres", "--test-fraction", "0.3",
                        expect_ok=False)
    assert result.returncode == 1 and "was converted with other settings" in result.stderr


def test_without_data_or_preset_the_experiment_says_what_to_give(tmp_path):
    result = subprocess.run([sys.executable, "-m", "covidseg.experiment", "--dir", str(tmp_path / "exp")],
                            env=run_env(), capture_output=True, text=True)
    assert result.returncode == 1 and "give the download (DATA) or a preset" in result.stderr


@pytest.mark.parametrize("args,message", [(["--methods", "moe", "nope"], "METHODS: unknown method(s) nope"),
                                          (["--test-fraction", "0"], "needs a held-out test set")])
def test_bad_settings_are_named(tmp_path, args, message):
    (tmp_path / "download").mkdir()
    result = experiment(tmp_path / "download", tmp_path / "exp", *args, expect_ok=False)
    assert result.returncode == 1 and message in result.stderr and "Traceback" not in result.stderr


def test_a_changed_budget_is_refused_by_name_and_retrained_with_force(tiny_experiment):
    root, _, _, _ = tiny_experiment
    run = root / "exp" / "runs" / "lf0.5_seed0" / "results" / "nnUNet" / "3d_fullres" / "Task200_COVID_19_20"
    before = checkpoints(root / "exp")
    changed = [a if a != "2" or i != TINY_BUDGET.index("--finetune-epochs") + 1 else "3"
               for i, a in enumerate(TINY_BUDGET)]
    refused = subprocess.run([sys.executable, "-m", "covidseg.experiment", str(root / "download"), "--dir",
                              str(root / "exp"), "--labeled-fractions", "0.5", "--seeds", "0", "--test-fraction", "0.2",
                              "--preset", "multisite", *changed, "--methods", "control"],
                             env=run_env(nnUNet_n_proc_DA=1), capture_output=True, text=True)
    assert refused.returncode == 1
    assert "budget.epochs: 2 (the model) -> 3 (now)" in refused.stderr and "FORCE=1" in refused.stderr
    assert checkpoints(root / "exp") == before
    retrained = subprocess.run(refused.args + ["--force"], env=run_env(nnUNet_n_proc_DA=1), capture_output=True,
                               text=True)
    assert retrained.returncode == 0, retrained.stdout[-3000:] + retrained.stderr[-3000:]
    after = checkpoints(root / "exp")
    control = run / "nnUNetTrainerV2_finetune__nnUNetPlans_CPUDemo" / "all" / "model_final_checkpoint.model"
    fullres = run / "nnUNetTrainerV2__nnUNetPlans_CPUDemo" / "all" / "model_final_checkpoint.model"
    assert after[control] != before[control] and after[fullres] == before[fullres]
    assert "| control | 3 epochs x 3 iterations, initial LR 0.01 |" in (root / "exp" / "results.md").read_text()
