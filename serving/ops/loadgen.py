"""The one load generator, for both protocols: our gRPC API (``cascade.v1`` ``Generate`` / ``GenerateStream``)
and any OpenAI-compatible HTTP server (``/v1/chat/completions`` or ``/v1/completions``, streamed or not: ours,
or vLLM's own). Closed loop (``concurrency`` callers back to back, for a duration and/or a request count) or
open loop (arrivals at given offsets, e.g. Poisson); a mix of modes (the share of requests forcing each tier).
Every call's outcome is recorded; every run is bounded and stops by itself; it never asserts timings.
``cascade bench`` (serving/ops/bench.py), ``cascade plan``'s probe, the benchmarks and the tests drive load
with it."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

CASCADE = "cascade"  # the mode that forces no tier: the cascade decides


# ---- schedules ---------------------------------------------------------------------------------------------
def arrivals(qps: float, duration: float, seed: int) -> list[float]:
    """Poisson arrival offsets (s) at ``qps`` over ``duration``."""
    if qps <= 0 or duration <= 0:
        raise ValueError(f"a Poisson schedule needs a positive rate and duration; got {qps} req/s for {duration} s")
    rng, t, out = random.Random(seed), 0.0, []
    while True:
        t += rng.expovariate(qps)
        if t >= duration:
            return out
        out.append(t)


def step_arrivals(steps: list[tuple[float, float]], seed: int) -> list[float]:
    """Arrivals in steps of (qps, seconds)."""
    out, start = [], 0.0
    for k, (qps, secs) in enumerate(steps):
        out += [start + t for t in arrivals(qps, secs, seed + k)]
        start += secs
    return out


def parse_steps(text: str) -> list[tuple[float, float]]:
    """'qps:seconds,qps:seconds,...' -> [(qps, seconds), ...]."""
    try:
        steps = [(float(q), float(s)) for q, s in (part.split(":") for part in text.split(","))]
    except ValueError:
        raise ValueError(f"steps: expected 'qps:seconds,qps:seconds,...' like 2:20,25:40; got {text!r}") from None
    if any(q <= 0 or s <= 0 for q, s in steps):
        raise ValueError(f"steps: every rate and duration must be positive; got {text!r}")
    return steps


def parse_mix(text: str) -> dict[str, float]:
    """'cascade=0.7,strong=0.3' -> shares per mode (normalised to sum 1; a bare mode weighs 1). A mode is
    ``cascade`` (the cascade decides) or a tier's name (the request forces that tier)."""
    mix: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, eq, share = part.partition("=")
        try:
            value = float(share) if eq else 1.0
        except ValueError:
            raise ValueError(f"mix: expected 'mode=share,...' like cascade=0.8,strong=0.2; got {part!r}") from None
        if not name or name in mix or not math.isfinite(value) or value < 0:
            raise ValueError(f"mix: each mode once, with a share >= 0; got {part!r}")
        mix[name] = value
    total = sum(mix.values())
    if not mix or total <= 0:
        raise ValueError(f"mix: at least one mode with a positive share; got {text!r}")
    return {k: v / total for k, v in mix.items()}


def mode_cycle(mix: dict[str, float]) -> Iterator[str]:
    """The mode of each request in turn: a smooth weighted round robin, so that every prefix of the run holds
    each mode's share to within one request (a short run is as mixed as a long one)."""
    credit = dict.fromkeys(mix, 0.0)
    while True:
        for k, share in mix.items():
            credit[k] += share
        pick = max(credit, key=lambda k: credit[k])
        credit[pick] -= 1.0
        yield pick


def mode_sequence(mix: dict[str, float], n: int) -> list[str]:
    return list(itertools.islice(mode_cycle(mix), n))


# ---- targets ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """Where the load goes. ``grpc``: ``address`` is host:port. ``http``: ``address`` is the OpenAI base URL
    (…/v1), ``api`` ``chat`` or ``completions``, ``model`` the model name the server serves (ours: the cascade's
    name; a mode other than ``cascade`` asks for ``<model>:<tier>``)."""

    protocol: str
    address: str
    api: str = "chat"
    stream: bool = False
    model: str = CASCADE
    max_tokens: int = 0  # 0: the server's default
    token: Optional[str] = None
    threshold: Optional[float] = None  # the cascade's per-request deferral threshold (default: the server's)

    @property
    def label(self) -> str:
        if self.protocol == "grpc":
            return f"grpc://{self.address} {'GenerateStream' if self.stream else 'Generate'}"
        return f"{self.address}/{'chat/completions' if self.api == 'chat' else 'completions'}{' (SSE)' * self.stream}"


def parse_target(url: str, **options: Any) -> Target:
    """``grpc://host:port`` or a bare ``host:port`` (gRPC), ``http[s]://host:port[/v1]`` (OpenAI HTTP)."""
    if url.startswith(("http://", "https://")):
        base = url.rstrip("/")
        if not base.endswith("/v1"):
            base += "/v1"
        target = Target("http", base, **options)
        if target.api not in ("chat", "completions"):
            raise ValueError(f"api: 'chat' or 'completions'; got {target.api!r}")
        return target
    address = url.removeprefix("grpc://")
    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        raise ValueError(f"target: expected grpc://host:port, host:port or http://host:port[/v1]; got {url!r}")
    return Target("grpc", address, **options)


# ---- one call -----------------------------------------------------------------------------------------------
def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1e3


def _gaps(stamps: list[float]) -> list[float]:
    """Inter-text latencies of a stream: the gaps between its text messages (ms)."""
    return [b - a for a, b in zip(stamps, stamps[1:])]


def _cascade_fields(tier, deferred, total_ms, tiers) -> dict:
    """Where the time went, from the cascade's own report (gRPC response or the HTTP ``cascade`` object);
    ``tiers``: (name, latency_ms, tier_ms) per tier called."""
    return {
        "tier": tier,
        "deferred": bool(deferred),
        "tier_ms": sum(t[2] for t in tiers),
        "router_ms": total_ms,
        "hop_ms": sum(t[1] - t[2] for t in tiers),
        "tier_latency_ms": {t[0]: t[1] for t in tiers},
        "tier_engine_ms": {t[0]: t[2] for t in tiers},
    }


async def grpc_call(
    stub,
    prompt: str,
    force_tier: str = "",
    timeout: float = 30.0,
    metadata: Sequence = (),
    decoding=None,
    stream: bool = False,
    max_tokens: int = 0,
    threshold: Optional[float] = None,
) -> dict:
    """One Generate (or GenerateStream): its status code, client latency, time to the first text (streamed: and
    the gaps between text messages, ``itl_ms``), trailing
    metadata and, when OK, the answer, who decided, the judgement if a judge was asked, and where the time went.
    ``decoding``: a ``cascade.v1.Decoding``."""
    import grpc
    from google.protobuf.json_format import MessageToDict

    from serving._proto.cascade.v1 import cascade_pb2 as pb

    req = pb.GenerateRequest(
        prompt=prompt, force_tier=force_tier, decoding=decoding, max_new_tokens=max_tokens, threshold=threshold
    )
    t0, ttft, final, parts, stamps = time.perf_counter(), None, None, [], []
    call = (stub.GenerateStream if stream else stub.Generate)(req, metadata=list(metadata), timeout=timeout)
    try:
        if stream:
            async for m in call:
                if m.finished:
                    final = m
                elif m.text:
                    stamps.append(_ms(t0))
                    ttft = ttft if ttft is not None else stamps[0]
                    parts.append(m.text)
        else:
            final = await call
    except grpc.aio.AioRpcError as e:
        return {"code": e.code().name, "ms": _ms(t0), "trailing": dict(e.trailing_metadata() or ())}
    ms = _ms(t0)
    trailing = dict(await call.trailing_metadata() or ())
    if final is None:  # a stream that ended without its final message: not an answer
        return {"code": "NO_FINAL_MESSAGE", "ms": ms, "trailing": trailing}
    tiers = [(t.tier, t.latency_ms, t.tier_ms) for t in final.tiers]
    return {
        "code": "OK",
        "ms": ms,
        "ttft_ms": ttft if stream and ttft is not None else ms,
        "trailing": trailing,
        "text": "".join(parts) if stream else final.text,
        **({"itl_ms": _gaps(stamps)} if stream else {}),
        "decided_by": final.decided_by,
        **(
            {"judgement": MessageToDict(final.judgement, True, preserving_proto_field_name=True)}
            if final.HasField("judgement")
            else {}
        ),
        **_cascade_fields(final.tier, final.deferred, final.total_latency_ms, tiers),
    }


def _body(target: Target, prompt: str, mode: str, extra: Optional[dict]) -> dict:
    body: dict[str, Any] = {"model": target.model if mode == CASCADE else f"{target.model}:{mode}"}
    if target.api == "chat":
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    if target.max_tokens:
        body["max_tokens"] = target.max_tokens
    if target.stream:
        body["stream"] = True
    if target.threshold is not None:
        body["cascade"] = {"threshold": target.threshold}
    return body | (extra or {})


def _from_info(info: Optional[dict]) -> dict:
    """Our server's ``cascade`` object (absent from other servers' answers): where the time went, and the
    object itself (``cascade``) for a benchmark that reads more of it."""
    if not info:
        return {}
    tiers = [(t["tier"], t.get("latency_ms", 0.0), t.get("tier_ms", 0.0)) for t in info.get("tiers") or ()]
    fields = _cascade_fields(info.get("tier"), info.get("deferred"), info.get("total_latency_ms", 0.0), tiers)
    return fields | {"cascade": info}


def _text_of(choice: dict, chat: bool, stream: bool) -> str:
    if not chat:
        return choice.get("text") or ""
    return ((choice.get("delta") if stream else choice.get("message")) or {}).get("content") or ""


async def http_call(http, target: Target, prompt: str, mode: str = CASCADE, extra: Optional[dict] = None) -> dict:
    """One OpenAI completion over ``http`` (an ``aiohttp.ClientSession``): status (``OK``, ``HTTP <status>``,
    ``SSE_ERROR`` for an error event after the first byte, ``CLIENT_<exception>``), latency, time to the first
    text, the answer, and where the time went when the server is ours."""
    import aiohttp

    chat = target.api == "chat"
    url = f"{target.address}/{'chat/completions' if chat else 'completions'}"
    headers = {"authorization": f"Bearer {target.token}"} if target.token else {}
    t0, parts, stamps, info = time.perf_counter(), [], [], None
    try:
        async with http.post(url, json=_body(target, prompt, mode, extra), headers=headers) as r:
            if r.status != 200:
                # the server's own words, kept for the report (a peer's failure is recorded verbatim)
                error = (await r.read()).decode(errors="replace")[:2000]
                out = {"code": f"HTTP {r.status}", "ms": _ms(t0), "error": error}
                if (after := r.headers.get("retry-after", "")).isdigit():  # seconds (not an HTTP date)
                    out["trailing"] = {"retry-after-ms": str(int(after) * 1000)}
                return out
            if not target.stream:
                body = await r.json()
                ms = _ms(t0)
                text = "".join(_text_of(c, chat, False) for c in body.get("choices") or ())
                return {"code": "OK", "ms": ms, "ttft_ms": ms, "text": text, **_from_info(body.get("cascade"))}
            async for line in r.content:
                if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                    continue
                ev = json.loads(line[6:])
                if "error" in ev:
                    return {"code": "SSE_ERROR", "ms": _ms(t0), "error": ev["error"]}
                for c in ev.get("choices") or ():
                    if text := _text_of(c, chat, True):
                        stamps.append(_ms(t0))
                        parts.append(text)
                info = ev.get("cascade", info)
    except (aiohttp.ClientError, asyncio.TimeoutError, json.JSONDecodeError) as e:
        return {"code": f"CLIENT_{type(e).__name__}", "ms": _ms(t0)}
    ms = _ms(t0)
    return {
        "code": "OK",
        "ms": ms,
        "ttft_ms": stamps[0] if stamps else ms,
        "itl_ms": _gaps(stamps),
        "text": "".join(parts),
        **_from_info(info),
    }


# ---- a run ---------------------------------------------------------------------------------------------------
async def run_load(
    target: Target | str,
    texts: Sequence[str],
    *,
    times: Optional[list[float]] = None,
    concurrency: int = 0,
    duration: float = 10.0,
    requests: Optional[int] = None,
    force_tier: str = "",
    mix: Optional[dict[str, float]] = None,
    timeout: float = 30.0,
    metadata: Sequence = (),
    retry_after: bool = False,
    warm: bool = True,
    decoding=None,
    extra: Optional[dict] = None,
    on_record: Optional[Callable[[dict], None]] = None,
) -> tuple[list[dict], float]:
    """Open loop when ``times`` (arrival offsets, s) is given, else closed loop with ``concurrency`` callers
    until ``duration`` s have passed or ``requests`` calls were started (either bound; both: the first).
    ``target``: a :class:`Target` or a gRPC host:port. Request i sends prompt ``i % len(texts)``, in the mode
    ``mix`` gives it (default: all ``force_tier`` or the cascade). ``retry_after``: a closed-loop caller honours
    a ``retry-after-ms`` hint before its next call. ``warm``: one call first, not recorded. ``extra``: more
    HTTP body fields; ``decoding``: a gRPC ``Decoding``. ``on_record``: called with each record (a progress bar).
    Returns (records, elapsed s); each record has ``t`` (s into the run), ``i``, ``mode`` and the call's fields."""
    target = parse_target(target) if isinstance(target, str) else target
    if target.protocol == "http" and decoding is not None:
        raise ValueError("decoding: a gRPC Decoding message; over HTTP send the OpenAI fields in extra")
    if times is None and concurrency < 1:
        raise ValueError(f"concurrency: at least 1 caller for a closed loop; got {concurrency}")
    mix = mix or {(force_tier or CASCADE): 1.0}
    limit = len(times) if times is not None else requests
    modes = mode_cycle(mix)  # request i gets the i-th: requests start in index order
    results: list[dict] = []

    async with _Session(target, timeout) as call:

        async def one(i: int, mode: str, at: float) -> dict:
            r = await call(texts[i % len(texts)], mode, metadata, decoding, extra)
            rec = {"t": at, "i": i, "mode": mode, **r}
            results.append(rec)
            if on_record:
                on_record(rec)
            return rec

        if warm:
            await call(texts[0], next(iter(mix)), metadata, decoding, extra)
        t0 = time.perf_counter()
        if times is not None:

            async def fire(i: int, mode: str, at: float):
                await asyncio.sleep(max(0.0, at - (time.perf_counter() - t0)))
                await one(i, mode, at)

            await asyncio.gather(*(fire(i, mode, at) for (i, at), mode in zip(enumerate(times), modes)))
        else:
            counter = iter(range(limit if limit is not None else 10**12))

            async def caller():
                while (now := time.perf_counter() - t0) < duration and (i := next(counter, None)) is not None:
                    r = await one(i, next(modes), now)
                    if retry_after and "retry-after-ms" in r.get("trailing", {}):
                        await asyncio.sleep(int(r["trailing"]["retry-after-ms"]) / 1e3)

            await asyncio.gather(*(caller() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    return results, elapsed


class _Session:
    """A channel or an HTTP session for one run; calling it makes one request."""

    def __init__(self, target: Target, timeout: float):
        self.target, self.timeout = target, timeout

    async def __aenter__(self):
        t = self.target
        if t.protocol == "grpc":
            import grpc

            from serving._proto.cascade.v1 import cascade_pb2_grpc as pb_grpc

            self._ctx = grpc.aio.insecure_channel(t.address)
            stub = pb_grpc.CascadeStub(await self._ctx.__aenter__())
            auth = [("authorization", f"Bearer {t.token}")] if t.token else []

            async def call(prompt, mode, metadata, decoding, extra):
                tier = "" if mode == CASCADE else mode
                md = auth + list(metadata)
                return await grpc_call(
                    stub, prompt, tier, self.timeout, md, decoding, t.stream, t.max_tokens, t.threshold
                )

        else:
            import aiohttp

            self._ctx = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout), connector=aiohttp.TCPConnector(limit=0)
            )
            http = await self._ctx.__aenter__()

            async def call(prompt, mode, metadata, decoding, extra):
                return await http_call(http, t, prompt, mode, extra)

        return call

    async def __aexit__(self, *exc):
        return await self._ctx.__aexit__(*exc)


# ---- statistics -----------------------------------------------------------------------------------------------
def _pct(xs, q) -> float:
    return float(np.percentile(xs, q)) if len(xs) else float("nan")


def summarize(results: list[dict], elapsed: float) -> dict:
    """Throughput, latency and time-to-first-text quantiles, errors by status, requests by mode, deferral share,
    answers per tier, the router's own overhead and where it goes, and each tier as the router saw it (the
    planner's input). The cascade's fields are read where the server reports them (ours; not vLLM's)."""
    from serving.ops.planner import tier_summary

    ok = [r for r in results if r["code"] == "OK"]
    lat = [r["ms"] for r in ok]
    ttft = [r["ttft_ms"] for r in ok if "ttft_ms" in r]
    ours = [r for r in ok if "tier" in r]
    weak_answered = [r for r in ours if not r["deferred"] and r["tier"] == "weak"]
    overhead = [r["ms"] - r["tier_ms"] for r in weak_answered]
    by_answer = {"weak": [r["ms"] for r in weak_answered], "deferred": [r["ms"] for r in ours if r["deferred"]]}
    return {
        "requests": len(results),
        "ok": len(ok),
        "elapsed_s": elapsed,
        "throughput_rps": len(ok) / elapsed if elapsed else 0.0,
        "latency_ms": {"p50": _pct(lat, 50), "p90": _pct(lat, 90), "p99": _pct(lat, 99)},
        "ttft_ms": {"p50": _pct(ttft, 50), "p90": _pct(ttft, 90), "p99": _pct(ttft, 99)},
        "errors": dict(Counter(r["code"] for r in results if r["code"] != "OK")),
        "by_mode": dict(Counter(r.get("mode", CASCADE) for r in results)),
        # nan where the server does not say (not ours); 0 when nothing was answered
        "deferral_share": (sum(r["deferred"] for r in ours) / len(ours)) if ours else (float("nan") if ok else 0.0),
        "answers_by_tier": dict(Counter(r["tier"] for r in ours)),
        "router_overhead_ms": {
            "n": len(overhead),
            "p50": _pct(overhead, 50),
            "p99": _pct(overhead, 99),
            # where it goes (weak-answered requests, p50): the front (Serve's proxy or the direct ingress), the
            # router's own code, and the router -> tier handle call
            "proxy_p50": _pct([r["ms"] - r["router_ms"] for r in weak_answered], 50),
            "router_code_p50": _pct([r["router_ms"] - r["tier_ms"] - r["hop_ms"] for r in weak_answered], 50),
            "handle_hop_p50": _pct([r["hop_ms"] for r in weak_answered], 50),
        },
        "tier_ms": {"p50": _pct([r["tier_ms"] for r in ours], 50)},
        # weak-only answers vs deferred ones (what a cascade costs when it defers)
        "latency_by_answer_ms": {
            k: {"n": len(v), "p50": _pct(v, 50), "p90": _pct(v, 90)} for k, v in by_answer.items()
        },
        "deferred_over_weak_p50": (
            _pct(by_answer["deferred"], 50) / _pct(by_answer["weak"], 50) if by_answer["weak"] else float("nan")
        ),
        # each tier as the router saw it: requests, mean in flight, latency quantiles (cascade plan --measured)
        "tiers": {
            t: tier_summary(
                [r["tier_latency_ms"][t] for r in ours if t in r["tier_latency_ms"]],
                elapsed,
                [r["tier_engine_ms"][t] for r in ours if t in r["tier_engine_ms"]],
            )
            for t in sorted({t for r in ours for t in r["tier_latency_ms"]})
        },
    }
