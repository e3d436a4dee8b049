"""A token-level (speculative) cascade at one boundary (``deferral.token_rule``; Narasimhan et al., *Faster
Cascades via Speculative Decoding*): for a request the sequence rule deferred, the strong tier corrects the
weak tier's draft token by token instead of answering from scratch.

The answer grows as a fixed prefix P. Each round the strong tier scores a block of weak draft tokens after P
in one forward pass (``TierServer.verify_block``); the boundary's token rule keeps leading block tokens, and
the strong model's own token follows them (the replacement of the first rejected token, or a bonus token
when the whole block was kept). Then the weak tier drafts the next block of ``block`` tokens from the new P.
The first block is the weak answer the sequence rule just read (no second weak call). Text flows to the
client as each round fixes it. With the exact rule the answer equals the strong tier's greedy answer.

No Ray: the tiers are reached through the walk's tier client (a unary ``verify_block`` call to the strong
tier, a unary generation of the weak tier from P)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Optional

from serving.core.request import CascadeRequest, Text, TierRun
from serving.core.types import BlockVerdict, Generation, final_chunk
from serving.deferral.token_level import TokenAcceptance

if TYPE_CHECKING:
    from serving.core.walk import Cascade


class TokenLevelAttempt:
    """The strong tier's part in a request through a token-level cascade: its rounds, the text they fix,
    and the answer (``generation``; None when the strong tier cannot take the weak tier's token ids, and
    the walk falls back to an ordinary attempt)."""

    def __init__(self, cascade: Cascade, req: CascadeRequest, k: int, prev: TierRun, rule: TokenAcceptance):
        self.cascade, self.req, self.prev, self.rule = cascade, req, prev, rule
        self.name = req.tiers[k]
        tier = cascade.cfg.tier(self.name)
        self.max_new = req.request.max_new_tokens or tier.generation.max_new_tokens
        self.generation: Optional[Generation] = None
        self.drafts: list[Generation] = []  # the weak tier's drafting calls after its first answer (receipts)
        self.passes = 0  # strong forward passes
        self.replaced = 0  # weak draft tokens the strong tier replaced with its own
        self.sent = False
        self.ms = 0.0

    async def texts(self) -> AsyncIterator[Text]:
        """Runs the rounds, yielding the text each one fixes. Raises TierFailure / BadRequest as tier calls do."""
        t0 = time.perf_counter()
        g = self.prev.generation
        prefix: list[int] = []
        lps: list[float] = []
        room = self.max_new - 1  # a block leaves room for the strong tier's own token after it
        block, block_lps = list(g.token_ids[:room]), list(g.logprobs[:room])
        offered = kept = 0
        shown = ""
        while True:
            with self.cascade.busy(self.name):
                v: Optional[BlockVerdict] = await self.cascade.client.call(
                    self.name, "verify_block", self.req.request, prefix, block, block_lps, self.rule, g.tokenizer
                )
            if v is None:  # another vocabulary: the walk answers with an ordinary attempt
                return
            self.passes += 1
            offered += len(block)
            kept += v.kept
            self.replaced += v.kept < len(block)
            prefix += v.token_ids
            lps += v.logprobs
            done = v.stop or len(prefix) >= self.max_new
            # a trailing partial character (a multi-byte one split across tokens) waits until it completes
            cut = len(v.text) if done else len(v.text.rstrip("\ufffd"))
            if cut > len(shown) and v.text.startswith(shown):
                self.sent = True
                yield Text(self.name, v.text[len(shown) : cut])
                shown = v.text[:cut]
            if done:
                break
            room = min(self.rule.block, self.max_new - 1 - len(prefix))
            block, block_lps = [], []
            if room > 0:
                wreq = dataclasses.replace(
                    self.req.request,
                    prefix_ids=list(prefix),
                    prefix_logprobs=list(lps),
                    max_new_tokens=len(prefix) + room,
                )
                draft = (await final_chunk(self.cascade.call(self.prev.tier, wreq, False))).final
                block, block_lps = list(draft.token_ids[len(prefix) :]), list(draft.logprobs[len(prefix) :])
                self.drafts.append(
                    dataclasses.replace(
                        draft, token_ids=block, logprobs=block_lps, prompt_tokens=draft.prompt_tokens + len(prefix)
                    )
                )
        self.ms = (time.perf_counter() - t0) * 1e3
        self.generation = Generation(
            text=v.text,
            token_ids=prefix,
            logprobs=lps,
            prompt_tokens=v.prompt_tokens,
            finish_reason="stop" if v.stop else "length",
            tier_ms=self.ms,
            tokenizer=g.tokenizer,
            draft_tokens=offered,
            draft_accepted=kept,
            passes=self.passes,
            replaced=self.replaced,
        )
        if len(shown) < len(v.text):
            self.sent = True
            yield Text(self.name, v.text[len(shown) :])

    def run(self) -> TierRun:
        return TierRun(self.name, self.generation, None, self.ms)
