"""Shadow sampling (serving/observability/shadow.py) over the real cascade walk with fake tier clients: no Ray, no models."""

import asyncio
import json
import random
from collections import defaultdict

import pytest

from serving.config import TOY_CONFIG, ConfigError, load_config, parse_config
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
    art = calibrate(load_config(TOY_CONFIG), str(path), target_pgr=0.8, shadow=True)
    assert art["data"]["kind"] == "shadow" and art["data"]["n"] == 400 and art["rule"] == "chow_quantile"
    assert art["metrics"]["fit"]["pgr"] >= 0.8 and -1.0 < art["threshold"] < 0
    assert art["metrics"]["fit"]["strong_quality"] == 1.0
    with pytest.raises(ValueError, match="no shadow samples of the boundary weak -> medium"):
        shadow_runs(path, "exact_match", "weak", "medium")
    with pytest.raises(ValueError, match="post_hoc_embed needs answer embeddings"):
        calibrate(load_config(TOY_CONFIG), str(path), target_deferral=0.3, rule="post_hoc_embed", shadow=True)


def test_cli_calibrate_shadow(tmp_path, capsys):
    path = tmp_path / "shadow.jsonl"
    _synthetic_shadow_file(path)
    out = tmp_path / "art.json"
    assert (
        cli(
            [
                "calibrate",
                "--config",
                str(TOY_CONFIG),
                "--data",
                str(path),
                "--shadow",
                "--target-deferral",
                "0.25",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    art = json.loads(out.read_text())
    assert abs(art["metrics"]["fit"]["deferral_share"] - 0.25) < 0.01
    assert "shadow samples cover accepted answers only" in capsys.readouterr().out
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{}\n")
    assert (
        cli(
            [
                "calibrate",
                "--config",
                str(TOY_CONFIG),
                "--data",
                str(bad),
                "--shadow",
                "--target-deferral",
                "0.25",
                "--out",
                str(out),
            ]
        )
        == 2
    )
    assert "not a shadow sample" in capsys.readouterr().err


WRITER = r"""
import random, sys, time
from serving.evaluation.shadow_data import FORMAT
from serving.observability.shadow import ShadowLog
path, run, max_bytes = sys.argv[1], sys.argv[2], int(sys.argv[3])
log, rng = ShadowLog(path, max_bytes), random.Random(run)
print("up", flush=True)
for i in range(10**9):
    t = time.time()
    log.append({"format": FORMAT, "run": run, "i": i, "t": t, "pad": "x" * rng.choice([50, 2000, 60000, 250000])})
    print(i, t, flush=True)
"""


def test_writers_killed_mid_write_leave_no_torn_or_duplicated_line(tmp_path):
    """Two writers share a rotating log and are SIGKILLed at random moments, 16 times, while they append
    lines of up to 250 kB (each write takes long enough to be cut). Afterwards every line of both files is
    whole JSON (a torn last line only in the live file, where the reader skips it), none appears twice, and
    every line a writer had written (its write() returned) is there unless a rotation dropped its file."""
    import random
    import signal
    import subprocess
    import sys
    import threading
    import time

    path, rng = tmp_path / "s.jsonl", random.Random(7)
    acked: dict[str, list[tuple[int, float]]] = {}

    def start(run: str) -> subprocess.Popen:
        p = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), run, str(1 << 20)], stdout=subprocess.PIPE, text=True
        )
        assert p.stdout.readline().strip() == "up"
        acked[run] = []

        def pump():
            for line in p.stdout:
                parts = line.split()
                if len(parts) == 2:  # a line the kill cut short was not acknowledged
                    acked[run].append((int(parts[0]), float(parts[1])))

        threading.Thread(target=pump, daemon=True).start()
        return p

    torn_seen = 0
    writers, names = [start("r0"), start("r1")], ["r0", "r1"]
    runs = 2
    for _ in range(16):
        time.sleep(rng.uniform(0.05, 0.4))
        k = rng.randrange(2)
        writers[k].send_signal(signal.SIGKILL)
        writers[k].wait()
        try:  # the other writer may be rotating the file away right now
            data = path.read_bytes()
        except FileNotFoundError:
            data = b""
        if data and not data.endswith(b"\n"):
            torn_seen += 1
        writers[k], names[k] = start(f"r{runs}"), f"r{runs}"
        runs += 1
    for w in writers:  # both at once (the other would go on writing, and rotate the first's lines away)
        w.send_signal(signal.SIGKILL)
    for w in writers:
        w.wait()
    time.sleep(0.2)  # the pumps read what the writers had printed

    rotated = path.with_name("s.jsonl.1")
    assert rotated.exists()  # it rotated (many times)
    records, torn_tail = [], 0
    for f in (rotated, path):
        raw = f.read_bytes() if f.exists() else b""  # a writer killed just after a rotation: no live file yet
        lines = raw.split(b"\n")
        if lines[-1]:  # no newline at the end: a torn last line, only ever in the live file
            assert f == path
            torn_tail += 1
        for ln in lines[:-1]:
            records.append(json.loads(ln))  # every newline-terminated line is whole JSON
        if len(lines) > 1:  # the reader skips a torn tail, nothing else
            assert len(read_samples(f)) == len(lines) - 1
    keys = [(r["run"], r["i"]) for r in records]
    assert len(keys) == len(set(keys))  # no line twice
    # Each writer's lines are in write order: the kept ones of a run are every line from its oldest kept one on
    # (rotation drops whole older files), up to at least the last one whose write() returned.
    missing = []
    for run, acks in acked.items():
        kept = sorted(i for r, i in keys if r == run)
        if kept:
            last = max([i for i, _ in acks], default=-1)
            missing += [(run, i) for i in range(kept[0], max(last, kept[-1]) + 1) if i not in set(kept)]
    for run in names:  # the two writers killed last: their last written line is there
        if acked[run]:
            assert (run, acked[run][-1][0]) in set(keys), run
    print(
        f"{runs} writer runs, {len(records)} lines kept, torn tails seen after kills: {torn_seen}, missing: {missing}"
    )
    assert not missing
    assert sum(len(a) for a in acked.values()) > 50  # the writers did write


def test_a_torn_last_line_is_skipped_by_the_reader_and_cut_by_the_next_append(tmp_path):
    """What a writer killed inside its write() leaves (a line without its end) is invisible to the reader and
    gone once any writer appends again: the next line does not fuse with it."""
    path = tmp_path / "s.jsonl"
    log = ShadowLog(path, 1 << 20)
    log.append({"format": FORMAT, "i": 0})
    whole = (json.dumps({"format": FORMAT, "i": 1, "pad": "y" * 5000}) + "\n").encode()
    with open(path, "ab") as f:
        f.write(whole[: len(whole) // 2])  # the killed writer's half line
    assert [r["i"] for r in read_samples(path)] == [0]
    ShadowLog(path, 1 << 20).append({"format": FORMAT, "i": 2})  # another writer (a restarted replica)
    assert path.read_bytes().count(b"\n") == 2 and b"yyy" not in path.read_bytes()
    assert [r["i"] for r in read_samples(path)] == [0, 2]
    log.append({"format": FORMAT, "i": 3})
    assert [r["i"] for r in read_samples(path)] == [0, 2, 3]


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
