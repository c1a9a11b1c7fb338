"""A study's first trials start in the workers a local Ray prestarts, with the trial's modules already imported
(drl_tune/study/cluster.py, ``local_workers``): the Tune internals it relies on, the rule for when it preloads, and a
real local Ray where a trial actor made the way Tune makes it runs in a prestarted process that has torch imported."""

from __future__ import annotations

import inspect
import os
import sys
import time
from pathlib import Path

import pytest
import ray
from ray.tune.execution import class_cache

from drl_tune.study.cluster import TRIAL_MODULES, connect, local_workers, prestart_workers
from drl_tune.study.ray_session import start_time


@pytest.fixture
def tune_env(monkeypatch):
    """Tune's per-actor variables and this process's environment as they were, after the test."""
    monkeypatch.setattr(class_cache, "DEFAULT_ENV_VARS", dict(class_cache.DEFAULT_ENV_VARS))
    for name in ("PL_DISABLE_FORK", "OMP_NUM_THREADS"):  # restored afterwards, unset during the test
        monkeypatch.setenv(name, os.environ.get(name, "0"))
        monkeypatch.delenv(name)


def test_tune_still_gives_actors_the_variable_local_workers_moves():
    # Ray 2.60's Tune copies this module dict into every trial actor's runtime env. If this fails, Ray changed how it
    # sets it and local_workers' edit would silently do nothing: look at ray/tune/execution/class_cache.py.
    assert '"PL_DISABLE_FORK": "1"' in inspect.getsource(class_cache)
    assert "DEFAULT_ENV_VARS.copy()" in inspect.getsource(class_cache._ActorClassCache.get)  # noqa: SLF001


def test_local_workers_moves_the_variable_and_preloads_only_when_every_worker_hosts_a_trial(tune_env, monkeypatch):
    import ray._private.utils as ray_utils

    monkeypatch.setattr(ray_utils, "get_num_cpus", lambda *a, **k: 4)
    # what the local Ray's processes start with: Tune's variable, and 1 thread a pool where they preload 1-CPU trials
    one = {"PL_DISABLE_FORK": "1", "OMP_NUM_THREADS": "1"}
    assert local_workers(1.0, 4) == (TRIAL_MODULES, one)
    assert local_workers(0.5, 8) == (TRIAL_MODULES, one)
    assert local_workers(1.0, 3) == ((), {"PL_DISABLE_FORK": "1"})  # one prestarted worker would idle with torch
    assert local_workers(4.0, 4) == ((), {"PL_DISABLE_FORK": "1"})  # a GPU study's 4 CPUs a trial
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's own value wins, as in Ray
    assert local_workers(1.0, 4) == (TRIAL_MODULES, {"PL_DISABLE_FORK": "1"})
    assert "PL_DISABLE_FORK" not in class_cache.DEFAULT_ENV_VARS

    class Probe:
        pass

    remote = class_cache._ActorClassCache().get(Probe)  # noqa: SLF001 — how Tune makes a trial's actor class
    assert not remote._default_options["runtime_env"].get("env_vars")  # noqa: SLF001 — an empty env: no own process


class Trial:
    """Stands for a trial's actor: says which process it runs in and what that process had imported."""

    def __init__(self) -> None:
        # what a trial imports before its first epoch (the engine's probes need sklearn, its transforms torchvision)
        self.had_torch = all(m in sys.modules for m in ("torch", "torchvision", "sklearn", "drl_tune.study.trainable"))

    def where(self) -> tuple[int, bool, str | None, int, dict[str, int]]:
        from threadpoolctl import threadpool_info

        from drl_tune.study.trainable import worker_threads

        pools = {f"{p['internal_api']} {p['filepath']}": p["num_threads"] for p in threadpool_info()}
        return os.getpid(), self.had_torch, os.environ.get("PL_DISABLE_FORK"), worker_threads(), pools


def _started(pid: int) -> float:
    """A process's start, in seconds since boot."""
    ticks = start_time(pid)
    assert ticks is not None
    return ticks / os.sysconf("SC_CLK_TCK")


def _uptime() -> float:
    return float(Path("/proc/uptime").read_text().split()[0])


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads process start times from /proc")
def test_a_trial_actor_runs_in_a_prestarted_worker_with_its_modules_imported(tune_env):
    if ray.is_initialized():
        ray.shutdown()
    preload, env = local_workers(1.0, 64)  # as many trials as this machine's CPUs, or more
    assert preload == TRIAL_MODULES
    print(connect(None, preload, env))
    # the driver's environment is as it was: a benchmark's next study (4 CPUs a trial, say) starts its Ray from it
    assert "OMP_NUM_THREADS" not in os.environ and "PL_DISABLE_FORK" not in os.environ
    try:
        time.sleep(1.0)
        made = _uptime()
        actor = class_cache._ActorClassCache().get(Trial).options(num_cpus=1).remote()  # noqa: SLF001
        pid, had_torch, variable, threads, pools = ray.get(actor.where.remote(), timeout=120)
        assert _started(pid) < made - 0.5, "the actor started a new process instead of taking a prestarted one"
        assert had_torch, "the worker had not imported the trial's modules when the actor was created"
        assert variable == "1"  # the local Ray's processes started with it: a trial still sees it
        # torch was imported before the worker hosted a 1-CPU trial, when its default was every core: the trial
        # still gets the 1 thread that Ray's OMP_NUM_THREADS gives it
        assert threads == 1
        # and so does every BLAS/OpenMP pool loaded before (numpy's OpenBLAS, sklearn's and torch's OpenMP): one
        # 1-CPU trial, one thread, as in a worker Ray starts for the trial
        assert pools and all(n == 1 for n in pools.values()), pools
    finally:
        ray.shutdown()


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads process start times from /proc")
def test_a_worker_prestarted_between_two_tune_runs_hosts_the_next_runs_actor(tune_env):
    # Ray starts a new process for every actor once the first ones have ended (a study's confirmation after its
    # search); prestart_workers starts one early, and the next actor takes it (study/tune.py, WarmNextStage)
    if ray.is_initialized():
        ray.shutdown()
    preload, env = local_workers(1.0, 64)
    connect(None, preload, env)
    try:
        make = class_cache._ActorClassCache().get(Trial).options(num_cpus=1)  # noqa: SLF001
        cpus = int(ray.cluster_resources()["CPU"])
        first = [make.remote() for _ in range(cpus)]  # they take the workers Ray prestarted at ray.init
        ray.get([a.where.remote() for a in first], timeout=120)
        for actor in first:
            ray.kill(actor)
        time.sleep(1.0)
        made = _uptime()
        unwarmed = make.remote()
        pid = ray.get(unwarmed.where.remote(), timeout=120)[0]
        assert _started(pid) > made - 0.5, "Ray gave the actor a worker that already existed: nothing to prestart"
        ray.kill(unwarmed)

        assert prestart_workers(1)
        time.sleep(2.0)
        made = _uptime()
        warmed = make.remote()
        pid, had_torch, *_ = ray.get(warmed.where.remote(), timeout=120)
        assert _started(pid) < made - 1.0, "the actor started a new process instead of taking the prestarted one"
        assert had_torch, "the prestarted worker had not imported the trial's modules"
    finally:
        ray.shutdown()


def test_the_search_prestarts_a_worker_per_slot_once_its_last_trial_is_made_and_a_trial_ends(monkeypatch):
    import drl_tune.study.cluster as cluster
    from drl_tune.study.tune import WarmNextStage

    asked: list[int] = []
    monkeypatch.setattr(cluster, "prestart_workers", lambda n: asked.append(n) or True)
    warm = WarmNextStage(num_samples=4, slots=2)
    trials = ["t0", "t1", "t2"]
    warm.on_trial_complete(0, trials, trials[0])
    assert asked == []  # the searcher makes a fourth trial for the freed slot
    trials.append("t3")
    warm.on_trial_error(0, trials, trials[1])  # the last trial is made: from now on a slot stays free
    assert asked == [2]
    warm.on_trial_complete(0, trials, trials[2])
    assert asked == [2]  # once
    refused = WarmNextStage(num_samples=1, slots=3)
    monkeypatch.setattr(cluster, "prestart_workers", lambda n: asked.append(n) and False)
    refused.on_trial_complete(0, ["t0"], "t0")
    refused.on_trial_complete(0, ["t0"], "t0")
    assert asked == [2, 3]  # a refused request is not made again


def test_prestart_workers_without_a_ray_changes_nothing():
    if ray.is_initialized():
        ray.shutdown()
    assert prestart_workers(1) is False
