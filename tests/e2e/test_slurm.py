"""``cluster/slurm.sbatch`` on a real Slurm: a throwaway cluster on this machine (tests/slurm_fixture.py: munged,
slurmctld, two slurmd n1 and n2), the script submitted as a user would, for a tiny demo study on a 2-node
allocation.

0. Run without an allocation, the script refuses in one line (a fast test; the others are slow).
1. shellcheck finds nothing, and Slurm accepts the script (``sbatch --test-only``).
2. A study: every trial finishes, trials run on both Ray nodes (each Ray node advertises its Slurm NodeAddr —
   n1 127.0.0.1, which Ray reports as the machine's own address, n2 127.0.0.2 — and Tune records the node of
   every result), MLflow holds one finished child run per trial, and the job leaves no process and no private
   folder behind.
3. A second study, ``scancel``-led after its first checkpoint: while it runs, its token sits in a mode-600 file
   and on no command line; after the cancel no Ray, srun or slurmstepd process of that job is left (found by the
   cluster's marker in each process's environment, so no other Slurm or Ray on the machine is looked at); a
   resubmitted ``--resume`` finishes it.
4. A Ray node that fails to start (a stand-in ``ray`` whose first ``ray start`` on a node fails and leaves a
   process behind) is started once more, its leftover stopped, and the study runs; one that always fails ends
   the job with an error naming it, and nothing is left.

Each phase prints the lines a reviewer needs (allocation, nodes joined, trials per node, clean-up, wall time).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest
from mlflow import MlflowClient

from drl_tune.study.faults import WORKER_FILE
from drl_tune.study.plan import PLAN_FILE, Plan
from tests.e2e.test_study_e2e import tiny_sets
from tests.slurm_fixture import ENDED, SlurmCluster, cmdline, missing, process_env
from tests.study.test_study_address import SPACE

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "cluster" / "slurm.sbatch"
# the CI cluster has no GPUs and one CPU per node: these override the script's #SBATCH defaults
ALLOCATION = ["--nodes=2", "--gpus-per-node=0", "--cpus-per-task=1", "--time=00:10:00"]
# a trial must outlast the start of the other node's trial worker (~8 s here), or Tune hands the second trial to
# the first trial's finished worker (actor reuse) and both run on one node: 30 epochs of ~0.7 s
FULL_EPOCHS = 30
CANCEL_EPOCHS = 6
JOB_TIMEOUT = 300
KILL_GRACE = 20  # what a study gets to stop when Slurm ends the job: the fixture's KillWait (30 s) less 10 s


@pytest.fixture(scope="module")
def slurm():
    reason = missing()
    if reason:
        pytest.skip(reason)
    base = Path(tempfile.mkdtemp(prefix="sl", dir="/tmp"))  # short: Ray's socket paths live below it
    cluster = SlurmCluster(base)
    cluster.space = base / "space.yaml"
    cluster.space.write_text(textwrap.dedent(SPACE))
    cluster.ray_tmp = base / "ray"  # DRL_TUNE_RAY_TMP: the jobs' private folders, checked empty afterwards
    cluster.ray_tmp.mkdir()
    cluster.timings = {}
    start = time.monotonic()
    try:
        cluster.start()
        cluster.timings["bring-up"] = time.monotonic() - start
        yield cluster
    finally:
        left = cluster.stop()
        shutil.rmtree(base, ignore_errors=True)
    assert not left, f"processes of the test cluster left after its jobs ended: {left}"


class Job:
    def __init__(self, cluster: SlurmCluster, name: str, args: list[str], env: dict[str, str] | None = None):
        self.cluster, self.name = cluster, name
        self.log = cluster.base / f"{name}.out"
        env = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               "DRL_TUNE_RAY_TMP": str(cluster.ray_tmp), **(env or {})}
        self.submitted = time.monotonic()
        self.id = cluster.sbatch(*ALLOCATION, f"--output={self.log}", f"--chdir={cluster.base}", str(SCRIPT),
                                 *args, env=env)
        self.state = self.exit_code = ""
        self.seconds = 0.0

    def wait(self, timeout: float = JOB_TIMEOUT) -> Job:
        """Until the job has ended and Slurm has ended every process of it; keeps its last state and exit code."""
        try:
            info = self.cluster.wait_ended(self.id, timeout - (time.monotonic() - self.submitted))
        except TimeoutError as err:
            raise TimeoutError(f"{err} ({self.name}):\n{self.text()[-4000:]}") from None
        self.state, self.exit_code = info.get("JobState", ""), info.get("ExitCode", "")
        self.seconds = time.monotonic() - self.submitted
        return self

    def text(self) -> str:
        try:
            return self.log.read_text()
        except OSError:
            return ""

    def lines(self, prefix: str) -> list[str]:
        return [line for line in self.text().splitlines() if line.startswith(prefix)]

    def check_left_nothing(self) -> None:
        """The script's one clean-up line stopped both Ray nodes; no process of the job and no private folder is
        left."""
        cleaned = self.lines("slurm.sbatch: clean-up:")
        assert len(cleaned) == 1 and "Ray stopped on 2 node(s)" in cleaned[0], self.text()[-3000:]
        left = self.cluster.leftovers(self.id)
        assert not left, [f"{p} {cmdline(p)[:100]}" for p in left]
        # this job's folder only: a job that failed to clean up fails its own test, not every later one
        assert not (self.cluster.ray_tmp / f"drl-ray-{self.id}").exists(), list(self.cluster.ray_tmp.iterdir())

    def expect(self, state: str, exit_code: str | None = None) -> None:
        """Fail with everything needed to tell why (the whole job log, then the tail of the cluster's daemon
        logs) unless the job ended in ``state`` (and ``exit_code``): an assertion's message would be cut short."""
        if self.state == state and exit_code in (None, self.exit_code):
            return
        pytest.fail(f"job {self.id} ({self.name}) ended {self.state}, exit {self.exit_code} after {self.seconds:.0f} s;"
                    f" expected {state}{f', exit {exit_code}' if exit_code else ''}\n--- job log {self.log}\n"
                    f"{self.text()}\n{self.cluster.logs(tail=3000)}", pytrace=False)


def submit_study(cluster: SlurmCluster, name: str, epochs: int, env: dict[str, str] | None = None) -> Job:
    """The demo-sized study of tests/study/test_study_address.py (2 trials, 1 CPU each, 2 at a time)."""
    return Job(cluster, name, ["--space", str(cluster.space), "--storage", str(cluster.base / "studies"), "--name",
                               name, "--progress-interval", "0", f"--set=epochs={epochs}", *tiny_sets()], env)


# Stands in for `ray` in a job's PATH: its first N `ray start`s on a node fail as a Ray that runs out a start-up
# window does (exit 1, no "Ray runtime started.", a process of it left running that names the node's temp folder,
# as a raylet's --session_dir does); everything else is the real ray. N per node: RAY_START_FAILS, e.g.
# "n1:1,n2:1"; the count of failures so far lives in RAY_START_FAILS_DIR.
LEFTOVER = "leftover-of-a-failed-ray-start"
FAILING_RAY = """#!/bin/bash
if [[ $1 == start ]]; then
  want=$(tr ',' '\\n' <<<"$RAY_START_FAILS" | sed -n "s/^$SLURMD_NODENAME://p")
  count="$RAY_START_FAILS_DIR/$SLURMD_NODENAME"
  done=$(cat "$count" 2>/dev/null || echo 0)
  if ((done < ${want:-0})); then
    echo $((done + 1)) >"$count"
    for ((i = 1; i < $#; i++)); do
      j=$((i + 1))
      [[ ${!i} != --temp-dir ]] || tmp=${!j}
    done
    (exec -a "@LEFTOVER@ --session_dir=$tmp/session_1" sleep 600) &
    echo "Exception: The current node timed out during startup. (the test's failing ray, try $((done + 1)))"
    exit 1
  fi
fi
exec "$REAL_RAY" "$@"
""".replace("@LEFTOVER@", LEFTOVER)


def failing_ray(cluster: SlurmCluster, name: str, fails: str) -> dict[str, str]:
    """A job environment whose `ray start` fails ``fails`` times per node ("n1:1,n2:1") before it works."""
    folder = cluster.base / f"failing-ray-{name}"
    (folder / "count").mkdir(parents=True)
    (folder / "ray").write_text(FAILING_RAY)
    (folder / "ray").chmod(0o755)
    return {"PATH": f"{folder}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "REAL_RAY": str(Path(sys.executable).with_name("ray")), "RAY_START_FAILS": fails,
            "RAY_START_FAILS_DIR": str(folder / "count")}


# Stands in for `python` in a job's PATH: `python -m drl_tune.run` is a study that never stops, as a driver stuck in
# a call that does not return would be (it ignores SIGINT and SIGTERM); everything else is the real python.
STUCK_PYTHON = """#!/bin/bash
if [[ $1 == -m && $2 == drl_tune.run ]]; then
  trap '' INT TERM
  echo "the test's stuck study"
  exec sleep 600
fi
exec "$REAL_PYTHON" "$@"
"""


def stuck_python(cluster: SlurmCluster) -> dict[str, str]:
    """A job environment whose study ignores every stop signal."""
    folder = cluster.base / "stuck-python"
    folder.mkdir()
    (folder / "python").write_text(STUCK_PYTHON)
    (folder / "python").chmod(0o755)
    return {"PATH": f"{folder}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "REAL_PYTHON": sys.executable}


def result_rows(trial_dir: Path) -> list[dict]:
    """What the study wrote for the trial (Tune's result.json, one line per epoch), as written."""
    return [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines() if line.strip()]


def check_finished(study: Path, epochs: int, trials: int = 2) -> list[list[dict]]:
    folders = sorted(p for p in study.glob("joint_*") if p.is_dir())
    assert len(folders) == trials, [p.name for p in folders]
    rows = [result_rows(f) for f in folders]
    for folder, trial in zip(folders, rows, strict=True):
        assert [int(r["epoch"]) for r in trial] == list(range(epochs)), folder.name
    plan = Plan.from_json((study / PLAN_FILE).read_text())
    client = MlflowClient(plan.mlflow_uri)
    assert client.get_run(plan.parent_run_id).info.status == "FINISHED"
    children = client.search_runs([plan.experiment_id], f"tags.`mlflow.parentRunId` = '{plan.parent_run_id}'")
    assert len(children) == trials and all(r.info.status == "FINISHED" for r in children)
    assert {r.data.tags["drl_tune.trial_id"] for r in children} == {f.name.split("_", 1)[1] for f in folders}
    for run in children:
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val/acc")] == list(range(epochs))
    return rows


def nodes_joined(job: Job) -> dict[str, str]:
    """Slurm node -> the address its Ray node was given, from the script's 'nodes joined' line."""
    line = job.lines("slurm.sbatch: nodes joined:")
    assert len(line) == 1, job.text()[-4000:]
    return dict(re.findall(r"(\S+) \(([\d.]+)", line[0].split(" s: ", 1)[1]))


def trials_per_node(rows: list[list[dict]], addresses: dict[str, str]) -> dict[str, int]:
    """Which Slurm node ran each trial, from the node_ip Tune recorded with its results. Ray turns a node
    address of 127.0.0.1 into the machine's own address (ray._private.services.resolve_ip_for_localhost)."""
    by_ip = {ip: node for node, ip in addresses.items()}
    counts: dict[str, int] = {}
    for trial in rows:
        ip = trial[-1]["node_ip"]  # where it finished (a resumed trial may have started elsewhere)
        node = by_ip.get(ip) or by_ip.get("127.0.0.1", ip)
        counts[node] = counts.get(node, 0) + 1
    return dict(sorted(counts.items()))


def say(capsys, *lines: str) -> None:
    with capsys.disabled():
        print("".join(f"\nslurm: {line}" for line in lines))


def script_lines(job: Job) -> list[str]:
    """The script's own lines (allocation, nodes joined, study, clean-up), indented under the job."""
    return [line.replace("slurm.sbatch: ", "  ", 1) for line in job.lines("slurm.sbatch: ")]


def label(pid: int) -> str:
    """A process by what it runs: the script of a python process (`ray`, `agent.py`, `drl_tune.run`)."""
    args = cmdline(pid).split()
    if not args:
        return "?"
    name = Path(args[0]).name
    if name.startswith("python"):
        rest = iter(args[1:])
        for arg in rest:
            if arg == "-m":
                return next(rest, name)
            if not arg.startswith("-"):
                return Path(arg).name
    return name.rstrip(":")


def side_by_side(rows: list[list[dict]]) -> float:
    """Seconds during which the trials were all training (first epoch's end to last epoch's end, each)."""
    return min(t[-1]["timestamp"] for t in rows) - max(t[0]["timestamp"] for t in rows)


def test_script_refuses_to_run_outside_an_allocation():
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    out = subprocess.run(["bash", str(SCRIPT), "--space", "demo"], capture_output=True, text=True, env=env)
    assert out.returncode == 2 and out.stderr.startswith("slurm.sbatch: error: submit this file with sbatch")


@pytest.mark.slow
def test_script_is_shellcheck_clean_and_slurm_accepts_it(slurm, capsys):
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not found (Debian package shellcheck; .ci/run installs it)")
    check = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
    test_only = slurm.run("sbatch", "--test-only", *ALLOCATION, str(SCRIPT), "--space", "demo")
    assert test_only.returncode == 0 and "to start at" in test_only.stderr, test_only.stderr
    say(capsys, f"cluster up in {slurm.timings['bring-up']:.1f} s (munged, slurmctld, slurmd n1 n2)",
        "shellcheck cluster/slurm.sbatch: clean", f"sbatch --test-only: {test_only.stderr.strip()}")


@pytest.mark.slow
def test_study_runs_on_both_nodes_and_leaves_nothing(slurm, capsys):
    job = submit_study(slurm, "full", FULL_EPOCHS).wait()
    text = job.text()
    job.expect("COMPLETED", "0:0")
    allocation = job.lines("slurm.sbatch: allocation:")
    assert len(allocation) == 1 and "2 node(s) n1 n2" in allocation[0], text[:3000]
    addresses = nodes_joined(job)
    assert addresses == {"n1": "127.0.0.1", "n2": "127.0.0.2"}
    assert " (RAY_ADDRESS) (2 CPUs, 0 GPUs) on 2 nodes" in text  # the study joined the job's cluster
    assert "search of study 'full' (2 trials" in text and "slurm.sbatch: study: exit code 0" in text
    rows = check_finished(slurm.base / "studies" / "full", FULL_EPOCHS)
    per_node = trials_per_node(rows, addresses)
    assert set(per_node) == {"n1", "n2"}, per_node
    # each trial's own record (worker pid, later its error) is in its --storage folder, also the one that ran on the
    # node without the driver: the driver reads failures from there (study/trainable.trial_folder)
    folders = [p for p in (slurm.base / "studies" / "full").iterdir() if p.is_dir() and (p / "result.json").exists()]
    assert len(folders) == 2 and all((f / WORKER_FILE).is_file() for f in folders), folders
    job.check_left_nothing()
    assert "Traceback" not in text and "ray stop" not in text
    say(capsys, f"job {job.id} (study, 2 trials x {FULL_EPOCHS} epochs): {job.state}, exit {job.exit_code}, "
                f"{job.seconds:.0f} s from sbatch until every process of it had ended", *script_lines(job),
        f"  trials per node: {', '.join(f'{n} {c}' for n, c in per_node.items())} (training side by side for "
        f"{side_by_side(rows):.0f} s); one finished MLflow child run per trial",
        "  processes of the job left: none; private folders left: none")


@pytest.mark.slow
def test_scancel_leaves_nothing_and_resume_finishes(slurm, capsys):
    storage = slurm.base / "studies"
    job = submit_study(slurm, "cut", CANCEL_EPOCHS)
    study = storage / "cut"
    token_file = slurm.ray_tmp / f"drl-ray-{job.id}" / "auth_token"
    deadline = time.monotonic() + JOB_TIMEOUT
    while not list(study.glob("joint_*/checkpoint_000000")):  # the study is under way: a trial checkpointed
        assert slurm.job_state(job.id) == "RUNNING" or time.monotonic() < job.submitted + 30, job.text()[-4000:]
        assert time.monotonic() < deadline, job.text()[-4000:]
        time.sleep(0.5)
    running = time.monotonic() - job.submitted
    # the job's token: a private file, on no command line of the job's processes
    token = token_file.read_text().strip()
    assert len(token) == 64
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(token_file.parent.stat().st_mode) == 0o700
    procs = slurm.leftovers(job.id)
    kinds = Counter(label(p) for p in procs)
    assert procs and all(token not in cmdline(p) for p in procs)
    # Ray's Python workers and agents retitle themselves ("ray::DashboardAgent") with setproctitle, which may
    # overwrite the start of the memory /proc/PID/environ reads: their environment there is not reliable (CI saw
    # agents whose RAY_AUTH_MODE had been overwritten), so the check reads the processes that keep their own title
    ray_envs = {p: process_env(p) for p in procs if "ray" in cmdline(p) and not cmdline(p).startswith("ray::")}
    no_token = [f"{p} {cmdline(p)[:100]}" for p, env in ray_envs.items() if env and env.get("RAY_AUTH_MODE") != "token"]
    assert ray_envs and not no_token, no_token  # (an empty environment: the process has just ended)

    cancelled = time.monotonic()
    assert slurm.run("scancel", str(job.id)).returncode == 0
    job.wait()
    gone = time.monotonic() - cancelled
    job.expect("CANCELLED")
    assert job.lines(f"slurm.sbatch: received SIGTERM: stopping the study (up to {KILL_GRACE} s: Slurm ends the job "
                     "in 30 s (KillWait)), then Ray"), job.text()[-3000:]
    job.check_left_nothing()
    say(capsys, f"job {job.id} (study to cancel, 2 trials x {CANCEL_EPOCHS} epochs): scancel {running:.0f} s after "
                f"sbatch, at a trial's first checkpoint -> {job.state}; every process of it ended {gone:.1f} s "
                "after scancel", *script_lines(job),
        f"  its processes before scancel: {len(procs)} ({', '.join(f'{k} {n}' for k, n in kinds.most_common())});"
        " token file mode 600 in a 700 folder, on no command line",
        "  processes of the job left: none; private folders left: none")

    resumed = Job(slurm, "cut-resume", ["--resume", "--name", "cut", "--storage", str(storage),
                                        "--progress-interval", "0"]).wait()
    text = resumed.text()
    resumed.expect("COMPLETED", "0:0")
    assert "resuming study 'cut'" in text and "search of study 'cut' (2 trials" in text
    rows = check_finished(study, CANCEL_EPOCHS)
    resumed.check_left_nothing()
    for log in (job, resumed):
        assert token not in log.text()
    per_node = trials_per_node(rows, nodes_joined(resumed))
    say(capsys, f"job {resumed.id} (--resume of job {job.id}): {resumed.state}, exit {resumed.exit_code}, "
                f"{resumed.seconds:.0f} s", *script_lines(resumed),
        f"  trials finished per node: {', '.join(f'{n} {c}' for n, c in per_node.items())}; every trial "
        f"{CANCEL_EPOCHS}/{CANCEL_EPOCHS} epochs, one finished MLflow child run each; the token in no job log",
        "  processes of the job left: none; private folders left: none")


@pytest.mark.slow
def test_a_study_that_does_not_stop_is_killed_within_slurms_kill_wait(slurm, capsys):
    """A plain scancel: Slurm sends SIGTERM to every process of the job and SIGKILLs what is left KillWait (30 s)
    later, the script too. A study that has not stopped KillWait - 10 s after the signal (here one that ignores
    every signal) is killed, so Ray's stop and the clean-up line still come before Slurm's SIGKILL, and nothing
    of the job is left. (CI saw a real study's driver not end within 30 s of a scancel.)"""
    job = submit_study(slurm, "stuck", 2, stuck_python(slurm))
    while "the test's stuck study" not in job.text():
        assert time.monotonic() - job.submitted < JOB_TIMEOUT, job.text()[-4000:]
        assert slurm.job_state(job.id) not in ENDED | {None}, job.text()[-4000:]
        time.sleep(0.5)
    cancelled = time.monotonic()
    assert slurm.run("scancel", str(job.id)).returncode == 0
    job.wait()
    gone = time.monotonic() - cancelled
    job.expect("CANCELLED")
    text = job.text()
    assert job.lines(f"slurm.sbatch: received SIGTERM: stopping the study (up to {KILL_GRACE} s: Slurm ends the job "
                     "in 30 s (KillWait)), then Ray"), text[-3000:]
    assert len(job.lines(f"slurm.sbatch: the study had not stopped after {KILL_GRACE} s: killed it")) == 1, text[-3000:]
    job.check_left_nothing()
    assert gone >= KILL_GRACE, gone  # the study was given its grace
    say(capsys, f"job {job.id} (a study that ignores every signal, then scancel): {job.state}; every process of it "
                f"ended {gone:.1f} s after scancel", *script_lines(job),
        "  processes of the job left: none; private folders left: none")


@pytest.mark.slow
def test_a_ray_node_that_fails_to_start_gets_one_more_try(slurm, capsys):
    """The head and the worker each fail their first `ray start` (as Ray does when a busy node runs out its
    start-up window): each is started once more and the study runs. A node that fails twice ends the job with
    an error naming it, and the job still leaves nothing behind."""
    job = submit_study(slurm, "retry", 2, failing_ray(slurm, "retry", "n1:1,n2:1"))
    while "slurm.sbatch: nodes joined:" not in job.text():  # what the failed starts left was stopped before
        assert time.monotonic() - job.submitted < JOB_TIMEOUT, job.text()[-4000:]
        assert slurm.job_state(job.id) not in ENDED | {None}, job.text()[-4000:]
        time.sleep(0.5)
    assert not [p for p in slurm.leftovers(job.id) if LEFTOVER in cmdline(p)]
    job.wait()
    job.expect("COMPLETED", "0:0")
    text = job.text()
    for node in ("n1", "n2"):
        assert len(job.lines(f"slurm.sbatch: Ray on {node} failed to start (code 1,")) == 1, text[-4000:]
    assert text.count("the test's failing ray, try 1") == 2 and "try 2" not in text
    assert nodes_joined(job) == {"n1": "127.0.0.1", "n2": "127.0.0.2"}
    assert "slurm.sbatch: study: exit code 0" in text
    check_finished(slurm.base / "studies" / "retry", 2)
    job.check_left_nothing()

    broken = submit_study(slurm, "broken", 2, failing_ray(slurm, "broken", "n2:9")).wait()
    broken.expect("FAILED", "2:0")
    text = broken.text()
    assert len(broken.lines("slurm.sbatch: Ray on n2 failed to start (code 1,")) == 1, text[-4000:]
    assert len(broken.lines("slurm.sbatch: error: Ray on n2 exited by itself (code 1,")) == 1, text[-4000:]
    assert broken.lines("slurm.sbatch: error: Ray on n2 stopped before all nodes joined"), text[-4000:]
    assert "try 2" in text and "try 3" not in text and "nodes joined:" not in text and "study:" not in text
    broken.check_left_nothing()
    say(capsys, f"job {job.id} (each node's first `ray start` fails): {job.state}, exit {job.exit_code}, "
                f"{job.seconds:.0f} s", *script_lines(job),
        f"job {broken.id} (n2's `ray start` always fails): {broken.state}, exit {broken.exit_code}, "
        f"{broken.seconds:.0f} s", *script_lines(broken),
        "  processes of both jobs left: none; private folders left: none")
