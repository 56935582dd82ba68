"""Shared fixtures: a small synthetic COVID-19-20 download and per-test nnU-Net folders."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

# one data-augmentation process per generator: the tests run on 2 cores (read when nnU-Net is imported)
os.environ.setdefault("nnUNet_n_proc_DA", "1")

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
sys.path.insert(0, str(SCRIPTS))

from make_synthetic_covid import PhantomSettings, write_download  # noqa: E402

# small phantoms: fast to write, convert and preprocess on a CPU
TINY = PhantomSettings(xy_range=(56, 64), z_range=(18, 22), spacing_xy_range=(4.0, 4.6))
# large enough against the demo planner's patch for nnU-Net to plan a 3d_lowres stage
WORKFLOW_PHANTOMS = PhantomSettings(xy_range=(100, 108), z_range=(32, 36), spacing_xy_range=(2.9, 3.1))
TASK, FOLD, PLANS, TRAINER, MOE_TRAINER = 200, 4, "nnUNetPlans_CPUDemo", "nnUNetTrainerV2", "nnUNetTrainerV2_moe"
TASK_NAME = "Task200_COVID_19_20"
FULLRES_EPOCHS = 24


@pytest.fixture(scope="session")
def synthetic_download(tmp_path_factory) -> Path:
    """A read-only synthetic download: 8 train cases, 2 validation cases."""
    root = tmp_path_factory.mktemp("download")
    write_download(root, n_train=8, n_validation=2, seed=1, settings=TINY)
    return root


@pytest.fixture
def nnunet_folders(tmp_path, monkeypatch) -> dict:
    """Point nnU-Net's three environment variables at empty folders of this test."""
    folders = {"nnUNet_raw_data_base": tmp_path / "raw", "nnUNet_preprocessed": tmp_path / "preprocessed",
               "RESULTS_FOLDER": tmp_path / "results"}
    for variable, folder in folders.items():
        folder.mkdir()
        monkeypatch.setenv(variable, str(folder))
    return folders


def run_env(**extra) -> dict:
    """Environment for a subprocess: this one, plus extra variables (as strings)."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])  # nnU-Net's commands
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_script(script: str, *args: str, env: dict, expect_ok: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, str(SCRIPTS / script), *args], env=env, capture_output=True, text=True)
    if expect_ok:
        assert result.returncode == 0, f"{script} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


class Workflow:
    """Folders and environment of one tiny run of the workflow."""

    def __init__(self, root: Path):
        self.root = root
        self.env = run_env(nnUNet_raw_data_base=root / "raw", nnUNet_preprocessed=root / "preprocessed",
                           RESULTS_FOLDER=root / "results", nnUNet_max_num_epochs=2, nnUNet_num_batches_per_epoch=3,
                           nnUNet_num_val_batches_per_epoch=1, nnUNet_n_proc_DA=1, nnUNet_def_n_proc=2,
                           MOE_WARMUP_EPOCHS=0, MOE_RAMPUP_EPOCHS=1)
        self.outputs = {}

    @property
    def raw_task(self) -> Path:
        return self.root / "raw" / "nnUNet_raw_data" / TASK_NAME

    @property
    def preprocessed_task(self) -> Path:
        return self.root / "preprocessed" / TASK_NAME

    def model(self, configuration: str, trainer: str = TRAINER) -> Path:
        """nnU-Net's folder of a trained configuration: RESULTS_FOLDER/nnUNet/<config>/<task>/<trainer>__<plans>/fold_F."""
        return self.root / "results" / "nnUNet" / configuration / TASK_NAME / f"{trainer}__{PLANS}" / f"fold_{FOLD}"

    def script(self, name: str, *args: str, expect_ok: bool = True) -> subprocess.CompletedProcess:
        return run_script(name, *args, env=self.env, expect_ok=expect_ok)

    def workflow_args(self):
        return ["--task", str(TASK), "--fold", str(FOLD), "--plans", PLANS, "--trainer", TRAINER]


@pytest.fixture(scope="session")
def workflow(tmp_path_factory) -> Workflow:
    """synthetic download -> convert (60% labelled) -> preprocess (CPU demo planner, unlabelled pool too)
    -> baseline: 3d_fullres trained for 24 epochs of 25 iterations, 3d_lowres for 2 of 3, ensembled."""
    flow = Workflow(tmp_path_factory.mktemp("workflow"))
    write_download(flow.root / "download", n_train=10, n_validation=2, seed=5, settings=WORKFLOW_PHANTOMS)
    flow.outputs["convert"] = flow.script("COVID_19_20.py", str(flow.root / "download"), "--output-base",
                                          str(flow.root / "raw" / "nnUNet_raw_data"), "--labeled-fraction", "0.6").stdout
    flow.outputs["preprocess"] = flow.script("preprocess.py", "--task", str(TASK), "--planner3d",
                                             "ExperimentPlanner3D_v21_CPUDemo", "--plans", PLANS, "--tl", "1",
                                             "--tf", "1").stdout
    # 3d_fullres trains long enough to find the lesions (the Grad-CAM tests need a model that has learned
    # something); baseline.py then finds it trained, trains 3d_lowres briefly and ensembles
    fullres_env = dict(flow.env, nnUNet_max_num_epochs=str(FULLRES_EPOCHS), nnUNet_num_batches_per_epoch="25")
    subprocess.run(["nnUNet_train", "3d_fullres", TRAINER, str(TASK), str(FOLD), "-p", PLANS, "--npz"],
                   env=fullres_env, check=True, capture_output=True)
    flow.outputs["baseline"] = flow.script("baseline.py", *flow.workflow_args()).stdout
    return flow


@pytest.fixture(scope="session")
def moe_workflow(workflow) -> Workflow:
    """The workflow, then make weights and make semi (nnUNetTrainerV2_moe for 2 epochs of 3 iterations)."""
    workflow.outputs["weights"] = workflow.script("moe_weights.py", *workflow.workflow_args()).stdout
    workflow.outputs["semi"] = workflow.script("semi.py", *workflow.workflow_args()).stdout
    return workflow
