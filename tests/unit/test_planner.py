"""The capacity planner: its queueing model against closed forms, the replica choice, the p99 bound,
reading measurements, and the config it writes."""

import math

import numpy as np
import pytest

from serving.config import TOY_CONFIG, load_config, parse_config, portable
from serving.ops.planner import (
    ASSUMPTIONS,
    PlanError,
    Point,
    TierCurve,
    busy_in_flight,
    curves_from_report,
    format_plan,
    plan,
    planned_config,
    predict,
    tier_summary,
)
from serving.serve.autoscaling import ENGINE_AUTOSCALING


def flat(ms: float) -> list[float]:
    return [ms] * 100


def exponential(mean_ms: float) -> list[float]:
    q = (np.arange(100) + 0.5) / 100
    return list(-mean_ms * np.log(1 - q))


def mmc_curve(name: str, c: int, service_ms: float, quantiles=flat) -> TierCurve:
    """c parallel servers of mean service time service_ms: latency service_ms with 1..c in flight."""
    return TierCurve(name, [Point(j, quantiles(service_ms)) for j in range(1, c + 1)])


def erlang_c_mean_n(lam: float, mu: float, c: int) -> float:
    a = lam / mu
    rho = a / c
    s = sum(a**k / math.factorial(k) for k in range(c))
    pc = a**c / math.factorial(c) / (1 - rho)
    wait_prob = pc / (s + pc)
    return a + wait_prob * rho / (1 - rho)


@pytest.mark.parametrize("lam", [10.0, 50.0, 90.0])
def test_one_server_is_mm1(lam):
    p = predict(mmc_curve("t", 1, 10.0), lam, 1)  # mu = 100/s
    rho = lam / 100
    assert p.utilisation == pytest.approx(rho)
    assert p.in_flight_per_replica == pytest.approx(rho / (1 - rho), rel=1e-6)
    assert p.mean_ms == pytest.approx(1e3 / (100 - lam), rel=1e-6)


@pytest.mark.parametrize("c,lam", [(4, 100.0), (4, 350.0), (8, 500.0)])
def test_c_servers_is_mmc(c, lam):
    p = predict(mmc_curve("t", c, 10.0), lam, 1)
    assert p.utilisation == pytest.approx(lam / (100 * c))
    assert p.in_flight_per_replica == pytest.approx(erlang_c_mean_n(lam, 100.0, c), rel=1e-6)


def test_light_load_p99_is_the_measured_p99_and_grows_with_load():
    curve = mmc_curve("t", 8, 20.0, exponential)
    light = predict(curve, 0.5, 1)
    assert light.p99_ms == pytest.approx(-20.0 * math.log(0.01), rel=0.05)  # the exponential's own p99
    heavy = predict(curve, 380.0, 1)
    assert heavy.p99_ms > 1.5 * light.p99_ms
    assert predict(curve, 500.0, 1).p99_ms == math.inf  # over capacity: no steady state


def test_batching_rate_that_grows_with_the_batch():
    # 10 ms alone, 20 ms with 4 in the batch: 100/s alone, 200/s at 4 (and beyond)
    curve = TierCurve("t", [Point(1, flat(10.0)), Point(4, flat(20.0))])
    assert curve.rate(1) == pytest.approx(100) and curve.rate(4) == pytest.approx(200)
    assert curve.rate(2) == pytest.approx(100 + (200 - 100) / 3) and curve.rate(40) == pytest.approx(200)
    assert curve.x_max == pytest.approx(200)


def test_plan_routes_the_deferred_share_and_picks_the_fewest_replicas_under_the_utilisation_target():
    weak, strong = mmc_curve("weak", 1, 10.0), mmc_curve("strong", 1, 50.0)  # 100/s and 20/s per replica
    p = plan([weak, strong], 150.0, [0.2], utilisation=0.7)
    assert [t.arrival_rps for t in p.tiers] == pytest.approx([150.0, 30.0])
    assert [t.replicas for t in p.tiers] == [3, 3]  # 150/(0.7*100) -> 3; 30/(0.7*20) -> 3
    assert all(t.utilisation <= 0.7 for t in p.tiers)
    assert p.meets_p99 and p.p99_path_ms == pytest.approx(sum(t.p99_ms for t in p.tiers))
    assert p.targets() == {t.tier: round(t.engine_in_flight_per_replica, 3) for t in p.tiers}
    text = format_plan(p)
    assert "weak" in text and "strong" in text and ASSUMPTIONS[0] in text


def test_a_p99_bound_adds_replicas_where_they_help_most_or_says_it_cannot_be_met():
    weak, strong = mmc_curve("weak", 1, 10.0, exponential), mmc_curve("strong", 1, 50.0, exponential)
    loose = plan([weak, strong], 60.0, [0.2], utilisation=0.9)
    tight = plan([weak, strong], 60.0, [0.2], utilisation=0.9, p99_ms=loose.p99_path_ms * 0.7)
    assert tight.meets_p99 and tight.p99_path_ms <= loose.p99_path_ms * 0.7
    assert sum(t.replicas for t in tight.tiers) > sum(t.replicas for t in loose.tiers)
    impossible = plan([weak, strong], 60.0, [0.2], p99_ms=50.0)  # strong's service p99 alone is ~230 ms
    assert not impossible.meets_p99 and "not met" in impossible.notes[0]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(qps=0, deferral=[0.2]), "qps must be positive"),
        (dict(qps=10, deferral=[]), "need 1 deferral"),
        (dict(qps=10, deferral=[1.2]), "within"),
        (dict(qps=10, deferral=[0.2], utilisation=1.0), "utilisation"),
        (dict(qps=1e6, deferral=[0.2]), "needs .* replicas"),
    ],
)
def test_requests_it_cannot_plan_say_why(kwargs, match):
    with pytest.raises(PlanError, match=match):
        plan([mmc_curve("weak", 1, 10.0), mmc_curve("strong", 1, 50.0)], **kwargs)


def test_busy_occupancy_of_closed_and_open_loops():
    assert busy_in_flight(0.4, 1) == pytest.approx(1.0)  # one caller: alone whenever inside
    assert busy_in_flight(0.5, 2) == pytest.approx(0.5 / (1 - 0.75**2))
    assert busy_in_flight(0.5, None) == pytest.approx(0.5 / (1 - math.exp(-0.5)))  # Poisson
    assert busy_in_flight(12.0, 16) == pytest.approx(12.0, rel=1e-6) and busy_in_flight(0.0, 4) == 0.0


def test_tier_summary_in_flight_is_littles_law():
    s = tier_summary([100.0] * 50, elapsed_s=10.0, engine_ms=[40.0] * 50)  # 50 requests x 0.1 s over 10 s
    assert s["in_flight"] == pytest.approx(0.5) and s["rate_rps"] == pytest.approx(5.0)
    assert s["engine_in_flight"] == pytest.approx(0.2)  # 40 of each 100 ms inside the replica's engine
    assert len(s["quantiles_ms"]) == 100 and s["p99_ms"] == pytest.approx(100.0)
    assert tier_summary([], 10.0)["n"] == 0


def report(runs):
    return {"runs": runs}


def run(weak_n, strong_n, weak_ms=10.0, strong_ms=40.0, elapsed=10.0, replicas=None, forced="", concurrency=None):
    tiers = {"weak": tier_summary([weak_ms] * weak_n, elapsed, [weak_ms / 2] * weak_n)}
    if strong_n:
        tiers["strong"] = tier_summary([strong_ms] * strong_n, elapsed)
    return {"tiers": tiers, "replicas": replicas or [], "forced_tier": forced, "concurrency": concurrency}


def test_curves_and_the_deferral_share_from_a_report():
    r = report(
        {
            "c1": run(100, 40, concurrency=1),
            "c4": run(300, 120, weak_ms=13.0, replicas=[{"tier-weak": 2, "tier-strong": 1}], concurrency=4),
            "strong_only": run(0, 200, forced="strong"),
        }
    )
    (weak, strong), shares = curves_from_report(r, ["weak", "strong"])
    assert shares == pytest.approx([160 / 400])  # forced runs do not count
    # busy occupancy per replica: one caller is alone whenever it is in; 2 callers per replica at 0.195 mean
    assert [p.in_flight for p in weak.points] == pytest.approx([1.0, busy_in_flight(300 * 0.013 / 10 / 2, 2)])
    assert len(strong.points) == 3
    assert [p.engine_share for p in weak.points] == pytest.approx([0.5, 0.5]) and strong.points[0].engine_share == 1.0


def test_targets_are_in_the_engines_unit():
    # half of each request's time at the tier is inside the engine: the target is half the in-flight count
    curve = TierCurve("t", [Point(j, flat(10.0), engine_share=0.5) for j in range(1, 9)])
    p = plan([curve], 300.0, [], utilisation=0.7)
    t = p.tiers[0]
    assert t.engine_in_flight_per_replica == pytest.approx(t.in_flight_per_replica / 2)
    assert p.targets() == {"t": round(t.in_flight_per_replica / 2, 3)}


def test_a_report_without_per_tier_latencies_is_refused():
    with pytest.raises(PlanError, match="no `runs`"):
        curves_from_report({}, ["weak", "strong"])
    with pytest.raises(PlanError, match=r"tier\(s\) \['strong'\]"):
        curves_from_report(report({"c1": run(100, 0)}), ["weak", "strong"])


def test_the_planned_config_starts_at_the_plan_and_scales_on_the_engine_with_the_planned_targets():
    cfg = load_config(TOY_CONFIG)
    p = plan([mmc_curve("weak", 4, 10.0), mmc_curve("strong", 2, 50.0)], 300.0, [0.2])
    out = parse_config(planned_config(portable(cfg), p, ENGINE_AUTOSCALING))
    for t in p.tiers:
        auto = out.tier(t.tier).serve.autoscaling_config
        assert (auto.min_replicas, auto.initial_replicas, auto.max_replicas) == (1, t.replicas, t.replicas)
        assert auto.target_ongoing_requests == p.targets()[t.tier]
        assert auto.policy.policy_function == ENGINE_AUTOSCALING["policy"]["policy_function"]
        assert auto.look_back_period_s == ENGINE_AUTOSCALING["look_back_period_s"]


def test_a_tier_without_autoscaling_gets_the_engine_policy_and_a_target_over_its_limit_is_refused():
    raw = portable(load_config(TOY_CONFIG))
    raw["tiers"][1]["serve"] = {"num_replicas": 2, "max_ongoing_requests": 16}
    p = plan([mmc_curve("weak", 4, 10.0), mmc_curve("strong", 2, 50.0)], 100.0, [0.2])
    out = planned_config(raw, p, ENGINE_AUTOSCALING)
    assert "num_replicas" not in out["tiers"][1]["serve"]
    assert out["tiers"][1]["serve"]["autoscaling_config"]["policy"] == ENGINE_AUTOSCALING["policy"]
    raw["tiers"][0]["serve"]["max_ongoing_requests"] = 1
    big = plan([mmc_curve("weak", 8, 10.0), mmc_curve("strong", 2, 50.0)], 500.0, [0.2], utilisation=0.9)
    with pytest.raises(PlanError, match="max_ongoing_requests"):
        planned_config(raw, big, ENGINE_AUTOSCALING)
