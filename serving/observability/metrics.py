"""The cascade's Prometheus metrics, as data (no Ray here).

The router records them through ``ray.serve.metrics`` (``serving/serve/metrics.py``); Ray
exports them on each node's metrics port with a ``ray_`` prefix and adds the ``application``,
``deployment`` and ``replica`` tags, e.g. ``ray_cascade_requests_total{code="OK",tier="weak",...}``.
The Grafana dashboard in ``cluster/grafana/`` reads these names; a test keeps the two in step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

LATENCY_MS_BUCKETS = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000]
# Minus the confidence score (Ray's histograms take positive boundaries only): for the Chow rules
# the score is a log-prob (<= 0), so this is >= 0; the post-hoc rules' log-odds may fall below 0.
UNCERTAINTY_BUCKETS = [0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1, 2, 4, 8, 16]


@dataclass(frozen=True)
class Metric:
    name: str
    kind: Literal["counter", "gauge", "histogram"]
    description: str
    tags: tuple[str, ...] = ()
    buckets: Optional[list[float]] = None

    @property
    def exported(self) -> str:
        """The name Prometheus sees (counters get ``_total``; histograms ``_bucket``/``_sum``/``_count``)."""
        return f"ray_{self.name}" + ("_total" if self.kind == "counter" else "")


METRIC_SPECS = {
    m.name: m
    for m in [
        Metric(
            "cascade_requests",
            "counter",
            "Requests finished, by RPC method, gRPC status code and the tier that answered (empty when none did).",
            ("method", "code", "tier"),
        ),
        Metric(
            "cascade_request_latency_ms",
            "histogram",
            "Router wall time per request, by RPC method and status code.",
            ("method", "code"),
            LATENCY_MS_BUCKETS,
        ),
        Metric(
            "cascade_deferrals",
            "counter",
            "Requests a tier's rule sent on to the next tier, by the deferring tier.",
            ("tier",),
        ),
        Metric(
            "cascade_strong_calls_avoided",
            "counter",
            "Cascade requests answered before the last tier: a call the strong tier did not have to make.",
            (),
        ),
        Metric(
            "cascade_uncertainty",
            "histogram",
            "Minus the first tier's confidence score under the deferral rule "
            "(a request defers when this exceeds minus the threshold).",
            ("rule",),
            UNCERTAINTY_BUCKETS,
        ),
        Metric(
            "cascade_deferral_share",
            "gauge",
            "Share of recent cascade requests (the router replica's window) that were deferred.",
            (),
        ),
        Metric(
            "cascade_early_decisions",
            "counter",
            "Deferral decisions reached before the tier's answer was complete "
            "(an exact early DEFER of a monotone rule, or a decision window), by tier and verdict.",
            ("tier", "verdict"),
        ),
        Metric(
            "cascade_draft_tokens",
            "counter",
            "Speculative deferral: tokens of an earlier tier's draft a tier "
            "verified (kind=offered) and kept because they agreed with its own greedy choices (kind=accepted).",
            ("tier", "kind"),
        ),
        Metric(
            "cascade_token_level",
            "counter",
            "Token-level cascades (deferral.token_rule): the strong tier's verification passes (kind=passes) "
            "and the weak draft tokens it replaced with its own (kind=replaced), by tier.",
            ("tier", "kind"),
        ),
        Metric(
            "cascade_tier_latency_ms",
            "histogram",
            "Tier call wall time as seen by the router, by tier.",
            ("tier",),
            LATENCY_MS_BUCKETS,
        ),
        Metric(
            "cascade_tier_tokens",
            "counter",
            "Tokens processed by each tier, by kind (prompt, completion).",
            ("tier", "kind"),
        ),
        Metric(
            "cascade_tier_errors",
            "counter",
            "Failed tier calls, by tier and reason (timeout, replica_died, "
            "overloaded, unavailable, breaker_open, error).",
            ("tier", "reason"),
        ),
        Metric("cascade_tier_retries", "counter", "Tier calls retried after their replica died, by tier.", ("tier",)),
        Metric(
            "cascade_fallbacks",
            "counter",
            "Degraded answers: a later tier failed and an earlier tier's answer was "
            "returned, by the failed tier and reason.",
            ("tier", "reason"),
        ),
        Metric(
            "cascade_rejections",
            "counter",
            "Requests refused before any tier ran, by reason (invalid_argument, unauthenticated, overloaded).",
            ("reason",),
        ),
        Metric(
            "cascade_cancelled",
            "counter",
            "Requests abandoned by the client (deadline or cancel) while in the router; their tier work was cancelled.",
            ("method",),
        ),
        Metric(
            "cascade_shadow_samples",
            "counter",
            "Shadow sampling: accepted answers chosen by shadow.rate (state=sampled) "
            "and what became of them: completed, dropped_busy (the next tier was busy), dropped_full (max_concurrent "
            "shadow calls running), failed; by the accepting tier and its rule.",
            ("tier", "rule", "state"),
        ),
        Metric(
            "cascade_shadow_agreed",
            "counter",
            "Shadow sampling: sum of the metric comparing the accepted answer with "
            "the next tier's over completed samples (the agreeing count for 0/1 metrics), by tier and rule.",
            ("tier", "rule"),
        ),
        Metric(
            "cascade_shadow_agreement",
            "gauge",
            "Shadow sampling: share of accepted answers that agree with the next "
            "tier's, since the router replica started: bound=estimate, and low/high of its 95% Wilson interval.",
            ("tier", "rule", "bound"),
        ),
        Metric("cascade_inflight", "gauge", "Requests in the router replica right now.", ()),
        Metric(
            "cascade_tier_inflight",
            "gauge",
            "Calls the router replica has in flight at each tier (queued in Serve "
            "included): the load that load-aware deferral reads.",
            ("tier",),
        ),
        Metric(
            "cascade_cost",
            "counter",
            "Cost of answered requests by tier, in the unit of tiers[].cost, the calls whose "
            "answer was discarded (deferred) included: the sum of the receipts.",
            ("tier",),
        ),
        Metric(
            "cascade_cost_strong_only",
            "counter",
            "What the answered requests would have cost answered by the last tier "
            "alone (receipts' strong_only; estimated where it did not run). Saved = this minus cascade_cost.",
            (),
        ),
        Metric(
            "cascade_judge_calls",
            "counter",
            "Answers a boundary's judge was asked about (their token-level score lay in its window), by the tier "
            "before the boundary.",
            ("boundary",),
        ),
        Metric(
            "cascade_judge_comparisons",
            "counter",
            "Judge prompts scored (one prefill each: N per Meta Ranking request, 1 pointwise), by boundary.",
            ("boundary",),
        ),
        Metric(
            "cascade_judge_latency_ms",
            "histogram",
            "Wall time of a judge call as the router saw it, by boundary.",
            ("boundary",),
            LATENCY_MS_BUCKETS,
        ),
        Metric(
            "cascade_judge_fallbacks",
            "counter",
            "Judge calls that gave no verdict (timeout, unavailable, overloaded, refused...): the token-level "
            "verdict stood, by boundary and reason.",
            ("boundary", "reason"),
        ),
        Metric(
            "cascade_judged_share",
            "gauge",
            "Share of the recent requests at a judged boundary that the judge was asked about, by boundary.",
            ("boundary",),
        ),
        Metric(
            "cascade_load_shed",
            "counter",
            "Answers kept at a tier only because load-aware deferral had lowered its "
            "threshold (the next tier was saturated), by tier.",
            ("tier",),
        ),
        Metric(
            "cascade_effective_threshold",
            "gauge",
            "Load-aware deferral: the threshold last applied at the boundary "
            "after each tier (the configured one when the next tier is not saturated).",
            ("tier",),
        ),
        Metric(
            "cascade_engine_running",
            "gauge",
            "Requests in the engine's running batch, per tier replica.",
            ("tier", "engine"),
        ),
        Metric(
            "cascade_engine_waiting",
            "gauge",
            "Requests waiting for a slot in the engine, per tier replica.",
            ("tier", "engine"),
        ),
        Metric(
            "cascade_engine_kv_cache_usage",
            "gauge",
            "Share of the engine's KV-cache blocks in use (continuous engine), per tier replica.",
            ("tier", "engine"),
        ),
        Metric(
            "cascade_engine_tokens_per_s",
            "gauge",
            "Tokens the engine generated per second (last 5 s), per tier replica.",
            ("tier", "engine"),
        ),
    ]
}
