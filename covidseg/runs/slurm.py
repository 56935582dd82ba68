"""`make experiment SCHEDULER=slurm`: the protocol's runs as SLURM jobs, through plain `sbatch` with job dependencies.

One job per run and method (`python -m covidseg.experiment ... --job <method>`: the same stages, resume rules and
settings checks as a local run, for that method only), each depending on the jobs of the methods it starts from,
then one job that collects results.csv, results.md and the plot. Plain sbatch rather than submitit: nothing to install
on the cluster, the job scripts are files a user can read and submit by hand (<run>/slurm/<method>.sbatch), and a job
runs a command, not a pickled function.

What a call submits is decided from the files, so calling it again is the way to resume:
- finished: the stage's done marker (<run>/slurm/<method>.done, written by the job when it ends well) records the
  request it finished (the run, the budget, the method, every settings variable) and the checkpoint it made; when
  both are still what is asked for and on disk, the stage is not submitted again;
- queued: the job id recorded at the last submission is still in `squeue` (pending or running): kept, and the stages
  after it depend on it;
- otherwise it is submitted; when an earlier job of the stage ended without finishing (failed, cancelled, pre-empted,
  timed out), its state and the end of its log are shown first.
"""
import fcntl
from collections import Counter
import json
import os
import shlex
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from covidseg.core.errors import WorkflowError
from covidseg.core.workspace import file_sha256

QUEUED_STATES = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "STOPPED", "REQUEUED",
                 "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD"}
LOG_TAIL_LINES = 15
SQUEUE_TRIES = 5  # a busy controller times out now and then; a days-long WAIT=1 should not end on one of those


@dataclass(frozen=True)
class SlurmOptions:
    """What SLURM_PARTITION, SLURM_GPUS_PER_JOB, SLURM_TIME, SLURM_ACCOUNT and SLURM_OPTIONS ask of every job."""
    partition: Optional[str] = None
    gpus_per_job: int = 0
    cpus_per_job: int = 1
    time_limit: Optional[str] = None
    account: Optional[str] = None
    extra: Tuple[str, ...] = ()

    def sbatch_arguments(self) -> List[str]:
        arguments = [f"--partition={self.partition}"] if self.partition else []
        arguments += [f"--gres=gpu:{self.gpus_per_job}"] if self.gpus_per_job > 0 else []
        if not any(option == "-c" or option.startswith("--cpus-per-task") for option in self.extra):
            arguments.append(f"--cpus-per-task={self.cpus_per_job}")
        arguments += [f"--time={self.time_limit}"] if self.time_limit else []
        arguments += [f"--account={self.account}"] if self.account else []
        return arguments + list(self.extra)


@dataclass
class Stage:
    """One job of the protocol: a run's method, or the collection of the results."""
    name: str                        # for messages: 'lf=0.5 seed=0 control', 'collect'
    key: str                         # file names in `folder`: <key>.sbatch, <key>.json, <key>.done, <key>-<id>.log
    folder: Path                     # <run>/slurm, or <experiment>/slurm for the collection
    command: List[str]               # what the job runs (in the workspace's folder)
    request: dict                    # what it is asked to make; a done marker of another request is not finished
    outputs: Callable[[], Dict[str, str]]  # what a finished stage made: file -> sha256 (empty: not made)
    after: List[str] = field(default_factory=list)  # names of the stages it depends on
    light: bool = False              # no GPU and one CPU (the collection), whatever the training jobs ask for

    @property
    def job_name(self) -> str:
        """covidseg-<run folder>-<key>: what squeue shows."""
        return f"covidseg-{self.folder.parent.name}-{self.key}"

    def log(self, job: str) -> Path:
        return self.folder / f"{self.key}-{job}.log"

    @property
    def state_file(self) -> Path:
        return self.folder / f"{self.key}.json"

    @property
    def done_file(self) -> Path:
        return self.folder / f"{self.key}.done"


def write_json_atomically(path: Path, record: dict) -> None:
    from nnunet.utilities.atomic_files import replace_atomically

    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(record, indent=1, sort_keys=True) + "\n"
    replace_atomically(str(path), lambda f: f.write(text.encode()))


def read_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def checkpoint_outputs(model: Path) -> Callable[[], Dict[str, str]]:
    """A method's outputs: its final checkpoint, by sha256."""
    def outputs() -> Dict[str, str]:
        checkpoint = model / "model_final_checkpoint.model"
        return {str(checkpoint): file_sha256(checkpoint)} if checkpoint.is_file() else {}
    return outputs


def mark_done(stage: Stage) -> None:
    """Called by the job when its work ended well: the request it finished and what it made."""
    made = stage.outputs()
    if not made:
        raise WorkflowError(f"{stage.name}: finished, but made none of its outputs")
    write_json_atomically(stage.done_file, {"request": stage.request, "outputs": made,
                                            "job": os.environ.get("SLURM_JOB_ID", ""),
                                            "finished": time.strftime("%Y-%m-%d %H:%M:%S")})


def is_finished(stage: Stage) -> bool:
    return not why_not_finished(stage)


def recorded_outputs(stage: Stage) -> Dict[str, str]:
    """What the stage's done marker says it made (empty without one): read, not hashed again."""
    return (read_json(stage.done_file) or {}).get("outputs") or {}


def why_not_finished(stage: Stage) -> str:
    """Empty when the stage's done marker records this request and its outputs are on disk unchanged; else why not."""
    done = read_json(stage.done_file)
    if not done:
        return "not finished"
    if done.get("request") != stage.request:
        changed = sorted(k for k in set(done.get("request", {})) | set(stage.request)
                         if done.get("request", {}).get(k) != stage.request.get(k))
        return f"finished with other settings ({', '.join(changed)} differ from what is asked for now)"
    made = stage.outputs()
    if not made or done.get("outputs") != made:
        return "finished, but what it made has changed or gone since (retrained or removed)"
    return ""


# ------------------------------------------------------------------ the SLURM commands

def run_slurm_command(arguments: Sequence[str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(list(arguments), capture_output=True, text=True)
    except FileNotFoundError:
        raise WorkflowError(f"'{arguments[0]}' not found: SCHEDULER=slurm needs the SLURM commands (sbatch, squeue) "
                            f"on this machine; to try it here first, make slurm-local") from None


def queued_jobs(jobs: Sequence[str], retry_seconds: float = 10.0) -> Dict[str, str]:
    """job id -> state, for those of `jobs` still in the queue (squeue is asked again when it fails)."""
    if not jobs:
        return {}
    for attempt in range(SQUEUE_TRIES):
        result = run_slurm_command(["squeue", "-h", "-o", "%i %T", "-j", ",".join(jobs)])
        if result.returncode == 0 or "Invalid job id" in result.stderr:
            break
        if attempt == SQUEUE_TRIES - 1:
            raise WorkflowError(f"squeue failed {SQUEUE_TRIES} times (exit {result.returncode}): "
                                f"{result.stderr.strip()}")
        time.sleep(retry_seconds)
    states = dict(line.split(None, 1) for line in result.stdout.splitlines() if line.strip())
    return {job: state.strip() for job, state in states.items() if state.strip() in QUEUED_STATES}


def cancel(job: str) -> None:
    result = run_slurm_command(["scancel", job])
    if result.returncode != 0:
        raise WorkflowError(f"scancel {job} failed (exit {result.returncode}): {result.stderr.strip()}")


def final_state(job: str) -> str:
    """How a job that left the queue ended, as far as SLURM still knows (sacct where accounting runs, else
    scontrol while the job is remembered)."""
    result = run_slurm_command(["sacct", "-n", "-X", "-P", "-j", job, "-o", "State"])
    if result.returncode == 0 and result.stdout.strip():
        return result.stdout.split()[0]
    result = run_slurm_command(["scontrol", "-o", "show", "job", job])
    fields = dict(item.split("=", 1) for item in result.stdout.split() if "=" in item)
    if "JobState" not in fields:
        return "no longer known to SLURM"
    return fields["JobState"] + (f" ({fields['Reason']})" if "Reason" in fields else "")


def submit(stage: Stage, options: SlurmOptions, dependencies: Sequence[str], workdir: Path) -> str:
    """Write the stage's job script and submit it; the job id. Its done marker goes first: until the new job ends
    well the stage is not finished, whatever an earlier job made."""
    stage.folder.mkdir(parents=True, exist_ok=True)
    stage.done_file.unlink(missing_ok=True)
    script = stage.folder / f"{stage.key}.sbatch"
    if stage.light:
        options = replace(options, gpus_per_job=0, cpus_per_job=1,
                          extra=tuple(o for o in options.extra if not o.startswith(("--gres", "--gpus"))))
    # --open-mode=append: a job that SLURM requeues keeps its id, and its earlier attempt's log
    sbatch = ["sbatch", "--parsable", f"--job-name={stage.job_name}", "--open-mode=append",
              f"--output={stage.folder / (stage.key + '-%j.log')}", f"--chdir={workdir}", "--export=ALL",
              *options.sbatch_arguments()]
    if dependencies:
        sbatch += [f"--dependency=afterok:{':'.join(dependencies)}", "--kill-on-invalid-dep=yes"]
    script.write_text("#!/bin/bash\n"
                      f"# {stage.name}: written by make experiment SCHEDULER=slurm, submitted as\n"
                      f"#   {shlex.join(sbatch + [str(script)])}\n"
                      "set -euo pipefail\n"
                      f"exec {shlex.join(stage.command)}\n")
    result = run_slurm_command(sbatch + [str(script)])
    job = result.stdout.strip().split(";")[0]
    if result.returncode != 0 or not job.isdigit():
        raise WorkflowError(f"{stage.name}: sbatch refused the job (exit {result.returncode}): "
                            f"{(result.stderr or result.stdout).strip()}")
    write_json_atomically(stage.state_file, {"job": job, "request": stage.request, "log": str(stage.log(job)),
                                             "submitted": time.strftime("%Y-%m-%d %H:%M:%S")})
    return job


@contextmanager
def submission_lock(folder: Path):
    """One submitting call per experiment at a time (two at once would submit every stage twice)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".submitting.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WorkflowError(f"another make experiment SCHEDULER=slurm is submitting this experiment now "
                                f"({folder}); wait for it to end") from None
        yield


def log_end(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        tail = [line for line in path.read_text(errors="replace").splitlines() if line.strip()][-lines:]
    except OSError:
        return f"    (no log at {path})"
    return "\n".join("    " + line for line in tail) or "    (the log is empty)"


# ------------------------------------------------------------------ submitting the protocol

@dataclass
class Submission:
    """What one call found and did: stage name -> job id of every queued or submitted stage."""
    jobs: Dict[str, str] = field(default_factory=dict)
    submitted: List[str] = field(default_factory=list)
    finished: List[str] = field(default_factory=list)


def submit_protocol(stages: Sequence[Stage], options: SlurmOptions, workdir: Path,
                    say: Callable[[str], None] = print) -> Submission:
    """Submit every stage that is neither finished nor queued, in order (a stage after those it depends on)."""
    submission = Submission()
    recorded = {s.name: (read_json(s.state_file) or {}) for s in stages}
    queued = queued_jobs([r["job"] for r in recorded.values() if r.get("job")])
    for stage in stages:
        record = recorded[stage.name]
        job = record.get("job")
        rerun_before = [d for d in stage.after if d in submission.submitted]
        cancelled_now = job in queued and bool(rerun_before)
        if cancelled_now:
            # it waits for an earlier job of what it starts from, which is being replaced: it would start on the
            # old weights, or alongside their retraining
            cancel(job)
            say(f"{stage.name}: job {job} cancelled: it waited for {', '.join(rerun_before)}, submitted again now")
            queued.pop(job)
        why = "" if job in queued else why_not_finished(stage)  # (hashes its outputs: once per stage)
        if job not in queued and not any(d in submission.jobs for d in stage.after) and not why:
            submission.finished.append(stage.name)
            continue
        if job in queued:
            if record.get("request") != stage.request:
                say(f"NOTE: {stage.name}: job {job} ({queued[job]}) was submitted with other settings than asked "
                    f"for now; it is left in the queue (scancel {job} and call again to submit the new settings)")
            submission.jobs[stage.name] = job
            say(f"{stage.name}: job {job} is {queued[job].lower()}, kept")
            continue
        if cancelled_now:
            pass  # said above
        elif not why:
            say(f"{stage.name}: finished, but runs again after what it starts from: "
                f"{', '.join(d for d in stage.after if d in submission.jobs)}")
        elif why != "not finished":
            say(f"{stage.name}: {why}: submitting it again")
        elif job:
            log = Path(record.get("log", stage.log(job)))
            say(f"{stage.name}: job {job} ended without finishing ({final_state(job)}); the end of its log "
                f"{log}:\n{log_end(log)}")
        dependencies = [submission.jobs[d] for d in stage.after if d in submission.jobs]
        job = submit(stage, options, dependencies, workdir)
        submission.jobs[stage.name] = job
        submission.submitted.append(stage.name)
        after = f" after job(s) {', '.join(dependencies)}" if dependencies else ""
        say(f"{stage.name}: submitted job {job}{after}; log {stage.log(job)}")
    return submission


def wait_for(stages: Sequence[Stage], submission: Submission, poll_seconds: float,
             say: Callable[[str], None] = print) -> None:
    """Wait until the submission's jobs leave the queue; a stage that did not finish is an error showing its log
    end."""
    by_name = {s.name: s for s in stages}
    last = None
    while True:
        queued = queued_jobs(list(submission.jobs.values()), retry_seconds=max(poll_seconds, 1.0))
        counts = Counter(state.lower() for state in queued.values())
        line = ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "none queued"
        if line != last:
            say(f"[{time.strftime('%H:%M:%S')}] jobs: {line}, {len(submission.jobs) - len(queued)} ended")
            last = line
        if not queued:
            break
        time.sleep(poll_seconds)
    failed = [name for name, job in submission.jobs.items() if not is_finished(by_name[name])]
    if failed:
        details = []
        for name in failed:
            stage, job = by_name[name], submission.jobs[name]
            details.append(f"{name}: job {job} {final_state(job)}; the end of its log {stage.log(job)}:\n"
                           f"{log_end(stage.log(job))}")
        raise WorkflowError(f"{len(failed)} job(s) did not finish; call the same command again to submit them "
                            f"again:\n" + "\n".join(details))


def settings_environment(environ: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """The trainers' settings variables that are set (settings.py's, with their earlier names): part of a job's
    request, so a changed LAMBDA_MAX submits the job again (which then refuses or, with FORCE=1, retrains)."""
    from nnunet.training import settings

    environ = os.environ if environ is None else environ
    names = set()
    for value in vars(settings).values():
        if isinstance(value, settings.Variable):
            names.add(value)
        elif isinstance(value, type) and issubclass(value, settings.SettingsGroup):
            names.update(value.ENVIRONMENT.values())
    wanted = {n for v in names for n in (v.name, *v.deprecated)}
    return {name: environ[name] for name in sorted(wanted) if environ.get(name, "").strip()}
