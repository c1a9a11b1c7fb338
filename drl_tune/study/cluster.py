"""A study on a Ray cluster: which Ray the driver joins, and the checks that make a multi-node study stop
with one clear line instead of hanging or failing deep inside a worker.

Which Ray (first match wins):

1. ``--address HOST:PORT`` / ``ray://HOST:10001``: that cluster (its GCS port is probed first, so an address
   with nothing listening fails in seconds — Ray itself retries for minutes);
2. inside a Ray job (``ray job submit``; the job supervisor sets ``RAY_JOB_CONFIG_JSON_ENV_VAR`` and points
   ``RAY_ADDRESS`` at the cluster's GCS): the job's cluster, joined with a *plain* ``ray.init()`` —
   ``ray.init(include_dashboard=False)`` inside a job deletes the job's working directory (Ray 2.60);
3. ``RAY_ADDRESS=HOST:PORT`` exported in the shell: that cluster;
4. otherwise a new local Ray (dashboard off).

Before anything is written, on a cluster (``preflight``): one trial's CPUs/GPUs must fit on one node (a trial
that fits nowhere would wait forever); every node that can host a trial must load the dataset cache and write
to ``--storage`` — checked by a tiny Ray task pinned to each such node, reported by node address.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
import uuid
from pathlib import Path
from typing import Any

from drl_tune.ground import environ
from drl_tune.ground.errors import ConfigError

JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray's job supervisor for a job's entrypoint (Ray 2.60)
PROBE_TIMEOUT_S = 3.0  # connecting to a GCS port that is listening takes milliseconds, even across a data centre
# a node's first task of a job first unpacks the job's working directory and starts a worker that imports torch:
# seconds on an idle node, but 180 s was too short on this project's 2-core test machine under heavy load
PREFLIGHT_TIMEOUT_S = 600.0


class ClusterError(ConfigError):
    """The cluster cannot run this study as asked (reported as one line, exit code 2, before any trial)."""


def job_submission_id() -> str | None:
    """The Ray job's submission id when this process is a job's entrypoint (``ray job submit``), else None."""
    raw = os.environ.get(JOB_CONFIG_ENV)
    if raw is None:
        return None
    try:
        metadata = json.loads(raw).get("metadata") or {}
    except (ValueError, AttributeError):
        return ""
    return str(metadata.get("job_submission_id") or "")


def check_storage_arg(storage: str | os.PathLike) -> None:
    """``--storage`` on a cluster: a folder every node reaches at the same path. Two mistakes caught early: an
    object-store URI (``s3://…``; argparse's Path turned it into ``s3:/…``), which this version does not write
    to, and, inside a Ray job, a relative folder — the job's working directory is a temporary copy."""
    text = str(storage)
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:/", text):
        raise ClusterError(
            f"--storage {text.replace(':/', '://', 1) if '://' not in text else text}: object-store URIs are not "
            "supported yet (the study folder also holds the plan and the MLflow database); mount the bucket or a "
            "shared file system (NFS, EFS, Filestore) at the same path on every node and pass that path")
    if job_submission_id() is not None and not Path(text).is_absolute():
        raise ClusterError(
            f"--storage {text} is relative: inside a Ray job the working directory is a temporary copy that Ray "
            "deletes afterwards, and other nodes do not see it; pass an absolute folder every node can write "
            "(a shared NFS/EFS mount), e.g. --storage /mnt/shared/studies")


# ---------------------------------------------------------------------------------------------------------
# joining a cluster


def _host_port(address: str) -> tuple[str, int] | None:
    bare = address.split("://", 1)[1] if "://" in address else address
    host, _, port = bare.rstrip("/").rpartition(":")
    if not host or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def check_address(address: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Fail in ``timeout`` seconds when nothing listens at ``address`` (Ray would retry the GCS for minutes)."""
    if address in ("auto", "local"):
        return
    if address.startswith(("http://", "https://")):
        raise ClusterError(
            f"--address {address} looks like the Ray dashboard (port 8265), which `ray job submit --address` "
            "takes; a study joins a cluster at its GCS address (HEAD:6379, or ray://HEAD:10001), or runs as a "
            f"job: ray job submit --address {address} --working-dir . -- python -m drl_tune.run ...")
    target = _host_port(address)
    if target is None:
        raise ClusterError(f"--address {address!r} is not HOST:PORT, ray://HOST:PORT or auto")
    try:
        socket.create_connection(target, timeout=timeout).close()
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise ClusterError(
            f"nothing answers at Ray address {address} ({reason}, waited {timeout:g} s): start the head node "
            "there first (ray start --head --port PORT) or correct the address; `ray status` on the head "
            "prints it") from None


# What a trial's worker imports before its first epoch: the trainable and, through the methods, torch, torchvision
# and sklearn (≈ 4.5 s of CPU in a new process here).
TRIAL_MODULES = ("drl_tune.study.trainable",)


def local_workers(cpus_per_trial: float, max_concurrent: int) -> tuple[tuple[str, ...], dict[str, str]]:
    """Before a driver starts its own Ray: let the study's trial actors start in the Python workers Ray prestarts;
    returns the modules those workers should import as they start and the environment the local Ray's processes
    should start with (both for :func:`connect`).

    Why: a local Ray prestarts one idle worker per CPU when the driver connects, and a new actor with no runtime
    environment of its own takes one. Tune gives every trial actor ``env_vars={"PL_DISABLE_FORK": "1"}`` (for
    PyTorch Lightning, ray-project/ray#28197), so each trial actor started a new process instead (≈ 1.5 s here) and
    imported torch there, while the prestarted workers sat idle. Here the variable goes into the environment the
    local Ray's processes start with (a trial still sees it) and out of Tune's per-actor copy (Ray 2.60 has no
    option for it: ``ray.tune.execution.class_cache.DEFAULT_ENV_VARS``; a test checks it is still there). Then the
    first trials start in the prestarted workers, which have imported
    :data:`TRIAL_MODULES` (Ray's ``preload_python_modules``) while the driver opened MLflow and built the Tuner.

    The modules are preloaded only when every prestarted worker will host a trial (``cpus_per_trial`` ≤ 1 and at
    least as many trials at a time as CPUs): a study that uses fewer workers than CPUs (a GPU study takes 4 CPUs a
    trial) would otherwise hold idle processes with torch imported (0.8 GB resident each here, shared libraries
    included, against 0.07 GB with Ray alone)."""
    from ray._private.utils import get_num_cpus  # noqa: PLC2701 — Ray's count, the workers it prestarts (services.py)
    from ray.tune.execution import class_cache

    class_cache.DEFAULT_ENV_VARS.pop("PL_DISABLE_FORK", None)
    env = {"PL_DISABLE_FORK": "1"}
    if cpus_per_trial > 1 or max_concurrent < get_num_cpus():
        return (), env
    # A preloading worker loads torch's OpenMP, numpy's OpenBLAS and sklearn's OpenMP before it hosts a trial, and
    # each sizes its thread pool from the environment then: to every core, since Ray sets OMP_NUM_THREADS (to the
    # trial's CPUs, here 1) only when the trial's actor starts: two 1-CPU trials had 2 threads each in every pool on
    # 2 cores (threadpoolctl, tests/study/test_prestarted_workers.py). So the local Ray's processes get the value
    # Ray gives these trials from the start (a user's own OMP_NUM_THREADS wins, as in Ray).
    if "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = "1"
    return TRIAL_MODULES, env


def starts_local(address: str | None) -> bool:
    """Whether :func:`connect` starts a Ray of its own here (no address, not inside a Ray job, no ``RAY_ADDRESS``
    naming a cluster's GCS) rather than joining one."""
    env_address = os.environ.get("RAY_ADDRESS", "")
    return (not address and job_submission_id() is None
            and not (env_address and not env_address.startswith(("http://", "https://"))))


PRESTART_KEEP_ALIVE_S = 120  # how long Ray keeps a prestarted worker that has not yet hosted anything


def prestart_workers(count: int) -> bool:
    """Ask the local raylet to start ``count`` more Python workers for this driver's job now; True if it took the
    request. They import :data:`TRIAL_MODULES` as they start when the local Ray preloads them.

    Why: a Tune run's trial actors end with it, and Ray starts a new process for every actor of the next run
    (it gives a new actor neither a worker that hosted an actor nor one that ran a task), so a study's
    confirmation began by starting a process per slot and importing torch there (≈ 6 s of the demo study's wall
    time between its search and its confirmation, ``python -m drl_tune.bench study``). Started while the search's
    last trials run, in the slots they free, those workers are up when the confirmation's actors ask for them.

    Ray has the call (the raylet's ``PrestartWorkers``, which its core worker sends for task backlogs) but no
    Python API for it, so this sends it as Ray's own ``internal_api`` sends its raylet calls. It only saves time:
    any failure (another Ray, the call moved) returns False and the next actors start their processes as before
    (``tests/study/test_prestarted_workers.py`` fails if Ray no longer honours it)."""
    try:
        import ray
        from ray._private.grpc_utils import init_grpc_channel  # noqa: PLC2701 — see the docstring
        from ray.core.generated import common_pb2, node_manager_pb2, node_manager_pb2_grpc

        worker = ray._private.worker.global_worker  # noqa: SLF001
        node = worker.node
        if node is None:
            return False  # no Ray here
        # protobuf's generated modules: their names exist only at run time, hence Any
        messages: Any = node_manager_pb2
        common: Any = common_pb2
        channel = init_grpc_channel(f"{node.node_ip_address}:{node.node_manager_port}")
        try:
            node_manager_pb2_grpc.NodeManagerServiceStub(channel).PrestartWorkers(
                messages.PrestartWorkersRequest(
                    language=common.PYTHON, job_id=worker.current_job_id.binary(), num_workers=count,
                    keep_alive_duration_secs=PRESTART_KEEP_ALIVE_S),
                timeout=5)
        finally:
            channel.close()
        return True
    except Exception:  # noqa: BLE001 — an optimisation: whatever went wrong, the study runs as before
        return False


def connect(address: str | None, preload: tuple[str, ...] = (), env: dict[str, str] | None = None) -> str:
    """``ray.init`` for the cases in the module docstring; returns the line saying which Ray this is. A local Ray's
    processes start with ``env`` in their environment, and its worker processes import ``preload`` when they start
    (Ray's ``preload_python_modules``), the ones Ray prestarts at ``ray.init`` included (:func:`local_workers` says
    when and why)."""
    import ray

    quiet: dict[str, Any] = {"log_to_driver": False, "logging_level": "WARNING"}
    started = time.monotonic()
    job = job_submission_id()
    env_address = os.environ.get("RAY_ADDRESS", "")
    if starts_local(address):  # "local": a RAY_ADDRESS=http://…:8265 exported for `ray job submit` must not redirect
        system = {"preload_python_modules": list(preload)} if preload else None
        with environ.scoped(env or {}):  # Ray's processes inherit it; a benchmark's next study starts from ours
            ray.init(address="local", include_dashboard=False, _system_config=system, **quiet)
        where = "started a local Ray"
    elif address:
        check_address(address)
        _init(address, address=address, **quiet)
        where = f"joined the cluster at {address}"
    elif job is not None:
        if env_address:
            check_address(env_address)
        _init(env_address or "the job's cluster", **quiet)  # plain: see the module docstring
        where = f"inside Ray job {job or '?'}, joined its cluster at {env_address or 'auto'}"
    else:  # RAY_ADDRESS names a cluster's GCS
        check_address(env_address)
        _init(env_address, address=env_address, **quiet)
        where = f"joined the cluster at {env_address} (RAY_ADDRESS)"
    nodes = alive_nodes()
    total = ray.cluster_resources()
    return (f"ray: {where} ({total.get('CPU', 0):g} CPUs, {total.get('GPU', 0):g} GPUs) on {len(nodes)} node"
            + ("s" if len(nodes) != 1 else "") + f" in {time.monotonic() - started:.1f} s")  # bench study reads it


def _init(shown: str, **kwargs: Any) -> None:
    import ray

    try:
        ray.init(**kwargs)
    except (ray.exceptions.AuthenticationError, ConnectionError) as err:
        # Ray 2.60's `ray start` turns token authentication on; a driver without RAY_AUTH_MODE=token is
        # refused, reported either as an AuthenticationError or as a plain ConnectionError
        message = f"cannot join the Ray cluster at {shown}: {str(err).splitlines()[0]}"
        if os.environ.get("RAY_AUTH_MODE", "") != "token":
            message += (". If it uses token authentication (`ray start` turns it on), export RAY_AUTH_MODE=token "
                        "(the token is read from ~/.ray/auth_token or RAY_AUTH_TOKEN) and run again")
        raise ClusterError(message + "; check the address with `ray status` on the head node") from err


def alive_nodes() -> list[dict[str, Any]]:
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]


def node_label(node: dict[str, Any]) -> str:
    """How a node is named in messages: its address, host name and short id (what `ray status` shows)."""
    return (f"node {node.get('NodeManagerAddress', '?')} ({node.get('NodeManagerHostname', '?')}, "
            f"id {str(node.get('NodeID', '?'))[:8]})")


# ---------------------------------------------------------------------------------------------------------
# one trial must fit on one node


def _amounts(cpus: float, gpus: float) -> str:
    return f"{cpus:g} CPU" + ("s" if cpus != 1 else "") + f" + {gpus:g} GPU" + ("s" if gpus != 1 else "")


def trial_nodes(nodes: list[dict[str, Any]], cpus: float, gpus: float) -> list[dict[str, Any]]:
    """The nodes on which one trial's request fits (Tune places a trial on exactly one node)."""
    return [n for n in nodes
            if n.get("Resources", {}).get("CPU", 0) >= cpus and n.get("Resources", {}).get("GPU", 0) >= gpus]


def check_fits(nodes: list[dict[str, Any]], cpus: float, gpus: float) -> list[dict[str, Any]]:
    """Raise when no node can host one trial (Ray would queue the trial forever); else return those nodes."""
    fit = trial_nodes(nodes, cpus, gpus)
    if fit:
        return fit
    largest = max(nodes, key=lambda n: (n.get("Resources", {}).get("GPU", 0), n.get("Resources", {}).get("CPU", 0)),
                  default={})
    have = largest.get("Resources", {})
    missing = []
    if have.get("CPU", 0) < cpus:
        missing.append(f"{cpus - have.get('CPU', 0):g} more CPU")
    if have.get("GPU", 0) < gpus:
        missing.append(f"{gpus - have.get('GPU', 0):g} more GPU")
    raise ClusterError(
        f"one trial asks for {_amounts(cpus, gpus)}, but the largest of the cluster's {len(nodes)} node(s) has "
        f"{_amounts(have.get('CPU', 0), have.get('GPU', 0))} ({node_label(largest)}): it lacks "
        + " and ".join(missing) + "; lower --cpus-per-trial / --gpus-per-trial, or add a bigger node "
        "(an autoscaling cluster: give its worker type min_workers >= 1 so the node exists before the study)")


# ---------------------------------------------------------------------------------------------------------
# what every trial node must reach: the dataset cache and the results storage


def probe_storage(storage: str) -> str | None:
    """Create ``storage`` if needed, write and delete a small file there; None on success, else the reason."""
    token = f".drl_tune_write_check_{socket.gethostname()}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    try:
        folder = Path(storage)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / token).write_text("ok")
        (folder / token).unlink()
    except Exception as err:  # noqa: BLE001 - any failure is the answer, reported as one line
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}".rstrip(": ")
    return None


def node_check(data_values: dict[str, Any], storage: str) -> dict[str, Any]:
    """Runs on one node (a Ray task): can this node load the dataset and write the results storage?"""
    from drl_tune.data import load_dataset
    from drl_tune.training.config import make_config

    problems = []
    try:  # the data keys alone: the study's methods (a user's own among them) are the trials' concern here
        load_dataset(make_config({k: v for k, v in data_values.items() if k.startswith("data.")}).data)
    except Exception as err:  # noqa: BLE001 - CacheError names the folder it looked in; anything else likewise
        problems.append(f"dataset: {str(err).strip()}")
    reason = probe_storage(storage)
    if reason:
        problems.append(f"cannot write the results storage {storage}: {reason}")
    return {"hostname": socket.gethostname(), "problems": problems}


def check_nodes(nodes: list[dict[str, Any]], data_values: dict[str, Any], storage: str,
                timeout: float = PREFLIGHT_TIMEOUT_S) -> None:
    """Run :func:`node_check` on each node (pinned there); raise one message naming every node that failed."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(num_cpus=0, max_retries=0)(node_check)
    refs = {task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
            .remote(data_values, storage): n for n in nodes}
    ready, late = ray.wait(list(refs), num_returns=len(refs), timeout=timeout)
    failures = [f"{node_label(refs[ref])} did not answer the pre-flight check within {timeout:g} s" for ref in late]
    for ref in ready:
        node = refs[ref]
        try:
            answer = ray.get(ref)
        except ray.exceptions.RayError as err:
            lines = [line for line in str(err).splitlines() if line.strip()]
            failures.append(f"{node_label(node)} cannot run drl_tune ({lines[-1] if lines else err}); install "
                            "the project on every node (the launcher's setup_commands) or submit it as a job "
                            "with --working-dir")
            continue
        failures += [f"{node_label(node)}: {problem}" for problem in answer["problems"]]
    for ref in late:
        ray.cancel(ref, force=True)
    if failures:
        hint = ("\nEvery node that runs trials needs the dataset cache at the same path (data.root, or the "
                "DRL_TUNE_<DATASET>_ROOT / DRL_TUNE_DATA variable in the shell that ran `ray start` on that node) "
                "and write access to --storage (a shared folder mounted at the same path everywhere)")
        raise ClusterError("\n".join(failures) + hint)


def preflight(data_values: dict[str, Any], storage: str, cpus: float, gpus: float) -> None:
    """All checks before a study writes anything: one trial fits a node; every other node that can host a trial
    loads the dataset and writes ``storage`` (the driver's own node was covered by the driver's dataset check);
    the driver writes ``storage``."""
    import ray

    nodes = alive_nodes()
    fit = check_fits(nodes, cpus, gpus)
    here = ray.get_runtime_context().get_node_id()
    others = [n for n in fit if n["NodeID"] != here]
    if others:  # the trial nodes first: their answer names the node, which is what a user must fix
        check_nodes(others, data_values, storage)
    reason = probe_storage(storage)
    if reason:
        raise ClusterError(f"cannot write the results storage {storage} from the driver ({socket.gethostname()}): "
                           f"{reason}; choose a --storage folder you can write")


def review_command(tracking_uri: str, experiment_id: str, fallback: str) -> str:
    """Where to review the study: the tracking server's runs page, or ``fallback`` (the local ``mlflow ui``)."""
    if tracking_uri.startswith(("http://", "https://")) and experiment_id:
        return f"open {tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs in a browser"
    return fallback
