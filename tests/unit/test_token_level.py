"""Token-level acceptance rules (serving/deferral/token_level.py) on hand-computed distributions."""

import math

import pytest

from serving.deferral.token_level import TokenAcceptance

L = math.log

# one position: the weak model drafted token 7 with q = 0.6 (its top-1); the strong model's top-1 is token 3
# with p = 0.5, and it gives the draft token 7 p = 0.35
POS = dict(token=7, q_max=0.6, p_token=0.35, greedy=3, p_max=0.5)


@pytest.mark.parametrize(
    "rule, alpha, kept",
    [
        ("exact", 0.0, False),
        ("exact", 1.0, False),  # alpha does not loosen the lossless rule
        ("chow", 0.39, False),  # 0.6 >= 1 - 0.39 = 0.61? no
        ("chow", 0.4, True),  # 0.6 >= 0.6
        ("diff", 0.0, True),  # 0.6 >= 0.5: the weak model is surer than the strong one
        ("token", 0.1, False),  # 0.35 >= 0.5 - 0.1 = 0.4? no
        ("token", 0.15, True),  # 0.35 >= 0.35
        ("token", 0.0, False),
    ],
)
def test_each_rule_on_one_position(rule, alpha, kept):
    assert TokenAcceptance(rule, alpha).keeps(**POS) is kept


def test_diff_rejects_when_the_strong_model_is_much_surer():
    pos = dict(token=7, q_max=0.3, p_token=0.1, greedy=3, p_max=0.8)
    assert not TokenAcceptance("diff", 0.4).keeps(**pos)  # 0.3 >= 0.8 - 0.4 = 0.4? no
    assert TokenAcceptance("diff", 0.5).keeps(**pos)  # 0.3 >= 0.3


def test_the_strong_models_own_choice_is_kept_by_every_rule():
    for rule in ("exact", "chow", "diff", "token"):
        assert TokenAcceptance(rule, 0.0).keeps(token=3, q_max=0.01, p_token=0.5, greedy=3, p_max=0.5)


def test_accepted_prefix_stops_at_the_first_rejected_token():
    draft = [3, 7, 9, 4]
    q = [L(0.9), L(0.6), L(0.2), L(0.95)]  # the weak model's top-1 at each position
    given = [L(0.5), L(0.35), L(0.05), L(0.9)]  # the strong model's p of each draft token
    greedy = [3, 3, 5, 4]
    p_max = [L(0.5), L(0.5), L(0.7), L(0.9)]
    args = (draft, q, given, greedy, p_max)
    assert TokenAcceptance("exact").accepted_prefix(*args) == 1  # 7 != 3
    assert TokenAcceptance("token", 0.15).accepted_prefix(*args) == 2  # 0.05 < 0.7 - 0.15 at position 2
    assert TokenAcceptance("diff", 0.0).accepted_prefix(*args) == 2  # 0.2 < 0.7
    assert TokenAcceptance("diff", 0.5).accepted_prefix(*args) == 4  # 0.2 >= 0.2; then the greedy 4
    assert TokenAcceptance("chow", 0.1).accepted_prefix(*args) == 1  # 0.6 < 0.9
    assert TokenAcceptance("chow", 0.8).accepted_prefix(*args) == 4  # 0.2 >= 0.2


def test_alpha_zero_token_rule_is_lossless():
    """alpha 0 with the token rule keeps exactly what the lossless rule keeps (no ties)."""
    draft, greedy = [1, 2, 3, 4], [1, 2, 5, 4]
    q, given, p_max = [L(0.5)] * 4, [L(0.6), L(0.6), L(0.3), L(0.6)], [L(0.6), L(0.6), L(0.4), L(0.6)]
    assert TokenAcceptance("token", 0.0).accepted_prefix(draft, q, given, greedy, p_max) == 2
    assert TokenAcceptance("exact").accepted_prefix(draft, q, given, greedy, p_max) == 2


@pytest.mark.parametrize("rule, alpha", [("opt", 0.1), ("chow", -0.1), ("diff", 1.5), ("token", float("nan"))])
def test_bad_settings_are_refused(rule, alpha):
    with pytest.raises(ValueError):
        TokenAcceptance(rule, alpha)


class ScoringEngine:
    """An engine whose scoring pass gives fixed strong-model numbers (what ``verify_draft`` reads)."""

    tokenizer_id = "tok"
    eos_ids = {0}

    def __init__(self, given, greedy, greedy_lps):
        self.out = (given, greedy, greedy_lps)

    async def score(self, req, ids, fixed=0):
        given, greedy, greedy_lps = self.out
        return given[fixed:], greedy[fixed:], greedy_lps[fixed:]

    def decode(self, ids):
        return " ".join(map(str, ids))

    def count_tokens(self, req):
        return 5


def test_verify_block_keeps_what_the_token_rule_keeps_and_its_own_token_follows():
    import asyncio

    from serving.core.types import Draft, GenerationRequest
    from serving.engines.base import verify_block, verify_draft

    # draft 3 7 9 4; the strong model would say 3 3 5 4 and then 8 after the whole draft
    engine = ScoringEngine(
        [L(0.5), L(0.35), L(0.05), L(0.9)], [3, 3, 5, 4, 8], [L(0.5), L(0.5), L(0.7), L(0.9), L(0.6)]
    )
    req = GenerationRequest(prompt="q", max_new_tokens=16)
    q = [L(0.9), L(0.6), L(0.2), L(0.95)]

    def run(rule):
        return asyncio.run(verify_block(engine, req, [], [3, 7, 9, 4], q, rule))

    v = run(TokenAcceptance("exact"))  # lossless: 3, then the strong model's 3
    assert (v.kept, v.token_ids, v.text, v.stop) == (1, [3, 3], "3 3", False)
    v = run(TokenAcceptance("token", 0.15))  # keeps 3 7, replaces 9 by 5
    assert v.token_ids == [3, 7, 5] and v.logprobs == pytest.approx([L(0.5), L(0.35), L(0.7)])
    v = run(TokenAcceptance("diff", 0.5))  # keeps the whole draft, then the strong model's 8
    assert (v.kept, v.token_ids) == (4, [3, 7, 9, 4, 8])
    v = asyncio.run(verify_block(engine, req, [], [3, 7, 0, 4], q, TokenAcceptance("diff", 0.5)))
    assert (v.token_ids, v.stop) == ([3, 7, 0], True)  # the draft's own end kept: nothing after it
    nxt, offered, done = asyncio.run(verify_draft(engine, req, Draft([3, 7, 9, 4], "3 7 9 4", "tok"), 16))
    assert (nxt.prefix_ids, offered, done) == ([3, 3], 4, None)  # the sequence cascade's verify: lossless
