"""Capacity planning for a cascade: replicas per tier and autoscaling targets for a load.

Model (stated in ``ASSUMPTIONS``, printed by ``cascade plan``): each tier is a queue of its own.
Tier 0 sees the offered load Q; tier k+1 sees d_k times what tier k sees (d_k: the share deferred at
boundary k). A tier's n replicas each receive an equal Poisson share of its arrivals. One replica is
a load-dependent server (M/M/c with a service rate that depends on how many requests it holds: a
continuous-batching engine finishes more requests per second with more of them in its batch):
with j requests inside it completes X(j) = j / R(j) per second, where R(j) is the tier's mean
latency measured with j requests in flight (Little's law), flat beyond the largest measured j.
That birth-death chain gives the replica's occupancy distribution; a request that arrives to find
j others (Poisson arrivals see time averages) takes the latency distribution measured nearest to
j + 1 in flight, scaled to R(j + 1). Its 99th percentile is the tier's p99.

Measurements come from ``probe`` runs (``cascade plan`` starts a one-replica cascade and runs closed
loops at a few concurrencies) or a ``benchmarks/load.py`` report: both carry per-tier latency
quantiles and the mean number of requests in flight at each tier (``tier_summary``).
No Ray, no gRPC here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import numpy as np

N_QUANTILES = 100
ASSUMPTIONS = (
    "arrivals are Poisson; the weak tier sees Q, each later tier the deferred share of the one before (d x Q)",
    "a tier's replicas share its arrivals evenly and independently (Serve's power-of-two routing, idealised)",
    "a replica completes X(j) = j / R(j) requests/s with j in flight, R(j) the mean tier latency measured at "
    "j in flight (closed loops on one replica); beyond the largest measured j the rate stays flat (queueing)",
    "a run's requests in flight at a tier is taken while it is busy: the mean over time / P(busy), with "
    "P(idle) = (1 - mean/c)^c for c closed-loop callers (exp(-mean) for open-loop arrivals)",
    "a request that finds j others has the latency distribution measured nearest j + 1 in flight, scaled to R(j + 1)",
    "each replica has the resources it had when measured (on a shared machine, more replicas add less)",
    "the end-to-end p99 bound holds when the per-tier p99s summed along the longest path stay within it",
    "the autoscaling target of a tier is the requests in flight per replica at the plan's load as its engine "
    "counts them (the measured share of the tier's time spent inside the replica), so that the engine-load "
    "policy asks for the planned replicas at Q and fewer below it",
)


class PlanError(ValueError):
    """Measurements or a request the planner cannot work with; the message says what."""


def tier_summary(
    latencies_ms: Sequence[float], elapsed_s: float, engine_ms: Optional[Sequence[float]] = None
) -> dict[str, Any]:
    """One tier in one load run: requests, mean requests in flight (Little: total latency / time; with
    ``engine_ms``, the time inside the tier replica, also ``engine_in_flight``: what its engine counts
    as running + waiting), arrival rate, mean/p50/p99 and the latency quantile function."""
    xs = np.asarray(latencies_ms, dtype=float)
    if not len(xs) or elapsed_s <= 0:
        return {"n": int(len(xs)), "in_flight": 0.0, "rate_rps": 0.0}
    qs = np.percentile(xs, (np.arange(N_QUANTILES) + 0.5) * 100 / N_QUANTILES)
    engine = {} if engine_ms is None else {"engine_in_flight": float(np.sum(engine_ms) / 1e3 / elapsed_s)}
    return {
        "n": int(len(xs)),
        "in_flight": float(xs.sum() / 1e3 / elapsed_s),
        **engine,
        "rate_rps": len(xs) / elapsed_s,
        "mean_ms": float(xs.mean()),
        "p50_ms": float(np.percentile(xs, 50)),
        "p99_ms": float(np.percentile(xs, 99)),
        "quantiles_ms": [round(float(q), 3) for q in qs],
    }


def busy_in_flight(mean_in_flight: float, callers: Optional[float] = None) -> float:
    """The mean requests in a tier while it holds any: the time average over P(busy). Each of ``callers``
    closed-loop callers is inside the tier a share mean/callers of the time, independently (binomial);
    open-loop (``callers`` None) is its limit, P(idle) = exp(-mean)."""
    if mean_in_flight <= 0:
        return 0.0
    if callers is None:
        idle = math.exp(-mean_in_flight)
    else:
        idle = max(1.0 - mean_in_flight / callers, 0.0) ** callers
    return mean_in_flight / (1.0 - idle)


@dataclass
class Point:
    in_flight: float  # mean requests in the tier (per replica) during the run
    quantiles_ms: list[float]  # its latency quantile function
    engine_share: float = 1.0  # of the requests in flight at the tier, the share inside its engine

    @property
    def mean_ms(self) -> float:
        return float(np.mean(self.quantiles_ms))


class TierCurve:
    """A replica's latency and completion rate as functions of the requests it holds."""

    def __init__(self, name: str, points: Sequence[Point]):
        pts = sorted((p for p in points if p.in_flight > 0 and p.quantiles_ms), key=lambda p: p.in_flight)
        if not pts:
            raise PlanError(f"no latency measurements for tier {name!r}")
        self.name, self.points = name, pts
        self._n = np.array([p.in_flight for p in pts])
        self._r = np.array([p.mean_ms / 1e3 for p in pts])
        # completion rate at each measured point; kept non-decreasing (more in flight never finishes fewer)
        self._x = np.maximum.accumulate(self._n / self._r)
        self.x_max = float(self._x[-1])

    def rate(self, j: int) -> float:
        """X(j): requests/s completed with j in flight (j >= 1)."""
        if j <= self._n[0]:
            return j / self._r[0]  # below the lightest load measured: latency as there
        if j >= self._n[-1]:
            return self.x_max
        return float(np.interp(j, self._n, self._x))

    def latency_s(self, j: int) -> float:
        return j / self.rate(j)

    def nearest(self, j: int) -> Point:
        return self.points[int(np.argmin(np.abs(self._n - j)))]


@dataclass
class TierPrediction:
    tier: str
    arrival_rps: float
    replicas: int
    utilisation: float  # arrivals / (replicas x the replica's largest measured completion rate)
    in_flight_per_replica: float
    engine_in_flight_per_replica: float  # the same as the engine counts it (running + waiting): the target's unit
    mean_ms: float
    p99_ms: float
    capacity_rps: float  # the replica's largest measured completion rate


def predict(curve: TierCurve, arrival_rps: float, replicas: int, max_states: int = 20000) -> TierPrediction:
    """The tier's occupancy, utilisation and latency with ``replicas`` replicas at ``arrival_rps``."""
    a = arrival_rps / replicas
    rho = a / curve.x_max
    base = dict(tier=curve.name, arrival_rps=arrival_rps, replicas=replicas, utilisation=rho, capacity_rps=curve.x_max)
    if a <= 0:
        return TierPrediction(
            **base,
            in_flight_per_replica=0.0,
            engine_in_flight_per_replica=0.0,
            mean_ms=curve.points[0].mean_ms,
            p99_ms=float(np.percentile(curve.points[0].quantiles_ms, 99)),
        )
    if rho >= 1:
        return TierPrediction(
            **base,
            in_flight_per_replica=math.inf,
            engine_in_flight_per_replica=math.inf,
            mean_ms=math.inf,
            p99_ms=math.inf,
        )
    logp = [0.0]  # log of the unnormalised stationary probability of j in the replica
    while len(logp) < max_states:
        logp.append(logp[-1] + math.log(a / curve.rate(len(logp))))
        if logp[-1] < max(logp) - 30:
            break
    p = np.exp(np.array(logp) - max(logp))
    p /= p.sum()
    mean_n = float(np.dot(np.arange(len(p)), p))
    # the latency of an arrival that finds j others: the distribution measured nearest j + 1, scaled
    values, weights = [], []
    for j, pj in enumerate(p):
        if pj < 1e-9:
            continue
        pt = curve.nearest(j + 1)
        values.append(np.asarray(pt.quantiles_ms) * (curve.latency_s(j + 1) * 1e3 / pt.mean_ms))
        weights.append(np.full(len(pt.quantiles_ms), pj / len(pt.quantiles_ms)))
    # equal latencies (to a nanosecond) are one point carrying their summed mass: otherwise where the interpolation
    # lands among tied points depends on how the sort orders ties (numpy 2.3's sort put a 1e-4 share of them first
    # and moved a light load's p99 from 95 ms to the top quantile, 106 ms)
    v, where = np.unique(np.round(np.concatenate(values), 6), return_inverse=True)
    w = np.bincount(where, weights=np.concatenate(weights))
    w /= w.sum()
    p99 = float(np.interp(0.99, np.cumsum(w) - w / 2, v))  # each latency point at the middle of its mass
    engine = mean_n * curve.nearest(max(mean_n, 1.0)).engine_share
    return TierPrediction(
        **base, in_flight_per_replica=mean_n, engine_in_flight_per_replica=engine, mean_ms=mean_n / a * 1e3, p99_ms=p99
    )


@dataclass
class CapacityPlan:
    qps: float
    deferral: list[float]
    tiers: list[TierPrediction]
    p99_bound_ms: Optional[float]
    utilisation_target: float
    p99_path_ms: float  # per-tier p99s summed along the longest path
    meets_p99: bool
    notes: list[str] = field(default_factory=list)
    assumptions: tuple = ASSUMPTIONS

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"assumptions": list(self.assumptions)}

    def targets(self) -> dict[str, float]:
        """Each tier's target_ongoing_requests: its replicas' mean requests in flight at Q, as their engines
        count them (serving.serve.autoscaling.EngineLoad scales on that count)."""
        return {t.tier: round(max(t.engine_in_flight_per_replica, 0.01), 3) for t in self.tiers}


def arrivals(qps: float, deferral: Sequence[float], n_tiers: int) -> list[float]:
    if len(deferral) != n_tiers - 1:
        raise PlanError(f"{n_tiers} tiers need {n_tiers - 1} deferral share(s) (one per boundary); got {len(deferral)}")
    bad = [d for d in deferral if not 0 <= d <= 1]
    if bad:
        raise PlanError(f"deferral shares must be within [0, 1]; got {bad}")
    out = [qps]
    for d in deferral:
        out.append(out[-1] * d)
    return out


def plan(
    curves: Sequence[TierCurve],
    qps: float,
    deferral: Sequence[float],
    *,
    utilisation: float = 0.7,
    p99_ms: Optional[float] = None,
    max_replicas: int = 64,
) -> CapacityPlan:
    """The fewest replicas per tier with utilisation <= ``utilisation`` and, if ``p99_ms`` is given,
    the per-tier p99s summed along the longest path within it (replicas are added one at a time where
    they cut that sum most). A bound that service times alone exceed is reported, not met."""
    if qps <= 0:
        raise PlanError(f"qps must be positive; got {qps}")
    if not 0 < utilisation < 1:
        raise PlanError(f"utilisation target must be in (0, 1); got {utilisation}")
    lam = arrivals(qps, deferral, len(curves))
    notes = []
    replicas = []
    for c, rate in zip(curves, lam):
        n = max(1, math.ceil(rate / (utilisation * c.x_max)))
        if n > max_replicas:
            raise PlanError(
                f"tier {c.name!r} needs {n} replicas at {rate:.1f} req/s (one does {c.x_max:.1f} at most); "
                f"more than {max_replicas}"
            )
        replicas.append(n)
    preds = [predict(c, rate, n) for c, rate, n in zip(curves, lam, replicas)]
    path = lambda ps: sum(p.p99_ms for p, rate in zip(ps, lam) if rate > 0)
    if p99_ms is not None:
        while path(preds) > p99_ms:
            options = []
            for k, (c, rate) in enumerate(zip(curves, lam)):
                if rate > 0 and replicas[k] < max_replicas:
                    trial = predict(c, rate, replicas[k] + 1)
                    options.append((preds[k].p99_ms - trial.p99_ms, k, trial))
            gain, k, trial = max(options, default=(0.0, -1, None), key=lambda o: o[0])
            if gain <= 1e-6 * max(p99_ms, 1.0):
                notes.append(
                    f"p99 bound {p99_ms:.0f} ms not met: more replicas do not bring the summed per-tier "
                    f"p99 ({path(preds):.0f} ms) down further; the service time itself is too long"
                )
                break
            replicas[k], preds[k] = replicas[k] + 1, trial
    total = path(preds)
    for c, p in zip(curves, preds):
        if p.in_flight_per_replica > c.points[-1].in_flight:
            notes.append(
                f"tier {p.tier!r}: {p.in_flight_per_replica:.1f} in flight per replica is beyond the measured "
                "range; its rate is extrapolated flat"
            )
    return CapacityPlan(
        qps=qps,
        deferral=list(deferral),
        tiers=preds,
        p99_bound_ms=p99_ms,
        utilisation_target=utilisation,
        p99_path_ms=total,
        meets_p99=p99_ms is None or total <= p99_ms,
        notes=notes,
    )


def curves_from_report(report: dict[str, Any], tier_names: Sequence[str]) -> tuple[list[TierCurve], list[float]]:
    """Tier curves (and the measured deferral shares per boundary) from a probe or load.py report:
    every run's per-tier summary (``runs.<mode>.tiers.<tier>``) is one point, per replica (the run's
    ``replicas`` count of ``tier-<name>``, 1 if it was not polled), at its busy occupancy (``busy_in_flight``;
    ``concurrency`` of the run or the report: closed loop, else open loop)."""
    runs = report.get("runs")
    if not isinstance(runs, dict) or not runs:
        raise PlanError("not a probe or benchmarks/load.py report: no `runs`")
    points: dict[str, list[Point]] = {t: [] for t in tier_names}
    reached = {t: 0 for t in tier_names}
    for run in runs.values():
        callers = run.get("concurrency", report.get("concurrency"))  # None: open loop
        for t, s in (run.get("tiers") or {}).items():
            if t not in points or not s.get("quantiles_ms"):
                continue
            n = max((r.get(f"tier-{t}", 0) for r in run.get("replicas") or []), default=0) or 1
            points[t].append(
                Point(
                    busy_in_flight(s["in_flight"] / n, callers / n if callers else None),
                    s["quantiles_ms"],
                    s.get("engine_in_flight", s["in_flight"]) / s["in_flight"],
                )
            )
            if not run.get("forced_tier"):
                reached[t] += s["n"]
    missing = [t for t, p in points.items() if not p]
    if missing:
        raise PlanError(
            f"the report has no per-tier latencies for tier(s) {missing} (runs.<mode>.tiers; re-run "
            "benchmarks/load.py from this version, or let `cascade plan` probe)"
        )
    shares = [reached[b] / reached[a] if reached[a] else 0.0 for a, b in zip(tier_names, tier_names[1:])]
    return [TierCurve(t, points[t]) for t in tier_names], shares


def deferral_shares(cfg, given: Optional[Sequence[float]], measured: Sequence[float]) -> tuple[list[float], str]:
    """The share deferred at each boundary that the plan uses, and where it comes from: the caller's
    (``--deferral``), else the config's budget targets (``deferral.target_deferral`` at every boundary),
    else what the probe measured."""
    if given:
        return list(given), "--deferral"
    targets = [cfg.boundary(k).target_deferral for k in range(len(cfg.tiers) - 1)]
    if all(targets):
        return targets, "the config's deferral.target_deferral"
    return list(measured), "measured"


def format_plan(p: CapacityPlan) -> str:
    lines = [
        f"plan for {p.qps:g} req/s (deferral {', '.join(f'{d:.3f}' for d in p.deferral) or '-'}; "
        f"utilisation target {p.utilisation_target:.2f}"
        + (f"; p99 bound {p.p99_bound_ms:.0f} ms" if p.p99_bound_ms else "")
        + ")",
        f"{'tier':<10} {'req/s':>8} {'replicas':>8} {'util':>6} {'cap/rep':>8} {'in flight/rep':>13} "
        f"{'mean ms':>8} {'p99 ms':>8} {'target':>7}",
    ]
    targets = p.targets()
    for t in p.tiers:
        lines.append(
            f"{t.tier:<10} {t.arrival_rps:>8.2f} {t.replicas:>8d} {t.utilisation:>6.2f} {t.capacity_rps:>8.1f} "
            f"{t.in_flight_per_replica:>13.2f} {t.mean_ms:>8.1f} {t.p99_ms:>8.1f} {targets[t.tier]:>7.3g}"
        )
    lines.append(
        f"p99 summed along the longest path: {p.p99_path_ms:.1f} ms"
        + ("" if p.p99_bound_ms is None else (" (meets the bound)" if p.meets_p99 else " (OVER the bound)"))
    )
    lines += [f"note: {n}" for n in p.notes]
    lines.append("assumptions:")
    lines += [f"  - {a}" for a in p.assumptions]
    return "\n".join(lines)


def planned_config(raw: dict[str, Any], p: CapacityPlan, engine_autoscaling: dict[str, Any]) -> dict[str, Any]:
    """``raw`` (a config mapping) with each tier's replicas and autoscaling from the plan: it starts at
    the planned replicas, scales between 1 and them on its engine's load, with the planned target.
    A tier's own autoscaling windows and policy are kept; a tier without autoscaling gets
    ``engine_autoscaling`` (serving.serve.autoscaling.ENGINE_AUTOSCALING)."""
    targets = p.targets()
    by_name = {t.tier: t for t in p.tiers}
    for tier in raw["tiers"]:
        t = by_name[tier["name"]]
        serve = tier.setdefault("serve", {})
        serve.pop("num_replicas", None)
        auto = dict(serve.get("autoscaling_config") or engine_autoscaling)
        auto.update(
            min_replicas=1,
            initial_replicas=t.replicas,
            max_replicas=t.replicas,
            target_ongoing_requests=targets[t.tier],
        )
        serve["autoscaling_config"] = auto
        limit = serve.get("max_ongoing_requests", 16)
        if targets[t.tier] >= limit:
            raise PlanError(
                f"tier {t.tier!r}: the planned target of {targets[t.tier]} requests in flight per replica "
                f"is not below its serve.max_ongoing_requests ({limit}); raise that limit"
            )
    return raw
