"""The Router: gRPC ingress that implements cascade.v1.Cascade and applies the deferral rule."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Optional

import grpc
from ray import serve
from ray.serve.handle import DeploymentHandle

from serving.config import CascadeConfig, parse_config
from serving.deferral import build_scorer, should_defer
from serving.deferral.controller import BudgetController
from serving.models import Generation, GenerationRequest
from serving._proto.cascade.v1 import cascade_pb2 as pb

log = logging.getLogger("ray.serve")  # Serve's replica logger stamps each line with the request id
ROLES = ("system", "user", "assistant")


class BadRequest(ValueError):
    """A request the router refuses with INVALID_ARGUMENT; the message names the field."""


@dataclass
class Plan:
    request: GenerationRequest
    tiers: list[str]  # tiers to try, in order
    forced: bool
    threshold: Optional[float]  # None: the budget controller decides
    include_logprobs: bool = False


@dataclass
class Outcome:
    answer: Optional[Generation]
    answered_by: str
    deferred: bool
    score: float
    results: list[pb.TierResult]


class CascadeCore:
    """The request logic without the proto methods, so both RPCs share it."""

    def __init__(self, config: CascadeConfig, tiers: dict[str, DeploymentHandle]):
        self.cfg = config
        self.handles = tiers
        self.names = config.tier_names
        d = config.deferral
        rule = d.resolved()
        self.rule, self.threshold = rule["rule"], rule["threshold"]
        self.scorer = build_scorer(rule["rule"], rule["alpha"], rule["model"])
        self.controller = (BudgetController(d.target_deferral, self.threshold, d.controller_window, d.controller_warmup)
                           if d.target_deferral is not None else None)

    def plan(self, r: pb.GenerateRequest) -> Plan:
        lim = self.cfg.limits
        if r.prompt and r.messages:
            raise BadRequest("set either `prompt` or `messages`, not both")
        if r.messages:
            for i, m in enumerate(r.messages):
                if m.role not in ROLES:
                    raise BadRequest(f"messages[{i}].role must be one of {list(ROLES)}, got {m.role!r}")
                if not m.content.strip():
                    raise BadRequest(f"messages[{i}].content must not be empty")
            if r.messages[-1].role != "user":
                raise BadRequest("the last of `messages` must have role 'user'")
            size = sum(len(m.content) for m in r.messages)
        else:
            if not r.prompt.strip():
                raise BadRequest("`prompt` must not be empty (or send `messages`)")
            size = len(r.prompt)
        if size > lim.max_prompt_chars:
            raise BadRequest(f"prompt is {size} characters; the limit is {lim.max_prompt_chars}")
        if r.max_new_tokens > lim.max_new_tokens:
            raise BadRequest(f"`max_new_tokens` must be between 1 and {lim.max_new_tokens} (0 = tier default), "
                             f"got {r.max_new_tokens}")
        if r.force_tier and r.force_tier not in self.names:
            raise BadRequest(f"`force_tier` {r.force_tier!r} is not a tier; known tiers: {self.names}")
        threshold = None if self.controller else self.threshold
        if r.HasField("threshold"):
            if math.isnan(r.threshold):
                raise BadRequest("`threshold` must be a number, not NaN")
            threshold = r.threshold
        req = GenerationRequest(
            prompt=r.prompt, messages=[{"role": m.role, "content": m.content} for m in r.messages],
            max_new_tokens=r.max_new_tokens or None, embed=self.scorer.needs_embedding,
        )
        tiers = [r.force_tier] if r.force_tier else self.names
        return Plan(req, tiers, bool(r.force_tier), threshold, r.include_logprobs)

    def _score(self, name: str, gen: Generation) -> Optional[float]:
        """The rule's score for a tier that may defer onward (every tier but the last)."""
        return self.scorer(gen.logprobs, gen.embedding) if name != self.names[-1] else None

    def _defer(self, plan: Plan, score: float) -> bool:
        """Applies the threshold (the request's, the configured one, or the budget controller's)."""
        if plan.threshold is None:
            defer, plan.threshold = self.controller.decide(score)
            return defer
        return should_defer(score, plan.threshold)

    @staticmethod
    def _tier_result(plan: Plan, name: str, gen: Generation, score: Optional[float], ms: float) -> pb.TierResult:
        return pb.TierResult(tier=name, text=gen.text, score=score, latency_ms=ms,
                             prompt_tokens=gen.prompt_tokens, completion_tokens=gen.completion_tokens,
                             token_logprobs=gen.logprobs if plan.include_logprobs else [],
                             finish_reason=gen.finish_reason, tier_ms=gen.tier_ms)

    async def run(self, plan: Plan, stream_last: bool = False) -> Outcome:
        """Walks the cascade. With ``stream_last`` the tier that will answer unconditionally is not
        called; the caller streams it (Outcome.answer is None then)."""
        results: list[pb.TierResult] = []
        first_score = math.nan
        for k, name in enumerate(plan.tiers):
            final = plan.forced or k == len(plan.tiers) - 1
            if final and stream_last:
                return Outcome(None, name, k > 0, first_score, results)
            t0 = time.perf_counter()
            gen: Generation = await self.handles[name].generate.remote(plan.request)
            ms = (time.perf_counter() - t0) * 1e3
            score = self._score(name, gen)
            if k == 0 and score is not None:
                first_score = score
            results.append(self._tier_result(plan, name, gen, score, ms))
            if final or not self._defer(plan, score):
                return Outcome(gen, name, k > 0, first_score, results)
        raise AssertionError("unreachable: the last tier always answers")

    def response(self, plan: Plan, out: Outcome, text: str, t0: float, request_id: str) -> pb.GenerateResponse:
        usage = pb.Usage(prompt_tokens=sum(t.prompt_tokens for t in out.results),
                         completion_tokens=sum(t.completion_tokens for t in out.results))
        return pb.GenerateResponse(
            text=text, tier=out.answered_by, deferred=out.deferred, score=out.score,
            threshold=self.threshold if plan.threshold is None else plan.threshold, rule=self.rule, usage=usage, tiers=out.results,
            total_latency_ms=(time.perf_counter() - t0) * 1e3, request_id=request_id,
        )


def _request_id() -> str:
    return serve.context._get_serve_request_context().request_id


def _reject(ctx, code: grpc.StatusCode, message: str) -> pb.GenerateResponse:
    ctx.set_code(code)
    ctx.set_details(message)
    return pb.GenerateResponse()


@serve.deployment(ray_actor_options={"num_cpus": 0})
class Router:
    def __init__(self, config: dict[str, Any], tiers: dict[str, DeploymentHandle]):
        self.core = CascadeCore(parse_config(config), tiers)

    async def Generate(self, request: pb.GenerateRequest, grpc_context) -> pb.GenerateResponse:
        t0 = time.perf_counter()
        try:
            plan = self.core.plan(request)
        except BadRequest as e:
            log.info("rejected: %s", e)
            return _reject(grpc_context, grpc.StatusCode.INVALID_ARGUMENT, str(e))
        try:
            out = await self.core.run(plan)
        except Exception as e:  # a tier failed; issue-level policies (fallback, retries) build on this
            log.warning("tier call failed: %r", e)
            return _reject(grpc_context, grpc.StatusCode.UNAVAILABLE, f"a tier failed: {type(e).__name__}")
        resp = self.core.response(plan, out, out.answer.text, t0, _request_id())
        log.info("answered by %s deferred=%s score=%.4f", out.answered_by, out.deferred, out.score)
        return resp

    async def GenerateStream(self, request: pb.GenerateRequest, grpc_context) -> AsyncIterator[pb.GenerateResponse]:
        t0 = time.perf_counter()
        try:
            plan = self.core.plan(request)
        except BadRequest as e:
            log.info("rejected: %s", e)
            yield _reject(grpc_context, grpc.StatusCode.INVALID_ARGUMENT, str(e))
            return
        try:
            out = await self.core.run(plan, stream_last=True)
            name = out.answered_by
            if out.answer is not None:  # an earlier tier was confident: its answer is already complete
                yield pb.GenerateResponse(text=out.answer.text, tier=name)
            else:
                t1 = time.perf_counter()
                gen = None
                async for item in self.core.handles[name].options(stream=True).stream.remote(plan.request):
                    if isinstance(item, Generation):
                        gen = item
                    else:
                        yield pb.GenerateResponse(text=item, tier=name)
                ms = (time.perf_counter() - t1) * 1e3
                score = self.core._score(name, gen)
                if not out.results and score is not None:  # the first tier answered: its score is the score
                    out.score = score
                out.results.append(self.core._tier_result(plan, name, gen, score, ms))
        except Exception as e:
            log.warning("tier call failed: %r", e)
            yield _reject(grpc_context, grpc.StatusCode.UNAVAILABLE, f"a tier failed: {type(e).__name__}")
            return
        final = self.core.response(plan, out, "", t0, _request_id())
        final.finished = True
        yield final
