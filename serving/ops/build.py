"""Deploy artefacts generated from the one cascade config: a Serve config file, a Ray cluster
launcher YAML (a head and one worker node type per pool), and a KubeRay RayService manifest."""

from __future__ import annotations

import json
import math
from typing import Any

import yaml

from serving.config import CascadeConfig, portable
from serving.serve.app import grpc_options, node_env

RAY_IMAGE = "rayproject/ray:2.60.0-py311-gpu"


def _deployment(name: str, opts: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, **opts}


def serve_config(cfg: CascadeConfig) -> dict[str, Any]:
    """A Serve config file (`serve deploy` / `serve run`): gRPC proxy, the app with its args, and the
    per-deployment settings, all from the cascade config (proxies bind to ``server.host``)."""
    return {
        "proxy_location": cfg.server.proxy_location,
        "http_options": {"host": cfg.server.host, "port": cfg.server.http_port},
        "grpc_options": grpc_options(cfg),
        "applications": [
            {
                "name": cfg.server.app_name,
                "route_prefix": "/",
                "import_path": "serving.serve.app:build_app",
                "args": {"config": portable(cfg)},
                "deployments": [
                    _deployment(f"tier-{t.name}", t.deployment_options())
                    for t in cfg.deployed_tiers  # tiers, and judges with deployments of their own
                    if t.name != cfg.router.colocate_with
                ]
                + [_deployment("Router", cfg.router_deployment_options())],
            }
        ],
    }


def pools(cfg: CascadeConfig) -> dict[str, dict[str, Any]]:
    """Each custom resource a tier asks for is a pool: which tiers use it, how much a replica takes,
    the replicas it must hold (min/max over its tiers' scaling) and GPUs per replica."""
    out: dict[str, dict[str, Any]] = {}
    for t in cfg.deployed_tiers:
        opts = t.serve
        a = opts.autoscaling_config
        lo = a.min_replicas if a else (opts.num_replicas or 1)
        hi = a.max_replicas if a else (opts.num_replicas or 1)
        for name, amount in (opts.ray_actor_options.get("resources") or {}).items():
            p = out.setdefault(
                name, {"tiers": [], "per_replica": 0.0, "min_replicas": 0, "max_replicas": 0, "gpus": 0.0}
            )
            p["tiers"].append(t.name)
            p["per_replica"] = max(p["per_replica"], float(amount))
            p["min_replicas"] += lo
            p["max_replicas"] += hi
            p["gpus"] = max(p["gpus"], t.gpus_per_replica)
    return out


def _node_shape(pool: dict[str, Any], gpus_per_node: int, replicas_per_cpu_node: int) -> tuple[int, float, int]:
    """(replicas per node, the pool resource a node declares, GPUs a node declares): a replica that spans
    more GPUs than ``gpus_per_node`` (tensor parallelism) gets nodes with as many as it needs."""
    gpus = max(gpus_per_node, math.ceil(pool["gpus"])) if pool["gpus"] else 0
    per_node = int(gpus // pool["gpus"]) if pool["gpus"] else replicas_per_cpu_node
    per_node = max(per_node, 1)
    return per_node, per_node * pool["per_replica"], gpus


def cluster_launcher(
    cfg: CascadeConfig,
    name: str = "cascade",
    gpus_per_node: int = 1,
    replicas_per_cpu_node: int = 4,
    head_instance: str = "m5.2xlarge",
    gpu_instance: str = "g5.xlarge",
    region: str = "us-west-2",
) -> dict[str, Any]:
    """A Ray cluster launcher YAML (AWS): a CPU head (Serve controller, proxy, router) and one GPU
    worker node type per pool, declaring the pool's custom resource; min/max workers follow the
    tiers' replica bounds."""
    env = " ".join(f"{k}={v}" for k, v in node_env(cfg).items())
    metrics = cfg.server.metrics_port or 8080
    types: dict[str, Any] = {
        "head": {
            "node_config": {"InstanceType": head_instance},
            "resources": {"GPU": 0},
            "min_workers": 0,
            "max_workers": 0,
        },
    }
    max_workers = 0
    for pool, p in pools(cfg).items():
        per_node, amount, gpus = _node_shape(p, gpus_per_node, replicas_per_cpu_node)
        lo, hi = math.ceil(p["min_replicas"] / per_node), math.ceil(p["max_replicas"] / per_node)
        types[pool] = {
            "node_config": {"InstanceType": gpu_instance},
            "resources": {pool: amount, "GPU": gpus},
            "min_workers": lo,
            "max_workers": hi,
        }
        max_workers += hi
    return {
        "cluster_name": name,
        "max_workers": max_workers,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 5,
        "provider": {"type": "aws", "region": region, "cache_stopped_nodes": False},
        "auth": {"ssh_user": "ubuntu"},
        "docker": {"image": RAY_IMAGE, "container_name": "ray_container", "pull_before_run": True},
        "available_node_types": types,
        "head_node_type": "head",
        "file_mounts": {"~/cascade": "."},
        "setup_commands": ["pip install -e ~/cascade"],
        "head_start_ray_commands": [
            "ray stop",
            f"{env} ray start --head --port=6379 --dashboard-host=0.0.0.0 --metrics-export-port={metrics} "
            "--autoscaling-config=~/ray_bootstrap_config.yaml",
        ],
        "worker_start_ray_commands": [
            "ray stop",
            f"{env} ray start --address=$RAY_HEAD_IP:6379 --metrics-export-port={metrics}",
        ],
    }


def rayservice(
    cfg: CascadeConfig,
    name: str = "cascade",
    image: str = "cascade-serving:latest",
    gpus_per_node: int = 1,
    replicas_per_cpu_node: int = 4,
) -> dict[str, Any]:
    """A KubeRay RayService: the Serve config from :func:`serve_config` as serveConfigV2, a head
    group, and one worker group per pool with the pool's resource in rayStartParams."""
    ports = [
        {"containerPort": 6379, "name": "gcs"},
        {"containerPort": 8265, "name": "dashboard"},
        {"containerPort": cfg.server.http_port, "name": "serve"},
        {"containerPort": cfg.server.grpc_port, "name": "grpc"},
    ]

    def container(cpu: str, memory: str, gpus: int, with_ports: list) -> dict[str, Any]:
        limits = {"cpu": cpu, "memory": memory} | ({"nvidia.com/gpu": gpus} if gpus else {})
        return {
            "name": "ray",
            "image": image,
            "ports": with_ports,
            "env": [{"name": k, "value": v} for k, v in node_env(cfg).items()],
            "resources": {"limits": limits, "requests": {"cpu": cpu, "memory": memory}},
        }

    workers = []
    for pool, p in pools(cfg).items():
        per_node, amount, gpus = _node_shape(p, gpus_per_node, replicas_per_cpu_node)
        workers.append(
            {
                "groupName": pool.replace("_", "-"),
                "replicas": math.ceil(p["min_replicas"] / per_node),
                "minReplicas": math.ceil(p["min_replicas"] / per_node),
                "maxReplicas": math.ceil(p["max_replicas"] / per_node),
                # KubeRay passes this to `ray start --resources=...`: a JSON object inside quotes
                "rayStartParams": {"resources": '"' + json.dumps({pool: amount}).replace('"', '\\"') + '"'},
                "template": {"spec": {"containers": [container("4", "16Gi", gpus, ports[2:])]}},
            }
        )
    service = {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": name},
        "spec": {
            "serveConfigV2": yaml.safe_dump(serve_config(cfg), sort_keys=False),
            "rayClusterConfig": {
                "rayVersion": "2.60.0",
                "enableInTreeAutoscaling": True,
                "headGroupSpec": {
                    "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0"},
                    "template": {"spec": {"containers": [container("2", "8Gi", 0, ports)]}},
                },
                "workerGroupSpecs": workers,
            },
        },
    }
    grpc_svc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": f"{name}-grpc"},
        "spec": {
            "selector": {"ray.io/serve": "true"},
            "ports": [{"name": "grpc", "port": cfg.server.grpc_port, "targetPort": cfg.server.grpc_port}],
        },
    }
    return {"documents": [service, grpc_svc]}


TARGETS = {"serve": serve_config, "cluster": cluster_launcher, "kuberay": rayservice}


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (serveConfigV2) as readable literal blocks; no anchors/aliases."""

    def ignore_aliases(self, data) -> bool:
        return True


_Dumper.add_representer(
    str, lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s, style="|" if "\n" in s else None)
)


def render(doc: dict[str, Any]) -> str:
    header = "# Generated by `cascade build` from the cascade config; regenerate instead of editing.\n"
    docs = doc["documents"] if "documents" in doc else [doc]
    return header + yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False)
