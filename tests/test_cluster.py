"""A study submitted with ``ray job submit`` to a real two-node Ray cluster on this machine, and a study logging
to a real ``mlflow server``.

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
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
from mlflow import MlflowClient

from drl_tune.study import PLAN_FILE, Plan
from tests.test_study_e2e import tiny_sets

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
MLFLOW = str(Path(sys.executable).with_name("mlflow"))

SPACE = """\
dataset: {name: synthetic}
fixed: {threads: 1, method: joint, lr: 0.05, epochs: 2}
search:
  lr: {type: choice, values: [0.05, 0.02]}
scheduler: {type: none}
study: {num_samples: 2, max_concurrent: 2, seed: 0, max_failures: 0}
resources: {cpus_per_trial: 1}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}
        self.env.pop("RAY_ADDRESS", None)
        self.procs: list[subprocess.Popen] = []

    def start(self, name: str, args: list[str], env: dict[str, str], ready, attempts: int = 3) -> None:
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
    from drl_tune.config import make_config
    from drl_tune.data.cache import write_cache
    from drl_tune.data.synthetic import generate

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


def submit(cl: Cluster, tmp_path: Path, job_id: str, *args: str, space_text: str = SPACE,
           timeout: float = 600) -> tuple[int, str, float]:
    """`ray job submit` (blocks, streaming the job's logs); returns the job's final status code, logs, seconds."""
    space = tmp_path / "cluster.yaml"
    space.write_text(textwrap.dedent(space_text))
    start = time.monotonic()
    out = cl.ray("job", "submit", "--address", cl.dashboard, "--submission-id", job_id, "--working-dir", str(ROOT),
                 "--", sys.executable, "-m", "drl_tune.run", "--space", str(space), "--progress-interval", "0",
                 *tiny_sets(), *args, timeout=timeout)
    seconds = time.monotonic() - start
    status = cl.ray("job", "status", "--address", cl.dashboard, job_id).stdout
    logs = cl.ray("job", "logs", "--address", cl.dashboard, job_id).stdout
    code = 0 if out.returncode == 0 and "succeeded" in status.lower() else 1
    text = logs + "\n" + out.stdout + out.stderr + status
    (tmp_path / f"{job_id}.log").write_text(text)  # the whole story, when an assertion shows only its end
    return code, text, seconds


def trial_actor_nodes(cl: Cluster) -> list[str]:
    out = cl.ray("list", "actors", "--address", cl.dashboard, "--format", "json", "--detail", "--limit", "10000")
    actors = json.loads(out.stdout)
    return [a["node_id"] for a in actors if a.get("class_name") == "ImplicitFunc"]


def test_job_submit_runs_the_study_on_the_worker_node(cluster, tmp_path):
    storage = tmp_path / "studies"
    code, logs, seconds = submit(cluster, tmp_path, "drl-tune-ok", "--storage", str(storage), "--name", "onjob")
    assert code == 0, logs[-6000:]
    # the first line: the job joined its own cluster (the worker's 2 CPUs; the head has none) — no local Ray
    assert f"ray: inside Ray job drl-tune-ok, joined its cluster at {cluster.address} (2 CPUs, 0 GPUs) on 2 nodes" \
        in logs, logs[:3000]
    assert "progress" in logs and "summary of study 'onjob' (2 trials" in logs  # the table reaches the job logs
    # every trial actor ran on the worker node
    placed = trial_actor_nodes(cluster)
    assert len(placed) >= 2 and set(placed) == {cluster.worker_id}, (placed, cluster.head_id)
    # the results folder is complete: plan, both trials with one result line per epoch, the MLflow database
    study = storage / "onjob"
    plan = Plan.from_json((study / PLAN_FILE).read_text())
    trials = sorted(study.glob("joint_*/result.json"))
    assert len(trials) == 2
    for result in trials:
        lines = [json.loads(line) for line in result.read_text().splitlines()]
        assert [r["epoch"] for r in lines] == [0, 1] and all(r["node_ip"] == "127.0.0.1" for r in lines)
    client = MlflowClient(plan.mlflow_uri)
    assert client.get_run(plan.parent_run_id).info.status == "FINISHED"
    runs = client.search_runs([plan.experiment_id], f"tags.`mlflow.parentRunId` = '{plan.parent_run_id}'")
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    for run in runs:
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val/acc")] == [0, 1]
    print(f"job study: {seconds:.0f} s")


@pytest.fixture
def mlflow_server(tmp_path):
    port = free_port()
    log = tmp_path / "mlflow.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([MLFLOW, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                                 "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
                                 "--artifacts-destination", str(tmp_path / "server_artifacts")],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: urllib.request.urlopen(f"{url}/health", timeout=2).status == 200, 180, "mlflow server",
                 proc, log)
        yield url
    finally:
        procs = group_processes([proc.pid])
        os.killpg(proc.pid, signal.SIGKILL)
        psutil.wait_procs(procs, timeout=30)
        proc.wait(timeout=30)


def test_job_logs_to_an_mlflow_tracking_server(cluster, mlflow_server, tmp_path):
    code, logs, _ = submit(cluster, tmp_path, "drl-tune-server", "--storage", str(tmp_path / "studies"),
                           "--name", "served", "--mlflow-uri", mlflow_server)
    assert code == 0, logs[-6000:]
    client = MlflowClient(mlflow_server)  # read back from the server, as a laptop would
    experiment = client.get_experiment_by_name("served")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 2 and all(len(client.get_metric_history(r.info.run_id, "val/acc")) == 2 for r in children)
    # artifacts went through the server (a laptop can read them), not into a folder only the head sees
    assert {"plan.txt", "summary.txt"} <= {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    assert f"review:  open {mlflow_server}/#/experiments/{experiment.experiment_id}/runs in a browser" in logs
    assert not (tmp_path / "studies" / "served" / "mlflow.db").exists()


@pytest.mark.parametrize(("case", "expected"), [
    ("cpus", "one trial asks for 3 CPUs + 0 GPUs, but the largest of the cluster's 2 node(s) has 2 CPUs + 0 GPUs"),
    ("storage", "cannot write the results storage"),
    ("dataset", "dataset: dataset 'cremad' is not prepared at"),
])
def test_bad_input_on_the_cluster_names_what_is_missing(cluster, tmp_path, case, expected):
    storage = tmp_path / "studies"
    args = ["--storage", str(storage)]
    space_text = SPACE
    if case == "cpus":
        args += ["--cpus-per-trial", "3"]
    elif case == "storage":
        (tmp_path / "a_file").write_text("not a folder")
        args = ["--storage", str(tmp_path / "a_file" / "studies")]
    else:  # prepared where the head looks (DRL_TUNE_CREMAD_ROOT in its shell), absent on the worker node
        space_text = SPACE.replace("{name: synthetic}", "{name: cremad}")
    code, logs, seconds = submit(cluster, tmp_path, f"drl-tune-bad-{case}", *args, space_text=space_text,
                                 timeout=400)
    assert code != 0
    errors = [line for line in logs.splitlines() if line.startswith("error:")]
    assert errors and expected in logs, logs[-4000:]
    assert "Traceback" not in logs, logs[-4000:]
    if case != "cpus":  # the message names the node that lacks it: the worker, not the head
        assert f"id {cluster.worker_id[:8]})" in logs and f"id {cluster.head_id[:8]}" not in logs, logs[-3000:]
    assert not list(storage.glob(f"*/{PLAN_FILE}"))  # nothing was started
    print(f"{case}: refused after {seconds:.0f} s")
