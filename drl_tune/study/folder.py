"""A study folder is self-contained: every command finds the study from the folder it is given, and reads and writes
only inside it — whatever the folder was called, or wherever it was, when the study was run.

Why this module: a study records where it was made. The plan names its storage and its ``name`` (which is also the
MLflow experiment and the Optuna study: a *label*); MLflow's sqlite tables hold absolute artifact locations and the
parent run's ``drl_tune.storage`` tag; Tune's experiment state holds absolute trial and checkpoint paths. Read
naively, a copy (``cp -r``) or a moved or renamed folder resumes, confirms or logs into its *original* — or fails
because the original is gone. So every command opens a study through :func:`open_study`, which:

* takes the folder as given (``--path``, or ``--storage`` + ``--name`` = the folder's name now; :func:`study_folder`);
* re-roots the plan (:meth:`Plan.read`: its folder, storage and a sqlite MLflow URI inside the recorded folder);
* re-roots the MLflow database inside the folder (:func:`reroot_mlflow`: experiment artifact locations, run
  artifact URIs, logged-model locations and the ``drl_tune.storage`` tag), so MLflow's own client opens the moved
  study with its artifacts;
* for a command that writes (``write=True``), saves the plan with its new folder.

Tune re-roots its own experiment state: ``Tuner.restore(folder)`` takes the experiment's name and storage from the
folder it is given and moves every trial's checkpoint paths there; ``retarget_callbacks`` (drl_tune/study/tune.py)
points the restored MLflow callback at the re-rooted database. The Optuna database holds no paths.

Derived files (``answer.json``; ``optuna.db`` in drl_tune/study/optuna_db.py) are rebuilt from the trials when
they are unreadable, and that is said in one line (:func:`read_answer`).
"""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from drl_tune.ground.errors import ConfigError
from drl_tune.study.plan import DEFAULT_STORAGE, PLAN_FILE, Plan

MLFLOW_DB = "mlflow.db"
ARTIFACTS = "mlartifacts"  # the study's MLflow artifact root inside its folder (drl_tune.driver.open_tracking)
STORAGE_TAG = "drl_tune.storage"
ANSWER_JSON = "answer.json"
# (table, column) pairs of MLflow's sqlite schema that hold absolute artifact locations
ARTIFACT_COLUMNS = (("experiments", "artifact_location"), ("runs", "artifact_uri"),
                    ("logged_models", "artifact_location"))


class StudyFolderError(ConfigError):
    """No study at the folder given (or it cannot be opened as one): one line, exit code 2."""


def study_folder(name: str | None = None, storage: Path | str | None = None, path: Path | str | None = None) -> Path:
    """``--path DIR``, or ``--storage STORAGE --name NAME`` -> the study folder (it must hold a plan). ``NAME`` is the
    folder's name now, not the name the study was run with."""
    if path is not None and name:
        raise StudyFolderError("give the study as --path DIR or as --name NAME [--storage DIR], not both")
    if path is None:
        if not name:
            raise StudyFolderError("give the study as --name NAME [--storage DIR] or --path DIR")
        if "/" in name or name in (".", ".."):
            raise StudyFolderError(f"--name must be a folder name under --storage, got {name!r}; pass a path as --path")
        path = Path(storage or DEFAULT_STORAGE) / name
    path = Path(path)
    if not (path / PLAN_FILE).is_file():
        where = ("does not exist (not a study folder)" if not path.exists()
                 else f"is not a study folder (no {PLAN_FILE})")
        head = f"no study {name!r} in {path.parent}: " if name else ""
        raise StudyFolderError(f"{head}study folder {path} {where}; pass the folder python -m drl_tune.run printed "
                               f"as 'results:' (--path), or its --storage and its folder name as --name")
    return path


def open_study(folder: Path | str, *, write: bool) -> Plan:
    """The plan of the study in ``folder``, every recorded path re-rooted to where the folder is now (see the module
    docstring). ``write``: the command will write the study (``--resume``, ``confirm``): a moved folder's plan is
    saved with its new place, and a copy whose runs live in an external MLflow store it shares with its original is
    refused. ``plan.rerooted`` is one line saying what was re-rooted (None: the folder has not moved)."""
    folder = Path(folder)
    plan = Plan.read(folder)
    plan.rerooted = None
    if plan.moved_from is None:
        reroot_mlflow(folder)  # a database moved on its own (an older drl_tune re-rooted only the plan): harmless
        return plan
    if write and not plan.mlflow_uri.startswith("sqlite:///" + str(plan.study_dir)) \
            and _is_study_of(plan.moved_from, plan.parent_run_id):
        raise StudyFolderError(
            f"{plan.study_dir} is a copy of the study in {plan.moved_from}, and both record their runs in the same "
            f"MLflow store ({plan.mlflow_uri}): writing this copy would change the original's runs. Resume or confirm "
            f"the original, or move (not copy) the folder")
    reroot_mlflow(folder)
    what = ["plan"] + (["MLflow artifact locations"] if (folder / MLFLOW_DB).is_file() else [])
    if write:
        plan.save()
    plan.rerooted = (f"study folder {plan.study_dir} was made in {plan.moved_from}: re-rooted its "
                     f"{' and '.join(what)} here" + ("" if write else " (plan re-rooted in memory)")
                     + "; nothing outside this folder is read or written")
    return plan


def _is_study_of(folder: Path, parent_run_id: str) -> bool:
    """``folder`` still holds the study whose MLflow parent run is ``parent_run_id`` (the original of a copy)."""
    try:
        raw = json.loads((folder / PLAN_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(raw, dict) and bool(parent_run_id) and raw.get("parent_run_id") == parent_run_id


def _file_root(uri: str) -> Path | None:
    """The folder above ``mlartifacts`` of a ``file://`` artifact location, else None."""
    parsed = urlparse(uri)
    if parsed.scheme != "file":
        return None
    path = Path(unquote(parsed.path))
    return path.parent if path.name == ARTIFACTS else None


def reroot_mlflow(folder: Path | str) -> bool:
    """Point the absolute paths in the study folder's MLflow database (``mlflow.db``) at the folder where it is now:
    MLflow stores ``file://…/mlartifacts`` locations per experiment, run and logged model, and the study's parent
    run carries the folder as its ``drl_tune.storage`` tag. The old root is read from the database itself (its
    experiments' artifact locations), so this is idempotent and needs nothing else. Returns whether anything
    changed. A database that cannot be written (a read-only copy) is left as it is, with one line saying so."""
    folder = Path(folder).resolve()
    db = folder / MLFLOW_DB
    if not db.is_file():
        return False
    try:
        con = sqlite3.connect(db)
    except sqlite3.Error:
        return False
    try:
        tables = {r[0] for r in con.execute("select name from sqlite_master where type='table'")}
        if "experiments" not in tables:
            return False
        _forget_artifact_repos(con, tables)
        roots = {root for (loc,) in con.execute("select artifact_location from experiments")
                 if loc and (root := _file_root(loc)) is not None and root != folder}
        if not roots:
            return False
        new_uri = folder.as_uri()
        with con:
            for old in roots:
                old_uri = old.as_uri()
                for table, column in ARTIFACT_COLUMNS:
                    if table in tables:
                        con.execute(f"update {table} set {column} = ? || substr({column}, ?) "  # noqa: S608
                                    f"where substr({column}, 1, ?) = ?",
                                    (new_uri, len(old_uri) + 1, len(old_uri) + 1, old_uri + "/"))
                if "tags" in tables:
                    con.execute("update tags set value = ? where key = ? and value = ?",
                                (str(folder), STORAGE_TAG, str(old)))
        return True
    except sqlite3.Error as err:
        print(f"note: {db} still names its old folder ({err}); MLflow's client will not find its artifacts until "
              f"the folder is writable and opened again (python -m drl_tune.report --path {folder})",
              file=sys.stderr, flush=True)
        return False
    finally:
        con.close()


def _forget_artifact_repos(con: sqlite3.Connection, tables: set[str]) -> None:
    """Drop this database's runs from MLflow's process-wide cache of artifact repositories. MLflow keys that cache by
    run id alone, and a copied study has its original's run ids: a process that logged to the original (a notebook,
    a test, a script calling both) would otherwise log the copy's artifacts into the original's folder."""
    utils = sys.modules.get("mlflow.tracking._tracking_service.utils")
    cache = getattr(utils, "_artifact_repos_cache", None)
    if not cache:
        return  # MLflow not imported yet (nothing cached), or nothing cached
    ids = [r[0] for r in con.execute("select run_uuid from runs")] if "runs" in tables else []
    if "logged_models" in tables:
        ids += [r[0] for r in con.execute("select model_id from logged_models")]
    for resource_id in ids:
        cache.pop(resource_id, None)


def _answer_problem(text: str) -> str | None:
    try:
        answer = json.loads(text)
    except ValueError as err:
        return f"not JSON: {err}"
    if not isinstance(answer, dict) or not isinstance(answer.get("configs"), list) or "metrics" not in answer:
        return "not an answer (no 'configs' and 'metrics')"
    return None


def read_answer(folder: Path | str, plan: Any = None) -> dict[str, Any] | None:
    """The study's ``answer.json`` (None when the study has none yet). An unreadable one — torn, edited, truncated —
    is rebuilt from the finished confirmation trials and saved (one line on stderr says so), or, when they cannot
    give it, raises :class:`StudyFolderError` saying what to do: a derived file is never silently dropped."""
    folder = Path(folder)
    path = folder / ANSWER_JSON
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as err:
        problem: str | None = f"{type(err).__name__}: {err}"
    else:
        problem = _answer_problem(text)
        if problem is None:
            return json.loads(text)
    try:
        from drl_tune.study.answer import write_answer
        from drl_tune.study.confirmation import build_answer

        plan = plan or Plan.read(folder)
        answer = build_answer(folder, plan.name, plan.objectives)
    except Exception as err:  # noqa: BLE001 — any failure means "cannot rebuild": say why and what to do
        raise StudyFolderError(
            f"{path} is unreadable ({problem}) and could not be rebuilt from the confirmation trials "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); finish the confirmation "
            f"(python -m drl_tune.confirm --resume --path {folder}) or remove {ANSWER_JSON} and confirm again"
        ) from None
    try:
        write_answer(folder, answer)
        saved = "saved again"
    except OSError as err:
        saved = f"not saved: {err.strerror or err}"
    print(f"note: {path} was unreadable ({problem}); rebuilt from the confirmation trials ({saved})",
          file=sys.stderr, flush=True)
    return answer
