"""covidseg.runs.distributed: make baseline / semi / meanteacher on 2 processes through torchrun (gloo on a CPU),
in the trainer's own folder: rank 0 alone writes, validates every case and records the world size; a 2-process MoE
training killed with SIGKILL resumes; the launch settings and the free port."""
import json
import pickle
import socket
import sys

import pytest
import torch

from covidseg.runs.distributed import Launch, free_port, launch_from_arguments
from covidseg.core.errors import WorkflowError
from tests.helpers import MOE_TRAINER, PLANS, TASK, TRAINER
from tests.workflow.test_nnunet_runs import EPOCHS, first_epoch_of_the_last_run, saved_epoch, \
    start_and_kill_after_a_saved_epoch

DDP_FOLD = "3"  # a fold no other test trains
TWO = ["--nproc-per-node", "2"]


def ddp_env(workflow, epochs: int = 2) -> dict:
    return dict(workflow.env, nnUNet_max_num_epochs=str(epochs), nnUNet_num_batches_per_epoch="2",
                nnUNet_save_every="1", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")


def model_arguments(*extra: str):
    return ["--task", str(TASK), "--fold", DDP_FOLD, "--plans", PLANS, "--trainer", TRAINER, *extra]


@pytest.fixture(scope="module")
def ddp_baseline(workflow):
    """make baseline NPROC_PER_NODE=2 (3d_fullres only), 2 epochs of 2 iterations."""
    result = workflow.command("baseline", *model_arguments("--fullres-only", *TWO), env_extra=ddp_env(workflow))
    return workflow.model("3d_fullres").parent / f"fold_{DDP_FOLD}", result


def test_make_baseline_on_two_processes_trains_its_own_folder_once(workflow, ddp_baseline):
    folder, result = ddp_baseline
    assert "torch.distributed.run" in result.stdout and "--nproc_per_node=2" in result.stdout
    checkpoint = torch.load(folder / "model_final_checkpoint.model", map_location="cpu", weights_only=False)
    assert checkpoint["epoch"] == 2
    assert not any(k.startswith("module.") for k in checkpoint["state_dict"])  # nnUNetTrainerV2's format
    debug = json.loads((folder / "debug.json").read_text())
    assert debug["world_size"] == "2" and debug["rank"] == "0"
    assert len(list(folder.glob("training_log_*.txt"))) == 1  # rank 0 alone writes the log
    validation = folder / "validation_raw"
    cases = json.loads((validation / "summary.json").read_text())["results"]["all"]
    fold_cases = pickle.loads((workflow.preprocessed_task / "splits_final.pkl").read_bytes())[int(DDP_FOLD)]["val"]
    assert sorted(p.name[:-len(".nii.gz")] for p in validation.glob("*.nii.gz")) == sorted(fold_cases)
    assert len(cases) == len(fold_cases) == len(list(validation.glob("*.npz")))  # every case, not a rank's share


def test_make_semi_on_two_processes_resumes_after_a_kill(workflow, ddp_baseline):
    workflow.command("weights", *model_arguments())
    folder = workflow.model("3d_fullres", MOE_TRAINER).parent / f"fold_{DDP_FOLD}"
    env = ddp_env(workflow, epochs=EPOCHS)
    arguments = model_arguments("--no-validation", *TWO)
    left = start_and_kill_after_a_saved_epoch([sys.executable, "-m", "covidseg.semi", *arguments], env, folder)
    result = workflow.command("semi", *arguments, env_extra=env)
    assert "resuming the interrupted training" in result.stdout
    assert first_epoch_of_the_last_run(folder) == left
    assert saved_epoch(folder / "model_final_checkpoint.model") == EPOCHS
    assert len(list(folder.glob("training_log_*.txt"))) == 2  # one per run: rank 0's
    log = json.loads((folder / "moe_log.json").read_text())
    assert [e["epoch"] for e in log] == list(range(EPOCHS))  # written once per epoch, by one process
    assert not list(folder.glob("*.tmp"))


def test_make_meanteacher_on_two_processes_saves_one_student_and_one_teacher(workflow, ddp_baseline):
    folder = workflow.model("3d_fullres", "nnUNetTrainerV2_meanteacher").parent / f"fold_{DDP_FOLD}"
    result = workflow.command("meanteacher", *model_arguments("--no-validation", *TWO), env_extra=ddp_env(workflow))
    assert "--nproc_per_node=2" in result.stdout
    assert saved_epoch(folder / "model_final_checkpoint.model") == 2
    teacher = torch.load(folder / "model_final_checkpoint.model.teacher", map_location="cpu", weights_only=True)
    student = torch.load(folder / "model_final_checkpoint.model", map_location="cpu", weights_only=False)
    assert teacher.keys() == student["state_dict"].keys()  # the plain network's keys, no DDP "module." prefix
    assert len(list(folder.glob("training_log_*.txt"))) == 1  # rank 0 alone writes
    log = next(folder.glob("training_log_*.txt")).read_text()
    assert log.count("mean teacher: consistency") == 2  # one line per epoch, means over the ranks
    assert json.loads((folder / "settings.json").read_text())["processes"] == 2


# ------------------------------------------------------------------ launch settings

def test_one_process_runs_nnunet_train_itself():
    assert Launch().command(["3d_fullres"])[0] == "nnUNet_train"


def test_a_free_port_is_chosen_when_none_is_given():
    command = Launch(nproc_per_node=2).command(["3d_fullres"])
    assert command[1:3] == ["-m", "torch.distributed.run"] and "--nproc_per_node=2" in command
    port = int(next(a for a in command if a.startswith("--master_port=")).split("=")[1])
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # nothing listens there
    assert 1024 <= free_port() <= 65535
    assert "--master_port=29512" in Launch(nproc_per_node=2, master_port=29512).command(["3d_fullres"])


@pytest.mark.parametrize("settings,message", [
    (dict(nnodes=2, master_port=None), "set MASTER_ADDR"),
    (dict(nnodes=2, master_addr="10.0.0.1", master_port=None), "MASTER_PORT"),
    (dict(nnodes=2, node_rank=2, master_addr="10.0.0.1", master_port=29500), "NODE_RANK 2 is not one of the 2"),
    (dict(nproc_per_node=0), "must be at least 1")])
def test_bad_launch_settings_are_refused_by_name(settings, message):
    from argparse import Namespace
    args = Namespace(**{**dict(nproc_per_node=1, nnodes=1, node_rank=0, master_addr="127.0.0.1", master_port=None),
                        **settings})
    with pytest.raises(WorkflowError, match=message):
        launch_from_arguments(args)
