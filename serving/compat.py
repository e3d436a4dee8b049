"""The one home of every reach into private parts of Ray, transformers and CPython.

Each function names the attributes it uses and the versions they were read from (``CHECKED``); outside
them it either falls back to a documented, weaker behaviour or raises :class:`InternalsMoved` when the
engine or the Router replica starts, naming what moved. ``tests/unit/test_compat.py`` asserts that every
attribute used here exists in the installed versions, so an upgrade that removes one fails there first.

A leaf module: it imports nothing from ``serving`` and no Ray, torch or transformers at import (every
layer may import it; the engines do without pulling Ray in). Nothing else in ``serving/`` may reach into
``ray._private``, ``ray.serve._private``, ``_get_serve_request_context``, a handle's router, transformers'
continuous-batching ``output_router`` / scheduler internals or ``threading._register_atexit``
(``tests/unit/test_compat.py`` greps the package for them).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, Optional

log = logging.getLogger(__name__)

# The versions whose source each reach below was read from and tested on.
CHECKED = {"ray": "2.60.0", "transformers": "5.19.0", "python": "3.10 - 3.13"}


class InternalsMoved(RuntimeError):
    """A private attribute this project relies on is not in the installed version of its package."""


def installed(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def _moved(dist: str, what: str, consequence: str) -> InternalsMoved:
    return InternalsMoved(
        f"{what} is not in the installed {dist} {installed(dist)} (checked on {dist} {CHECKED[dist]}): "
        f"{consequence}. Install {dist}=={CHECKED[dist]}, or adapt serving/compat.py"
    )


# ---- Ray Serve ---------------------------------------------------------------------------------------------
def reuseaddr_on_direct_ingress() -> bool:
    """Serve's direct ingress binds the Router's HTTP socket (``ray.serve._private.http_util``, which calls
    ``socket.socket(...)`` through its module global ``socket``) without SO_REUSEADDR, so a Router replica
    replacing a killed one cannot take the port back while the dead one's connections sit in TIME_WAIT, and
    Serve then blocks that port for good (measured: the Router never came back). Every HTTP server sets it
    (uvicorn does; gRPC does for the gRPC port): this process's copy of that module gets a ``socket`` module
    whose ``socket`` class sets it. Call before Serve starts the servers (the Router's constructor).

    Checked: ray 2.60.0. Fallback where the module or its ``socket`` global is gone: nothing patched (a
    warning; a Router replacing a killed one may wait for TIME_WAIT to pass). Returns whether it is patched."""
    import socket
    import types

    try:
        from ray.serve._private import http_util
    except ImportError:
        http_util = None
    if getattr(http_util, "socket", None) is None:
        log.warning(
            "ray %s: ray.serve._private.http_util.socket not found (checked on ray %s): the direct ingress's "
            "HTTP socket is bound without SO_REUSEADDR",
            installed("ray"),
            CHECKED["ray"],
        )
        return False
    if getattr(http_util.socket, "cascade_reuseaddr", False):
        return True

    class ReuseAddrSocket(socket.socket):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)

    shim = types.ModuleType("socket")
    shim.__dict__.update({k: v for k, v in vars(socket).items() if not k.startswith("__")})
    shim.socket, shim.cascade_reuseaddr = ReuseAddrSocket, True
    http_util.socket = shim
    return True


_request_context: Optional[Callable[[], Any]] = None


def _serve_request_context() -> Callable[[], Any]:
    global _request_context
    if _request_context is None:
        from ray.serve import context

        getter = getattr(context, "_get_serve_request_context", None)
        if getter is None:
            raise _moved("ray", "ray.serve.context._get_serve_request_context", "no request id for logs and replies")
        _request_context = getter
    return _request_context


def check_serve_request_context() -> None:
    """Raises :class:`InternalsMoved` now (a Router replica's start) rather than on the first request."""
    _serve_request_context()


def serve_request_id() -> str:
    """The id Serve gave the request being handled (Serve's replica logger stamps it on each line).

    Checked: ray 2.60.0 (``ray.serve.context._get_serve_request_context().request_id``). Outside: the Router
    refuses to start (:func:`check_serve_request_context`)."""
    return _serve_request_context()().request_id


def running_replica_count(handle: Any) -> int:
    """The replicas of a populated handle's deployment that Serve's controller last said are running, from
    the handle's request router (told of every change by long poll): no call, no wait. The public
    ``running_replicas_populated()`` stays true once a replica has run, so it cannot say "none now".

    Checked: ray 2.60.0 (``handle._router._asyncio_router``, ``AsyncioRouter._deployment_available``,
    ``.request_router.curr_replicas``; the router is a ``SingletonThreadRouter`` or ``CurrentLoopRouter``).
    Fallback where those moved: 1 (calls then wait for a replica, as Serve does)."""
    try:
        router = handle._router._asyncio_router
        return len(router.request_router.curr_replicas) if router._deployment_available else 0
    except AttributeError:
        return 1


# ---- Ray core ----------------------------------------------------------------------------------------------
def recorded_ray_address() -> Optional[str]:
    """The address of the latest Ray cluster started on this machine, as Ray recorded it (the file outlives
    the cluster), or None.

    Checked: ray 2.60.0 (``ray._private.utils.read_ray_address``). Fallback where it moved: None (the caller
    starts a Ray of its own)."""
    try:
        from ray._private.utils import read_ray_address

        return read_ray_address()
    except Exception:
        return None


def alive_actors() -> list[dict[str, Any]]:
    """Every actor of the connected cluster as the GCS reports it (``Name``, ``State``, ``Pid``, ``Address``).
    For fault injection (``benchmarks/chaos.py``); needs ``ray.init`` first.

    Checked: ray 2.60.0 (``ray._private.state.actors()``; the public ``ray.util.state.list_actors`` needs
    the dashboard). Outside: :class:`InternalsMoved`."""
    try:
        from ray._private import state
    except ImportError:
        state = None
    if not callable(getattr(state, "actors", None)):
        raise _moved("ray", "ray._private.state.actors", "cannot list the replica actors")
    return list(state.actors().values())


def session_dir() -> str:
    """The connected Ray session's directory (its ``logs/``); needs ``ray.init`` first.

    Checked: ray 2.60.0 (``ray._private.worker.global_worker.node.get_session_dir_path()``). Outside:
    :class:`InternalsMoved`."""
    import ray

    try:
        return ray._private.worker.global_worker.node.get_session_dir_path()
    except AttributeError:
        raise _moved("ray", "ray._private.worker.global_worker.node.get_session_dir_path", "no session dir") from None


# ---- transformers continuous batching ------------------------------------------------------------------
def cb_failed_status() -> Any:
    """transformers' status of a request whose generation failed.

    Checked: transformers 5.19.0 (``transformers.generation.continuous_batching.requests.RequestStatus``).
    Outside: :class:`InternalsMoved` when the engine starts."""
    try:
        from transformers.generation.continuous_batching.requests import RequestStatus

        return RequestStatus.FAILED
    except (ImportError, AttributeError):
        raise _moved(
            "transformers", "continuous_batching.requests.RequestStatus.FAILED", "failed requests go unnoticed"
        ) from None


def check_cb_manager(manager: Any) -> None:
    """That the manager has what :func:`forget_result_handler` and :func:`drain_unrouted_outputs` use; raises
    :class:`InternalsMoved` when the engine starts, not on the first cancelled request.

    Checked: transformers 5.19.0 (``ContinuousBatchingManager.output_router``: an ``OutputRouter`` with
    ``_lock``, ``result_handlers`` (a dict) and ``output_queue`` (a ``queue.Queue``))."""
    router = getattr(manager, "output_router", None)
    missing = [a for a in ("_lock", "result_handlers", "output_queue") if not hasattr(router, a)]
    if router is None or missing:
        raise _moved(
            "transformers",
            f"ContinuousBatchingManager.output_router{'.' + missing[0] if router is not None else ''}",
            "a cancelled request's handler and outputs would stay in memory",
        )


def forget_result_handler(manager: Any, request_id: str) -> None:
    """Drops a cancelled request's result handler: transformers removes it only when the request finishes,
    and delivers nothing for a cancelled one. Checked: transformers 5.19.0 (see :func:`check_cb_manager`)."""
    router = manager.output_router
    with router._lock:
        router.result_handlers.pop(request_id, None)


def drain_unrouted_outputs(manager: Any) -> None:
    """Empties transformers' shared output queue, where it puts the outputs of requests without a handler
    (the step in flight when one was cancelled). Checked: transformers 5.19.0 (see :func:`check_cb_manager`)."""
    q = manager.output_router.output_queue
    with contextlib.suppress(queue.Empty):
        while not q.empty():
            q.get_nowait()


def cb_load(manager: Any) -> tuple[int, int, Optional[float]]:
    """(running, waiting, KV-cache use in [0, 1] or None) of a continuous-batching manager.

    Checked: transformers 5.19.0 (``manager.batch_processor`` (None before the loop runs) ``.scheduler.
    active_requests`` / ``.waiting_requests``, ``manager.input_queue``, ``batch_processor.cache.
    compute_free_capacity()``). Fallback where they moved: (0, 0, None), the engine's own counts only."""
    try:
        bp = manager.batch_processor
        if bp is None:
            return 0, 0, None
        running = len(bp.scheduler.active_requests)
        waiting = len(bp.scheduler.waiting_requests) + manager.input_queue.qsize()
    except AttributeError:
        return 0, 0, None
    try:
        kv = 1.0 - float(bp.cache.compute_free_capacity())
    except Exception:
        kv = None
    return running, waiting, kv


def attn_implementation(model: Any) -> Optional[str]:
    """The attention implementation a loaded transformers model runs with.

    Checked: transformers 5.19.0 (``model.config._attn_implementation``). Fallback: None."""
    return getattr(getattr(model, "config", None), "_attn_implementation", None)


# ---- CPython -----------------------------------------------------------------------------------------------
def run_before_thread_join(fn: Callable[[], Any]) -> bool:
    """Runs ``fn`` at interpreter exit *before* Python joins non-daemon threads (``atexit`` runs after, too
    late to stop a non-daemon loop thread that would hang the exit); ``concurrent.futures`` uses the same hook.

    Checked: CPython 3.10 - 3.13 (``threading._register_atexit``). Fallback where it is gone: not
    registered (a warning; the owner must be closed explicitly). Returns whether it was registered."""
    register = getattr(threading, "_register_atexit", None)
    if register is None:
        log.warning("threading._register_atexit not found: %r will not run before non-daemon threads join", fn)
        return False
    register(fn)
    return True
