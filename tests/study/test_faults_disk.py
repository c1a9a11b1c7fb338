"""Results storage that stops taking writes mid-study: filled to the last byte.

``chmod`` does not stop root (these tests run as root in CI), so the storage is a small tmpfs of its own
(``mount -t tmpfs``; skipped where mounting is not permitted). The study's results *and* its dataset cache
live there. Expected: one message naming the path, a non-zero exit, and every file that was complete before
still loadable — the plan, the dataset cache, every checkpoint Tune had recorded, every result line.

Read-only was tried too: ``mount -o remount,ro`` of the tmpfs fails with "busy" while the study holds files
open for writing, so it cannot be injected mid-study this way; the EROFS path shares the handling tested here
(``drl_tune.ground.io.storage_error`` recognises it, ``tests/ground/test_atomic_io.py``). Measured finding: Tune
writes its own ``params.json`` in place, and copies the trial's staging folder (``get_trial_dir()``, where the trainable
writes ``drl_tune_worker.json`` / ``drl_tune_error.json`` atomically) into the storage folder in place too, so
after the disk fills those copies can be empty; no reader of the project depends on them being complete
(the error reason falls back to Ray's error).
"""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
import torch

from drl_tune.data.cache import load_cache
from drl_tune.ground.io import TMP_MARK
from drl_tune.study.plan import PLAN_FILE, Plan
from drl_tune.study.trainable import CHECKPOINT_FILE
from tests.conftest import TINY
from tests.study.test_faults_kill import start_study

pytestmark = pytest.mark.slow

SPACE = """\
dataset: {name: synthetic}
fixed: {threads: 1, method: joint, lr: 0.05}
scheduler: {type: none}
study: {num_samples: 2, max_concurrent: 1, seed: 0, max_failures: 1, confirm: {seeds: 0}, overrides: {epochs: 4}}
resources: {cpus_per_trial: 1}
"""


@pytest.fixture
def tiny_fs(tmp_path):
    mount = tmp_path / "fs"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode}); needs root with "
                    f"CAP_SYS_ADMIN — chmod alone does not stop root from writing")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder: Path) -> None:
    """Write zeros until the filesystem refuses (ENOSPC)."""
    chunk = b"\0" * (1 << 20)
    with open(folder / "filler", "wb") as out:
        try:
            while True:
                out.write(chunk)
                out.flush()
        except OSError as err:
            assert err.errno == errno.ENOSPC, err


def test_storage_that_fills_up_mid_study(tiny_fs, tmp_path):
    space = tmp_path / "disk.yaml"
    space.write_text(textwrap.dedent(SPACE))
    storage, data = tiny_fs / "studies", tiny_fs / "data"
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    tiny = [f"--set={k}={v}" for k, v in TINY.items() if k not in ("epochs", "lr", "threads")]
    log = tmp_path / "study.log"
    argv = [sys.executable, "-m", "drl_tune.run", "--space", str(space), "--storage", str(storage), "--name",
            "disk", "--progress-interval", "0", *tiny]
    proc = start_study(argv, log, ray_tmp, tmp_path, DRL_TUNE_DATA=str(data))
    try:
        study = storage / "disk"
        deadline = time.monotonic() + 400
        while not any(len((d / "result.json").read_text().splitlines()) >= 1
                      for d in study.glob("joint_*") if (d / "result.json").exists()):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        fill(tiny_fs)
        code = proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    text = log.read_text()
    assert code != 0, text
    errors = [line for line in text.splitlines() if line.startswith("error: ")]
    assert errors and "cannot write the study's results at" in errors[-1], text[-3000:]
    assert str(tiny_fs) in errors[-1] and "--resume --name disk" in errors[-1], errors[-1]
    assert "Traceback" not in text.split(errors[-1])[-1]  # the message is the last word, not a traceback

    # everything complete before the fault is still complete
    plan = Plan.from_json((study / PLAN_FILE).read_text())
    assert plan.name == "disk"
    caches = [m.parent for m in data.rglob("manifest.json")]
    assert caches and all(len(load_cache(c).splits["train"]) == TINY["data.synthetic.n_train"] for c in caches)
    for folder in study.glob("joint_*"):
        lines = (folder / "result.json").read_text().splitlines() if (folder / "result.json").exists() else []
        complete = [json.loads(line) for line in lines if line.endswith("}")]
        recorded = {int(r["training_iteration"]) for r in complete}
        for checkpoint in folder.glob("checkpoint_*"):
            index = int(checkpoint.name.split("_")[1])
            if index + 1 in recorded:  # Tune recorded it (its result was written): it must load
                state = torch.load(checkpoint / CHECKPOINT_FILE, weights_only=True)
                assert state["epoch"] == index + 1
        # not checked: params.json and the drl_tune_worker/error.json files here are *Tune's copies* (the trial
        # writes them atomically into its staging folder; Tune's artifact sync copies them in place) and were
        # measured empty after the disk filled — see the module docstring
    # an interrupted atomic write leaves at most a dot-named temporary, never a torn file under a final name
    assert all(p.name.startswith(".") for p in tiny_fs.rglob(f"*{TMP_MARK}*"))
