"""Serve's data-path settings, measured side by side by benchmarks/engine.py (docs/engines.md).

Read by Ray when its modules are imported, so ``cascade`` sets them (unless already set) before it
imports anything of Ray, and ``cascade build`` writes them into the nodes' environment. No imports.
"""

SERVE_TUNING = {
    # Calls between deployments (proxy -> router -> tiers) over gRPC instead of Ray actor calls.
    "RAY_SERVE_USE_GRPC_BY_DEFAULT": "1",
    # User code and the handles' request router on the replica's own event loop (our code never blocks
    # it: the engines run their forward passes in threads of their own).
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
    # Autoscaling metrics recorded every look_back_period_s x 0.05 (Serve: x 0.2), at most every
    # metrics_interval_s: with the tiers' 5 s look-back, 20 samples of the engines' load per window
    # instead of 5 (serving/serve/autoscaling.py).
    "RAY_SERVE_AUTOSCALING_METRIC_RECORD_INTERVAL_FACTOR": "0.05",
    # The controller's loop (autoscaling decisions, health and state checks) every 0.5 s (Serve: 0.1 s): idle,
    # it was the largest single consumer of a `cascade serve` (3.0 % of a core, and GCS 1.6 % answering it;
    # benchmarks/serving_cost.py --idle); scaling still reacts well inside the tiers' 2 s upscale delay.
    "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5",
}
