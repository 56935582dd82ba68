"""The trained fixtures of the workflow tests: one tiny run of the workflow, built once per test session and
extended stage by stage (baseline, then weights and semi, then control, then evaluate)."""
import pytest

from covidseg.data.phantoms import write_download
from tests.helpers import BASELINE_ITERATIONS, FULLRES_EPOCHS, PLANS, TASK, WORKFLOW_PHANTOMS, Workflow


@pytest.fixture(scope="session")
def workflow(tmp_path_factory) -> Workflow:
    """synthetic download (12 train cases) -> convert (2 held-out test cases; of the other 10, 60% labelled)
    -> preprocess (CPU demo planner, unlabelled pool too) -> baseline: 3d_fullres and 3d_lowres trained for 24 epochs
    of 16 iterations, ensembled. The later stages train for the Workflow's 2 epochs of 3 iterations."""
    flow = Workflow(tmp_path_factory.mktemp("workflow"))
    write_download(flow.root / "download", n_train=12, n_validation=2, seed=5, settings=WORKFLOW_PHANTOMS)
    flow.outputs["convert"] = flow.command("convert", str(flow.root / "download"), "--output-base",
                                           str(flow.root / "raw" / "nnUNet_raw_data"), "--labeled-fraction",
                                           "0.6", "--test-fraction", "0.2").stdout
    flow.outputs["preprocess"] = flow.command("preprocess", "--task", str(TASK), "--planner3d",
                                              "ExperimentPlanner3D_v21_CPUDemo", "--plans", PLANS, "--tl", "1",
                                              "--tf", "1").stdout
    # the baseline trains long enough to find the lesions (the Grad-CAM tests need a model that has learned
    # something); both configurations get this budget, as `make baseline` gives them one budget
    flow.baseline_env = {"nnUNet_max_num_epochs": str(FULLRES_EPOCHS),
                         "nnUNet_num_batches_per_epoch": str(BASELINE_ITERATIONS)}
    flow.outputs["baseline"] = flow.command("baseline", *flow.workflow_args(), env_extra=flow.baseline_env).stdout
    return flow


@pytest.fixture(scope="session")
def moe_workflow(workflow) -> Workflow:
    """The workflow, then make weights and make semi (nnUNetTrainerV2_moe for 2 epochs of 3 iterations)."""
    workflow.outputs["weights"] = workflow.command("weights", *workflow.workflow_args()).stdout
    workflow.outputs["semi"] = workflow.command("semi", *workflow.workflow_args()).stdout
    return workflow


@pytest.fixture(scope="session")
def control_workflow(moe_workflow) -> Workflow:
    """Then make control (nnUNetTrainerV2_finetune from the baseline, the MoE's 2 epochs of 3 iterations) at
    FINETUNE_LR=0.002."""
    moe_workflow.outputs["control"] = moe_workflow.command("control", *moe_workflow.workflow_args(),
                                                           env_extra={"FINETUNE_LR": "0.002"}).stdout
    return moe_workflow


@pytest.fixture(scope="session")
def evaluated_workflow(control_workflow) -> Workflow:
    """Then make evaluate: every model segments the 2 held-out test cases."""
    control_workflow.outputs["evaluate"] = control_workflow.command("evaluate", *control_workflow.workflow_args(),
                                                                    "--disable-tta").stdout
    return control_workflow
