"""Builder: config -> Ray Serve Application.

Usable from code (``serve.run(build_app({"config": "cascade.yaml"}))``), from the command line
(``serve run serving.serve.app:build_app config=cascade.yaml``) and from a Serve config YAML
(``import_path: serving.serve.app:build_app`` with ``args: {config: <path or inline mapping>}``).
Serve's gRPC proxy needs ``grpc_options.grpc_servicer_functions: [serving.serve.app.SERVICER]``.
"""

from __future__ import annotations

import os
from typing import Any, Union

from ray.serve import Application

from serving.config import CascadeConfig, digested, load_config, parse_config
from serving.serve.router import Router
from serving.serve.tier import TierDeployment
from serving.serve.tuning import SERVE_TUNING

SERVICER = "serving.serve.grpc_service.add_cascade_servicer"


def node_env(cfg: CascadeConfig) -> dict[str, str]:
    """Environment of every Ray node (Serve reads these where its processes start): the proxy's largest
    gRPC message and Serve's data-path settings (serving/serve/tuning.py)."""
    return {"RAY_SERVE_GRPC_MAX_MESSAGE_SIZE": str(cfg.limits.max_request_bytes), **SERVE_TUNING}


def ingress_env(cfg: CascadeConfig) -> dict[str, str]:
    """Direct ingress (``server.ingress``) on an embedded Ray (`cascade serve`): Serve's direct ingress, the one
    Router replica serving HTTP and gRPC itself on the configured ports. Clusters (`cascade build`) keep
    Serve's proxies in front: there, direct ingress needs a load balancer over the replicas' ports (Serve's
    HAProxy mode)."""
    if not cfg.direct_ingress:
        return {"RAY_SERVE_ENABLE_DIRECT_INGRESS": "0"}
    # a replacement Router (the old one died, or was replaced) takes the port back at once: Serve otherwise holds a
    # released port out of use for its HAProxy's drain window (150 s), and this mode has only the one port
    env = {"RAY_SERVE_ENABLE_DIRECT_INGRESS": "1", "RAY_SERVE_PORT_QUARANTINE_S": "0"}
    # a stopping Router waits out its requests in flight (graceful_shutdown_timeout_s), not Serve's extra 30 s
    # "minimum draining period" for an external load balancer to deregister it: there is none in front of the one
    # port (measured: every `cascade serve` took 32 s to stop, with nothing in flight)
    env["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] = "0"
    for proto, port in (("HTTP", cfg.server.http_port), ("GRPC", cfg.server.grpc_port)):
        env[f"RAY_SERVE_DIRECT_INGRESS_MIN_{proto}_PORT"] = str(port)
        env[f"RAY_SERVE_DIRECT_INGRESS_MAX_{proto}_PORT"] = str(port + 1)  # exclusive: that port only
    return env


def serve_env(cfg: CascadeConfig) -> None:
    """Settings Serve reads from the environment of the processes Ray starts (set before ``ray.init``
    starts an embedded Ray; on clusters, in the nodes' environment): ``node_env`` (an environment
    variable already set wins), and ready/health-check timeouts long enough for a busy 2-core machine
    (5 s by default), and the ingress mode (``ingress_env``)."""
    for k, v in node_env(cfg).items():
        os.environ.setdefault(k, v)
    os.environ.update(ingress_env(cfg))  # the config decides, whatever a parent process left behind
    for var in ("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S"):
        os.environ.setdefault(var, "60")


def resolve_config(args: Union[dict[str, Any], CascadeConfig, None]) -> CascadeConfig:
    """``args["config"]`` may be a YAML path, an inline mapping, or absent (the shipped default)."""
    if isinstance(args, CascadeConfig):
        return args
    cfg = (args or {}).get("config")
    if cfg is None or cfg == "default":
        return load_config(None)
    if isinstance(cfg, (dict, CascadeConfig)):
        return parse_config(cfg, origin="args.config")
    return load_config(cfg)


def grpc_options(cfg: CascadeConfig) -> dict[str, Any]:
    """Serve's gRPC proxy options for this config (used by `cascade serve` and `cascade build`)."""
    opts = {"port": cfg.server.grpc_port, "grpc_servicer_functions": [SERVICER]}
    if cfg.server.request_timeout_s:
        opts["request_timeout_s"] = cfg.server.request_timeout_s
    return opts


def build_app(args: Union[dict[str, Any], CascadeConfig, None] = None) -> Application:
    cfg = resolve_config(args)
    tiers = {
        t.name: TierDeployment.options(name=f"tier-{t.name}", **t.deployment_options()).bind(t.model_dump(mode="json"))
        for t in cfg.deployed_tiers  # a judge of its own is a tier that only scores
        if t.name != cfg.router.colocate_with  # that one runs inside the Router
    }
    # Tokens from the config and the environment of the process building the app, as digests only.
    router_cfg = digested(cfg, cfg.model_dump(mode="json"), with_env=True)
    return Router.options(name="Router", **cfg.router_deployment_options()).bind(router_cfg, tiers)
