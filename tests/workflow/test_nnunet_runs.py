"""covidseg.runs.nnunet_runs: a training killed with SIGKILL (pre-emption, out-of-memory kill) is resumed by running
the same make target again, at the epoch after its last checkpoint, and finishes with the requested epoch count."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from tests.helpers import MOE_TRAINER, PLANS, TASK, TRAINER

EPOCHS, KILL_AFTER = 5, 2
FOLD = "2"  # neither the shared workflow's fold (4) nor the one other tests need untrained (0)


def saved_epoch(checkpoint: Path) -> int:
    return torch.load(checkpoint, map_location="cpu", weights_only=False)["epoch"]


def descendants(pid: int):
    """Every process below `pid` (from /proc), including those in another session (torchrun's workers)."""
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_tree(pid: int) -> None:
    """SIGKILL a process, its group and every descendant at once, as a pre-empted or out-of-memory job dies."""
    below = descendants(pid)
    os.killpg(pid, signal.SIGKILL)
    for child in below:
        try:
            os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            pass


def start_and_kill_after_a_saved_epoch(command, env, folder: Path, timeout: float = 600) -> int:
    """Run `command` in its own process group; SIGKILL the group once model_latest holds epoch >= KILL_AFTER.
    Returns the epoch of the checkpoint left behind (which must load)."""
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               start_new_session=True)
    latest, deadline = folder / "model_latest.model", time.time() + timeout
    try:
        while time.time() < deadline:
            assert process.poll() is None, f"finished before it could be killed: {process.stderr.read()[-2000:]}"
            try:
                if latest.is_file() and saved_epoch(latest) >= KILL_AFTER:
                    break
            except FileNotFoundError:  # replaced between the two calls
                pass
            time.sleep(0.2)
        else:
            raise AssertionError(f"no checkpoint of epoch {KILL_AFTER} within {timeout} s")
    finally:
        kill_tree(process.pid)
        process.wait()
    assert not (folder / "model_final_checkpoint.model").exists()
    return saved_epoch(latest)


def first_epoch_of_the_last_run(folder: Path) -> int:
    log = max(folder.glob("training_log_*.txt"), key=lambda p: p.stat().st_mtime).read_text()
    assert "loading checkpoint" in log
    return int(log.split("epoch: ", 1)[1].split()[0])


def resume_and_check(workflow, command: str, folder: Path, *args: str) -> None:
    env = dict(workflow.env, nnUNet_max_num_epochs=str(EPOCHS), nnUNet_num_batches_per_epoch="2",
               nnUNet_save_every="1")
    arguments = ["--task", str(TASK), "--fold", FOLD, "--plans", PLANS, "--no-validation", *args]
    left = start_and_kill_after_a_saved_epoch([sys.executable, "-m", f"covidseg.{command}", *arguments], env, folder)
    result = workflow.command(command, *arguments, env_extra={k: env[k] for k in (
        "nnUNet_max_num_epochs", "nnUNet_num_batches_per_epoch", "nnUNet_save_every")})  # the same settings
    assert "resuming the interrupted training" in result.stdout
    assert first_epoch_of_the_last_run(folder) == left  # the epoch after the last saved one (0-based)
    assert saved_epoch(folder / "model_final_checkpoint.model") == EPOCHS
    assert not (folder / "model_latest.model").exists()


def test_killed_baseline_and_moe_trainings_resume_at_the_next_epoch(workflow):
    baseline = workflow.model("3d_fullres").parent / f"fold_{FOLD}"
    resume_and_check(workflow, "baseline", baseline, "--trainer", TRAINER, "--fullres-only")
    workflow.command("weights", "--task", str(TASK), "--fold", FOLD, "--plans", PLANS, "--trainer", TRAINER)
    moe = workflow.model("3d_fullres", MOE_TRAINER).parent / f"fold_{FOLD}"
    resume_and_check(workflow, "semi", moe, "--trainer", TRAINER)
    assert (moe / "moe_log.json").is_file()
