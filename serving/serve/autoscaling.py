"""Autoscaling a tier on what its engine reports, through Serve's own custom-policy mechanism.

Each tier replica reports its engine's load to Serve (``TierDeployment.record_autoscaling_stats``:
running and waiting requests, KV-cache use); Serve records it every
``min(look_back_period_s * RAY_SERVE_AUTOSCALING_METRIC_RECORD_INTERVAL_FACTOR, metrics_interval_s)``
seconds, pushes it to the controller every ``metrics_interval_s`` and averages it over
``look_back_period_s``. The controller calls ``EngineLoad`` on every control-loop tick; Serve then
applies ``upscale_delay_s`` / ``downscale_delay_s``, the scaling factors and min/max as it does for
its default policy. Selected in a tier's config with
``serve.autoscaling_config.policy: {policy_function: serving.serve.autoscaling:EngineLoad}`` (the shipped
config does; ``cascade plan`` writes it with the targets it computes).

Serve pickles this module by value into its controller: keep it free of imports from ``serving``.
No Ray at import.
"""

from __future__ import annotations

from typing import Any

POLICY = "serving.serve.autoscaling:EngineLoad"
RUNNING, WAITING, KV = "engine_running", "engine_waiting", "engine_kv_cache_usage"

# The windows every engine-scaled tier uses unless its config says otherwise (the shipped config
# repeats them; tests/unit/test_autoscaling.py keeps the two in step). Serve's defaults (30 s
# look-back, 10 s metrics interval) put 91 s between a 2 -> 20 qps step and the weak tier's peak.
ENGINE_AUTOSCALING: dict[str, Any] = {
    "metrics_interval_s": 1.0,  # replicas and handles push their metrics to the controller every second
    "look_back_period_s": 5.0,  # ... averaged over the last 5 s
    "upscale_delay_s": 2.0,  # a scale-up must be wanted for 2 s in a row
    "downscale_delay_s": 20.0,  # a scale-down for 20 s (no flapping on a short lull)
    "policy": {"policy_function": POLICY, "policy_kwargs": {"kv_cache_target": 0.8}},
}


def engine_metrics(running: int, waiting: int, kv_cache_usage: float) -> dict[str, float]:
    """What a tier replica reports to Serve from its engine's stats."""
    return {RUNNING: float(running), WAITING: float(waiting), KV: float(kv_cache_usage)}


class EngineLoad:
    """Replicas wanted = max(load / target_ongoing_requests, total KV-cache use / kv_cache_target).

    load = the engines' running + waiting requests (summed over replicas, averaged over the look-back
    window) + the requests Serve's handles hold that no replica has taken yet. The KV term scales out
    before long prompts fill the cache, where the request count alone would not. Before any replica
    has reported (just deployed), Serve's own count of ongoing requests stands in for the load."""

    def __init__(self, kv_cache_target: float = 0.8):
        if not isinstance(kv_cache_target, (int, float)) or not 0 < kv_cache_target <= 1:
            raise ValueError(f"policy_kwargs.kv_cache_target must be in (0, 1], got {kv_cache_target!r}")
        self.kv_cache_target = float(kv_cache_target)

    def desired(
        self, target: float, metrics: dict[str, dict[Any, float]], queued: float, fallback_load: float
    ) -> float:
        """The replica count wanted (a float; Serve rounds up and bounds it)."""
        if RUNNING not in metrics:
            return fallback_load / target
        load = sum(metrics[RUNNING].values()) + sum(metrics.get(WAITING, {}).values()) + max(queued, 0.0)
        return max(load / target, sum(metrics.get(KV, {}).values()) / self.kv_cache_target)

    def __call__(self, ctx) -> tuple[float, dict[str, Any]]:
        if ctx.current_num_replicas == 0:
            return ctx.target_num_replicas, {}
        return self.desired(
            ctx.config.get_target_ongoing_requests(),
            ctx.aggregated_metrics or {},
            ctx.total_queued_requests or 0.0,
            ctx.total_num_requests,
        ), {}
