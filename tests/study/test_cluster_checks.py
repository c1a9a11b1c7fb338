"""The cluster checks in drl_tune/study/cluster.py without a cluster: bounded-time address probe, trial-fits-a-node,
storage and dataset checks per node, job detection, the review command."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from drl_tune.run import main
from drl_tune.study import cluster
from drl_tune.study.cluster import ClusterError
from tests.conftest import TINY
from tests.study.test_study_address import free_port


def node(ip: str, cpus: float, gpus: float = 0, node_id: str = "f" * 56) -> dict:
    resources = {"CPU": cpus} | ({"GPU": gpus} if gpus else {})
    return {"NodeID": node_id, "NodeManagerAddress": ip, "NodeManagerHostname": f"host-{ip}", "Alive": True,
            "Resources": resources}


def test_address_with_nothing_listening_fails_in_seconds():
    port = free_port()
    start = time.monotonic()
    with pytest.raises(ClusterError, match=f"nothing answers at Ray address 127.0.0.1:{port}"):
        cluster.check_address(f"127.0.0.1:{port}")
    assert time.monotonic() - start < cluster.PROBE_TIMEOUT_S + 2


def test_study_with_a_dead_address_stops_before_anything(tmp_path, capsys):
    start = time.monotonic()
    code = main(["--space", "demo", "--storage", str(tmp_path), "--address", f"127.0.0.1:{free_port()}"])
    assert code == 2 and time.monotonic() - start < 10
    assert "nothing answers at Ray address" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(("address", "message"), [
    ("http://127.0.0.1:8265", "looks like the Ray dashboard"),
    ("head-without-port", "is not HOST:PORT"),
])
def test_address_mistakes_are_named(address, message):
    with pytest.raises(ClusterError, match=message):
        cluster.check_address(address)


def test_ray_client_address_is_probed_too():
    with pytest.raises(ClusterError, match="nothing answers"):
        cluster.check_address(f"ray://127.0.0.1:{free_port()}")


def test_trial_must_fit_one_node_not_the_sum():
    nodes = [node("10.0.0.1", 0), node("10.0.0.2", 4, 1, "a" * 56), node("10.0.0.3", 4, 1, "b" * 56)]
    assert len(cluster.check_fits(nodes, 4, 1)) == 2
    # 8 CPUs in total, 4 per node: a 6-CPU trial fits nowhere
    with pytest.raises(ClusterError) as err:
        cluster.check_fits(nodes, 6, 0.5)
    text = str(err.value)
    assert "one trial asks for 6 CPUs + 0.5 GPUs" in text and "has 4 CPUs + 1 GPU" in text
    assert "lacks 2 more CPU" in text and "GPU" not in text.split("lacks")[1].split(";")[0]
    with pytest.raises(ClusterError, match="lacks 1 more GPU"):
        cluster.check_fits([node("10.0.0.1", 16)], 1, 1)


def test_storage_probe(tmp_path):
    assert cluster.probe_storage(str(tmp_path / "new" / "studies")) is None
    assert list((tmp_path / "new" / "studies").iterdir()) == []  # the probe file is gone again
    (tmp_path / "file").write_text("x")
    reason = cluster.probe_storage(str(tmp_path / "file" / "studies"))
    assert reason and reason.startswith(("NotADirectoryError", "FileExistsError"))


def test_node_check_reports_dataset_and_storage(tmp_path, monkeypatch):
    tiny = {k: v for k, v in TINY.items() if k.startswith("data.")}
    ok = cluster.node_check(tiny, str(tmp_path / "studies"))
    assert ok["problems"] == [] and ok["hostname"]
    monkeypatch.delenv("DRL_TUNE_CREMAD_ROOT", raising=False)
    (tmp_path / "file").write_text("x")
    bad = cluster.node_check({"data.name": "cremad", "data.root": str(tmp_path / "nowhere")},
                             str(tmp_path / "file" / "studies"))
    assert len(bad["problems"]) == 2
    assert bad["problems"][0].startswith(f"dataset: dataset 'cremad' is not prepared at {tmp_path / 'nowhere'}")
    assert bad["problems"][1].startswith(f"cannot write the results storage {tmp_path / 'file' / 'studies'}")


def test_job_detection_and_storage_inside_a_job(monkeypatch):
    monkeypatch.delenv(cluster.JOB_CONFIG_ENV, raising=False)
    assert cluster.job_submission_id() is None
    cluster.check_storage_arg(Path("runs/studies"))  # a relative folder is fine outside a job
    monkeypatch.setenv(cluster.JOB_CONFIG_ENV, json.dumps({"runtime_env": {},
                                                           "metadata": {"job_submission_id": "raysubmit_X"}}))
    assert cluster.job_submission_id() == "raysubmit_X"
    with pytest.raises(ClusterError, match="inside a Ray job the working directory is a temporary copy"):
        cluster.check_storage_arg(Path("runs/studies"))
    cluster.check_storage_arg(Path("/mnt/shared/studies"))


def test_object_store_storage_is_refused_with_the_alternative():
    with pytest.raises(ClusterError, match=r"--storage s3://bucket/studies: object-store URIs are not supported"):
        cluster.check_storage_arg(Path("s3://bucket/studies"))  # what argparse's Path makes of it: s3:/bucket


def test_review_command_points_at_the_tracking_server():
    assert cluster.review_command("http://10.0.0.10:5000/", "7", "x") == \
        "open http://10.0.0.10:5000/#/experiments/7/runs in a browser"
    assert cluster.review_command("sqlite:////a/mlflow.db", "7", "mlflow ui ...") == "mlflow ui ..."
