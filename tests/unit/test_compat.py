"""serving/compat.py: every private Ray, transformers and CPython attribute it reaches exists in the installed
versions (an upgrade that moves one fails here, loudly, before a replica does), each reach works on real
objects, and no other module of the package reaches into those internals."""

import ast
import inspect
import socket
import threading
from pathlib import Path

import pytest

from serving import compat

ROOT = Path(__file__).resolve().parents[2]


def test_the_checked_versions_are_the_installed_ones():
    """A different version is not wrong, but every test below was written against these: re-read the
    internals it uses, then update CHECKED."""
    for dist in ("ray", "transformers"):
        assert compat.installed(dist) == compat.CHECKED[dist], (
            f"{dist} {compat.installed(dist)} installed, serving/compat.py checked on {compat.CHECKED[dist]}"
        )


# ---- Ray Serve ----------------------------------------------------------------------------------------------
def test_serve_http_util_binds_through_its_module_global_socket():
    from ray.serve._private import http_util

    assert isinstance(getattr(http_util, "socket", None), type(socket)) or getattr(
        http_util.socket, "cascade_reuseaddr", False
    ), "ray.serve._private.http_util.socket is gone"
    # the patch swaps that global: Serve must create the listening socket through it
    assert "socket.socket(" in inspect.getsource(http_util), "http_util no longer calls socket.socket(...)"


def test_reuseaddr_patch_sets_the_option_on_serve_s_sockets():
    from ray.serve._private import http_util

    original = http_util.socket
    try:
        assert compat.reuseaddr_on_direct_ingress()
        assert compat.reuseaddr_on_direct_ingress()  # twice: patched once
        with http_util.socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            assert s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1
        assert http_util.socket.AF_INET == socket.AF_INET  # the rest of the module as it was
    finally:
        http_util.socket = original


def test_serve_request_context_getter_exists_and_has_a_request_id():
    from ray.serve import context

    assert callable(getattr(context, "_get_serve_request_context", None)), "_get_serve_request_context is gone"
    compat.check_serve_request_context()
    assert isinstance(compat.serve_request_id(), str)  # outside a request: Serve's default context


def test_handle_router_internals_exist():
    """handle._router (SingletonThreadRouter or CurrentLoopRouter) ._asyncio_router (AsyncioRouter)
    ._deployment_available, .request_router.curr_replicas."""
    from ray.serve._private import router
    from ray.serve._private.request_router.request_router import RequestRouter
    from ray.serve.handle import DeploymentHandle

    assert "self._router" in inspect.getsource(DeploymentHandle), "DeploymentHandle._router is gone"
    for cls in (router.SingletonThreadRouter, router.CurrentLoopRouter):
        assert "self._asyncio_router = AsyncioRouter(" in inspect.getsource(cls.__init__), cls
    assert "self._deployment_available" in inspect.getsource(router.AsyncioRouter), "_deployment_available is gone"
    assert isinstance(inspect.getattr_static(router.AsyncioRouter, "request_router"), property)
    assert isinstance(inspect.getattr_static(RequestRouter, "curr_replicas"), property)


def test_running_replica_count_reads_the_request_router_and_falls_back_to_one():
    class Replicas:
        curr_replicas = {"a": 1, "b": 2}

    class Asyncio:
        request_router = Replicas()
        _deployment_available = True

    class Handle:
        class _router:
            _asyncio_router = Asyncio()

    assert compat.running_replica_count(Handle()) == 2
    Asyncio._deployment_available = False
    assert compat.running_replica_count(Handle()) == 0
    assert compat.running_replica_count(object()) == 1  # internals moved: one, calls wait as Serve's do


# ---- Ray core -----------------------------------------------------------------------------------------------
def test_ray_private_reaches_exist():
    from ray._private import state, utils, worker

    assert callable(getattr(utils, "read_ray_address", None)), "ray._private.utils.read_ray_address is gone"
    assert callable(getattr(state, "actors", None)), "ray._private.state.actors is gone"
    assert hasattr(worker, "global_worker"), "ray._private.worker.global_worker is gone"
    from ray._private.node import Node

    assert callable(getattr(Node, "get_session_dir_path", None)), "Node.get_session_dir_path is gone"
    addr = compat.recorded_ray_address()
    assert addr is None or isinstance(addr, str)


# ---- transformers -------------------------------------------------------------------------------------------
def test_transformers_continuous_batching_internals_exist():
    from transformers.generation.continuous_batching import continuous_api, scheduler
    from transformers.generation.continuous_batching.cache import PagedAttentionCache

    assert compat.cb_failed_status().name == "FAILED"
    router = continuous_api.OutputRouter()
    assert hasattr(router, "_lock") and isinstance(router.result_handlers, dict), "OutputRouter moved"
    assert hasattr(router.output_queue, "get_nowait"), "OutputRouter.output_queue moved"
    init = inspect.getsource(continuous_api.ContinuousBatchingManager.__init__)
    for attr in ("self.output_router", "self.batch_processor", "self.input_queue"):
        assert attr in init, f"ContinuousBatchingManager: {attr} is gone"
    assert "self.scheduler" in inspect.getsource(continuous_api.ContinuousBatchProcessor.__init__)
    sched = inspect.getsource(scheduler.Scheduler)
    assert "self.active_requests" in sched and "self.waiting_requests" in sched, "Scheduler's queues moved"
    assert callable(getattr(PagedAttentionCache, "compute_free_capacity", None)), "compute_free_capacity is gone"


def test_output_router_helpers_on_a_real_output_router():
    from transformers.generation.continuous_batching.continuous_api import OutputRouter

    class Manager:
        output_router = OutputRouter()

    m = Manager()
    compat.check_cb_manager(m)
    m.output_router.result_handlers["r1"] = object()
    compat.forget_result_handler(m, "r1")
    compat.forget_result_handler(m, "r1")  # already gone: nothing to do
    assert "r1" not in m.output_router.result_handlers
    for k in range(3):
        m.output_router.output_queue.put(k)
    compat.drain_unrouted_outputs(m)
    assert m.output_router.output_queue.empty()
    with pytest.raises(compat.InternalsMoved, match=r"output_router.*checked on transformers 5\.19\.0"):
        compat.check_cb_manager(object())
    assert compat.cb_load(object()) == (0, 0, None)  # moved: the engine's own counts only


def test_attn_implementation_of_a_real_config():
    from transformers import LlamaConfig

    cfg = LlamaConfig(attn_implementation="eager")
    assert hasattr(cfg, "_attn_implementation"), "PretrainedConfig._attn_implementation is gone"

    class Model:
        config = cfg

    assert compat.attn_implementation(Model()) == "eager"


# ---- CPython ------------------------------------------------------------------------------------------------
def test_threading_register_atexit_exists():
    assert callable(getattr(threading, "_register_atexit", None)), "threading._register_atexit is gone"


# ---- nothing else reaches in -----------------------------------------------------------------------------------
PRIVATE_MODULES = ("ray._private", "ray.serve._private", "transformers.generation.continuous_batching")
PRIVATE_ATTRS = {
    "_private",
    "_get_serve_request_context",
    "curr_replicas",
    "_asyncio_router",
    "_deployment_available",
    "output_router",
    "batch_processor",
    "_register_atexit",
    "_attn_implementation",
}


def test_no_module_but_compat_reaches_into_private_internals():
    bad = []
    for path in sorted((ROOT / "serving").rglob("*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts[1] == "_proto" or rel == Path("serving/compat.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                names = []
            bad += [f"{rel}:{node.lineno} import {n}" for n in names if n.startswith(PRIVATE_MODULES)]
            if isinstance(node, ast.Attribute) and node.attr in PRIVATE_ATTRS:
                bad.append(f"{rel}:{node.lineno} .{node.attr}")
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "getattr" and len(node.args) > 1:
                arg = node.args[1]
                if isinstance(arg, ast.Constant) and arg.value in PRIVATE_ATTRS:
                    bad.append(f"{rel}:{node.lineno} getattr {arg.value}")
    assert bad == [], "private internals outside serving/compat.py:\n" + "\n".join(bad)


def test_the_routers_http_routes_carry_real_annotations_not_strings():
    """FastAPI reads each route's parameters from its annotations; under Serve's ingress a string annotation
    (``from __future__ import annotations`` in serve/router.py) is not resolved by FastAPI 0.165, which then takes
    ``request`` for a query parameter and answers every OpenAI call 422 (seen after README command 1, whose
    install resolves the newest FastAPI; the dev extras' vLLM holds an older one where it worked)."""
    import inspect

    from starlette.requests import Request

    from serving.serve.router import Router

    cls = Router.func_or_class
    for name in ("list_models", "chat_completions", "completions"):
        assert inspect.signature(getattr(cls, name)).parameters["request"].annotation is Request, name
