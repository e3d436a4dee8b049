"""Shadow sampling: what the cascade gives up on the answers it accepts, measured on live traffic.

For a sampled share (``shadow.rate``) of answers a tier's rule accepted, the router asks the next tier
as well, after the client has its answer: the call is a task of its own on the router's event loop,
started once the request handler has returned (unary) or yielded its last message (streams), so no
client request waits for it. It runs only while the next tier is idle enough (fewer than
``busy_inflight`` client calls from this router replica in flight to it) and at most
``max_concurrent`` at a time; otherwise the sample is dropped and counted. The two answers are
compared with the boundary's metric; per boundary the router keeps the agreement rate and its 95%
Wilson interval (metrics and ``cascade status``). Each completed sample is one JSONL line (the
prompt, the accepted answer with its per-token log-probs, the next tier's answer as the reference)
that ``cascade calibrate --shadow`` takes as labelled data.

The counts are cumulative per router replica since it started. No Ray here: the router passes its
tier client (the one with timeout, retry and breaker) and a view of its in-flight calls.
"""

from __future__ import annotations

import asyncio
import contextvars
import fcntl
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Protocol

from serving.core.errors import TierFailure
from serving.core.request import CascadeRequest, Outcome
from serving.core.types import final_chunk
from serving.core.walk import Cascade, TierClient
from serving.evaluation.quality import get_metric
from serving.evaluation.shadow_data import FORMAT

if TYPE_CHECKING:
    from serving.config import CascadeConfig

log = logging.getLogger("ray.serve")
Z95 = 1.959963984540054


def wilson(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion (``successes`` may be fractional: a graded metric)."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, center - half), min(1.0, center + half)


class Gauges(Protocol):
    def inc(self, name: str, value: float = 1.0, **tags: str) -> None: ...
    def set(self, name: str, value: float, **tags: str) -> None: ...


@dataclass
class Tally:
    """One boundary's samples: chosen by the rate (sampled) = completed + failed + dropped_busy + dropped_full
    (+ running)."""

    tier: str
    next_tier: str
    rule: str
    metric: str
    sampled: int = 0
    completed: int = 0
    agreed: float = 0.0  # sum of the metric over completed samples (a count for 0/1 metrics)
    dropped_busy: int = 0
    dropped_full: int = 0
    failed: int = 0

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        d["agreement"] = self.agreed / self.completed if self.completed else None
        d["interval"] = list(wilson(self.agreed, self.completed)) if self.completed else None
        return d


class ShadowLog:
    """Appends JSON lines to ``path``; when a line would take the file past ``max_bytes`` the file is
    renamed to ``<path>.1`` (replacing the previous one) and a new one started.

    Safe against writers killed at any point, and against several writers (router replicas) sharing the
    file: each append holds an exclusive ``flock`` on ``<path>.lock`` while it (1) reopens ``path`` if another
    writer rotated it, (2) cuts off a torn last line a killed writer left (the bytes after the last newline),
    (3) rotates with one ``os.replace`` (atomic: a line is in ``.1`` or in ``path``, never in both;
    a writer killed just after it leaves no ``path`` until the next append creates it) and
    (4) writes the whole line with one ``write()`` on an ``O_APPEND`` descriptor. So a line is in exactly one
    file, whole, or nowhere, except that a writer killed in the middle of its ``write()`` can leave a torn
    *last* line until the next append cuts it off; readers skip that one
    (``serving.evaluation.shadow_data.read_samples``). No fsync: a line whose ``write()`` returned is in the
    page cache and survives the process being killed, but not the machine losing power (shadow samples are
    statistics; a lost tail costs a few samples)."""

    def __init__(self, path: str | Path, max_bytes: int):
        self.path, self.max_bytes = Path(path), max_bytes
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd: Optional[int] = None
        self.lock_fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)

    def _open(self) -> int:
        if self.fd is not None:
            try:
                if os.stat(self.path).st_ino == os.fstat(self.fd).st_ino:
                    return self.fd
            except FileNotFoundError:
                pass
            os.close(self.fd)
        self.fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        return self.fd

    def append(self, record: dict) -> None:
        line = (json.dumps(record) + "\n").encode()
        fcntl.flock(self.lock_fd, fcntl.LOCK_EX)
        try:
            fd = self._open()
            size = _cut_torn_tail(fd, self.path)
            if size and size + len(line) > self.max_bytes:
                os.replace(self.path, self.path.with_name(self.path.name + ".1"))
                fd = self._open()  # creates the new file
            written = os.write(fd, line)  # one write of the whole line (regular files: all of it, bar a kill)
            if written < len(line):  # a short write (disk full): no half line left behind for the next writer
                os.ftruncate(fd, os.fstat(fd).st_size - written)
                raise OSError(f"short write to {self.path}: {written} of {len(line)} bytes")
        finally:
            fcntl.flock(self.lock_fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None


def _cut_torn_tail(fd: int, path: Path) -> int:
    """Truncates the file after its last newline (a writer killed mid-line left the bytes after it); returns
    the size after that. Called with the log's lock held."""
    size = os.fstat(fd).st_size
    if not size or os.pread(fd, 1, size - 1) == b"\n":
        return size
    end, step = size, 1 << 16
    while end > 0:
        start = max(0, end - step)
        k = os.pread(fd, end - start, start).rfind(b"\n")
        if k >= 0:
            keep = start + k + 1
            break
        end = start
    else:
        keep = 0
    os.ftruncate(fd, keep)
    log.warning("shadow log %s: cut a torn last line (%d bytes) a killed writer left", path, size - keep)
    return keep


class ShadowSampler:
    """The router's shadow sampling: :meth:`offer` after each answer; :meth:`stats` for ``cascade status``."""

    def __init__(
        self,
        cfg: CascadeConfig,
        cascade: Cascade,
        client: TierClient,
        metrics: Gauges,
        inflight: Callable[[str], int],
        rng: Optional[random.Random] = None,
    ):
        self.opts, self.cascade, self.client, self.metrics = cfg.shadow, cascade, client, metrics
        self.inflight = inflight  # the cascade walk's calls in flight to a tier (client requests; not shadow calls)
        self.rng = rng or random.Random()
        names = cascade.names
        self.tallies = []
        for k, b in enumerate(cascade.boundaries):
            art = cfg.boundary(k).artifact or {}
            metric = self.opts.metric or art.get("metric") or "exact_match"
            self.tallies.append(Tally(names[k], names[k + 1], b.rule, metric))
        self.running: dict[str, int] = {n: 0 for n in names}
        self.tasks: set[asyncio.Task] = set()
        self.log = ShadowLog(self.opts.path, self.opts.max_bytes) if self.opts.path and self.opts.rate > 0 else None

    @property
    def enabled(self) -> bool:
        return self.opts.rate > 0

    def offer(self, req: CascadeRequest, out: Outcome) -> Optional[asyncio.Task]:
        """Maybe shadow this answer: only one a rule accepted (not forced, not degraded, not the last
        tier's). Returns the started task, or None. Call it with the answer complete; the task's first
        step runs at the event loop's next turn, after the caller has handed the answer on."""
        if not self.enabled or req.forced or out.degraded or out.answered_by == self.cascade.names[-1]:
            return None
        k = self.cascade.names.index(out.answered_by)
        if self.rng.random() >= self.opts.rate:
            return None
        t = self.tallies[k]
        t.sampled += 1
        self._count(t, "sampled")
        if sum(self.running.values()) >= self.opts.max_concurrent:
            t.dropped_full += 1
            self._count(t, "dropped_full")
            return None
        if self.inflight(t.next_tier) >= self.opts.busy_inflight:
            t.dropped_busy += 1
            self._count(t, "dropped_busy")
            return None
        self.running[t.next_tier] += 1
        # A fresh context: the shadow call is no part of the client's request (its id, its cancellation).
        task = asyncio.get_running_loop().create_task(self._shadow(k, req, out), context=contextvars.Context())
        self.tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:  # a bug: in the log now, not at garbage collection
            log.error("shadow sample failed", exc_info=task.exception())

    async def _shadow(self, k: int, req: CascadeRequest, out: Outcome) -> None:
        t = self.tallies[k]
        ask = replace(req.request, embed=False)
        try:
            try:
                gen = (await final_chunk(self.client.stream(t.next_tier, ask, False))).final
            except EOFError:
                raise TierFailure(
                    t.next_tier, "error", f"tier {t.next_tier!r} ended its stream without an answer"
                ) from None
        except Exception as e:
            t.failed += 1
            self._count(t, "failed")
            log.warning("shadow call to %s failed: %s: %s", t.next_tier, type(e).__name__, e)
            return
        finally:
            self.running[t.next_tier] -= 1
        agreement = get_metric(t.metric)(out.answer.text, gen.text)
        t.completed += 1
        t.agreed += agreement
        self._count(t, "completed")
        tags = {"tier": t.tier, "rule": t.rule}
        if agreement > 0:  # Ray's counters take positive increments only
            self.metrics.inc("cascade_shadow_agreed", agreement, **tags)
        low, high = wilson(t.agreed, t.completed)
        self.metrics.set("cascade_shadow_agreement", t.agreed / t.completed, bound="estimate", **tags)
        self.metrics.set("cascade_shadow_agreement", low, bound="low", **tags)
        self.metrics.set("cascade_shadow_agreement", high, bound="high", **tags)
        if self.log is not None:
            run = next(r for r in out.runs if r.tier == t.tier)
            self.log.append(
                {
                    "format": FORMAT,
                    "time": time.time(),
                    "tier": t.tier,
                    "next_tier": t.next_tier,
                    "rule": t.rule,
                    "threshold": self.cascade.boundaries[k].current(req.threshold),
                    "score": run.score,
                    "prompt": ask.prompt,
                    "messages": ask.messages,
                    "max_new_tokens": ask.max_new_tokens,
                    "answer": out.answer.text,
                    "logprobs": out.answer.logprobs,
                    "embedding": out.answer.embedding,
                    "reference": gen.text,
                    "metric": t.metric,
                    "agreement": agreement,
                }
            )

    def _count(self, t: Tally, state: str) -> None:
        self.metrics.inc("cascade_shadow_samples", tier=t.tier, rule=t.rule, state=state)

    def stats(self) -> dict[str, Any]:
        """Per boundary (by the accepting tier): counts, agreement and its 95% interval; {} when off."""
        if not self.enabled:
            return {}
        return {t.tier: t.summary() | {"running": self.running[t.next_tier]} for t in self.tallies}
