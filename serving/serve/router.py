"""The Router deployment, Serve glue only: it binds gRPC (``cascade.v1.Cascade``) and HTTP (the OpenAI API) and
hands every call to the fronts' handlers (``serving.fronts.grpc_api``, ``serving.fronts.http``) over the
:class:`~serving.fronts.service.CascadeService`, which gates, walks and records."""

from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import grpc
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving import compat
from serving.config import parse_config
from serving.core.walk import Cascade
from serving.fronts import grpc_api, http, openai_api
from serving.fronts.service import CascadeService
from serving.observability.shadow import ShadowSampler
from serving.observability.status import RouterStatus
from serving.serve.metrics import Metrics
from serving.serve.tier import TierServer
from serving.serve.tier_client import ServeTierClient

http_app = FastAPI(title="cascade: OpenAI-compatible API", docs_url=None, redoc_url=None, openapi_url=None)


def _json(reply: http.Reply, headers=None) -> JSONResponse:
    return JSONResponse(reply.json(), status_code=reply.status, headers=headers or reply.headers or None)


@http_app.exception_handler(StarletteHTTPException)
async def _no_route(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """What FastAPI answers itself (an unknown path, a method a route does not take), as OpenAI's error JSON."""
    reply = http.no_route(exc.status_code, request.method, request.url.path, exc.detail)
    return _json(reply, getattr(exc, "headers", None))


def _request_id() -> str:
    return compat.serve_request_id()


@serve.deployment(ray_actor_options={"num_cpus": 0})
@serve.ingress(http_app)
class Router:
    async def __init__(self, config: dict[str, Any], tiers: dict[str, DeploymentHandle]):
        cfg = parse_config(config)
        compat.reuseaddr_on_direct_ingress()
        compat.check_serve_request_context()
        metrics = Metrics()
        # router.colocate_with: that tier's engine in this process (built and warmed before the replica runs)
        name = cfg.router.colocate_with
        self.local = {name: await TierServer.start(cfg.tier(name).model_dump(mode="json"))} if name else {}
        self.client = ServeTierClient(cfg, tiers, metrics, self.local)
        self.cascade = Cascade(cfg, self.client, metrics)
        self.shadow = ShadowSampler(cfg, self.cascade, self.client, metrics, self.cascade.inflight.__getitem__)
        self.service = CascadeService(
            self.cascade,
            name=cfg.server.app_name,
            limits=cfg.limits,
            digests=[bytes.fromhex(d) for d in cfg.server.auth.digests()],
            metrics=metrics,
            shadow=self.shadow,
            request_id=_request_id,
        )

    # ---- gRPC ----------------------------------------------------------------------------------
    async def Generate(self, request, grpc_context):
        return await grpc_api.generate(self.service, request, grpc_context, grpc.StatusCode)

    async def GenerateStream(self, request, grpc_context) -> AsyncIterator:
        async with aclosing(grpc_api.generate_stream(self.service, request, grpc_context, grpc.StatusCode)) as out:
            async for message in out:
                yield message

    # ---- HTTP: the OpenAI API ------------------------------------------------------------------
    @http_app.get("/v1/models")
    async def list_models(self, request: Request) -> Response:
        return _json(http.models(self.service, request.headers))

    @http_app.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Response:
        return await self._http(request, openai_api.ChatRequest, "ChatCompletions")

    @http_app.post("/v1/completions")
    async def completions(self, request: Request) -> Response:
        return await self._http(request, openai_api.CompletionRequest, "Completions")

    async def _http(self, request: Request, kind, method: str) -> Response:
        reply = await http.complete(self.service, kind, method, request.headers, request.stream())
        if isinstance(reply, http.EventStream):
            return StreamingResponse(reply.events, media_type="text/event-stream")
        return _json(reply)

    # ---- operations --------------------------------------------------------------------------
    async def record_autoscaling_stats(self) -> dict[str, float]:
        """Co-located with a tier: its engine's load (the tier's autoscaling policy scales the Router)."""
        return await next(iter(self.local.values())).record_autoscaling_stats() if self.local else {}

    def check_health(self) -> None:
        for t in self.local.values():  # a co-located engine that stopped makes this replica unhealthy
            t.check_health()

    async def stats(self) -> RouterStatus:
        """This router replica's view, for `cascade status`: its counters, breakers, and one replica of
        each tier's engine stats."""
        svc = self.service
        return RouterStatus(
            replica=serve.get_replica_context().replica_id.unique_id,
            inflight=svc.inflight,
            recent_requests=svc.recent.n,
            deferral_share=svc.recent.share,
            degraded_share=svc.recent_degraded.share,
            requests_by_code=dict(svc.counts),
            breakers={n: b.state for n, b in self.client.breakers.items()},
            engines=await self.client.engine_stats(),
            costs=self.cascade.costs.as_dict(),
            tier_inflight=dict(self.cascade.inflight),
            shadow=self.shadow.stats(),
        )
