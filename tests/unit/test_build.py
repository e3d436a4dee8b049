"""The deploy artefacts in cluster/ are generated from the project config and stay consistent with it."""

import json
from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from serving.config import TOY_CONFIG, load_config
from serving.ops.build import TARGETS, pools, render
from serving.serve.app import SERVICER, resolve_config

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
GENERATED = [  # (config, target, file) -- the commands are in cluster/cascade-gpu.yaml and cluster/README.md
    ("toy", "serve", "serve_local.yaml"),
    ("cascade-gpu.yaml", "serve", "serve.yaml"),
    ("cascade-gpu.yaml", "cluster", "cluster.yaml"),
    ("cascade-gpu.yaml", "kuberay", "rayservice.yaml"),
]


def _cfg(name):
    return load_config(TOY_CONFIG if name == "toy" else CLUSTER / name)


@pytest.mark.parametrize("config,target,file", GENERATED)
def test_committed_artefacts_are_freshly_generated(config, target, file):
    assert (CLUSTER / file).read_text() == render(TARGETS[target](_cfg(config))), (
        f"cluster/{file} is stale: cascade build --target {target} -o cluster/{file}"
    )


@pytest.mark.parametrize("config,file", [("toy", "serve_local.yaml"), ("cascade-gpu.yaml", "serve.yaml")])
def test_serve_config_matches_the_project_config(config, file):
    cfg = _cfg(config)
    raw = yaml.safe_load((CLUSTER / file).read_text())
    schema = ServeDeploySchema.model_validate(raw)  # what serve deploy / serve run accept
    assert schema.grpc_options.port == cfg.server.grpc_port
    assert schema.grpc_options.grpc_servicer_functions == [SERVICER]
    (app,) = schema.applications
    assert app.import_path == "serving.serve.app:build_app"
    assert resolve_config(app.args) == cfg
    deps = {d.name: d for d in app.deployments}
    assert set(deps) == {f"tier-{t.name}" for t in cfg.tiers} | {"Router"}
    for t in cfg.tiers:
        d = deps[f"tier-{t.name}"]
        assert d.ray_actor_options.resources == t.serve.ray_actor_options["resources"]
        assert d.autoscaling_config["max_replicas"] == t.serve.autoscaling_config.max_replicas


def test_cluster_launcher_has_a_node_type_per_pool():
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = _cfg("cascade-gpu.yaml")
    raw = yaml.safe_load((CLUSTER / "cluster.yaml").read_text())
    validate_config(prepare_config(raw))  # Ray's own launcher schema
    types = raw["available_node_types"]
    assert raw["head_node_type"] == "head" and set(types) == {"head", "weak_pool", "strong_pool"}
    for t in cfg.tiers:
        (pool,) = t.serve.ray_actor_options["resources"]
        node = types[pool]
        assert node["resources"][pool] >= t.serve.ray_actor_options["resources"][pool]
        assert node["resources"]["GPU"] >= t.serve.ray_actor_options["num_gpus"]
        assert node["min_workers"] >= 1 and node["max_workers"] >= t.serve.autoscaling_config.max_replicas
    assert "weak_pool" not in types["head"]["resources"] and "strong_pool" not in types["head"]["resources"]


def test_rayservice_carries_the_serve_config_pools_and_grpc_port():
    cfg = _cfg("cascade-gpu.yaml")
    service, grpc_svc = yaml.safe_load_all((CLUSTER / "rayservice.yaml").read_text())
    assert service["kind"] == "RayService"
    assert yaml.safe_load(service["spec"]["serveConfigV2"]) == yaml.safe_load((CLUSTER / "serve.yaml").read_text())
    groups = {g["groupName"]: g for g in service["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
    for pool in pools(cfg):
        g = groups[pool.replace("_", "-")]
        assert pool in json.loads(g["rayStartParams"]["resources"].strip('"').replace('\\"', '"'))
        assert g["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    head_ports = service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"]
    assert {"containerPort": cfg.server.grpc_port, "name": "grpc"} in head_ports
    assert grpc_svc["kind"] == "Service" and grpc_svc["spec"]["ports"][0]["port"] == cfg.server.grpc_port


def test_vllm_gpu_config_asks_serve_and_the_cluster_for_its_gpus():
    """cluster/cascade-gpu-vllm.yaml: the weak vLLM tier takes one GPU per replica; the strong one (tensor
    parallel 2) a STRICT_PACK placement group; Serve accepts the config, and the launcher's strong-pool
    nodes carry the two GPUs a replica spans."""
    from serving.ops.build import cluster_launcher, serve_config

    cfg = _cfg("cascade-gpu-vllm.yaml")
    assert [t.engine.name for t in cfg.tiers] == ["vllm", "vllm"]
    (app,) = ServeDeploySchema.model_validate(serve_config(cfg)).applications
    deps = {d.name: d for d in app.deployments}
    assert deps["tier-weak"].ray_actor_options.num_gpus == 1
    strong = deps["tier-strong"]
    assert strong.placement_group_bundles == [{"CPU": 4, "strong_pool": 1}, {"GPU": 1}, {"GPU": 1}]
    assert strong.placement_group_strategy == "STRICT_PACK"
    types = cluster_launcher(cfg)["available_node_types"]
    assert types["strong_pool"]["resources"]["GPU"] == 2 and types["weak_pool"]["resources"]["GPU"] == 1
    assert pools(cfg)["strong_pool"]["gpus"] == 2
