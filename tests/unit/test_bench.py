"""`cascade bench`'s pure parts, without Ray or a server: schedules, the mode mix, targets, statistics, the
order of A/B rounds, medians and ratios, the table, and refusals of bad options before any load is sent."""

from __future__ import annotations

import math
import sys

import pytest

from serving.ops import bench
from serving.ops.cli import main
from serving.ops.loadgen import (
    Target,
    arrivals,
    mode_cycle,
    mode_sequence,
    parse_mix,
    parse_steps,
    parse_target,
    step_arrivals,
    summarize,
)


# ---- schedules ------------------------------------------------------------------------------------------------
def test_poisson_arrivals_are_seeded_sorted_and_inside_the_duration():
    a = arrivals(50.0, 20.0, seed=3)
    assert a == arrivals(50.0, 20.0, seed=3) and a != arrivals(50.0, 20.0, seed=4)
    assert a == sorted(a) and 0 < a[0] and a[-1] < 20.0
    assert 900 < len(a) < 1100  # 1000 expected; the Poisson count's sd is ~32
    gaps = [y - x for x, y in zip(a, a[1:])]
    assert abs(sum(gaps) / len(gaps) - 1 / 50) < 0.002  # exponential gaps of mean 1/rate


def test_step_arrivals_follow_each_step():
    a = step_arrivals(parse_steps("10:5,100:5"), seed=0)
    first, second = [t for t in a if t < 5], [t for t in a if t >= 5]
    assert a == sorted(a) and a[-1] < 10
    assert len(second) > 5 * len(first)


@pytest.mark.parametrize("bad", ["", "5", "a:b", "5:0", "-1:3", "1:2,3"])
def test_bad_steps_are_refused(bad):
    with pytest.raises(ValueError, match="steps"):
        parse_steps(bad)


@pytest.mark.parametrize("qps,duration", [(0, 5), (-1, 5), (5, 0)])
def test_a_schedule_needs_a_positive_rate_and_duration(qps, duration):
    with pytest.raises(ValueError, match="positive"):
        arrivals(qps, duration, 0)


# ---- the mix -------------------------------------------------------------------------------------------------
def test_mix_is_normalised():
    assert parse_mix("cascade=3,strong=1") == {"cascade": 0.75, "strong": 0.25}
    assert parse_mix("cascade") == {"cascade": 1.0}  # a bare mode: share 1
    assert parse_mix("weak,strong") == {"weak": 0.5, "strong": 0.5}


@pytest.mark.parametrize("bad", ["", ",", "cascade=x", "cascade=-1", "cascade=0", "a=1,a=2", "=1", "a=nan"])
def test_bad_mix_is_refused(bad):
    with pytest.raises(ValueError, match="mix"):
        parse_mix(bad)


def test_every_prefix_of_the_mode_sequence_holds_each_share_to_one_request():
    mix = parse_mix("cascade=0.6,weak=0.3,strong=0.1")
    seq = mode_sequence(mix, 500)
    for n in range(1, len(seq) + 1):
        for mode, share in mix.items():
            assert abs(seq[:n].count(mode) - share * n) <= 1.0, (n, mode)
    cycle = mode_cycle(mix)
    assert [next(cycle) for _ in range(500)] == seq  # the closed loop's lazy sequence is the same
    assert mode_sequence({"cascade": 1.0}, 3) == ["cascade"] * 3


# ---- targets -------------------------------------------------------------------------------------------------
def test_targets():
    assert parse_target("127.0.0.1:9000") == Target("grpc", "127.0.0.1:9000")
    assert parse_target("grpc://localhost:9000", stream=True) == Target("grpc", "localhost:9000", stream=True)
    assert parse_target("http://127.0.0.1:8000").address == "http://127.0.0.1:8000/v1"
    assert parse_target("http://127.0.0.1:8000/v1/").address == "http://127.0.0.1:8000/v1"
    t = parse_target("https://h:1/v1", api="completions", model="m")
    assert (t.protocol, t.api, t.model) == ("http", "completions", "m")
    assert "completions" in t.label and "Generate" in parse_target("h:1").label


@pytest.mark.parametrize("bad", ["localhost", "h:port", "ftp://h:1", "grpc://h", ":9000"])
def test_bad_targets_are_refused(bad):
    with pytest.raises(ValueError, match="target"):
        parse_target(bad)


def test_an_unknown_api_is_refused():
    with pytest.raises(ValueError, match="api"):
        parse_target("http://h:1", api="embeddings")


# ---- statistics -----------------------------------------------------------------------------------------------
def _ours(ms, tier="weak", deferred=False, ttft=None, mode="cascade"):
    tiers = {"weak": 2.0} if not deferred else {"weak": 2.0, "strong": 5.0}
    return {
        "code": "OK",
        "mode": mode,
        "ms": ms,
        "ttft_ms": ttft if ttft is not None else ms,
        "tier": tier,
        "deferred": deferred,
        "tier_ms": sum(tiers.values()) - 1,
        "router_ms": ms - 1,
        "hop_ms": 1.0,
        "tier_latency_ms": tiers,
        "tier_engine_ms": {k: v - 0.5 for k, v in tiers.items()},
    }


def test_summary_of_a_cascade_run():
    recs = [_ours(10.0, ttft=4.0), _ours(12.0, ttft=4.0), _ours(30.0, "strong", True, ttft=20.0, mode="strong")]
    recs += [{"code": "RESOURCE_EXHAUSTED", "ms": 1.0, "mode": "cascade"}, {"code": "HTTP 503", "ms": 1.0}]
    s = summarize(recs, elapsed=2.0)
    assert (s["requests"], s["ok"], s["throughput_rps"]) == (5, 3, 1.5)
    assert s["errors"] == {"RESOURCE_EXHAUSTED": 1, "HTTP 503": 1}
    assert s["by_mode"] == {"cascade": 4, "strong": 1}
    assert s["latency_ms"]["p50"] == 12.0 and s["ttft_ms"]["p50"] == 4.0
    assert s["deferral_share"] == pytest.approx(1 / 3)
    assert s["answers_by_tier"] == {"weak": 2, "strong": 1}
    assert s["latency_by_answer_ms"]["deferred"]["n"] == 1 and s["deferred_over_weak_p50"] == pytest.approx(30 / 11)
    assert set(s["tiers"]) == {"weak", "strong"} and s["tiers"]["strong"]["n"] == 1 and s["tiers"]["weak"]["n"] == 3


def test_summary_of_a_server_that_is_not_a_cascade():
    """vLLM's answers carry no cascade object: latency and TTFT only; the cascade's numbers are absent, not 0."""
    s = summarize([{"code": "OK", "ms": 8.0, "ttft_ms": 3.0}, {"code": "OK", "ms": 10.0, "ttft_ms": 5.0}], 1.0)
    assert s["ok"] == 2 and s["ttft_ms"]["p50"] == 4.0
    assert math.isnan(s["deferral_share"]) and s["answers_by_tier"] == {} and s["tiers"] == {}
    nothing = summarize([{"code": "UNAVAILABLE", "ms": 1.0}], 1.0)
    assert nothing["ok"] == 0 and nothing["deferral_share"] == 0.0 and math.isnan(nothing["latency_ms"]["p50"])


# ---- A/B rounds, medians, ratios, the table --------------------------------------------------------------------
def test_rounds_alternate_which_side_goes_first():
    assert bench.round_order(3) == [(0, "A"), (0, "B"), (1, "B"), (1, "A"), (2, "A"), (2, "B")]
    assert bench.round_order(2, ("A",)) == [(0, "A"), (1, "A")]


def _summary(rps, p50, p99, ttft50=1.0, errors=None, n=10):
    return {
        "requests": n,
        "ok": n - sum((errors or {}).values()),
        "errors": errors or {},
        "throughput_rps": rps,
        "latency_ms": {"p50": p50, "p99": p99},
        "ttft_ms": {"p50": ttft50, "p99": float("nan")},
    }


def test_medians_and_ratios():
    a = bench.medians([_summary(10, 5, 9), _summary(30, 7, 50, errors={"HTTP 429": 1}), _summary(20, 6, 11)])
    b = bench.medians([_summary(40, 3, 4), _summary(40, 4, 8, errors={"HTTP 429": 2, "SSE_ERROR": 1})])
    assert (a["rps"], a["p50 ms"], a["p99 ms"], a["rounds"], a["requests"], a["ok"]) == (20, 6, 11, 3, 30, 29)
    assert a["errors"] == {"HTTP 429": 1} and b["errors"] == {"HTTP 429": 2, "SSE_ERROR": 1}
    assert math.isnan(a["TTFT p99"])  # nan rounds left out; none left: nan
    r = bench.ratios(a, b)
    assert r["rps"] == 2.0 and r["p50 ms"] == pytest.approx(3.5 / 6) and math.isnan(r["TTFT p99"])


def test_table_shows_every_row_and_the_errors_by_status():
    a = bench.medians([_summary(12.345, 5.5, 123.4, errors={"UNAVAILABLE": 2, "HTTP 503": 1})])
    b = bench.medians([_summary(24.69, 11.0, 246.8)])
    text = bench.table([("A", a), ("B", b), ("B/A", bench.ratios(a, b))])
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["req", "ok", "rps"] and "TTFT p50" in lines[0] and lines[0].endswith("errors")
    assert lines[1].split()[:5] == ["A", "10", "7", "12.3", "1.00"] and lines[1].endswith("HTTP 503:1, UNAVAILABLE:2")
    assert lines[2].endswith("-")  # no errors
    assert lines[3].split() == ["B/A", "2.00", "1.00", "-", "2.00", "2.00"]  # ratios; no counts, nan as '-'


# ---- bad options: refused before any load, exit 2, the option named --------------------------------------------
@pytest.mark.parametrize(
    "argv,message",
    [
        (["nohost"], "target"),
        (["127.0.0.1:1", "--mix", "cascade=x"], "mix"),
        (["127.0.0.1:1", "--concurrency", "0"], "--concurrency"),
        (["127.0.0.1:1", "--requests", "0"], "--requests"),
        (["127.0.0.1:1", "--rate", "5", "--requests", "10"], "--requests"),
        (["127.0.0.1:1", "--steps", "5"], "steps"),
        (["127.0.0.1:1", "--rate", "-2"], "positive"),
        (["127.0.0.1:1", "--rate", "0"], "positive"),
        (["127.0.0.1:1", "--max-tokens", "-1"], "--max-tokens"),
        (["127.0.0.1:1", "--duration", "0"], "--duration"),
        (["127.0.0.1:1", "--rounds", "0"], "--rounds"),
        (["http://127.0.0.1:1", "--extra", "{no"], "--extra"),
        (["http://127.0.0.1:1", "--extra", "[1]"], "--extra"),
        (["127.0.0.1:1", "--extra", '{"temperature": 0}'], "--extra"),
        (["127.0.0.1:1", "--prompts", "/nonexistent/prompts.jsonl"], "prompts.jsonl"),
        (["127.0.0.1:1", "--peer", "nohost"], "target"),
    ],
)
def test_bad_options_exit_2_naming_the_option(argv, message, capsys):
    assert main(["bench", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err


@pytest.mark.parametrize(
    "text,message", [('{"question": "2 + 3"}\n', "'prompt'"), ("not json\n", "not JSONL"), ("\n", "no rows")]
)
def test_a_prompts_file_without_prompts_is_refused(tmp_path, capsys, text, message):
    bad = tmp_path / "p.jsonl"
    bad.write_text(text)
    assert main(["bench", "127.0.0.1:1", "--prompts", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "--prompts" in err and message in err


def test_the_json_report_is_strict():
    assert bench.json_safe({"a": [1.0, float("nan")], "b": {"c": float("inf")}, "d": "x"}) == {
        "a": [1.0, None],
        "b": {"c": None},
        "d": "x",
    }


def test_plot_without_matplotlib_names_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    assert main(["bench", "127.0.0.1:1", "--plot", "x.png"]) == 2
    assert "cascade-serving[bench]" in capsys.readouterr().err
