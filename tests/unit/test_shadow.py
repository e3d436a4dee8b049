"""Shadow sampling (serving/observability/shadow.py) over the real cascade walk with fake tier clients: no Ray, no models."""

import asyncio
import json
import random
from collections import defaultdict

import pytest

from serving.config import ConfigError, load_config, parse_config
from serving.core.decide import decide
from serving.core.errors import TierFailure
from serving.core.request import CascadeRequest
from serving.core.types import Chunk, Generation, GenerationRequest
from serving.core.walk import Cascade
from serving.evaluation.calibrate import calibrate
from serving.evaluation.shadow_data import FORMAT, read_samples, shadow_runs
from serving.observability.shadow import ShadowLog, ShadowSampler, wilson
from serving.ops.cli import main as cli

SURE = [("4", -0.01), ("2", -0.02)]  # accepted at threshold -0.5
UNSURE = [("5", -0.01), ("3", -1.5)]  # deferred
STRONG = [("4", -0.1), ("3", -0.1), ("9", -0.1)]


def config(tmp_path=None, tiers=("weak", "strong"), **shadow):
    raw = {
        "tiers": [{"name": n, "model": {"source": n}} for n in tiers],
        "deferral": {"rule": "chow_quantile", "alpha": 0.0, "threshold": -0.5},
        "shadow": {"rate": 1.0, **({"path": str(tmp_path / "shadow.jsonl")} if tmp_path else {}), **shadow},
    }
    return parse_config(raw)


class Tiers:
    """Scripted answers per tier (or a prompt -> answer map), the call's rule applied as the Serve tier
    does (``decide``); counts the calls open per tier like the Serve tier client does."""

    def __init__(self, answers: dict, errors: dict | None = None):
        self.answers, self.errors = answers, errors or {}
        self.calls: list[tuple[str, str]] = []
        self.inflight: dict[str, int] = defaultdict(int)
        self.embed: list[bool] = []

    async def stream(self, tier, req, tokens=True, stop=None, draft=None):
        async for chunk in decide(self.engine(tier, req), stop, tokens):
            yield chunk

    async def engine(self, tier, req):
        self.calls.append((tier, req.prompt))
        self.embed.append(req.embed)
        self.inflight[tier] += 1
        try:
            await asyncio.sleep(0)
            if tier in self.errors:
                raise self.errors[tier]
            pieces = self.answers[tier]
            pieces = pieces[req.prompt] if isinstance(pieces, dict) else pieces
            yield Chunk(
                final=Generation(
                    text="".join(t for t, _ in pieces),
                    token_ids=list(range(len(pieces))),
                    logprobs=[lp for _, lp in pieces],
                    prompt_tokens=3,
                    finish_reason="stop",
                )
            )
        finally:
            self.inflight[tier] -= 1


class Recorder:
    def __init__(self):
        self.counts: dict = defaultdict(float)
        self.gauges: dict = {}

    def inc(self, name, value=1.0, **tags):
        if value <= 0:
            raise ValueError(f"value must be >0, got {value}")  # as ray.util.metrics.Counter.inc
        self.counts[(name, tuple(sorted(tags.items())))] += value

    def observe(self, name, value, **tags):
        pass

    def set(self, name, value, **tags):
        self.gauges[(name, tuple(sorted(tags.items())))] = value


def setup(cfg, tiers, busy=None, seed=0):
    rec = Recorder()
    cascade = Cascade(cfg, tiers, rec)
    inflight = busy or cascade.inflight.__getitem__  # as the router wires it
    return cascade, ShadowSampler(cfg, cascade, tiers, rec, inflight, random.Random(seed)), rec


def request(prompt="q", tiers=("weak", "strong")):
    return CascadeRequest(GenerationRequest(prompt=prompt), list(tiers), False, None)


async def answer_and_offer(cascade, sampler, plan):
    out = await cascade.run(plan)
    return out, sampler.offer(plan, out)


def test_wilson_interval():
    assert wilson(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    lo, hi = wilson(3, 40)
    assert (1 - hi, 1 - lo) == pytest.approx(wilson(37, 40))
    assert wilson(500, 1000)[1] - wilson(500, 1000)[0] < wilson(5, 10)[1] - wilson(5, 10)[0]


def test_accepted_answer_is_shadowed_after_the_answer_and_logged(tmp_path):
    tiers = Tiers({"weak": SURE, "strong": STRONG})
    cascade, sampler, rec = setup(config(tmp_path), tiers)

    async def go():
        out, task = await answer_and_offer(cascade, sampler, request())
        # offer() only schedules: the next tier is not asked until the handler has returned to the loop
        assert task is not None and tiers.calls == [("weak", "q")]
        await task
        return out

    out = asyncio.run(go())
    assert (out.answered_by, out.deferred, out.answer.text) == ("weak", False, "42")
    assert tiers.calls == [("weak", "q"), ("strong", "q")]
    s = sampler.stats()["weak"]
    assert (s["sampled"], s["completed"], s["agreed"], s["failed"], s["running"]) == (1, 1, 0.0, 0, 0)
    assert s["agreement"] == 0.0 and s["interval"] == pytest.approx(list(wilson(0, 1)))
    tags = (("rule", "chow_quantile"), ("tier", "weak"))
    assert rec.counts[("cascade_shadow_samples", tuple(sorted(tags + (("state", "completed"),))))] == 1
    assert rec.gauges[("cascade_shadow_agreement", tuple(sorted(tags + (("bound", "estimate"),))))] == 0.0
    [line] = read_samples(tmp_path / "shadow.jsonl")
    assert line["format"] == FORMAT and (line["tier"], line["next_tier"], line["rule"]) == (
        "weak",
        "strong",
        "chow_quantile",
    )
    assert (line["prompt"], line["answer"], line["reference"], line["agreement"]) == ("q", "42", "439", 0.0)
    assert line["logprobs"] == [-0.01, -0.02] and line["score"] == pytest.approx(-0.02) and line["threshold"] == -0.5


def test_deferred_forced_and_last_tier_answers_are_not_shadowed(tmp_path):
    tiers = Tiers({"weak": UNSURE, "strong": STRONG})
    cascade, sampler, _ = setup(config(tmp_path), tiers)

    async def go():
        out, task = await answer_and_offer(cascade, sampler, request())
        assert out.deferred and task is None
        forced = CascadeRequest(GenerationRequest(prompt="q"), ["weak"], True, None)
        out, task = await answer_and_offer(cascade, sampler, forced)
        assert out.answered_by == "weak" and task is None

    asyncio.run(go())
    assert tiers.calls == [("weak", "q"), ("strong", "q"), ("weak", "q")]
    assert sampler.stats()["weak"]["sampled"] == 0 and not (tmp_path / "shadow.jsonl").exists()


def test_degraded_answer_is_not_shadowed():
    tiers = Tiers({"weak": UNSURE, "strong": STRONG}, errors={"strong": TierFailure("strong", "timeout", "slow")})
    cascade, sampler, _ = setup(config(), tiers)

    async def go():
        out, task = await answer_and_offer(cascade, sampler, request())
        assert out.degraded and out.answered_by == "weak" and task is None

    asyncio.run(go())
    assert sampler.stats()["weak"]["sampled"] == 0


def test_rate_samples_that_share_of_accepted_answers():
    tiers = Tiers({"weak": SURE, "strong": SURE})
    cascade, sampler, _ = setup(config(rate=0.2), tiers, seed=1)

    async def go():
        for _ in range(2000):
            _, task = await answer_and_offer(cascade, sampler, request())
            if task:
                await task

    asyncio.run(go())
    s = sampler.stats()["weak"]
    assert abs(s["sampled"] - 400) < 4 * (2000 * 0.2 * 0.8) ** 0.5
    assert s["completed"] == s["sampled"] and s["agreement"] == 1.0 and s["interval"][0] > 0.99


def test_dropped_when_next_tier_busy_or_budget_full():
    tiers = Tiers({"weak": SURE, "strong": STRONG})
    view = {"weak": 0, "strong": 1}  # client calls open to each tier, as the cascade walk counts them
    cascade, sampler, rec = setup(config(), tiers, busy=view.__getitem__)

    async def busy():
        _, task = await answer_and_offer(cascade, sampler, request())
        assert task is None  # a client call to strong is in flight: no shadow call
        view["strong"] = 0
        _, first = await answer_and_offer(cascade, sampler, request())
        assert first is not None
        view["strong"] = 1  # a client call (the first shadow call is not counted there)
        _, second = await answer_and_offer(cascade, sampler, request())
        assert second is None
        await first

    asyncio.run(busy())
    s = sampler.stats()["weak"]
    assert (s["sampled"], s["completed"], s["dropped_busy"], s["dropped_full"]) == (3, 1, 2, 0)

    tiers = Tiers({"weak": SURE, "strong": STRONG})
    cascade, sampler, rec = setup(config(max_concurrent=1, busy_inflight=5), tiers)

    async def full():
        _, a = await answer_and_offer(cascade, sampler, request())
        _, b = await answer_and_offer(cascade, sampler, request())
        assert a is not None and b is None
        await a

    asyncio.run(full())
    s = sampler.stats()["weak"]
    assert (s["sampled"], s["completed"], s["dropped_full"]) == (2, 1, 1)
    assert (
        rec.counts[("cascade_shadow_samples", (("rule", "chow_quantile"), ("state", "dropped_full"), ("tier", "weak")))]
        == 1
    )


def test_own_shadow_calls_do_not_count_as_busy():
    tiers = Tiers({"weak": SURE, "strong": STRONG})
    cascade, sampler, _ = setup(config(max_concurrent=2), tiers)

    async def go():
        _, a = await answer_and_offer(cascade, sampler, request())
        await asyncio.sleep(0)  # a's call to strong is open now
        assert tiers.inflight["strong"] == 1
        _, b = await answer_and_offer(cascade, sampler, request())
        assert a is not None and b is not None
        await asyncio.gather(a, b)

    asyncio.run(go())
    assert sampler.stats()["weak"]["completed"] == 2


def test_failed_shadow_call_is_counted_not_raised(tmp_path):
    tiers = Tiers({"weak": SURE}, errors={"strong": TierFailure("strong", "timeout", "too slow")})
    cascade, sampler, _ = setup(config(tmp_path), tiers)

    async def go():
        _, task = await answer_and_offer(cascade, sampler, request())
        await task

    asyncio.run(go())
    s = sampler.stats()["weak"]
    assert (s["sampled"], s["completed"], s["failed"], s["running"], s["agreement"]) == (1, 0, 1, 0, None)
    assert not (tmp_path / "shadow.jsonl").exists()


def test_three_tiers_shadow_each_boundary_and_chat_requests_are_logged(tmp_path):
    tiers = Tiers({"weak": {"a": SURE, "b": UNSURE}, "medium": {"b": SURE, "a": SURE}, "strong": STRONG})
    cfg = config(tmp_path, tiers=("weak", "medium", "strong"))
    cascade, sampler, _ = setup(cfg, tiers)

    async def go():
        for p in ("a", "b"):
            _, task = await answer_and_offer(cascade, sampler, request(p, cascade.names))
            await task
        chat = CascadeRequest(
            GenerationRequest(messages=[{"role": "user", "content": "a"}]), cascade.names, False, None
        )
        tiers.answers["weak"][""] = SURE
        tiers.answers["medium"][""] = SURE
        _, task = await answer_and_offer(cascade, sampler, chat)
        await task

    asyncio.run(go())
    st = sampler.stats()
    assert (st["weak"]["next_tier"], st["weak"]["completed"], st["weak"]["agreement"]) == ("medium", 2, 1.0)
    assert (st["medium"]["next_tier"], st["medium"]["completed"], st["medium"]["agreement"]) == ("strong", 1, 0.0)
    lines = read_samples(tmp_path / "shadow.jsonl")
    assert [(x["tier"], x["next_tier"]) for x in lines] == [
        ("weak", "medium"),
        ("medium", "strong"),
        ("weak", "medium"),
    ]
    assert lines[2]["messages"] == [{"role": "user", "content": "a"}] and lines[2]["prompt"] == ""


def test_metric_defaults_to_the_artifact_s_and_is_validated():
    raw = {
        "tiers": [{"name": n, "model": {"source": n}} for n in ("weak", "strong")],
        "deferral": {"artifact": {"rule": "chow_sum", "threshold": -1.0, "metric": "numeric_match"}},
        "shadow": {"rate": 0.5},
    }
    cfg = parse_config(raw)
    _, sampler, _ = setup(cfg, Tiers({}))
    assert sampler.stats()["weak"]["metric"] == "numeric_match"
    assert setup(config(metric="token_f1"), Tiers({}))[1].stats()["weak"]["metric"] == "token_f1"
    assert setup(config(), Tiers({}))[1].stats()["weak"]["metric"] == "exact_match"
    with pytest.raises(ConfigError, match=r"shadow\.metric: .*unknown metric 'bleu'"):
        config(metric="bleu")
    with pytest.raises(ConfigError, match=r"shadow\.rate"):
        config(rate=1.5)
    assert setup(config(rate=0.0), Tiers({}))[1].stats() == {}  # off: nothing to show


def test_log_rotates_at_max_bytes_and_writers_follow_a_rotation(tmp_path):
    path = tmp_path / "s.jsonl"
    a, b = ShadowLog(path, 4096), ShadowLog(path, 4096)
    rec = {"format": FORMAT, "pad": "x" * 900}
    for i in range(10):
        (a if i % 2 else b).append(rec | {"i": i})
    rotated = path.with_name("s.jsonl.1")
    assert rotated.exists() and path.stat().st_size <= 4096 and rotated.stat().st_size <= 4096
    got = [r["i"] for r in read_samples(rotated)] + [r["i"] for r in read_samples(path)]
    assert got == sorted(got) and got[-1] == 9  # the newest lines, in order, none torn
    assert len(got) >= 6  # only lines from before the last-but-one rotation are gone


def test_read_samples_names_the_bad_line(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text(json.dumps({"format": FORMAT}) + "\n{oops\n")
    with pytest.raises(ValueError, match=r"x.jsonl:2: not JSON"):
        read_samples(p)
    p.write_text(json.dumps({"prompt": "q", "reference": "1"}) + "\n")
    with pytest.raises(ValueError, match=r"x.jsonl:1: not a shadow sample"):
        read_samples(p)


def _synthetic_shadow_file(path, n=400, seed=0):
    """Accepted answers whose least likely token says how likely they agree with the next tier."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n):
            low = -rng.uniform(0, 1.0)
            agree = rng.random() < 1 + low  # surer answers agree more often
            f.write(
                json.dumps(
                    {
                        "format": FORMAT,
                        "tier": "weak",
                        "next_tier": "strong",
                        "rule": "chow_quantile",
                        "prompt": f"What is {i} + 1?",
                        "messages": [],
                        "answer": str(i + 1),
                        "logprobs": [-0.01, low, -0.02],
                        "embedding": None,
                        "reference": str(i + 1) if agree else str(i + 2),
                    }
                )
                + "\n"
            )


def test_calibrate_from_shadow_samples(tmp_path):
    path = tmp_path / "shadow.jsonl"
    _synthetic_shadow_file(path)
    rows, runs = shadow_runs(path, "exact_match", "weak", "strong")
    assert len(rows) == 400 and runs["strong"].quality.tolist() == [1.0] * 400
    assert 0.3 < runs["weak"].quality.mean() < 0.7
    art = calibrate(load_config(), str(path), target_pgr=0.8, shadow=True)
    assert art["data"]["kind"] == "shadow" and art["data"]["n"] == 400 and art["rule"] == "chow_quantile"
    assert art["metrics"]["fit"]["pgr"] >= 0.8 and -1.0 < art["threshold"] < 0
    assert art["metrics"]["fit"]["strong_quality"] == 1.0
    with pytest.raises(ValueError, match="no shadow samples of the boundary weak -> medium"):
        shadow_runs(path, "exact_match", "weak", "medium")
    with pytest.raises(ValueError, match="post_hoc_embed needs answer embeddings"):
        calibrate(load_config(), str(path), target_deferral=0.3, rule="post_hoc_embed", shadow=True)


def test_cli_calibrate_shadow(tmp_path, capsys):
    path = tmp_path / "shadow.jsonl"
    _synthetic_shadow_file(path)
    out = tmp_path / "art.json"
    assert cli(["calibrate", "--data", str(path), "--shadow", "--target-deferral", "0.25", "--out", str(out)]) == 0
    art = json.loads(out.read_text())
    assert abs(art["metrics"]["fit"]["deferral_share"] - 0.25) < 0.01
    assert "shadow samples cover accepted answers only" in capsys.readouterr().out
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{}\n")
    assert cli(["calibrate", "--data", str(bad), "--shadow", "--target-deferral", "0.25", "--out", str(out)]) == 2
    assert "not a shadow sample" in capsys.readouterr().err


def test_an_answer_the_judge_accepted_is_shadowed_like_any_accepted_answer(tmp_path):
    import math

    class Judged(Tiers):
        async def call(self, name, method, *args, timeout=None):
            prompts, _ = args
            return {"logprobs": [[math.log(0.9), math.log(0.1)]] * len(prompts), "prompt_tokens": 10}

    raw = config(tmp_path).model_dump(mode="json", exclude_none=True)
    raw["deferral"]["judge"] = {"model": "strong", "method": "pointwise", "bounds": [-2.0, -0.2], "threshold": 0.5}
    tiers = Judged({"weak": UNSURE, "strong": STRONG})  # -1.5: the rule defers, in the window: the judge accepts
    cascade, sampler, _ = setup(parse_config(raw), tiers)

    async def go():
        out, task = await answer_and_offer(cascade, sampler, request())
        await task
        return out

    out = asyncio.run(go())
    assert out.answered_by == "weak" and out.runs[0].judge.decided
    assert tiers.calls == [("weak", "q"), ("strong", "q")]  # the shadow call asked the next tier
    [line] = read_samples(tmp_path / "shadow.jsonl")
    assert (line["answer"], line["reference"], line["score"]) == ("53", "439", pytest.approx(-1.5))
