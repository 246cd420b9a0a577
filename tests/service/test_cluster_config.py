"""``cluster.yaml`` is a valid Ray cluster-launcher config for AWS, checked with Ray's own
schema and validator, and keeps the service and the dashboard off public addresses."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_cluster_yaml_passes_rays_schema_and_validator(config):
    import jsonschema
    import ray
    from ray.autoscaler._private.util import prepare_config, validate_config

    schema_path = Path(os.path.dirname(ray.__file__), "autoscaler", "ray-schema.json")
    jsonschema.validate(config, json.loads(schema_path.read_text()))
    # as `ray up` does: fill in the AWS defaults, then Ray's own checks
    validate_config(prepare_config(copy.deepcopy(config)))


def test_cluster_yaml_has_the_nodes_setup_and_service_rllc_needs(config):
    assert config["provider"]["type"] == "aws"
    nodes = config["available_node_types"]
    head, gpu = nodes[config["head_node_type"]], nodes["gpu_worker"]
    assert not head["node_config"]["InstanceType"].startswith(("g", "p"))  # a CPU head
    assert gpu["node_config"]["InstanceType"].startswith(("g", "p"))
    assert 1 <= gpu["min_workers"] <= gpu["max_workers"] <= config["max_workers"]
    for node in (head, gpu):  # S3 by instance profile
        assert node["node_config"]["IamInstanceProfile"]["Name"]
    head_setup = " ".join(config["head_setup_commands"])
    worker_setup = " ".join(config["worker_setup_commands"])
    assert "torch==2.13.0" in head_setup and "whl/cpu" in head_setup
    assert "torch==2.13.0" in worker_setup and "whl/cu" in worker_setup
    assert "/home/ubuntu/rllc[serve" in head_setup and "/home/ubuntu/rllc[" in worker_setup
    assert config["file_mounts"] == {"/home/ubuntu/rllc": "."}
    start = " ".join(config["head_start_ray_commands"])
    assert "rllc serve" in start and "--host 127.0.0.1" in start
    assert "--dashboard-host=127.0.0.1" in start
    assert "0.0.0.0" not in (ROOT / "cluster.yaml").read_text()
