"""``--address``: the study joins a Ray cluster that is already running (here a real head node started
with ``ray start --head`` on 127.0.0.1) instead of starting its own, and leaves the cluster running."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from tests.e2e.test_study_e2e import tiny_sets

pytestmark = pytest.mark.slow

SPACE = """\
dataset: {name: synthetic}
fixed: {threads: 1, method: joint, lr: 0.05, epochs: 2}
search:
  lr: {type: choice, values: [0.05, 0.02]}
scheduler: {type: none}
study: {num_samples: 2, max_concurrent: 2, seed: 0, max_failures: 0, confirm: {seeds: 0}}
resources: {cpus_per_trial: 1}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A Ray head node in its own process group (so stopping it cannot touch any other Ray on the machine)."""
    tmp_path = tmp_path_factory.mktemp("ray_head")
    port = free_port()
    ray_bin = str(Path(sys.executable).with_name("ray"))
    with open(tmp_path / "head.log", "w") as log:
        head = subprocess.Popen(
            [ray_bin, "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(port),
             "--num-cpus", "3", "--include-dashboard", "false", "--disable-usage-stats"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:  # the GCS answers once the head is up
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert head.poll() is None, (tmp_path / "head.log").read_text()
            time.sleep(1)
    time.sleep(3)  # raylet registers after the GCS
    yield address
    os.killpg(head.pid, signal.SIGKILL)  # SIGTERM would drain for 30 s; this cluster holds nothing
    head.wait(timeout=60)
    # `ray start` recorded this head as the machine's current cluster; a later plain ray.init() would try to
    # join the dead head. Forget it (only if it is still ours), as `ray stop` would.
    current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
    if current.is_file() and current.read_text().strip().endswith(f":{port}"):
        current.unlink()


def test_study_joins_a_running_cluster(ray_head, tmp_path):
    space = tmp_path / "address.yaml"
    space.write_text(textwrap.dedent(SPACE))
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token"}  # `ray start` turns token auth on
    proc = subprocess.run(
        [sys.executable, "-m", "drl_tune.run", "--space", str(space), "--storage", str(tmp_path / "studies"),
         "--name", "joined", "--address", ray_head, "--progress-interval", "0", *tiny_sets()],
        capture_output=True, text=True, env=env, timeout=400,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "search of study 'joined' (2 trials" in proc.stdout
    # the driver joined the head we started (3 logical CPUs; a local Ray here would have 2)
    assert f"ray: joined the cluster at {ray_head} (3 CPUs, 0 GPUs)" in proc.stdout
    # and left it running for the next job
    still = subprocess.run([sys.executable, "-c", f"import ray; ray.init(address='{ray_head}'); "
                            "print(ray.cluster_resources().get('CPU'))"], capture_output=True, text=True, env=env,
                           timeout=120)
    assert still.returncode == 0 and still.stdout.strip().endswith("3.0"), still.stderr[-2000:]


def test_cluster_with_token_auth_and_no_token_is_a_clear_error(ray_head, tmp_path):
    space = tmp_path / "address.yaml"
    space.write_text(textwrap.dedent(SPACE))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")} | {"RAY_AUTH_MODE": "disabled"}
    proc = subprocess.run(
        [sys.executable, "-m", "drl_tune.run", "--space", str(space), "--storage", str(tmp_path / "studies"),
         "--address", ray_head, *tiny_sets()],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"cannot join the Ray cluster at {ray_head}" in proc.stderr
    assert "export RAY_AUTH_MODE=token" in proc.stderr
