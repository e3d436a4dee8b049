"""`cascade bench` as a user runs it (the real CLI in a subprocess) against a real `cascade serve` of the toy
pair (serving/default_config.yaml): gRPC unary and streamed, OpenAI HTTP chat (SSE) and completions, closed and
open loop, a mode mix, a peer side by side, errors by status; and vLLM's own OpenAI server as the peer, in one
command. Small request counts; never asserts timings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request

import pytest

from serving.config import PACKAGE_DIR, load_config
from serving.ops.local import cascade_server, wait_for
from tests.conftest import need_vllm

pytestmark = pytest.mark.integration
CFG = load_config(PACKAGE_DIR / "default_config.yaml")  # the arithmetic toy pair: weak, strong


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with cascade_server(CFG, tmp_path_factory.mktemp("bench")) as s:

        def models_ok():
            try:
                return urllib.request.urlopen(s.http_url + "/models", timeout=5).status == 200
            except Exception:
                return False

        wait_for(models_ok, timeout=60, what="the HTTP routes")
        yield s


def bench(tmp_path, *argv: str) -> tuple[int, str, dict]:
    out = tmp_path / "bench.json"
    p = subprocess.run(
        [sys.executable, "-m", "serving.ops.cli", "bench", *argv, "--out", str(out), "--timeout", "60"],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    print(p.stdout, p.stderr[-2000:], sep="\n")
    return p.returncode, p.stdout, json.loads(out.read_text()) if out.exists() else {}


def _ok_samples(report: dict, side: str = "A") -> list[dict]:
    return [r for rnd in report["samples"][side] for r in rnd if r["code"] == "OK"]


def test_grpc_closed_loop_with_a_mix(server, tmp_path):
    rc, out, report = bench(
        tmp_path, f"grpc://{server.address}", "--concurrency", "4", "--requests", "24", "--mix", "cascade=1,strong=1"
    )
    assert rc == 0
    run = report["runs"]["A"][0]
    assert (run["requests"], run["ok"], run["errors"]) == (24, 24, {})
    assert run["by_mode"] == {"cascade": 12, "strong": 12}
    forced = [r for r in _ok_samples(report) if r["mode"] == "strong"]
    assert len(forced) == 12 and all(r["tier"] == "strong" for r in forced)
    assert run["answers_by_tier"]["strong"] >= 12 and set(run["tiers"]) >= {"strong"}
    assert out.splitlines()[0].startswith(f"A: grpc://{server.address} Generate")
    assert "TTFT p50" in out and out.splitlines()[-1].split()[:3] == ["A", "24", "24"]


def test_grpc_stream_open_loop(server, tmp_path):
    rc, _, report = bench(tmp_path, server.address, "--stream", "--rate", "6", "--duration", "2", "--seed", "1")
    assert rc == 0
    run = report["runs"]["A"][0]
    assert run["ok"] == run["requests"] == report["load"]["open_loop_arrivals"] > 0 and run["errors"] == {}
    assert all(r["ttft_ms"] <= r["ms"] for r in _ok_samples(report))  # first text before the end of the stream


def test_http_chat_streamed_and_completions_side_by_side(server, tmp_path):
    """A: SSE chat; B (the peer): unary completions on the same server; rounds alternate AB, BA."""
    rc, out, report = bench(
        tmp_path,
        server.http_url,
        "--stream",
        "--requests",
        "8",
        "--concurrency",
        "2",
        "--peer",
        server.http_url.removesuffix("/v1"),
        "--rounds",
        "2",
        "--mix",
        "cascade=3,weak=1",
    )
    assert rc == 0
    assert report["load"]["order"] == ["A1", "B1", "B2", "A2"]
    for side in "AB":
        assert [r["ok"] for r in report["runs"][side]] == [8, 8] and report["median"][side]["errors"] == {}
        assert {r["tier"] for r in _ok_samples(report, side)} <= {"weak", "strong"}  # the `cascade` object read
        assert report["runs"][side][0]["by_mode"] == {"cascade": 6, "weak": 2}
    assert set(report["ratio"]) == {"of", "rps", "TTFT p50", "TTFT p99", "p50 ms", "p99 ms"}
    assert [line.split()[0] for line in out.splitlines()[-3:]] == ["A", "B", "B/A"]
    rc, _, report = bench(tmp_path, server.http_url, "--api", "completions", "--requests", "4", "--max-tokens", "4")
    assert rc == 0 and report["median"]["A"]["ok"] == 4


def test_errors_are_counted_by_status(server, tmp_path):
    rc, out, report = bench(tmp_path, server.http_url, "--model", "no-such-model", "--requests", "3", "--no-warm")
    assert rc == 1  # nothing answered
    assert report["median"]["A"]["errors"] == {"HTTP 400": 3} and "HTTP 400:3" in out  # unknown model: 400


def test_plot(server, tmp_path):
    pytest.importorskip("matplotlib")  # the bench extra
    png = tmp_path / "bench.png"
    rc, _, _ = bench(tmp_path, server.address, "--requests", "6", "--plot", str(png))
    assert rc == 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_against_vllms_own_server_in_one_command(server, tmp_path):
    """Our OpenAI front (A) and vLLM's own OpenAI server on the toy strong model (B, the peer), one command,
    alternating rounds: both answer every request; vLLM's answers carry no cascade object."""
    need_vllm()
    from benchmarks.common import vllm_server

    model = str(PACKAGE_DIR / "default_models" / "strong")
    with vllm_server(model, max_model_len=64, args=("--enforce-eager",)) as peer:  # no torch.compile: a minute less
        rc, out, report = bench(
            tmp_path,
            server.http_url,
            "--peer",
            peer.url,
            "--peer-model",
            model,
            "--peer-mix",
            "cascade",
            "--stream",
            "--requests",
            "8",
            "--concurrency",
            "2",
            "--rounds",
            "2",
            "--max-tokens",
            "8",
            "--extra",
            '{"temperature": 0}',
        )
    assert rc == 0
    for side in "AB":
        assert [r["ok"] for r in report["runs"][side]] == [8, 8] and report["median"][side]["errors"] == {}
    assert all("tier" in r for r in _ok_samples(report, "A"))
    assert not any("tier" in r for r in _ok_samples(report, "B"))
    assert report["runs"]["B"][0]["deferral_share"] is None  # not a cascade: not measured (strict JSON null)
    assert out.splitlines()[-1].split()[0] == "B/A"
