"""The Serve tier client: every call to a tier goes through here, once, with the tier's timeout, the
retry policy and its circuit breaker. Streams the tier's chunks over a streaming DeploymentHandle."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Optional

from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle

from serving.config import CascadeConfig
from serving.core.breaker import CircuitBreaker
from serving.core.errors import BadRequest, TierFailure
from serving.core.types import Chunk, Draft, GenerationRequest
from serving.deferral.incremental import StopRule

log = logging.getLogger("ray.serve")


def remote_message(e: BaseException) -> str:
    """The message of an exception raised in another replica, without Ray's remote traceback."""
    cause = getattr(e, "cause", None)
    return str(cause if isinstance(cause, BaseException) else e)


class ServeTierClient:
    def __init__(self, config: CascadeConfig, handles: dict[str, DeploymentHandle], metrics):
        self.cfg, self.metrics = config, metrics
        self.handles = {n: h.options(stream=True) for n, h in handles.items()}
        self.unary = dict(handles)
        rel = config.reliability
        self.breakers = {n: CircuitBreaker(rel.breaker_failures, rel.breaker_cooldown_s) for n in config.tier_names}

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
        breaker = self.breakers[name]
        if not breaker.allow():
            raise TierFailure(
                name,
                "breaker_open",
                f"tier {name!r} is failing; not called for {breaker.retry_in_s():.1f} s more (circuit open)",
            )
        timeout = self.cfg.tier(name).timeout_s
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        for attempt in range(self.cfg.reliability.retries + 1):
            gen = self.handles[name].stream.remote(req, tokens, stop, draft)
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
            except BadRequest as e:
                ended = True
                breaker.success()  # the tier answered: it refused the input
                raise _bad_request(e) from None
            except asyncio.TimeoutError:
                failure = TierFailure(name, "timeout", f"tier {name!r} timed out after {timeout:g} s")
            except BackPressureError:
                ended = True
                breaker.release()  # not a sign of ill health
                raise TierFailure(name, "overloaded", f"tier {name!r} is overloaded (its queue is full)") from None
            except RayActorError as e:
                ended = True
                if attempt < self.cfg.reliability.retries and not got_any:
                    log.warning("tier %s replica died (%s); retrying", name, type(e).__name__)
                    self.metrics.inc("cascade_tier_retries", tier=name)
                    continue
                failure = TierFailure(name, "replica_died", f"tier {name!r} replica died during the call")
            except DeploymentUnavailableError:
                ended = True
                failure = TierFailure(name, "unavailable", f"tier {name!r} has no healthy replica")
            except (asyncio.CancelledError, GeneratorExit):
                breaker.release()  # the caller gave up or stopped reading: says nothing about the tier
                raise
            except Exception as e:
                ended = True
                log.warning("tier %s failed: %r", name, e)
                failure = TierFailure(name, "error", f"tier {name!r} failed: {type(e).__name__}")
            else:
                breaker.success()
                return
            finally:
                if not ended:
                    gen.cancel()  # stop the tier's work: its engine frees the slot at the next step
            breaker.failure()
            raise failure
        raise AssertionError("unreachable")

    async def call(self, name: str, method: str, *args):
        """A unary call of a tier method (e.g. ``prompt_logprobs``) under the tier's timeout and breaker;
        raises TierFailure / BadRequest like :meth:`stream`."""
        breaker = self.breakers[name]
        if not breaker.allow():
            raise TierFailure(name, "breaker_open", f"tier {name!r} is failing (circuit open)")
        timeout = self.cfg.tier(name).timeout_s
        try:
            out = await asyncio.wait_for(getattr(self.unary[name], method).remote(*args), timeout)
        except BadRequest as e:
            breaker.success()
            raise _bad_request(e) from None
        except asyncio.TimeoutError:
            failure = TierFailure(name, "timeout", f"tier {name!r} timed out after {timeout:g} s")
        except BackPressureError:
            breaker.release()
            raise TierFailure(name, "overloaded", f"tier {name!r} is overloaded (its queue is full)") from None
        except RayActorError:
            failure = TierFailure(name, "replica_died", f"tier {name!r} replica died during the call")
        except DeploymentUnavailableError:
            failure = TierFailure(name, "unavailable", f"tier {name!r} has no healthy replica")
        except asyncio.CancelledError:
            breaker.release()
            raise
        except Exception as e:
            log.warning("tier %s failed: %r", name, e)
            failure = TierFailure(name, "error", f"tier {name!r} failed: {type(e).__name__}")
        else:
            breaker.success()
            return out
        breaker.failure()
        raise failure


def _bad_request(e: BadRequest) -> BadRequest:
    """The tier's refusal, without Ray's wrapper (which carries the tier's exception as ``cause``)."""
    cause = getattr(e, "cause", e)
    return BadRequest(cause.problem, cause.field) if isinstance(cause, BadRequest) else BadRequest(remote_message(e))
