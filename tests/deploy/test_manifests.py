"""deploy/: the `ray up` cluster config and the KubeRay manifests parse and carry what `ray up` and
KubeRay require. The cluster config is validated against Ray's own JSON schema
(`ray/autoscaler/ray-schema.json`, what `ray up` checks it with) when the installed ray ships it
and jsonschema is installed; the required keys are also checked by hand, so the test means
something without them."""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

DEPLOY = REPO / "deploy"


def load_all(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def serve_argv(command: str) -> list[str]:
    """The `shunter serve ...` part of a shell command line, split into words (a password read
    from a file or the environment stands as `pw`)."""
    command = re.sub(r"\$\(cat [^)]*\)|\$\{[A-Z_]+\}", "pw", command.replace("\n", " "))
    words = shlex.split(command, comments=False)
    start = next(i for i, w in enumerate(words) if w.endswith("shunter") and words[i + 1] == "serve")
    end = next((i for i, w in enumerate(words) if i > start and w in (">", "&")), len(words))
    return words[start + 2:end]


def check_serve_command(argv: list[str]) -> None:
    """The deploy command's options parse with `shunter serve`'s own parser."""
    from shunter.cli_args import Parser
    from shunter.router.serve import cli as serve_cli

    parser = Parser(prog="shunter serve")
    serve_cli.add_arguments(parser)
    args = parser.parse_args(argv)
    assert args.address == "auto"
    assert args.state is not None and args.state.host
    assert args.host == "0.0.0.0" and args.http_port == 8000
    assert args.num_gpus_per_replica == 1 and args.placement == "spread"
    assert args.wait_for_resources > 0


# ---- ray up ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster() -> dict:
    (doc,) = load_all(DEPLOY / "ray-cluster.yaml")
    return doc


def test_ray_cluster_yaml_matches_rays_schema(cluster):
    jsonschema = pytest.importorskip("jsonschema")
    ray_autoscaler = pytest.importorskip("ray.autoscaler")
    schema_path = Path(ray_autoscaler.__file__).parent / "ray-schema.json"
    if not schema_path.exists():
        pytest.skip(f"this ray ships no {schema_path.name}")
    jsonschema.validate(cluster, json.loads(schema_path.read_text()))


def test_ray_cluster_yaml_required_keys(cluster):
    """What `ray up` needs, by hand: a name, a provider, a head node type among the node types,
    each with resources and a node_config; and what Shunter needs: GPU workers, setup that
    installs Shunter, Redis on the head, and `shunter serve --address auto --state redis://...`."""
    assert cluster["cluster_name"]
    assert cluster["provider"]["type"] in ("aws", "gcp", "azure")
    types = cluster["available_node_types"]
    head = cluster["head_node_type"]
    assert head in types
    for name, node in types.items():
        assert isinstance(node["node_config"], dict) and node["node_config"], name
        assert all(isinstance(v, int) and v >= 0 for v in node["resources"].values()), name
    gpu_workers = [t for name, t in types.items() if name != head and t["resources"].get("GPU", 0) >= 1]
    assert gpu_workers, "no worker node type with a GPU"
    assert all(t["node_config"]["InstanceType"].startswith(("g", "p")) for t in gpu_workers)  # AWS GPU families
    assert any("scripts/install.sh" in c for c in cluster["setup_commands"])
    assert any("redis-server" in c for c in cluster["head_setup_commands"])
    assert any("ray start --head" in c for c in cluster["head_start_ray_commands"])
    assert any("ray start --address" in c for c in cluster["worker_start_ray_commands"])
    (serve,) = [c for c in cluster["head_start_ray_commands"] if "shunter serve" in c]
    check_serve_command(serve_argv(serve))
    assert cluster["max_workers"] >= sum(t.get("min_workers", 0) for t in types.values())


# ---- KubeRay ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def manifests() -> dict[str, dict]:
    docs = [d for p in sorted((DEPLOY / "kuberay").glob("*.yaml")) for d in load_all(p)]
    for d in docs:
        assert d["apiVersion"] and d["kind"] and d["metadata"]["name"], d
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in docs}


def test_raycluster_manifest(manifests):
    (ray_cluster,) = [d for d in manifests.values() if d["kind"] == "RayCluster"]
    assert ray_cluster["apiVersion"] == "ray.io/v1"
    spec = ray_cluster["spec"]
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    assert all(isinstance(v, str) for v in head["rayStartParams"].values())  # KubeRay wants strings
    (head_container,) = head["template"]["spec"]["containers"]
    ports = {p["containerPort"] for p in head_container["ports"]}
    assert {6379, 50051, 8000} <= ports
    command = " ".join(head_container["lifecycle"]["postStart"]["exec"]["command"])
    check_serve_command(serve_argv(command))
    (gpu_group,) = spec["workerGroupSpecs"]
    assert gpu_group["groupName"] and isinstance(gpu_group["rayStartParams"], dict)
    assert gpu_group["minReplicas"] <= gpu_group["replicas"] <= gpu_group["maxReplicas"]
    (worker,) = gpu_group["template"]["spec"]["containers"]
    assert int(worker["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    assert gpu_group["rayStartParams"]["num-gpus"] == worker["resources"]["limits"]["nvidia.com/gpu"]
    assert worker["image"] == head_container["image"]


def test_redis_and_services(manifests):
    redis = manifests["Deployment/shunter-redis"]
    labels = redis["spec"]["template"]["metadata"]["labels"]
    assert redis["spec"]["selector"]["matchLabels"].items() <= labels.items()
    redis_service = manifests["Service/shunter-redis"]
    assert redis_service["spec"]["selector"].items() <= labels.items()
    assert redis_service["spec"]["ports"][0]["port"] == 6379
    front = manifests["Service/shunter"]
    assert {p["port"]: p["targetPort"] for p in front["spec"]["ports"]}.items() >= {50051: 50051, 8000: 8000}.items()
    assert front["spec"]["selector"] == {"ray.io/cluster": "shunter", "ray.io/node-type": "head"}
    (ray_cluster,) = [d for d in manifests.values() if d["kind"] == "RayCluster"]
    assert ray_cluster["metadata"]["name"] == "shunter"
    serve = " ".join(ray_cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["lifecycle"]
                     ["postStart"]["exec"]["command"])
    assert "@shunter-redis:6379/" in serve  # the Redis Service's name and port
