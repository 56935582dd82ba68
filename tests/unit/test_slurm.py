"""covidseg.runs.slurm: what a call of `make experiment SCHEDULER=slurm` submits, against stand-in sbatch / squeue /
scontrol commands that record their arguments (the real local SLURM: tests/workflow/test_slurm.py)."""
import json
import os
import stat

import pytest

from covidseg.core.errors import WorkflowError
from covidseg.runs import slurm

FAKE_SBATCH = """#!/bin/bash
# records its arguments, answers the next job id
n=$(( $(cat "$FAKE/next" 2>/dev/null || echo 100) + 1 )); echo $n > "$FAKE/next"
echo "$n $*" >> "$FAKE/sbatch.calls"
echo $n
"""
FAKE_SQUEUE = """#!/bin/bash
# the queue: lines '<id> <STATE>' in $FAKE/queue
cat "$FAKE/queue" 2>/dev/null || true
"""
FAKE_SCONTROL = """#!/bin/bash
echo "JobId=$4 JobState=CANCELLED Reason=None"
"""
FAKE_SACCT = "#!/bin/bash\nexit 1\n"
FAKE_SCANCEL = """#!/bin/bash
echo "$1" >> "$FAKE/scancel.calls"
"""


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    bin_folder = tmp_path / "bin"
    bin_folder.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("squeue", FAKE_SQUEUE), ("scontrol", FAKE_SCONTROL),
                       ("sacct", FAKE_SACCT), ("scancel", FAKE_SCANCEL)):
        path = bin_folder / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_folder}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE", str(tmp_path))
    return tmp_path


def sbatch_calls(folder):
    path = folder / "sbatch.calls"
    return [line.split() for line in path.read_text().splitlines()] if path.is_file() else []


def protocol(folder, request=None):
    """Two methods of one run (control after fullres) and the collection after both; each makes one file."""
    request = request or {"epochs": 2}
    made = {name: folder / "made" / f"{name}.model" for name in ("fullres", "control", "collect")}

    def outputs_of(name):
        return lambda: {str(made[name]): made[name].read_text()} if made[name].is_file() else {}

    stages = [slurm.Stage(name="run fullres", key="fullres", folder=folder / "run" / "slurm",
                          command=["echo", "fullres"], request=dict(request), outputs=outputs_of("fullres")),
              slurm.Stage(name="run control", key="control", folder=folder / "run" / "slurm",
                          command=["echo", "control"], request=dict(request), outputs=outputs_of("control"),
                          after=["run fullres"]),
              slurm.Stage(name="collect", key="collect", folder=folder / "slurm", command=["echo", "collect"],
                          request={"runs": ["run"]}, outputs=outputs_of("collect"),
                          after=["run fullres", "run control"], light=True)]
    return stages, made


def finish(stage, made, content="v1"):
    made.parent.mkdir(parents=True, exist_ok=True)
    made.write_text(content)
    slurm.mark_done(stage)


def test_options_become_sbatch_arguments():
    options = slurm.SlurmOptions(partition="gpu", gpus_per_job=2, cpus_per_job=8, time_limit="2-00:00:00",
                                 account="lab", extra=("--qos=long", "--mem=64G"))
    assert options.sbatch_arguments() == ["--partition=gpu", "--gres=gpu:2", "--cpus-per-task=8",
                                          "--time=2-00:00:00", "--account=lab", "--qos=long", "--mem=64G"]
    # a CPU run asks for no GPU; cpus given in SLURM_OPTIONS replace the budget's
    assert slurm.SlurmOptions(cpus_per_job=2, extra=("-c", "4")).sbatch_arguments() == ["-c", "4"]


def test_a_fresh_protocol_is_submitted_in_order_with_its_dependencies(fake_slurm, capsys):
    stages, _ = protocol(fake_slurm)
    submission = slurm.submit_protocol(stages, slurm.SlurmOptions(partition="p"), workdir=fake_slurm)
    assert submission.jobs == {"run fullres": "101", "run control": "102", "collect": "103"}
    calls = sbatch_calls(fake_slurm)
    assert [c[0] for c in calls] == ["101", "102", "103"]
    assert not any(a.startswith("--dependency") for a in calls[0])
    assert "--dependency=afterok:101" in calls[1] and "--kill-on-invalid-dep=yes" in calls[1]
    assert "--dependency=afterok:101:102" in calls[2] and "--partition=p" in calls[2]
    assert "--job-name=covidseg-run-control" in calls[1] and "--open-mode=append" in calls[1]
    assert f"--output={fake_slurm / 'run' / 'slurm' / 'fullres-%j.log'}" in calls[0]
    script = (fake_slurm / "run" / "slurm" / "control.sbatch").read_text()
    assert script.startswith("#!/bin/bash") and "exec echo control" in script
    assert json.loads((fake_slurm / "run" / "slurm" / "control.json").read_text())["job"] == "102"
    out = capsys.readouterr().out
    assert "run control: submitted job 102 after job(s) 101" in out
    assert "runs again" not in out and "ended without" not in out  # a first submission says only that


def test_finished_stages_are_not_submitted_and_queued_ones_are_kept(fake_slurm):
    stages, made = protocol(fake_slurm)
    slurm.submit_protocol(stages, slurm.SlurmOptions(), workdir=fake_slurm)      # jobs 101, 102, 103
    finish(stages[0], made["fullres"])                                           # fullres ended well
    (fake_slurm / "queue").write_text("102 RUNNING\n103 PENDING\n")
    again = slurm.submit_protocol(stages, slurm.SlurmOptions(), workdir=fake_slurm)
    assert again.finished == ["run fullres"] and again.submitted == []
    assert again.jobs == {"run control": "102", "collect": "103"}
    assert len(sbatch_calls(fake_slurm)) == 3                                    # nothing new


def test_a_job_that_ended_without_finishing_is_shown_and_submitted_again(fake_slurm, capsys):
    stages, made = protocol(fake_slurm)
    slurm.submit_protocol(stages, slurm.SlurmOptions(), workdir=fake_slurm)
    finish(stages[0], made["fullres"])
    log = stages[1].log("102")
    log.write_text("epoch 1\n\nslurmstepd: error: *** JOB 102 ON vm CANCELLED AT 2026-12-04T18:35:47 ***\n")
    capsys.readouterr()
    again = slurm.submit_protocol(stages, slurm.SlurmOptions(), workdir=fake_slurm)  # the queue is empty
    out = capsys.readouterr().out
    assert "run control: job 102 ended without finishing (CANCELLED (None))" in out
    assert "    epoch 1\n    slurmstepd: error: *** JOB 102 ON vm CANCELLED" in out  # its log's end, blank lines out
    assert again.submitted == ["run control", "collect"]
    calls = sbatch_calls(fake_slurm)
    assert calls[-2][0] == "104" and not any(a.startswith("--dependency") for a in calls[-2])  # fullres is done
    assert "--dependency=afterok:104" in calls[-1]


def test_other_settings_or_a_changed_output_submit_a_finished_stage_again(fake_slurm, capsys):
    stages, made = protocol(fake_slurm)
    for stage in stages:
        finish(stage, made[stage.key])
    assert slurm.submit_protocol(stages, slurm.SlurmOptions(), workdir=fake_slurm).jobs == {}
    assert sbatch_calls(fake_slurm) == []

    made["control"].write_text("retrained by hand")             # its checkpoint is not the one it made
    again = slurm.submit_protocol(stages, slurm.SlurmOptions(), workdir=fake_slurm)
    assert again.submitted == ["run control", "collect"]
    assert "run control: finished, but what it made has changed" in capsys.readouterr().out

    changed, made = protocol(fake_slurm, request={"epochs": 3})
    later = slurm.submit_protocol(changed, slurm.SlurmOptions(), workdir=fake_slurm)
    assert later.submitted == ["run fullres", "run control", "collect"]
    assert "run fullres: finished with other settings (epochs differ" in capsys.readouterr().out


def test_waiting_reports_the_jobs_that_did_not_finish_with_their_log(fake_slurm):
    stages, made = protocol(fake_slurm)
    submission = slurm.submit_protocol(stages, slurm.SlurmOptions(), workdir=fake_slurm)
    finish(stages[0], made["fullres"])
    stages[1].log("102").write_text("Traceback\nRuntimeError: out of memory\n")
    with pytest.raises(WorkflowError) as error:
        slurm.wait_for(stages, submission, poll_seconds=0)
    message = str(error.value)
    assert message.startswith("2 job(s) did not finish; call the same command again")
    assert "run control: job 102 CANCELLED" in message and "RuntimeError: out of memory" in message


def test_missing_slurm_commands_are_named(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(WorkflowError, match="'squeue' not found: SCHEDULER=slurm needs the SLURM commands"):
        slurm.queued_jobs(["1"])


def test_the_request_holds_the_settings_variables_that_are_set():
    environment = {"CONSISTENCY_LAMBDA_MAX": "2", "MOE_LAMBDA_MAX": "1", "HOME": "/root", "MOE_TOP_K": ""}
    assert slurm.settings_environment(environment) == {"CONSISTENCY_LAMBDA_MAX": "2", "MOE_LAMBDA_MAX": "1"}


def test_the_collection_asks_for_no_gpu_and_one_cpu(fake_slurm):
    stages, _ = protocol(fake_slurm)
    options = slurm.SlurmOptions(gpus_per_job=1, cpus_per_job=8, extra=("--gres=gpu:a100:1", "--mem=64G"))
    slurm.submit_protocol(stages, options, workdir=fake_slurm)
    training, collection = sbatch_calls(fake_slurm)[1], sbatch_calls(fake_slurm)[2]
    assert "--gres=gpu:1" in training and "--cpus-per-task=8" in training
    assert not any(a.startswith("--gres") for a in collection) and "--cpus-per-task=1" in collection
    assert "--mem=64G" in collection


def test_a_stage_submitted_again_is_not_finished_until_its_new_job_ends(fake_slurm, capsys):
    stages, made = protocol(fake_slurm)
    for stage in stages:
        finish(stage, made[stage.key])
    made["fullres"].write_text("retrained")  # the baseline changed: everything after it runs again
    capsys.readouterr()
    assert slurm.submit_protocol(stages, slurm.SlurmOptions(), workdir=fake_slurm).submitted == \
        ["run fullres", "run control", "collect"]
    assert "run control: finished, but runs again after what it starts from: run fullres" in capsys.readouterr().out
    assert not stages[1].done_file.exists()  # the control's old marker went with its new submission
    finish(stages[0], made["fullres"], "retrained")
    (fake_slurm / "queue").write_text("102 PENDING\n103 PENDING\n")
    again = slurm.submit_protocol(stages, slurm.SlurmOptions(), workdir=fake_slurm)
    assert again.jobs == {"run control": "102", "collect": "103"} and again.finished == ["run fullres"]
    (fake_slurm / "queue").write_text("")  # the control's job failed: it is shown and submitted again
    capsys.readouterr()
    later = slurm.submit_protocol(stages, slurm.SlurmOptions(), workdir=fake_slurm)
    assert later.submitted == ["run control", "collect"]
    assert "run control: job 102 ended without finishing" in capsys.readouterr().out


def test_a_queued_job_waiting_for_a_job_submitted_again_is_cancelled_and_follows_the_new_one(fake_slurm, capsys):
    stages, made = protocol(fake_slurm)
    slurm.submit_protocol(stages, slurm.SlurmOptions(), workdir=fake_slurm)  # 101, 102 after 101, 103
    (fake_slurm / "queue").write_text("102 PENDING\n103 PENDING\n")          # 101 ended without finishing
    again = slurm.submit_protocol(stages, slurm.SlurmOptions(), workdir=fake_slurm)
    assert (fake_slurm / "scancel.calls").read_text().split() == ["102", "103"]
    assert again.jobs == {"run fullres": "104", "run control": "105", "collect": "106"}
    assert "--dependency=afterok:104" in sbatch_calls(fake_slurm)[-2]
    assert "run control: job 102 cancelled: it waited for run fullres" in capsys.readouterr().out


def test_two_submitting_calls_at_once_are_refused(tmp_path):
    with slurm.submission_lock(tmp_path):
        with pytest.raises(WorkflowError, match="another make experiment SCHEDULER=slurm is submitting"):
            with slurm.submission_lock(tmp_path):
                pass
