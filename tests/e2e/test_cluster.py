"""A study submitted with ``ray job submit`` to a real two-node Ray cluster on this machine, a study logging to a
real ``mlflow server``, and a two-dataset benchmark of a user's method from a file outside the repository.

The cluster: a head started with ``ray start --head --num-cpus 0`` (it runs the job's driver, never a trial)
and a worker node with 2 CPUs, both on 127.0.0.1, with their own temp dir and ports so they never meet any
other Ray on the machine. Placement is read back from Ray's state API (which node ran each trial actor). The
worker node's shell lacks the variable that points the head at a prepared dataset, so a study on that dataset
must stop naming the worker node. Everything the fixture started is killed afterwards, also when a test
fails, and the fixture checks that no process of it is left.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from mlflow import MlflowClient

from drl_tune.study.plan import PLAN_FILE, Plan
from tests.e2e.test_benchmark_e2e import SPACE as BENCH_SPACE
from tests.e2e.test_study_e2e import tiny_sets
from tests.methods.test_user_methods import GOOD
from tests.study.test_study_address import SPACE, free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))
MLFLOW = str(Path(sys.executable).with_name("mlflow"))


def wait_for(check, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-3000:] if log else ""
            raise RuntimeError(f"{what}: process exited ({proc.returncode})\n{tail}")
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(1)
    raise TimeoutError(f"{what}: not ready after {timeout:g} s\n" + (log.read_text()[-3000:] if log else ""))


def node_ports() -> list[str]:
    """Every port a node opens, chosen free, so two nodes on one machine (and other Rays) never collide."""
    names = ["--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
             "--dashboard-agent-grpc-port", "--metrics-export-port", "--runtime-env-agent-port"]
    return [arg for name in names for arg in (name, str(free_port()))]


def group_processes(leaders: list[int]) -> list[psutil.Process]:
    """The `ray start` processes, everything they started (recursively) and anything left in their groups."""
    found: dict[int, psutil.Process] = {}
    for pid in leaders:
        try:
            leader = psutil.Process(pid)
            for p in [leader, *leader.children(recursive=True)]:
                found[p.pid] = p
        except psutil.NoSuchProcess:
            pass
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) in leaders:
                found[p.pid] = p
        except (ProcessLookupError, psutil.Error):
            pass
    return list(found.values())


class Cluster:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.temp_dirs: list[str] = []
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        self.address = f"127.0.0.1:{self.gcs_port}"
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"
        # token authentication, with this cluster's own token (never the user's ~/.ray/auth_token, which a
        # fresh machine does not have): every node, the job drivers and the test's `ray` commands get it
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
                    "RAY_USAGE_STATS_ENABLED": "0"}
        for key in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH"):
            self.env.pop(key, None)
        self.procs: list[subprocess.Popen] = []

    def start(self, name: str, args: list[str], env: dict[str, str], ready, attempts: int = 5) -> None:
        """Start a node and wait until ``ready()``. Each node has its own temp dir, as separate machines would
        (nodes sharing one would share the job's unpacked working directory, and one node's clean-up would
        delete it under the other). Retried: on a loaded machine the raylet sometimes gives up waiting 15 s for
        its freshly started agent (a fixed limit in Ray 2.60); a second start finds the imports cached."""
        for attempt in range(1, attempts + 1):
            # short: Ray's unix sockets live under it and must stay below 108 characters
            temp_dir = tempfile.mkdtemp(prefix="rc", dir="/tmp")
            self.temp_dirs.append(temp_dir)
            log = self.base / f"{name}-{attempt}.log"
            with open(log, "w") as out:  # own session: stopping it cannot touch any other Ray on the machine
                proc = subprocess.Popen([RAY, "start", "--block", "--node-ip-address", "127.0.0.1", "--temp-dir",
                                         temp_dir, "--disable-usage-stats", "--object-store-memory", "80000000",
                                         *node_ports(), *args], stdout=out, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True)
            self.procs.append(proc)
            try:
                wait_for(ready, 240, f"{name} node", proc, log)
                return
            except (RuntimeError, TimeoutError):
                if attempt == attempts:
                    raise
                self.kill(proc)

    def ray(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([RAY, *args], capture_output=True, text=True, env=self.env, timeout=timeout)

    def nodes(self) -> list[dict]:
        out = self.ray("list", "nodes", "--address", self.dashboard, "--format", "json", "--detail")
        try:
            return json.loads(out.stdout) if out.returncode == 0 else []
        except ValueError:  # "No resource in the cluster" while the head is still coming up
            return []

    def kill(self, proc: subprocess.Popen) -> None:
        procs = group_processes([proc.pid])
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        psutil.wait_procs(procs, timeout=30)

    def stop(self) -> None:
        procs = group_processes([p.pid for p in self.procs])
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):  # SIGTERM would drain for 30 s; nothing to keep here
                os.killpg(proc.pid, signal.SIGKILL)
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        _, alive = psutil.wait_procs(procs, timeout=30)
        for proc in self.procs:
            proc.wait(timeout=30)
        for temp_dir in self.temp_dirs:
            shutil.rmtree(temp_dir, ignore_errors=True)
        assert not alive, f"Ray processes left running: {[p.pid for p in alive]}"


def fake_prepared_dataset(folder: Path) -> Path:
    """A tiny prepared cache under the name 'cremad' (only whether each node finds it matters here)."""
    from drl_tune.data.cache import write_cache
    from drl_tune.data.synthetic import generate
    from drl_tune.training.config import make_config

    data = generate(make_config({"data.synthetic.n_train": 12, "data.synthetic.n_val": 6,
                                 "data.synthetic.n_test": 6, "data.synthetic.image_size": 32}).data.synthetic)
    return write_cache(folder, "cremad", data.classes, data.modalities, data.splits, data.preprocessing)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    base = tmp_path_factory.mktemp("cluster")
    cl = Cluster(base)
    cl.cremad = fake_prepared_dataset(base / "cremad_cache")
    try:
        cl.start("head", ["--head", "--port", str(cl.gcs_port), "--num-cpus", "0", "--include-dashboard", "true",
                          "--dashboard-host", "127.0.0.1", "--dashboard-port", str(cl.dashboard_port),
                          "--ray-client-server-port", str(free_port())],
                 {**cl.env, "DRL_TUNE_CREMAD_ROOT": str(cl.cremad)},
                 ready=lambda: sum(n["state"] == "ALIVE" for n in cl.nodes()) == 1)
        worker_env = {k: v for k, v in cl.env.items() if k != "DRL_TUNE_CREMAD_ROOT"}
        cl.start("worker", ["--address", cl.address, "--num-cpus", "2"], worker_env,
                 ready=lambda: sum(n["state"] == "ALIVE" for n in cl.nodes()) == 2)
        nodes = cl.nodes()
        cl.head_id = next(n["node_id"] for n in nodes if n["is_head_node"])
        cl.worker_id = next(n["node_id"] for n in nodes if not n["is_head_node"])
        yield cl
    finally:
        cl.stop()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    base = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    log = base / "mlflow.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([MLFLOW, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                                 "--backend-store-uri", f"sqlite:///{base / 'server.db'}",
                                 "--artifacts-destination", str(base / "server_artifacts")],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: urllib.request.urlopen(f"{url}/health", timeout=2).status == 200, 240, "mlflow server",
                 proc, log)
        yield url
    finally:
        procs = group_processes([proc.pid])
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        psutil.wait_procs(procs, timeout=30)
        proc.wait(timeout=30)


@dataclass
class Job:
    folder: Path
    code: int = -1  # 0: SUCCEEDED
    logs: str = ""
    seconds: float = 0.0  # from submission until Ray reported the job finished


def bad_input_args(case: str, folder: Path) -> tuple[list[str], str]:
    if case == "cpus":
        return ["--storage", str(folder / "studies"), "--cpus-per-trial", "3"], SPACE
    if case == "storage":
        (folder / "a_file").write_text("not a folder")
        return ["--storage", str(folder / "a_file" / "studies")], SPACE
    # prepared where the head looks (DRL_TUNE_CREMAD_ROOT in its shell), absent on the worker node
    return ["--storage", str(folder / "studies")], SPACE.replace("{name: synthetic}", "{name: cremad}")


@pytest.fixture(scope="module")
def jobs(cluster, mlflow_server, tmp_path_factory) -> dict[str, Job]:
    """Four studies and a benchmark submitted at once with `ray job submit --no-wait` (a 2-core machine runs them
    faster together than one after another), then waited for: a good study, logging to the tracking server, a
    benchmark of a user's method from a file, and three bad inputs."""
    commands: dict[str, list[str]] = {}
    folders = {name: tmp_path_factory.mktemp(name) for name in ("ok", "mine", "cpus", "storage", "dataset")}

    def study(name: str, args: list[str], space_text: str) -> list[str]:
        space = folders[name] / "cluster.yaml"
        space.write_text(textwrap.dedent(space_text))
        return ["drl_tune.run", "--space", str(space), *args]

    commands["ok"] = study("ok", ["--storage", str(folders["ok"] / "studies"), "--name", "onjob", "--mlflow-uri",
                                  mlflow_server], SPACE)
    # a benchmark over two datasets of joint and a method from a file outside the repository (and outside the job's
    # working directory): the driver reads the file; the trials register the method from the plans' record
    method_file = folders["mine"] / "elsewhere" / "smooth.py"
    method_file.parent.mkdir()
    method_file.write_text(GOOD)
    spaces = []
    for label, seed in (("set_a", 1), ("set_b", 2)):
        spaces.append(folders["mine"] / f"{label}.yaml")
        spaces[-1].write_text(BENCH_SPACE.format(name=label, seed=seed))
    commands["mine"] = ["drl_tune.benchmark", "--spaces", *map(str, spaces), "--methods", "joint,smooth_ce",
                        "--methods-from", str(method_file), "--confirm-seeds", "2", "--name", "mine", "--storage",
                        str(folders["mine"] / "bench")]
    for case in ("cpus", "storage", "dataset"):
        commands[case] = study(case, *bad_input_args(case, folders[case]))
    started = {}
    for name, command in commands.items():
        out = cluster.ray("job", "submit", "--no-wait", "--address", cluster.dashboard, "--submission-id",
                          f"drl-tune-{name}", "--working-dir", str(ROOT), "--", sys.executable, "-m", *command,
                          "--progress-interval", "0", *tiny_sets())
        assert out.returncode == 0, out.stdout + out.stderr
        started[name] = time.monotonic()
    result = {name: Job(folders[name]) for name in commands}
    deadline = time.monotonic() + 1200
    while time.monotonic() < deadline and any(job.code < 0 for job in result.values()):
        for name, job in result.items():
            if job.code >= 0:
                continue
            status = cluster.ray("job", "status", "--address", cluster.dashboard, f"drl-tune-{name}").stdout.lower()
            if any(word in status for word in ("succeeded", "failed", "stopped")):
                job.seconds = time.monotonic() - started[name]
                job.code = 0 if "succeeded" in status else 1
                job.logs = cluster.ray("job", "logs", "--address", cluster.dashboard, f"drl-tune-{name}").stdout
                (job.folder / "job.log").write_text(job.logs)  # the whole story, when an assertion shows its end
        time.sleep(5)
    for name, job in result.items():
        print(f"job {name}: {'succeeded' if job.code == 0 else 'failed'} after {job.seconds:.0f} s")
    return result


def trial_actors(cl: Cluster) -> list[dict]:
    """Every Tune trial actor from Ray's state API: its node and pid. Function trainables run as `ImplicitFunc`; a
    driver's later Tuners (a study's confirmation, a benchmark's next study) show it by its qualified name,
    `wrap_function.<locals>.ImplicitFunc` (Ray 2.60)."""
    out = cl.ray("list", "actors", "--address", cl.dashboard, "--format", "json", "--detail", "--limit", "10000")
    return [a for a in json.loads(out.stdout) if str(a.get("class_name")).endswith("ImplicitFunc")]


def trial_actor_nodes(cl: Cluster) -> list[str]:
    return [a["node_id"] for a in trial_actors(cl)]


def test_job_submit_runs_the_study_on_the_worker_node(cluster, jobs):
    job = jobs["ok"]
    assert job.code == 0, job.logs[-6000:]
    # the first line: the job joined its own cluster (the worker's 2 CPUs; the head has none) — no local Ray
    # (Ray hands the job the GCS address with the machine's own IP in place of 127.0.0.1)
    assert re.search(rf"^ray: inside Ray job drl-tune-ok, joined its cluster at [\d.]+:{cluster.gcs_port} "
                     r"\(2 CPUs, 0 GPUs\) on 2 nodes in [\d.]+ s$", job.logs, re.M), job.logs[:3000]
    # the job's log is not a terminal: plain status lines, and the search's table
    assert "search: 2/2 trials done" in job.logs and "search of study 'onjob' (2 trials" in job.logs
    # every trial actor ran on the worker node
    placed = trial_actor_nodes(cluster)
    assert len(placed) >= 2 and set(placed) == {cluster.worker_id}, (placed, cluster.head_id)
    # the results folder is complete: plan, both trials with one result line per epoch; the MLflow runs
    study = job.folder / "studies" / "onjob"
    plan = Plan.from_json((study / PLAN_FILE).read_text())
    trials = sorted(study.glob("joint_*/result.json"))
    assert len(trials) == 2
    for result in trials:
        assert [json.loads(line)["epoch"] for line in result.read_text().splitlines()] == [0, 1]
    client = MlflowClient(plan.mlflow_uri)
    assert client.get_run(plan.parent_run_id).info.status == "FINISHED"
    runs = client.search_runs([plan.experiment_id], f"tags.`mlflow.parentRunId` = '{plan.parent_run_id}'")
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    for run in runs:
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val/acc")] == [0, 1]


def test_a_benchmark_of_a_users_method_from_a_file_trains_it_on_the_worker_node(cluster, jobs):
    """`python -m drl_tune.benchmark` as a Ray job over two datasets: the driver read the user's file (outside the
    repository); the trials on the worker node registered the method from the text the plans recorded (the trainable
    never opens the file) and trained it; each study has its answer, and the table names the method in every format
    with the answers' own numbers."""
    job = jobs["mine"]
    assert job.code == 0, job.logs[-6000:]
    # each study joined the job's cluster (the driver leaves Ray between studies and joins it again)
    joined = re.findall(r"^ray: inside Ray job drl-tune-mine, joined its cluster at .* on 2 nodes in [\d.]+ s$",
                        job.logs, re.M)
    assert len(joined) == 2, job.logs[:3000]
    folder = job.folder / "bench" / "mine"
    actors = trial_actors(cluster)
    node_of = {a["pid"]: a["node_id"] for a in actors if a.get("pid")}
    assert set(node_of.values()) == {cluster.worker_id}, (node_of, cluster.head_id)
    for label in ("set_a", "set_b"):
        study = folder / "studies" / label
        assert f"{label}: answered in" in job.logs, job.logs[-6000:]
        plan = Plan.from_json((study / PLAN_FILE).read_text())
        assert plan.methods and plan.methods[0]["source"] == GOOD
        # the user's method: one search trial and two confirmation seeds, each two epochs, on the worker node
        results = sorted(study.glob("smooth_ce_*/result.json")) + sorted(study.glob("confirm/smooth_ce_*/result.json"))
        assert len(results) == 3, sorted(str(p.relative_to(study)) for p in study.glob("**/result.json"))
        for result in results:
            rows = [json.loads(line) for line in result.read_text().splitlines()]
            assert [r["epoch"] for r in rows] == [0, 1] and rows[-1]["config"]["method"] == "smooth_ce"
            assert "smooth_ce.eps" in rows[-1]["config"]
            assert node_of.get(rows[-1]["pid"]) == cluster.worker_id, (rows[-1]["pid"], node_of)
    for suffix in ("md", "tex", "csv", "json", "html"):
        text = (folder / f"table.{suffix}").read_text()
        assert "smooth_ce" in text.replace("\\_", "_") and "joint" in text, suffix  # LaTeX escapes the underscore
    table = json.loads((folder / "table.json").read_text())
    for label in ("set_a", "set_b"):
        answer = json.loads((folder / "studies" / label / "answer.json").read_text())
        for config in answer["configs"]:
            row = next(r for r in table["rows"] if r["dataset"] == label and r["method"] == config["method"])
            assert row["test_acc_mean"] == config["stats"]["test/acc_at_best_val"]["mean"], (label, row)
        assert {c["method"] for c in answer["configs"]} == {"joint", "smooth_ce"}


def test_job_logs_to_an_mlflow_tracking_server(jobs, mlflow_server):
    job = jobs["ok"]
    assert job.code == 0, job.logs[-6000:]
    client = MlflowClient(mlflow_server)  # read back from the server, as a laptop would
    experiment = client.get_experiment_by_name("onjob")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) == 2 and all(len(client.get_metric_history(r.info.run_id, "val/acc")) == 2 for r in children)
    # artifacts went through the server (a laptop can read them), not into a folder only the head sees
    assert {"plan.txt", "summary.txt"} <= {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    assert f"review:  open {mlflow_server}/#/experiments/{experiment.experiment_id}/runs in a browser" in job.logs
    assert not (job.folder / "studies" / "onjob" / "mlflow.db").exists()


@pytest.mark.parametrize(("case", "expected"), [
    ("cpus", "one trial asks for 3 CPUs + 0 GPUs, but the largest of the cluster's 2 node(s) has 2 CPUs + 0 GPUs"),
    # the driver's own check of the folders it will write (ground/paths.py) now answers first, on the head; the
    # cluster preflight (every node writes the storage) stays for a folder only some nodes cannot write
    ("storage", "a_file is a file, not a folder; pass a folder path"),
    ("dataset", "dataset: dataset 'cremad' is not prepared at"),
])
def test_bad_input_on_the_cluster_names_what_is_missing(cluster, jobs, case, expected):
    job = jobs[case]
    assert job.code == 1, job.logs[-4000:]
    errors = [line for line in job.logs.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], job.logs[-4000:]
    assert "Traceback" not in job.logs, job.logs[-4000:]
    if case == "dataset":  # the message names the node that lacks it: the worker, not the head
        assert f"id {cluster.worker_id[:8]})" in errors[0] and f"id {cluster.head_id[:8]}" not in job.logs
    assert not list(job.folder.glob(f"**/{PLAN_FILE}"))  # nothing was started
