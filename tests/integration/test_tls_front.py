"""The TLS front (serving/ops/tls.py, serving/ops/tls_nginx.conf): a real nginx terminating TLS in front of
the real `cascade serve` (Ray Serve's plaintext gRPC proxy), called over gRPC with TLS. A few
checks use a small in-process gRPC backend instead of Serve, to see exactly what nginx forwards."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from serving._proto.cascade.v1 import cascade_pb2 as pb
from serving._proto.cascade.v1 import cascade_pb2_grpc as pb_grpc
from serving.ops.client import CascadeClient, make_request
from serving.ops.local import free_port
from serving.ops.tls import nginx_front, render_nginx_conf, self_signed_cert
from tests.conftest import ROOT

pytestmark = pytest.mark.integration
PROMPT = "What is 2 + 3?"


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = tmp_path_factory.mktemp("certs")
    cert, key = self_signed_cert(d / "front")
    other, _ = self_signed_cert(d / "other")  # same names, another key: a CA the front's cert does not chain to
    return {"cert": cert, "key": key, "other": other}


# ---- against the real cascade ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(nginx, tmp_path_factory):
    from serving.config import TOY_CONFIG, load_config
    from serving.ops.local import cascade_server

    with cascade_server(load_config(TOY_CONFIG), tmp_path_factory.mktemp("serve")) as server:
        yield server


@pytest.fixture(scope="module")
def front(nginx, server, certs, tmp_path_factory):
    port = free_port()
    workdir = tmp_path_factory.mktemp("nginx")
    with nginx_front(f"127.0.0.1:{port}", server.address, certs["cert"], certs["key"], workdir, nginx=nginx):
        yield {"address": f"127.0.0.1:{port}", "workdir": workdir}


@pytest.fixture(scope="module")
def tls_client(front, certs):
    with CascadeClient(front["address"], timeout=60, tls_ca=str(certs["cert"])) as c:
        yield c


def test_generate_over_tls_answers_like_the_plaintext_port(server, tls_client):
    with CascadeClient(server.address, timeout=60) as plain:
        direct = plain.generate(make_request(PROMPT))
    r = tls_client.generate(make_request(PROMPT))
    assert r.text and r.tier in ("weak", "strong")
    assert (r.text, r.tier, r.deferred) == (direct.text, direct.tier, direct.deferred)
    assert r.request_id and r.request_id != direct.request_id


def test_generate_stream_through_the_front(tls_client):
    msgs = list(tls_client.stream(make_request(PROMPT)))
    assert len(msgs) >= 2 and msgs[-1].finished and not any(m.finished for m in msgs[:-1])
    answer = tls_client.generate(make_request(PROMPT))
    assert "".join(m.text for m in msgs[:-1]) == answer.text and msgs[-1].tier == answer.tier


def test_plaintext_and_untrusting_clients_are_refused(front, certs):
    req = make_request(PROMPT)
    with CascadeClient(front["address"], timeout=10) as plain:
        with pytest.raises(grpc.RpcError) as e:
            plain.generate(req)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    for kwargs in ({"tls_ca": str(certs["other"])}, {"tls": True}):  # another CA; the system's CAs
        with CascadeClient(front["address"], timeout=10, **kwargs) as c:
            with pytest.raises(grpc.RpcError) as e:
                c.generate(req)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE, kwargs


def test_deadline_exceeded_through_the_front(tls_client):
    with pytest.raises(grpc.RpcError) as e:
        tls_client.generate(make_request(PROMPT), timeout=0.001)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert tls_client.generate(make_request(PROMPT)).text  # the channel is still good


def test_request_metadata_reaches_serve(tls_client):
    """`request_id` (an underscore: nginx drops such headers unless underscores_in_headers is on)
    reaches Serve's proxy, which answers with it in the response and the trailing metadata."""
    r = tls_client.generate(make_request(PROMPT), metadata=[("request_id", "tls-test-123")])
    assert r.request_id == "tls-test-123"
    _, call = tls_client.stub.Generate.with_call(
        make_request(PROMPT), timeout=60, metadata=[("request_id", "tls-test-456")]
    )
    assert ("request_id", "tls-test-456") in list(call.trailing_metadata())


def test_grpcurl_with_cacert(front, certs):
    exe = shutil.which("grpcurl", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if exe is None:
        pytest.skip("grpcurl is not installed (the dev extra installs it on Linux x86_64)")
    cmd = [
        exe,
        "-cacert",
        str(certs["cert"]),
        "-import-path",
        str(ROOT / "protos"),
        "-proto",
        "cascade/v1/cascade.proto",
        "-d",
        json.dumps({"prompt": PROMPT}),
        front["address"],
        "cascade.v1.Cascade/Generate",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["text"]


def test_cascade_query_with_tls_ca(front, certs):
    cmd = [
        sys.executable,
        "-m",
        "serving.ops.cli",
        "query",
        "--tls-ca",
        str(certs["cert"]),
        "--address",
        front["address"],
        "--json",
        PROMPT,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["text"]


def test_access_log_has_calls_but_no_token(front, certs):
    with CascadeClient(front["address"], timeout=60, tls_ca=str(certs["cert"]), token="s3cret-token-xyz") as c:
        c.generate(make_request(PROMPT))
    log = (front["workdir"] / "access.log").read_text()
    assert "POST /cascade.v1.Cascade/Generate HTTP/2.0" in log and "s3cret-token-xyz" not in log


# ---- what nginx does on its own ----------------------------------------------------------------


def test_upstream_down_is_unavailable_not_a_hang(nginx, certs, tmp_path):
    closed = free_port()  # nothing listens there
    port = free_port()
    with nginx_front(f"127.0.0.1:{port}", f"127.0.0.1:{closed}", certs["cert"], certs["key"], tmp_path, nginx=nginx):
        with CascadeClient(f"127.0.0.1:{port}", timeout=30, tls_ca=str(certs["cert"])) as c:
            t0 = time.monotonic()
            with pytest.raises(grpc.RpcError) as e:
                c.generate(make_request(PROMPT))
            assert time.monotonic() - t0 < 10
            with pytest.raises(grpc.RpcError) as s:
                list(c.stream(make_request(PROMPT)))
    assert e.value.code() == s.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "unavailable" in e.value.details()


class _Echo(pb_grpc.CascadeServicer):
    """Answers with the metadata and deadline it received; the prompt "sleep N" sleeps N seconds."""

    def Generate(self, req, ctx):
        if req.prompt.startswith("sleep "):
            time.sleep(float(req.prompt.split()[1]))
        md = dict(ctx.invocation_metadata())
        return pb.GenerateResponse(
            text=json.dumps({"metadata": md, "remaining": ctx.time_remaining(), "prompt_len": len(req.prompt)}),
            request_id=md.get("request_id", ""),
        )


@pytest.fixture
def echo_backend():
    srv = grpc.server(futures.ThreadPoolExecutor(4), options=[("grpc.max_receive_message_length", 8 << 20)])
    pb_grpc.add_CascadeServicer_to_server(_Echo(), srv)
    port = srv.add_insecure_port("127.0.0.1:0")
    srv.start()
    yield f"127.0.0.1:{port}"
    srv.stop(0)


def test_what_nginx_forwards(nginx, certs, echo_backend, tmp_path):
    """Metadata (authorization, request_id) and the deadline (grpc-timeout) reach the backend;
    a body over client_max_body_size (1m) is refused with RESOURCE_EXHAUSTED."""
    port = free_port()
    with nginx_front(f"127.0.0.1:{port}", echo_backend, certs["cert"], certs["key"], tmp_path, nginx=nginx):
        with CascadeClient(f"127.0.0.1:{port}", timeout=60, tls_ca=str(certs["cert"]), token="tok") as c:
            r = c.generate(make_request("hi"), metadata=[("request_id", "tls-test-123")], timeout=20)
            got = json.loads(r.text)
            assert got["metadata"]["authorization"] == "Bearer tok" and r.request_id == "tls-test-123"
            assert 15 < got["remaining"] <= 20  # grpc-timeout was forwarded: the backend knows the deadline
            assert json.loads(c.generate(make_request("x" * 500_000)).text)["prompt_len"] == 500_000
            with pytest.raises(grpc.RpcError) as e:
                c.generate(make_request("x" * 2_000_000))
            assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_upstream_timeout_is_deadline_exceeded(nginx, certs, echo_backend, tmp_path):
    """No answer within grpc_read_timeout (300s in the shipped config, 1s here) ->
    DEADLINE_EXCEEDED from nginx, not a bare HTTP 504."""
    port = free_port()
    conf = render_nginx_conf(f"127.0.0.1:{port}", echo_backend, certs["cert"], certs["key"], tmp_path)
    assert "grpc_read_timeout 300s;" in conf
    with nginx_front(
        f"127.0.0.1:{port}",
        echo_backend,
        certs["cert"],
        certs["key"],
        tmp_path,
        nginx=nginx,
        config=conf.replace("grpc_read_timeout 300s;", "grpc_read_timeout 1s;"),
    ):
        with CascadeClient(f"127.0.0.1:{port}", timeout=30, tls_ca=str(certs["cert"])) as c:
            with pytest.raises(grpc.RpcError) as e:
                c.generate(make_request("sleep 3"))
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED and "in time" in e.value.details()
