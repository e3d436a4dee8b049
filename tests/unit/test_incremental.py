"""Incremental deferral rules (serving/deferral/incremental.py): property-tested against the
full-answer rules. No Ray, no models."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serving.deferral import build_scorer, should_defer
from serving.deferral.incremental import Decision, Verdict, is_monotone

LOGPROB = st.floats(min_value=-12.0, max_value=0.0, allow_nan=False)
ANSWERS = st.lists(LOGPROB, min_size=1, max_size=24)
THRESHOLD = st.floats(min_value=-8.0, max_value=0.0)
CHUNKS = st.lists(st.integers(min_value=1, max_value=4), min_size=1, max_size=24)
RULES = [("chow_sum", 0.0), ("chow_quantile", 0.0), ("chow_average", 0.0), ("chow_quantile", 0.5)]


def feed(decision, lps, threshold, chunk_sizes):
    """Pushes the answer in chunks; returns (verdict after each push, final verdict, score)."""
    seen, i, k = [], 0, 0
    while i < len(lps):
        n = chunk_sizes[k % len(chunk_sizes)]
        seen.append(decision.push(lps[i : i + n], threshold))
        i, k = i + n, k + 1
    return seen, *decision.finish(lps, threshold)


@settings(max_examples=400, deadline=None)
@given(ANSWERS, THRESHOLD, CHUNKS, st.sampled_from(RULES))
def test_every_prefix_verdict_agrees_with_the_full_answer_rule(lps, threshold, chunks, rule_alpha):
    rule, alpha = rule_alpha
    scorer = build_scorer(rule, alpha)
    full = should_defer(scorer(lps), threshold)
    seen, final, score = feed(Decision(scorer, rule, alpha), lps, threshold, chunks)
    assert (final is Verdict.DEFER) == full  # the decision never changes
    for v in seen:
        assert v in (Verdict.UNDECIDED, final)
        assert v is not Verdict.ACCEPT  # without a window nothing is accepted before the end
    if not is_monotone(rule, alpha):
        assert all(v is Verdict.UNDECIDED for v in seen)  # average, alpha > 0: only at the end
        assert score == pytest.approx(scorer(lps))


@settings(max_examples=300, deadline=None)
@given(ANSWERS, THRESHOLD, CHUNKS)
def test_monotone_rules_defer_as_soon_as_certain(lps, threshold, chunks):
    for rule in ("chow_sum", "chow_quantile"):
        scorer = build_scorer(rule)
        d = Decision(scorer, rule)
        feed(d, lps, threshold, [1])  # token by token
        if d.verdict is Verdict.DEFER:
            # the first prefix whose score falls below the threshold
            first = next(n for n in range(1, len(lps) + 1) if should_defer(scorer(lps[:n]), threshold))
            assert d.decided_at == first


@settings(max_examples=300, deadline=None)
@given(ANSWERS, THRESHOLD, CHUNKS, st.integers(min_value=1, max_value=8), st.sampled_from(RULES))
def test_a_window_decides_on_the_first_k_tokens(lps, threshold, chunks, k, rule_alpha):
    rule, alpha = rule_alpha
    scorer = build_scorer(rule, alpha)
    seen, final, score = feed(Decision(scorer, rule, alpha, window=k), lps, threshold, chunks)
    assert (final is Verdict.DEFER) == should_defer(scorer(lps[:k]), threshold)
    if len(lps) >= k:  # decided by the push that brought the k-th token, never later
        pushed = _cumulative(chunks, len(lps))
        decided = next((n for n, v in zip(pushed, seen) if v is not Verdict.UNDECIDED), None)
        assert decided is not None and decided <= next(n for n in pushed if n >= k)


def _cumulative(chunks, total):
    out, i, k = [], 0, 0
    while i < total:
        i = min(i + chunks[k % len(chunks)], total)
        out.append(i)
        k += 1
    return out


def test_nan_logprob_defers_at_once():
    scorer = build_scorer("chow_quantile")
    d = Decision(scorer, "chow_quantile")
    assert d.push([-0.1, math.nan], -1.0) is Verdict.DEFER


def test_early_off_decides_only_at_the_end():
    scorer = build_scorer("chow_quantile")
    d = Decision(scorer, "chow_quantile", early=False)
    assert not d.can_decide_early
    assert d.push([-5.0], -1.0) is Verdict.UNDECIDED
    assert d.finish([-5.0, -0.1], -1.0) == (Verdict.DEFER, -5.0)


def test_a_window_accepts_early():
    scorer = build_scorer("chow_average")
    d = Decision(scorer, "chow_average", window=2)
    assert d.push([-0.1], -1.0) is Verdict.UNDECIDED
    assert d.push([-0.2, -9.0], -1.0) is Verdict.ACCEPT and d.decided_at == 2
    assert d.score == pytest.approx(-0.15)
    assert d.finish([-0.1, -0.2, -9.0], -1.0) == (Verdict.ACCEPT, pytest.approx(-0.15))
