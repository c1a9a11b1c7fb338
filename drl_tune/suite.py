"""A benchmark: one comparison over several datasets as one resumable job, ending in the paper's table.

Each dataset is a normal study (its space, equal budgets, confirmation over fresh seeds, its own MLflow parent run),
run one after the other by :func:`drl_tune.driver.run_study` inside the benchmark's folder::

    STORAGE/NAME/drl_tune_benchmark.json   what was asked (spaces, methods, --set …, the method files' text)
    STORAGE/NAME/studies/<space>/          one study per dataset
    STORAGE/NAME/table.{md,tex,csv,json,html}, mlflow.db

or takes finished studies (``--from``). ``--resume`` skips the studies that have their answer, resumes the one
that was interrupted and starts the rest. Everything is checked before the first study starts: every space loads,
every method is registered and fits every dataset, every real dataset is prepared.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drl_tune.driver import UsageError, check_dataset, run_study
from drl_tune.ground.io import atomic_write_text
from drl_tune.methods.user import use_methods
from drl_tune.study.folder import open_study
from drl_tune.study.plan import PLAN_FILE, Plan, build_plan
from drl_tune.study.spaces import load_space, with_methods
from drl_tune.study.tables import ProgressSpec

BENCHMARK_FILE = "drl_tune_benchmark.json"
STUDIES = "studies"


@dataclass
class Benchmark:
    """What a benchmark was asked to do, saved in its folder so ``--resume`` does exactly that."""

    name: str
    storage: str
    spaces: list[str] = field(default_factory=list)  # space names or files, in the table's column order
    methods: list[str] = field(default_factory=list)  # empty: each space's own methods
    overrides: dict[str, Any] = field(default_factory=dict)  # --set, applied to every space
    num_samples: int | None = None
    confirm_seeds: int | None = None
    method_files: list[dict[str, str]] = field(default_factory=list)  # --methods-from, as the text was then
    finished: dict[str, str] = field(default_factory=dict)  # --from: label -> a finished study folder

    @property
    def folder(self) -> Path:
        return Path(self.storage) / self.name

    def study_dir(self, label: str) -> Path:
        return Path(self.finished[label]) if label in self.finished else self.folder / STUDIES / label

    @property
    def labels(self) -> list[str]:
        return [Path(s).stem for s in self.spaces] + list(self.finished)

    def save(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.folder / BENCHMARK_FILE, json.dumps(self.__dict__, indent=2))

    @classmethod
    def read(cls, folder: Path) -> Benchmark:
        path = folder / BENCHMARK_FILE
        if not path.is_file():
            raise UsageError(f"--resume: {folder} is not a benchmark folder (no {BENCHMARK_FILE}); pass the --name and "
                             f"--storage it was started with")
        raw = json.loads(path.read_text())
        bench = cls(**raw)
        bench.storage = str(folder.resolve().parent)  # a benchmark folder may have been moved
        bench.name = folder.name
        return bench


def plan_for(bench: Benchmark, space_name: str) -> Plan:
    """The study plan of one dataset of the benchmark (a new study; validated, nothing written)."""
    space = load_space(space_name)
    if bench.methods:
        space = with_methods(space, bench.methods)
    plan = build_plan(space, overrides=dict(bench.overrides), name=Path(space_name).stem,
                      storage=bench.folder / STUDIES, mlflow_uri=None, num_samples=bench.num_samples,
                      confirm_seeds=bench.confirm_seeds)
    plan.methods = list(bench.method_files)  # the study's trials register the user's methods from this record
    return plan


def check_benchmark(bench: Benchmark) -> list[Plan]:
    """Every study's plan, checked before the first one starts: spaces, methods, datasets (a real one must be
    prepared; it is named here, not after hours of the others)."""
    use_methods(recorded=bench.method_files)
    plans = []
    for space_name in bench.spaces:
        study = bench.folder / STUDIES / Path(space_name).stem
        plan = open_study(study, write=False) if (study / PLAN_FILE).is_file() else plan_for(bench, space_name)
        if plan.confirm_seeds < 1:
            raise UsageError(f"space {space_name}: the table needs confirmed answers; give --confirm-seeds 1 or more")
        try:
            check_dataset(plan, generate=False)
        except Exception as err:  # CacheError names where it looked and the prepare command
            raise UsageError(f"space {space_name}: {' '.join(str(err).split())}") from None  # one line
        plans.append(plan)
    for folder in bench.finished.values():
        if not (Path(folder) / "answer.json").is_file():
            raise UsageError(f"--from {folder}: no answer.json there; finish the study first (python -m drl_tune.run "
                             f"--resume --path {folder}) — the table reads confirmed answers only")
    return plans


def run_benchmark(bench: Benchmark, address: str | None, progress: ProgressSpec) -> int:
    """Each study in turn (a finished one skipped, an interrupted one resumed), then the table; exit code."""
    plans = check_benchmark(bench)
    bench.save()
    total = len(plans)
    for index, plan in enumerate(plans, start=1):
        study = plan.study_dir
        tag = f"[{index}/{total}] {study.name}"
        if (study / "answer.json").is_file():
            print(f"{tag}: answered already ({study / 'answer.json'})", flush=True)
            continue
        resumed = (study / PLAN_FILE).is_file() and bool(plan.parent_run_id)
        print(f"{tag}: {'resuming' if resumed else 'starting'} the study in {study}", flush=True)
        start = time.monotonic()
        code = run_study(plan, resumed, address, progress, write_report=True)
        if code != 0:
            print(f"{tag}: stopped (exit {code}); finish the benchmark with  python -m drl_tune.benchmark --resume "
                  f"--name {bench.name} --storage {bench.storage}", flush=True)
            return code
        if not (study / "answer.json").is_file():
            raise UsageError(f"{tag}: the study ended without an answer (no confirmation: --confirm-seeds 0?); the "
                             f"table needs confirmed answers")
        print(f"{tag}: answered in {time.monotonic() - start:.0f} s", flush=True)
    return write_outputs(bench)


def write_outputs(bench: Benchmark) -> int:
    """The table from every study's answer, in every format, and an MLflow parent run holding them."""
    from drl_tune.analysis.table import build_table, write_table

    studies = {label: bench.study_dir(label) for label in bench.labels}
    table = build_table(studies, methods=bench.methods or None)
    paths = write_table(table, bench.folder)
    log_to_mlflow(bench, paths)
    print(f"\ntable of benchmark {bench.name!r} ({len(studies)} datasets):", flush=True)
    markdown = next((p for p in paths if p.name == "table.md"), None)
    if markdown is not None:
        print(markdown.read_text(), flush=True)
    print("written: " + ", ".join(str(p) for p in paths), flush=True)
    return 0


def log_to_mlflow(bench: Benchmark, paths: list[Path]) -> None:
    """A parent run in the benchmark's own MLflow database holding the table's files, tagged with its studies."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{bench.folder.resolve() / 'mlflow.db'}")
    name = f"benchmark-{bench.name}"
    experiment = client.get_experiment_by_name(name)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(
        name, artifact_location=(bench.folder.resolve() / "mlartifacts").as_uri())
    run = client.create_run(experiment_id, run_name=bench.name, tags={
        "drl_tune.benchmark": bench.name, **{f"drl_tune.study.{label}": str(bench.study_dir(label))
                                             for label in bench.labels}})
    for path in paths:
        client.log_artifact(run.info.run_id, str(path))
    client.set_terminated(run.info.run_id, "FINISHED")
