"""A new study's MLflow database, created by a separate process while Ray starts.

Why: MLflow creates a new sqlite store by running its schema migrations (about 50), 1.8-2.7 s in a fresh process on this
2-core machine, and a study did that on its driver's path between Ray's start and the first trial. ``ray.init``
leaves about a third of 2 cores idle, so a separate process creates the tables meanwhile, in a temporary folder
inside the storage folder; the driver moves the finished file into place just before it opens MLflow, and MLflow
then only opens it.

A process, not a thread: ``ray.init`` imports packages MLflow imports too (opentelemetry among them), and two
threads importing the same modules can trip Python's import-deadlock error. This module imports no MLflow itself,
so the driver can start it before Ray. Anything unexpected (no sqlite URI, a file already there, the process
failing or being slow) leaves the database to the driver, exactly as before: this only ever saves time.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# what the process runs: MLflow creates the store (and its Default experiment) on its first call, as it would in
# the driver, from the same working folder, so the Default experiment's artifact location is the same
CREATE = "import sys\nfrom mlflow import MlflowClient\nMlflowClient(sys.argv[1]).get_experiment_by_name('Default')"
WAIT_S = 120.0  # a process slower than this is stopped and the driver creates the database itself
SQLITE = "sqlite:///"


def sqlite_path(uri: str) -> Path | None:
    """The file of an absolute ``sqlite:///`` URI (None for any other store)."""
    if not uri.startswith(SQLITE) or "?" in uri:
        return None
    path = Path(uri[len(SQLITE):])
    return path if path.is_absolute() else None


class NewDatabase:
    """Start with :meth:`start` (before ``ray.init``); :meth:`adopt` before the study's first MLflow call puts the
    created file in place; :meth:`discard` (always, at the end) stops the process and removes the temporary folder.
    """

    def __init__(self, uri: str, storage: Path) -> None:
        self.target = sqlite_path(uri)
        self.storage = storage
        self.folder: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.made_storage = False  # the storage folder did not exist: removed again if nothing else went in

    def start(self) -> bool:
        """Begin creating the database; False (nothing started) where the driver should create it itself."""
        if self.target is None or self.target.exists():
            return False
        try:
            self.made_storage = not self.storage.exists()
            self.storage.mkdir(parents=True, exist_ok=True)
            self.folder = Path(tempfile.mkdtemp(prefix=".mlflow-new-", dir=self.storage))
            env = {**os.environ, "MLFLOW_LOGGING_LEVEL": "WARNING"}
            self.proc = subprocess.Popen([sys.executable, "-c", CREATE, SQLITE + str(self.folder / "mlflow.db")],
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL, env=env)
        except OSError:
            self.discard()
            return False
        return True

    def adopt(self) -> bool:
        """Wait for the process; move its database to the study's URI if it succeeded and nothing is there yet.
        True if it did: MLflow then opens a database whose tables exist."""
        if self.proc is None or self.folder is None or self.target is None:
            return False
        try:
            code = self.proc.wait(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            code = None
        created = self.folder / "mlflow.db"
        adopted = False
        if code == 0 and created.is_file() and not self.target.exists():
            with contextlib.suppress(OSError):
                self.target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(created, self.target)  # one file system: the folder is inside the storage
                adopted = True
        self.discard()
        return adopted

    def discard(self) -> None:
        """Stop the process if it still runs and remove the temporary folder (safe to call twice)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None
        if self.made_storage:  # a study that failed before writing anything leaves no empty folder either
            self.made_storage = False
            with contextlib.suppress(OSError):
                self.storage.rmdir()
