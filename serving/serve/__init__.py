"""Thin Ray Serve wrappers: ``router.py`` (the ingress of both fronts: gates, dispatch, records),
``tier.py`` (one engine behind a streaming method), ``tier_client.py`` (every tier call: timeout,
retry, breaker), ``app.py`` (config -> Serve application), ``grpc_service.py`` (how Serve's gRPC proxy
registers the service), ``autoscaling.py`` (the engine-load policy), ``tuning.py`` (Serve's data-path
settings), ``metrics.py`` (the metric specs as Ray metrics).

May import everything below it (core, deferral, engines, config, fronts, observability) and Ray. No
decision logic lives here: math has no Ray, Ray has no math. This ``__init__`` imports nothing (Serve
imports ``serving.serve.autoscaling`` in its controller).
"""
