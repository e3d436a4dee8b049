"""The engine-load autoscaling policy: its arithmetic, Serve resolving and calling it from a config,
and the shipped config using it with the tuned windows."""

import pytest
from ray.serve._private.autoscaling_state import _resolve_policy_callable
from ray.serve._private.common import DeploymentID
from ray.serve.config import AutoscalingConfig, AutoscalingContext

from serving.config import TOY_CONFIG, ConfigError, load_config, parse_config
from serving.serve.autoscaling import ENGINE_AUTOSCALING, KV, POLICY, RUNNING, WAITING, EngineLoad, engine_metrics


def metrics(running, waiting=(), kv=()):
    return {RUNNING: dict(enumerate(running)), WAITING: dict(enumerate(waiting)), KV: dict(enumerate(kv))}


def test_load_is_engine_running_plus_waiting_plus_requests_queued_at_handles():
    p = EngineLoad()
    assert p.desired(8, metrics([10, 6], [4, 0], [0.1, 0.1]), queued=4, fallback_load=0) == pytest.approx(24 / 8)


def test_kv_cache_use_scales_out_when_the_request_count_would_not():
    p = EngineLoad(kv_cache_target=0.5)
    assert p.desired(8, metrics([1, 1], [0, 0], [0.9, 0.6]), queued=0, fallback_load=0) == pytest.approx(1.5 / 0.5)


def test_before_any_engine_report_serves_own_count_stands_in():
    assert EngineLoad().desired(4, {}, queued=0, fallback_load=10) == pytest.approx(2.5)


@pytest.mark.parametrize("bad", [0, 1.5, -1, "x"])
def test_kv_target_out_of_range_is_refused(bad):
    with pytest.raises(ValueError, match="kv_cache_target"):
        EngineLoad(kv_cache_target=bad)


def test_engine_metrics_are_floats_serve_accepts():
    m = engine_metrics(3, 1, 0.25)
    assert m == {RUNNING: 3.0, WAITING: 1.0, KV: 0.25} and all(isinstance(v, float) for v in m.values())


def _ctx(config, current, target, aggregated, queued=0.0, total=0.0):
    return AutoscalingContext(
        deployment_id=DeploymentID(name="tier-weak", app_name="cascade"),
        deployment_name="tier-weak",
        app_name="cascade",
        current_num_replicas=current,
        target_num_replicas=target,
        running_replicas=[],
        total_num_requests=total,
        total_queued_requests=queued,
        aggregated_metrics=aggregated,
        raw_metrics={},
        capacity_adjusted_min_replicas=config.min_replicas,
        capacity_adjusted_max_replicas=config.max_replicas,
        policy_state={},
        last_scale_up_time=None,
        last_scale_down_time=None,
        current_time=None,
        config=config,
    )


def test_serve_resolves_the_policy_from_the_config_and_calls_it():
    cfg = load_config(TOY_CONFIG)
    auto = cfg.tier("weak").serve.autoscaling_config
    policy = _resolve_policy_callable(auto.policy)  # what Serve's controller does (cloudpickled by value)
    desired, state = policy(_ctx(auto, 1, 1, metrics([20], [12], [0.3]), queued=8))
    assert desired == pytest.approx(40 / auto.target_ongoing_requests) and state == {}
    assert policy(_ctx(auto, 0, 0, {}))[0] == 0  # no replicas: Serve's own cold-start path decides


def test_shipped_configs_scale_tiers_on_the_engine_with_the_tuned_windows():
    for tier in load_config(TOY_CONFIG).tiers:
        auto = tier.serve.autoscaling_config.model_dump(mode="json")
        for k, v in ENGINE_AUTOSCALING.items():
            assert auto[k] == v, (tier.name, k)
    assert ENGINE_AUTOSCALING["policy"]["policy_function"] == POLICY
    AutoscalingConfig(**ENGINE_AUTOSCALING)  # valid for Serve as it stands


def test_bad_policy_kwargs_name_the_field():
    raw = load_config(TOY_CONFIG).model_dump(mode="json", exclude_none=True)
    raw["tiers"][0]["serve"]["autoscaling_config"]["policy"]["policy_kwargs"] = {"kv_target": 0.5}
    with pytest.raises(ConfigError, match=r"tiers\[0\]\.serve.*policy_kwargs.*kv_cache_target"):
        parse_config(raw)
    raw["tiers"][0]["serve"]["autoscaling_config"]["policy"]["policy_kwargs"] = {"kv_cache_target": 0}
    with pytest.raises(ConfigError, match=r"tiers\[0\]\.serve.*kv_cache_target must be in \(0, 1\]"):
        parse_config(raw)
