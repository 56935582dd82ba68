"""make experiment SCHEDULER=slurm against a real SLURM: the one-node cluster of `make slurm-local`
(scripts/slurm_local.sh, Debian's slurm-wlm and munge), started here when it is not running.

A tiny protocol (2 seeds x fullres + control, the CPU budget cut to 2 epochs of 3 iterations) is submitted; one
control job is cancelled while it trains; the second call shows that job's end and submits it (and the collection)
again, nothing else, waits, and prints the table; a third call submits nothing; the local protocol on the same folder
finds every model trained and scores them to the same results.csv."""
import csv
import re
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from covidseg.data.phantoms import write_download
from tests.helpers import TINY, run_env

ROOT = Path(__file__).resolve().parents[2]
TINY_PROTOCOL = ["--labeled-fractions", "0.5", "--seeds", "0", "1", "--test-fraction", "0.2", "--methods", "fullres",
                 "control", "--size", "cpu", "--epochs", "2", "--finetune-epochs", "2", "--iterations", "3",
                 "--val-iterations", "1", "--warmup-epochs", "0", "--rampup-epochs", "1"]


@pytest.fixture(scope="module")
def local_slurm():
    """The local cluster; stopped again at the end when this fixture started it."""
    was_running = subprocess.run([str(ROOT / "scripts" / "slurm_local.sh"), "status"]).returncode == 0
    if not was_running:
        started = subprocess.run([str(ROOT / "scripts" / "slurm_local.sh"), "start"], capture_output=True,
                                 text=True, timeout=600)
        if started.returncode != 0:
            pytest.skip(f"no local SLURM cluster could start here (make slurm-local): "
                        f"{(started.stderr or started.stdout).strip()[-500:]}")
    yield
    if not was_running:
        subprocess.run([str(ROOT / "scripts" / "slurm_local.sh"), "stop"], capture_output=True)


def experiment(download, folder, *args):
    result = subprocess.run([sys.executable, "-m", "covidseg.experiment", str(download), "--dir", str(folder),
                             *TINY_PROTOCOL, *args], env=run_env(nnUNet_n_proc_DA=1), capture_output=True, text=True,
                            cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def submitted_jobs(output):
    """stage name -> job id, from the 'submitted job' lines."""
    return dict(re.findall(r"^(.+?): submitted job (\d+)", output, flags=re.M))


def job_fields(job):
    text = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True, text=True).stdout
    return dict(item.split("=", 1) for item in text.split() if "=" in item)


def queued(jobs):
    out = subprocess.run(["squeue", "-h", "-o", "%i %T", "-j", ",".join(jobs)], capture_output=True, text=True).stdout
    return dict(line.split() for line in out.splitlines() if line.strip())


def wait_until(condition, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout} s waiting until {what}")


def checkpoints(folder):
    return {p: p.stat().st_mtime_ns for p in sorted(folder.rglob("model_final_checkpoint.model"))}


def test_experiment_on_slurm_resubmits_a_cancelled_job_and_nothing_finished(local_slurm, tmp_path):
    again = subprocess.run([str(ROOT / "scripts" / "slurm_local.sh"), "start"], capture_output=True, text=True)
    assert again.returncode == 0 and "slurm-local: running (local" in again.stdout  # idempotent: left as it is
    download, folder = tmp_path / "download", tmp_path / "exp"
    write_download(download, n_train=10, n_validation=1, seed=3, settings=replace(TINY, sites=2))

    first = experiment(download, folder, "--scheduler", "slurm")
    jobs = submitted_jobs(first.stdout)
    assert sorted(jobs) == ["collect", "lf=0.5 seed=0 control", "lf=0.5 seed=0 fullres", "lf=0.5 seed=1 control",
                            "lf=0.5 seed=1 fullres"]
    assert f"squeue -j {','.join(jobs.values())}" in first.stdout
    # each control waits for its own baseline, the collection for every method (SLURM's record of the dependency:
    # the one-node cluster runs one job at a time in order, so start times would prove nothing)
    for seed in (0, 1):
        assert job_fields(jobs[f"lf=0.5 seed={seed} control"])["Dependency"].startswith(
            f"afterok:{jobs[f'lf=0.5 seed={seed} fullres']}")
    assert all(f"afterok:{job}" in job_fields(jobs["collect"])["Dependency"]
               for name, job in jobs.items() if name != "collect")

    killed = jobs["lf=0.5 seed=0 control"]
    wait_until(lambda: queued([killed]).get(killed) == "RUNNING", 600, f"job {killed} runs")
    time.sleep(3)  # into its training
    subprocess.run(["scancel", killed], check=True)
    wait_until(lambda: not queued(list(jobs.values())), 600, "the first submission's jobs leave the queue")
    assert not (folder / "results.csv").exists()  # the collection never ran: its dependency failed

    second = experiment(download, folder, "--scheduler", "slurm", "--wait", "--poll-seconds", "2")
    assert f"lf=0.5 seed=0 control: job {killed} ended without finishing (CANCELLED" in second.stdout
    assert f"*** JOB {killed} ON" in second.stdout  # the end of its log
    resubmitted = submitted_jobs(second.stdout)
    assert sorted(resubmitted) == ["collect", "lf=0.5 seed=0 control"]
    assert "## Labelled fraction 0.5" in second.stdout and "| control - fullres |" in second.stdout

    # the resubmitted control has no dependency left: its baseline had finished
    assert job_fields(resubmitted["lf=0.5 seed=0 control"])["Dependency"] == "(null)"
    rows = list(csv.DictReader(open(folder / "results.csv")))
    assert {(r["seed"], r["method"]) for r in rows} == {(s, m) for s in ("0", "1") for m in ("fullres", "control")}
    assert (folder / "runs" / "lf0.5_seed0" / "slurm" / f"control-{resubmitted['lf=0.5 seed=0 control']}.log").is_file()

    # the baseline's job unpacked the unlabelled pool, so jobs after it on a cluster never unpack it at once
    pool = folder / "runs" / "lf0.5_seed1" / "preprocessed" / "Task200_COVID_19_20" / "unlabeled"
    packed = sorted(pool.rglob("*.npz"))
    assert packed and all(p.with_suffix(".npy").is_file() for p in packed)

    trained = checkpoints(folder)
    results = (folder / "results.csv").read_text()
    third = experiment(download, folder, "--scheduler", "slurm")
    assert "nothing submitted" in third.stdout and not submitted_jobs(third.stdout)

    local = experiment(download, folder)  # the protocol on this machine accepts every model as trained
    assert checkpoints(folder) == trained and len(trained) == 4
    assert "trained, checking its settings" in local.stdout and (folder / "results.csv").read_text() == results
