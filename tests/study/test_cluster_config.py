"""The launcher files in cluster/ validate against the JSON schema Ray ships for `ray up`
(ray/autoscaler/ray-schema.json), survive the preparation `ray up` applies before launching (defaults filled
in, the local provider's rules), and say what this project needs: a GPU worker type that exists before a study
starts, the project installed on every node, shared storage, a token for Ray's token authentication, and an
MLflow server. (No cloud account here: `ray up` itself cannot run in CI.)"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER = Path(__file__).resolve().parents[2] / "cluster"
FILES = sorted(CLUSTER.glob("*.yaml"))
SCHEMA = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def commands(config: dict) -> str:
    keys = ("setup_commands", "head_setup_commands", "worker_setup_commands", "head_start_ray_commands",
            "worker_start_ray_commands")
    return "\n".join(c for k in keys for c in config.get(k, []))


def test_there_is_a_cloud_gpu_file_and_an_on_prem_file():
    providers = {load(p)["provider"]["type"] for p in FILES}
    assert {"aws", "local"} <= providers


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_launcher_file_is_valid_for_ray_up(path):
    config = load(path)
    jsonschema.validate(config, SCHEMA)  # the raw file, as written
    validate_config(prepare_config(config))  # what `ray up` validates after filling in defaults


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_launcher_file_sets_up_what_a_study_needs(path):
    config = load(path)
    text = commands(config)
    # this checkout on every node, installed with its dependencies
    assert "." in config["file_mounts"].values() and "pip install -e" in text
    # one token everywhere, and every ray start in token mode
    assert any("auth_token" in k for k in config["file_mounts"])
    starts = [c for c in config["head_start_ray_commands"] + config["worker_start_ray_commands"] if "ray start" in c]
    assert starts and all("RAY_AUTH_MODE=token" in c for c in starts)
    # the tracking server on the head, bound to localhost, its store on the shared file system
    assert "mlflow server --host 127.0.0.1" in " ".join(text.split())
    shared = "/mnt/efs" if config["provider"]["type"] == "aws" else "/mnt/shared"
    assert f"sqlite:///{shared}/mlflow" in text and shared in path.read_text().split("--storage")[1].split()[0]


def test_aws_gpu_worker_type_exists_before_the_study():
    config = load(CLUSTER / "aws-gpu.yaml")
    workers = {k: v for k, v in config["available_node_types"].items() if k != config["head_node_type"]}
    gpu = [v for v in workers.values() if v.get("resources", {}).get("GPU", 0) >= 1]
    assert gpu and all(1 <= v["min_workers"] <= v["max_workers"] <= config["max_workers"] for v in gpu)
    assert config["available_node_types"][config["head_node_type"]]["resources"]["CPU"] == 0  # no trials on head


def test_on_prem_file_uses_the_local_provider_rules():
    config = load(CLUSTER / "onprem-gpu.yaml")
    assert "available_node_types" not in config  # Ray's local provider refuses node types
    prepared = prepare_config(config)
    node_type = prepared["available_node_types"][prepared["head_node_type"]]
    assert node_type["min_workers"] == node_type["max_workers"] == len(config["provider"]["worker_ips"])
