"""Shared fixtures: a tiny synthetic dataset, fast configurations, and one tiny real study with its
confirmation — run once per session and shared by the tests that only read it (the confirmation's numbers, the
analysis frames and plots, the report, the notebooks, the MLflow UI): local Ray, MLflow sqlite; 4 search trials
over joint and DRL, the best configuration of each method re-run on 2 fresh seeds, 3 epochs each."""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import textwrap

import pytest
import torch

# generated data never lands in the home directory during tests
os.environ.setdefault("DRL_TUNE_DATA", tempfile.mkdtemp(prefix="drl_tune_test_data_"))
if (_worker := os.environ.get("PYTEST_XDIST_WORKER")) and os.path.basename(os.environ["DRL_TUNE_DATA"]) != _worker:
    # each pytest-xdist worker generates its own copy, so two never write one cache at once; once: a process the
    # test started (a Ray worker, a command) inherits the variables and may import this module again
    os.environ["DRL_TUNE_DATA"] = os.path.join(os.environ["DRL_TUNE_DATA"], _worker)

from drl_tune.data.config import SyntheticConfig
from drl_tune.data.synthetic import load_synthetic  # noqa: E402
from drl_tune.training.config import make_config

TINY = {
    "data.synthetic.n_train": 96,
    "data.synthetic.n_val": 48,
    "data.synthetic.n_test": 48,
    "data.synthetic.image_size": 32,
    "model.width": 4,
    "batch_size": 32,
    "epochs": 4,
    "lr": 0.01,
    "threads": 1,
}


def without_time(metrics: dict[str, float]) -> dict[str, float]:
    """An epoch's metrics without its wall time (the one value two identical runs do not share)."""
    return {k: v for k, v in metrics.items() if k != "time/epoch_s"}


def straight_and_resumed(make_engine, epochs: int, stop_at: int, path) -> tuple[list[dict[str, float]], object]:
    """The metrics (wall time dropped) of an uninterrupted run of ``epochs`` epochs, and an engine restored from
    the checkpoint another run saved after ``stop_at`` epochs, in a process whose RNG has moved on."""
    straight = make_engine()
    expected = [without_time(straight.run_epoch()) for _ in range(epochs)]
    first = make_engine()
    for _ in range(stop_at):
        first.run_epoch()
    first.save(path)
    del first
    torch.manual_seed(12345)  # a resumed process starts with other RNG state
    resumed = make_engine()
    resumed.load(path)
    return expected, resumed


def init_local_ray(attempts: int = 2, **kwargs) -> None:
    """A small local Ray for a test (2 CPUs, no dashboard, 80 MB object store), always a new one: a plain
    ``ray.init()`` joins the cluster a `ray start` recorded on this machine, which another test process (``-n 2``)
    may be running. Ray gives its raylet a fixed 30 s to start; a loaded 2-core CI machine can miss that, and such
    a start is tried again."""
    import ray

    for attempt in range(attempts):
        try:
            ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                     logging_level="WARNING", object_store_memory=80 * 1024 * 1024, **kwargs)
            return
        except Exception as err:  # noqa: BLE001 — Ray raises a bare Exception for this timeout
            ray.shutdown()
            if attempt == attempts - 1 or "timed out during startup" not in str(err):
                raise


def pytest_collection_modifyitems(config, items):
    """The files with slow tests run first, the end-to-end ones first of all, each file's tests still together:
    with ``-n 2`` (README, ``--dist loadfile``) the two workers then take the long files while both are free and
    even out with the short ones, instead of one worker ending the run alone on a Slurm or cluster test."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    order = {path: i for i, path in enumerate(dict.fromkeys(item.path for item in items))}
    items.sort(key=lambda item: (item.path not in slow_files, "e2e" not in item.path.parts, order[item.path]))


@pytest.fixture(scope="session")
def tiny_data():
    cfg = make_config(TINY).data.synthetic
    assert isinstance(cfg, SyntheticConfig)
    return load_synthetic(cfg)


@pytest.fixture
def tiny_config():
    def make(**overrides):
        values = dict(TINY)
        values.update({k.replace("__", "."): v for k, v in overrides.items()})
        return make_config(values)

    return make


CONFIRMED_SPACE = """\
dataset: {name: synthetic}
fixed: {threads: 1, lr: 0.05}
defaults: {method: drl, drl.diagnosis_interval: 1, drl.max_reinits: 2}
search:
  method: {type: choice, values: [joint, drl]}
  drl.lam: {type: uniform, low: 1, high: 5}
  drl.n_clusters: {type: choice, values: [null, 12]}
scheduler: {type: none}
study: {num_samples: 4, max_concurrent: 2, seed: 3, max_failures: 0, overrides: {epochs: 3}}
resources: {cpus_per_trial: 1}
"""
EPOCHS, SEEDS = 3, 2


@pytest.fixture(scope="session")
def confirmed_study(tmp_path_factory):
    """Run the study once (the run also writes the report and the MLflow review); returns its folder, what the
    run printed, its plan and its storage. Under pytest-xdist the first worker that needs it runs it into the
    session's shared temp dir and the others wait for it and read it (its tests only read the folder)."""
    from filelock import FileLock

    from drl_tune.study.plan import PLAN_FILE, Plan

    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = tmp_path_factory.getbasetemp().parent / "confirmed_study"
        with FileLock(f"{root}.lock"):
            done = root / "printed.txt"
            if not done.is_file():
                root.mkdir(exist_ok=True)
                done.write_text(_run_confirmed_study(root))
            out = done.read_text()
    else:
        root = tmp_path_factory.mktemp("confirmed_study")
        out = _run_confirmed_study(root)
    folder = root / "studies" / "tiny"
    return {"dir": folder, "out": out, "plan": Plan.from_json((folder / PLAN_FILE).read_text()),
            "storage": root / "studies", "name": "tiny"}


def _run_confirmed_study(root) -> str:
    """The confirmed study in ``root``/studies/tiny; returns what it printed."""
    import ray

    from drl_tune.run import main
    from tests.e2e.test_study_e2e import tiny_sets

    space = root / "tiny.yaml"
    space.write_text(textwrap.dedent(CONFIRMED_SPACE))
    started_ray = not ray.is_initialized()  # a module's own Ray may be up: then the study uses it
    if started_ray:
        init_local_ray(attempts=3)
    try:
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            code = main(["--space", str(space), "--storage", str(root / "studies"), "--name", "tiny",
                         "--progress-interval", "600", "--confirm-seeds", str(SEEDS), *tiny_sets()])
    finally:
        if started_ray:
            ray.shutdown()
    out = buf.getvalue()
    assert code == 0, out
    return out


@pytest.fixture
def one_thread():
    """One torch thread for the test, restored after (``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
