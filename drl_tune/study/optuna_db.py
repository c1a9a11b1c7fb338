"""The study's search as an Optuna study in ``STUDY/optuna.db`` (sqlite), for Optuna Dashboard:

    optuna-dashboard sqlite:////abs/STUDY/optuna.db --host 127.0.0.1

shows every search trial (its parameters, objective values, per-epoch ``val/acc_best`` as intermediate values,
state), the optimisation history, parameter importances and, for a multi-objective study, the Pareto front.

Why written from the trials rather than handed to ``OptunaSearch(storage=...)``: Tune checkpoints its searcher by
pickling it, Optuna study included, and ``--resume`` restores that pickle. With an RDB storage the database would
also hold the trials asked after the last searcher checkpoint, so a resumed study's Optuna trial numbers would run
ahead of the checkpoint — and equal budgets assign the method by trial number. So the searcher keeps its
in-memory study (exactly restorable), and this module writes the database from what the trials recorded, at the
end of the search (and again after a ``--resume``): the same trials, parameters and values the searcher saw.
"""

from __future__ import annotations

import math
import os
import sqlite3
import sys
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any

OPTUNA_DB = "optuna.db"


def storage_url(study_dir: Path) -> str:
    return f"sqlite:///{Path(study_dir).resolve() / OPTUNA_DB}"


def dashboard_command(study_dir: Path) -> str:
    return f"optuna-dashboard '{storage_url(study_dir)}' --host 127.0.0.1 --port 8080"


def distribution(param: dict[str, Any]) -> Any:
    """The Optuna distribution of a plan's searched key (``Param.to_dict()``)."""
    import optuna

    kind = param["kind"]
    if kind == "choice":
        return optuna.distributions.CategoricalDistribution(list(param["values"]))
    if kind == "int":
        return optuna.distributions.IntDistribution(int(param["low"]), int(param["high"]), step=int(param["step"] or 1))
    return optuna.distributions.FloatDistribution(float(param["low"]), float(param["high"]),
                                                  log=kind == "loguniform", step=param.get("step"))


def _params(config: dict[str, Any], search: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The trial's searched values and their distributions (only the keys its method has, as the searcher asked)."""
    method = config.get("method")
    params, dists = {}, {}
    for p in search:
        if p.get("method") not in (None, method) or p["key"] not in config:
            continue
        dist, value = distribution(p), config[p["key"]]
        if p["kind"] == "int" and value is not None:
            value = int(value)
        try:
            inside = dist._contains(dist.to_internal_repr(value))  # noqa: SLF001 (Optuna's own range check)
        except (ValueError, TypeError):
            inside = False
        if not inside:
            continue  # a value outside the planned range (an edited plan): that key is left out
        params[p["key"]], dists[p["key"]] = value, dist
    return params, dists


def write_optuna_db(plan: Any, records: list[Any]) -> Path:
    """(Re)write ``STUDY/optuna.db`` with the search trials ``records`` (``confirmation.read_trials``); returns it."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    path = Path(plan.study_dir).resolve() / OPTUNA_DB
    path.parent.mkdir(parents=True, exist_ok=True)
    problem = unreadable(path)
    # written whole into a new file, then renamed over the old one: the database is derived from the trials, so a
    # rewrite loses nothing, a damaged old file is simply replaced, and a reader never sees a half-written one
    fresh = path.with_name(f".{OPTUNA_DB}.{os.getpid()}.tmp")
    fresh.unlink(missing_ok=True)
    storage = optuna.storages.RDBStorage(f"sqlite:///{fresh}")
    try:
        _fill(optuna, storage, plan, records)
    except BaseException:
        storage.engine.dispose()
        fresh.unlink(missing_ok=True)
        raise
    storage.engine.dispose()
    os.replace(fresh, path)
    if problem:
        print(f"note: {path} was unreadable ({problem}); rebuilt from the study's trials", file=sys.stderr,
              flush=True)
    return path


def unreadable(path: Path) -> str | None:
    """Why the sqlite file ``path`` cannot be read (torn, overwritten, not a database), or None (fine, or absent)."""
    if not path.exists():
        return None
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            con.execute("select count(*) from sqlite_master").fetchone()
            con.execute("select count(*) from studies").fetchone()
        finally:
            con.close()
    except sqlite3.Error as err:
        return str(err)
    return None


def _fill(optuna: Any, storage: Any, plan: Any, records: list[Any]) -> None:
    objectives = plan.objectives or [{"metric": plan.metric, "mode": plan.mode, "summary": plan.metric}]
    study = optuna.create_study(storage=storage, study_name=plan.name,
                                directions=["maximize" if o["mode"] == "max" else "minimize" for o in objectives])
    with warnings.catch_warnings():  # set_metric_names is "experimental" since Optuna 3.2; the dashboard reads it
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([o["metric"] for o in objectives])
    search = [p.to_dict() for p in plan.search]
    for record in sorted(records, key=lambda r: (r.rows[0].get("timestamp", 0) if r.rows else 0, r.trial_id)):
        if record.status == "running":
            continue  # an interrupted trial: its --resume will finish it
        params, dists = _params(record.config, search)
        summary = record.summary()
        values = [summary.get(o["summary"], record.final.get(o["summary"])) for o in objectives]
        finished = record.status != "error" and all(v is not None and math.isfinite(float(v)) for v in values)
        intermediate = {int(r["epoch"]): float(r["val/acc_best"]) for r in record.rows
                        if "val/acc_best" in r and math.isfinite(float(r["val/acc_best"]))}
        trial = optuna.trial.create_trial(
            params=params, distributions=dists,
            values=[float(v) for v in values] if finished else None,
            state=optuna.trial.TrialState.COMPLETE if finished else optuna.trial.TrialState.FAIL,
            intermediate_values=intermediate,
            user_attrs={"trial_id": record.trial_id, "method": record.method, "status": record.status,
                        "epochs_run": len(record.rows)})
        if record.rows and "timestamp" in record.rows[-1]:  # the trial's own times, for the dashboard's timeline
            first = record.rows[0]
            trial.datetime_start = datetime.fromtimestamp(float(first["timestamp"])
                                                          - float(first.get("time_this_iter_s", 0.0)))
            trial.datetime_complete = datetime.fromtimestamp(float(record.rows[-1]["timestamp"]))
        study.add_trial(trial)
