"""Token-level acceptance of a weak draft: the speculative-cascade deferral rules (Narasimhan et al., *Faster
Cascades via Speculative Decoding*, ICLR 2025).

The strong tier scores the weak tier's draft in one forward pass. Lossless verification keeps a draft token
only where it equals the strong model's own greedy choice; a token-level cascade keeps it by a deferral rule
on the two models' distributions at that position, and the strong model's own token replaces the first one
the rule rejects. With ``q`` the weak model's distribution, ``p`` the strong model's, ``v`` the draft token and
``alpha`` the rule's tolerance, a draft token is kept when:

- ``exact``: ``v`` is the strong model's greedy choice (lossless; ``alpha`` unused);
- ``chow``: the weak model is confident, ``max q >= 1 - alpha``;
- ``diff``: the weak model is nearly as confident as the strong one, ``max q >= max p - alpha``;
- ``token``: the strong model finds ``v`` nearly as good as its own choice, ``p(v) >= max p - alpha``
  (``alpha`` 0: exactly the lossless rule, up to ties).

Everything is computed from what one scoring pass gives (``Engine.score``: ``p(v)``, the strong argmax and
its probability) and the draft's own log-probs (a greedy draft's token is its argmax, so ``q(v) = max q``).
The paper's OPT rule needs the total-variation distance between ``p`` and ``q``, i.e. both distributions
beyond their top-1; it is not offered until the engines return top-k at every draft position."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

TokenRuleName = Literal["exact", "chow", "diff", "token"]
TOKEN_RULES: tuple[str, ...] = ("exact", "chow", "diff", "token")
EPS = 1e-9  # probabilities come from log-probs through exp: a comparison at the edge is not decided by rounding


@dataclass(frozen=True)
class TokenAcceptance:
    """A token-level rule, its tolerance ``alpha`` in [0, 1] (probabilities, not log-probs) and ``block``
    (the paper's gamma): draft tokens the weak tier writes from the corrected prefix before each strong pass."""

    rule: TokenRuleName = "exact"
    alpha: float = 0.0
    block: int = 8

    def __post_init__(self):
        if self.rule not in TOKEN_RULES:
            raise ValueError(f"token rule must be one of {list(TOKEN_RULES)}, got {self.rule!r}")
        if not 0.0 <= self.alpha <= 1.0 or math.isnan(self.alpha):
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.block < 1:
            raise ValueError(f"block must be at least 1, got {self.block}")

    @property
    def lossless(self) -> bool:
        return self.rule == "exact"

    def keeps(self, token: int, q_max: float, p_token: float, greedy: int, p_max: float) -> bool:
        """Whether draft token ``token`` is kept. ``q_max``: the weak model's top probability at this
        position; ``p_token``, ``p_max``: the strong model's probability of ``token`` and of its own greedy
        choice ``greedy``."""
        if token == greedy:  # the strong model's own choice: kept by every rule
            return True
        a = self.alpha + EPS
        if self.rule == "exact":
            return False
        if self.rule == "chow":
            return q_max >= 1.0 - a
        if self.rule == "diff":
            return q_max >= p_max - a
        return p_token >= p_max - a  # token

    def accepted_prefix(
        self,
        draft: Sequence[int],
        draft_logprobs: Sequence[float],
        given_logprobs: Sequence[float],
        greedy: Sequence[int],
        greedy_logprobs: Sequence[float],
    ) -> int:
        """How many leading draft tokens the rule keeps (the first one it rejects is replaced by
        ``greedy[k]``). ``draft_logprobs``: the weak model's log-prob of each draft token (its top-1 for a
        greedy draft); ``given_logprobs``: the strong model's log-prob of each draft token; ``greedy`` /
        ``greedy_logprobs``: the strong model's choice at each position and its log-prob."""
        k = 0
        n = len(draft)
        while k < n:
            q_max = math.exp(draft_logprobs[k]) if k < len(draft_logprobs) else 0.0
            if not self.keeps(draft[k], q_max, math.exp(given_logprobs[k]), greedy[k], math.exp(greedy_logprobs[k])):
                break
            k += 1
        return k
