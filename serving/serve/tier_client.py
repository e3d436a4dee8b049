"""The Serve tier client: every call to a tier goes through here, once, with the tier's timeout, the
retry policy, its circuit breaker and its readiness (no running replica: refused at once). Streams the
tier's chunks over a streaming DeploymentHandle."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, Optional

from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle

from serving import compat
from serving.config import CascadeConfig
from serving.core.breaker import CircuitBreaker
from serving.core.errors import BadRequest, TierFailure
from serving.core.types import Chunk, Draft, GenerationRequest
from serving.deferral.incremental import StopRule

log = logging.getLogger("ray.serve")


READY_GRACE_S = 2.0  # a new router replica's handles hear from Serve's controller within this long


def running_replicas(handle: DeploymentHandle) -> int:
    """The replicas of the handle's deployment that Serve's controller last said are running: no call, no
    wait (the handle's router is told of every change by long poll). ``running_replicas_populated()`` is the
    handle's public part, what Serve's proxy asks before it takes traffic; it stays true once a replica has
    run, so the current set is read from the handle's request router (Ray 2.60:
    ``AsyncioRouter._deployment_available`` and ``.request_router.curr_replicas``). If those internals move, a
    populated handle counts as one replica (calls then wait for one, as Serve does)."""
    if not handle.running_replicas_populated():
        return 0
    return compat.running_replica_count(handle)


def remote_message(e: BaseException) -> str:
    """The message of an exception raised in another replica, without Ray's remote traceback."""
    cause = getattr(e, "cause", None)
    return str(cause if isinstance(cause, BaseException) else e)


class ServeTierClient:
    def __init__(self, config: CascadeConfig, handles: dict[str, DeploymentHandle], metrics, local=None):
        """``local``: tiers served in this process (``router.colocate_with``: a TierServer by name), called
        directly under the same timeout and breaker."""
        self.cfg, self.metrics = config, metrics
        self.handles = {n: h.options(stream=True) for n, h in handles.items()}
        self.unary = dict(handles)
        self.local = dict(local or {})
        rel = config.reliability
        callees = config.tier_names + list(config.judge_tiers())  # tiers, and judges with deployments of their own
        self.breakers = {n: CircuitBreaker(rel.breaker_failures, rel.breaker_cooldown_s) for n in callees}
        self.started = time.monotonic()
        self.waking: dict[str, asyncio.Future] = {}

    async def engine_stats(self) -> dict[str, Any]:
        """One replica's engine stats of every tier (for `cascade status`; a co-located tier's own)."""
        engines = {name: await t.stats() for name, t in self.local.items()}
        for name, h in self.unary.items():
            try:
                engines[name] = await asyncio.wait_for(h.stats.remote(), 5)
            except Exception as e:
                engines[name] = {"error": f"{type(e).__name__}: {e}"[:300]}
        return engines

    def running(self, name: str) -> int:
        return 1 if name in self.local else running_replicas(self.unary[name])

    async def _ready(self, name: str) -> None:
        """Refuses at once (TierFailure ``not_ready``, with a retry hint) a call to a tier that has no running
        replica — still starting, or scaled to zero — instead of letting it wait out the tier's timeout in
        Serve's queue. A tier that autoscales is woken: one call is left queued for it, which is what makes
        Serve scale a deployment up from zero."""
        while not self.running(name):
            if (left := self.started + READY_GRACE_S - time.monotonic()) <= 0:
                self._wake(name)
                raise TierFailure(
                    name,
                    "not_ready",
                    f"tier {name!r} has no running replica (starting, or scaled to zero)",
                )
            await asyncio.sleep(min(left, 0.05))  # a new router replica: its handles have not heard yet

    def _wake(self, name: str) -> None:
        if name in self.local or self.cfg.callee(name).serve.autoscaling_config is None:
            return
        pending = self.waking.get(name)
        if pending is None or pending.done():
            self.waking[name] = asyncio.ensure_future(self._wake_call(name))

    async def _wake_call(self, name: str) -> None:
        try:
            await asyncio.wait_for(self.unary[name].info.remote(), max(self.cfg.callee(name).timeout_s, 60.0))
        except Exception as e:  # it only asks for a replica; the next client call sees what came of it
            log.info("tier %s: wake-up call ended: %s", name, type(e).__name__)

    async def _admit(self, name: str) -> CircuitBreaker:
        """The callee has a running replica and its circuit lets the call through; returns its breaker."""
        await self._ready(name)
        breaker = self.breakers[name]
        if not breaker.allow():
            raise TierFailure(
                name,
                "breaker_open",
                f"tier {name!r} is failing; not called for {breaker.retry_in_s():.1f} s more (circuit open)",
            )
        return breaker

    def _failed(self, name: str, breaker: CircuitBreaker, e: BaseException, timeout: float) -> BaseException:
        """The one mapping, for unary and streamed calls alike, of what a call raised to what its caller gets
        (TierFailure / BadRequest, or the cancellation as it is), telling the breaker what it says about the
        callee."""
        if isinstance(e, BadRequest):
            breaker.success()  # the tier answered: it refused the input
            return _bad_request(e)
        if isinstance(e, BackPressureError):
            breaker.release()  # not a sign of ill health
            return TierFailure(name, "overloaded", f"tier {name!r} is overloaded (its queue is full)")
        if isinstance(e, (asyncio.CancelledError, GeneratorExit)):
            breaker.release()  # the caller gave up or stopped reading: says nothing about the tier
            return e
        if not isinstance(e, Exception):
            return e
        if isinstance(e, asyncio.TimeoutError):
            failure = TierFailure(name, "timeout", f"tier {name!r} timed out after {timeout:g} s")
        elif isinstance(e, RayActorError):
            failure = TierFailure(name, "replica_died", f"tier {name!r} replica died during the call")
        elif isinstance(e, DeploymentUnavailableError):
            failure = TierFailure(name, "unavailable", f"tier {name!r} has no healthy replica")
        elif isinstance(e, _NoReplica):
            failure = TierFailure(name, "unavailable", f"tier {name!r} lost its running replicas during the call")
        else:
            log.warning("tier %s failed: %r", name, e)
            failure = TierFailure(name, "error", f"tier {name!r} failed: {type(e).__name__}")
        breaker.failure()
        return failure

    async def stream(
        self,
        name: str,
        req: GenerationRequest,
        tokens: bool = True,
        stop: Optional[StopRule] = None,
        draft: Optional[Draft] = None,
    ) -> AsyncIterator[Chunk]:
        """The tier's chunks. The tier's ``timeout_s`` bounds the whole call; a call whose replica died
        before it sent anything is retried (generation is idempotent). Raises TierFailure / BadRequest."""
        breaker = await self._admit(name)
        timeout = self.cfg.tier(name).timeout_s
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        local = self.local.get(name)
        for attempt in range(self.cfg.reliability.retries + 1):
            gen = (
                local.stream(req, tokens, stop, draft)
                if local
                else self.handles[name].stream.remote(req, tokens, stop, draft)
            )
            got_any, ended = False, False
            try:
                while True:
                    try:
                        chunk = await asyncio.wait_for(gen.__anext__(), max(deadline - loop.time(), 0.0))
                    except StopAsyncIteration:
                        break
                    got_any = True
                    yield chunk
                ended = True
            except BaseException as e:
                # the tier's stream ended, unless it timed out or the caller left (then it is stopped below)
                ended = isinstance(e, Exception) and not isinstance(e, asyncio.TimeoutError)
                if isinstance(e, RayActorError) and attempt < self.cfg.reliability.retries and not got_any:
                    log.warning("tier %s replica died (%s); retrying", name, type(e).__name__)
                    self.metrics.inc("cascade_tier_retries", tier=name)
                    continue
                raise self._failed(name, breaker, e, timeout) from None
            else:
                breaker.success()
                return
            finally:
                if not ended:  # stop the tier's work: its engine frees the slot at the next step
                    await gen.aclose() if local else gen.cancel()
        raise AssertionError("unreachable")

    async def call(self, name: str, method: str, *args, timeout: Optional[float] = None):
        """A unary call of a tier's (or a judge deployment's) method (``prompt_logprobs``, ``judge``) under the
        callee's timeout (or ``timeout``) and breaker; raises TierFailure / BadRequest like :meth:`stream`."""
        breaker = await self._admit(name)
        timeout = timeout or self.cfg.callee(name).timeout_s
        try:
            target = self.local.get(name)
            if target is not None:
                out = await asyncio.wait_for(getattr(target, method)(*args), timeout)
            else:
                out = await self._while_running(name, getattr(self.unary[name], method).remote(*args), timeout)
        except BaseException as e:
            raise self._failed(name, breaker, e, timeout) from None
        breaker.success()
        return out

    async def _while_running(self, name: str, response, timeout: float):
        """A unary response awaited for at most ``timeout`` s, given up early
        (``_NoReplica``) once the callee has had no running replica for ``READY_GRACE_S``: a call queued in the handle for a
        replica that died (Serve waits for its replacement, a model load away) fails fast, and the caller falls
        back (a judge: the rule's verdict) instead of waiting out the timeout."""
        task = asyncio.ensure_future(_result(response))
        loop = asyncio.get_running_loop()
        deadline, gone_since = loop.time() + timeout, None
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=min(0.25, max(deadline - loop.time(), 0.0)))
                if done:
                    return task.result()
                now = loop.time()
                if now >= deadline:
                    raise asyncio.TimeoutError
                if self.running(name):
                    gone_since = None
                elif gone_since is None:
                    gone_since = now
                elif now - gone_since >= READY_GRACE_S:
                    raise _NoReplica
        finally:
            if not task.done():
                task.cancel()
                response.cancel()


class _NoReplica(Exception):
    """The callee has had no running replica for a while during a call."""


async def _result(response):
    return await response


def _bad_request(e: BadRequest) -> BadRequest:
    """The tier's refusal, without Ray's wrapper (which carries the tier's exception as ``cause``)."""
    cause = getattr(e, "cause", e)
    return BadRequest(cause.problem, cause.field) if isinstance(cause, BadRequest) else BadRequest(remote_message(e))
