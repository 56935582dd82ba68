"""make report on the tiny workflow: files, tables (test set and validation), missing models and models lacking
cases."""
import csv
import shutil

import pytest
import SimpleITK as sitk

from tests.helpers import BASELINE_ITERATIONS, FULLRES_EPOCHS, MOE_TRAINER, TASK_NAME, run_command, run_env


@pytest.fixture(scope="module")
def report(evaluated_workflow, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    result = evaluated_workflow.command("report", *evaluated_workflow.workflow_args(), "--moe-trainer", MOE_TRAINER,
                                        "--output", str(out))
    return out, result.stdout


def test_report_files(report):
    out, _ = report
    for name in ("report.md", "metrics.csv", "dice_boxplot.png", "paired_dice.png", "moe_training.png",
                 "test_metrics.csv", "paired_test_dice.png"):
        assert (out / name).stat().st_size > 0, name
    assert len(list(out.glob("overlay_*.png"))) >= 1


def test_markdown_has_header_and_a_row_per_model(report):
    out, stdout = report
    text = (out / "report.md").read_text()
    assert "labelled fraction: 0.6" in text and "test fraction: 0.2" in text
    assert "labelled cases: 6; unlabelled cases: 4; held-out test cases: 2" in text
    assert "| moe | nnUNetTrainerV2_moe | 2 epochs x 3 iterations, initial LR 0.01 | from " in text
    assert "| control | nnUNetTrainerV2_finetune | 2 epochs x 3 iterations, initial LR 0.002 |" in text
    assert (f"| fullres | nnUNetTrainerV2 | {FULLRES_EPOCHS} epochs x {BASELINE_ITERATIONS} iterations, initial LR "
            f"0.01 | from scratch | - |") in text
    assert "settings: not recorded" not in text and "moe.top_k=2" in text
    validation = text.split("## Validation (fold 4)")[1]
    for model in ("lowres", "fullres", "ensemble", "control", "moe"):
        assert f"| {model} |" in validation and f"| {model} |" in stdout
    assert "![paired_dice.png](paired_dice.png)" in text


def test_test_set_section_has_intervals_lesion_free_cases_apart_and_paired_differences(report, evaluated_workflow):
    out, stdout = report
    text = (out / "report.md").read_text()
    assert text.index("## Test set") < text.index("## Validation")
    section = text.split("## Test set")[1].split("## Validation")[0]
    assert "2 held-out case(s)" in section and section in stdout
    references = [sitk.GetArrayFromImage(sitk.ReadImage(str(p))).any()
                  for p in sorted((evaluated_workflow.raw_task / "labelsTs").glob("*.nii.gz"))]
    for model in ("lowres", "fullres", "ensemble", "control", "moe"):
        row = next(line for line in section.splitlines() if line.startswith(f"| {model} |")).split("|")[1:-1]
        assert int(row[1]) == sum(references) and int(row[6]) == len(references) - sum(references)
        if sum(references):
            mean, low, high = (float(v) for v in row[2].replace("[", "").replace("]", "").replace(",", "").split())
            assert low <= mean <= high and 0 <= low and high <= 1
    for comparison in ("moe - control", "moe - fullres", "control - fullres", "ensemble - fullres"):
        line = next(line for line in section.splitlines() if line.startswith(f"| {comparison} |"))
        assert "significant" in line or "no common cases" in line
    rows = list(csv.DictReader(open(out / "test_metrics.csv")))
    assert len(rows) == 5 * 2 and {r["model"] for r in rows} == {"lowres", "fullres", "ensemble", "control", "moe"}


def test_csv_has_every_case_of_every_model(report, moe_workflow):
    out, _ = report
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    validated = sorted(p.name[:-7] for p in (moe_workflow.model("3d_fullres") / "validation_raw").glob("*.nii.gz"))
    for model in ("lowres", "fullres", "ensemble", "moe"):
        assert sorted(r["case"] for r in rows if r["model"] == model and r["case"] != "mean") == validated
        assert 0 <= float(next(r for r in rows if r["model"] == model and r["case"] == "mean")["dice"]) <= 1


def test_missing_model_and_lacking_cases_are_reported(moe_workflow, tmp_path):
    """A copy of the results without the MoE, and with one more validated case for 3d_fullres only."""
    results, references = tmp_path / "results", tmp_path / "preprocessed" / TASK_NAME / "gt_segmentations"
    shutil.copytree(moe_workflow.root / "results", results)
    shutil.copytree(moe_workflow.preprocessed_task / "gt_segmentations", references)
    moe_models = list(results.rglob(f"{MOE_TRAINER}__*"))
    assert moe_models, "the fixture trained an MoE"
    for moe in moe_models:
        shutil.rmtree(moe)
    fullres = next(results.rglob("3d_fullres/*/nnUNetTrainerV2__*/fold_4/validation_raw"))
    case = next(fullres.glob("*.nii.gz"))
    shutil.copy(case, fullres / "extra_case.nii.gz")
    shutil.copy(references / case.name, references / "extra_case.nii.gz")
    env = dict(moe_workflow.env, RESULTS_FOLDER=str(results), nnUNet_preprocessed=str(tmp_path / "preprocessed"))
    out = run_command("report", *moe_workflow.workflow_args(), "--output", str(tmp_path / "r"), env=env).stdout
    assert "not trained (no final checkpoint under RESULTS_FOLDER): " in out
    assert "moe" in out.split("not trained (no final checkpoint under RESULTS_FOLDER): ")[1].splitlines()[0]
    assert "lowres: lacks 1 case(s) the others have: extra_case" in out
    assert "ensemble: lacks 1 case(s)" in out and "fullres: lacks" not in out


def test_report_without_any_model_names_the_target(tmp_path):
    (tmp_path / "raw" / "nnUNet_raw_data" / "Task200_X").mkdir(parents=True)
    (tmp_path / "pre" / "Task200_X" / "gt_segmentations").mkdir(parents=True)
    env = run_env(nnUNet_raw_data_base=tmp_path / "raw", nnUNet_preprocessed=tmp_path / "pre",
                  RESULTS_FOLDER=tmp_path / "res")

    result = run_command("report", "--task", "200", "--output", str(tmp_path / "r"), env=env, expect_ok=False)
    assert result.returncode == 1 and "run 'make baseline'" in result.stderr


def test_a_prediction_on_another_grid_is_an_error_naming_the_file(moe_workflow, tmp_path):
    """A library exception (grid mismatch) reaches the user as one ERROR line naming the file, not a traceback."""
    results, references = tmp_path / "results", tmp_path / "preprocessed" / TASK_NAME / "gt_segmentations"
    shutil.copytree(moe_workflow.root / "results", results)
    shutil.copytree(moe_workflow.preprocessed_task / "gt_segmentations", references)
    fullres = next(results.rglob("3d_fullres/*/nnUNetTrainerV2__*/fold_4/validation_raw"))
    case = next(fullres.glob("*.nii.gz"))
    image = sitk.ReadImage(str(case))
    sitk.WriteImage(image[:, :, 1:], str(case))  # one slice fewer than its reference
    env = dict(moe_workflow.env, RESULTS_FOLDER=str(results), nnUNet_preprocessed=str(tmp_path / "preprocessed"))
    result = run_command("report", *moe_workflow.workflow_args(), "--output", str(tmp_path / "r"), env=env,
                         expect_ok=False)
    assert result.returncode == 1 and result.stderr.startswith("ERROR:")
    assert str(case) in result.stderr and "differs from the reference" in result.stderr
    assert "Traceback" not in result.stderr
