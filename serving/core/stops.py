"""Stop sequences, applied where the tokens come out (the tier, for every engine alike): the answer's
text ends before the first stop string; text that might be the start of a stop string is held back
until the next tokens say whether it is (so a streamed answer never shows text that later turns out
to belong to a stop string); at a stop the engine's request is closed at once (its slot frees at the
next step) and the answer ends with ``finish_reason`` "stop". Pure code."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import replace

from serving.core.types import Chunk, Generation


class StopText:
    """Feeds text pieces; returns the part that is certainly answer text, and whether a stop string
    was met (everything from it on is dropped)."""

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self.held = ""
        self.stopped = False

    def push(self, text: str) -> tuple[str, bool]:
        if self.stopped:
            return "", True
        buf = self.held + text
        cut = min((i for i in (buf.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.held, self.stopped = "", True
            return buf[:cut], True
        keep = 0  # the longest tail of buf that is a proper prefix of some stop string
        for s in self.stops:
            for k in range(min(len(s) - 1, len(buf)), keep, -1):
                if s.startswith(buf[-k:]):
                    keep = k
                    break
        self.held = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep], False

    def flush(self) -> str:
        """At the end of the answer: what was held back is answer text after all."""
        rest, self.held = self.held, ""
        return rest


async def stop_at(chunks: AsyncIterator[Chunk], stops: Sequence[str], tokenizer: str = "") -> AsyncIterator[Chunk]:
    """An engine's stream with the request's stop strings applied: chunk texts cut and held back as
    :class:`StopText` says; at a stop, one last chunk whose answer ends before the stop string (its
    tokens: those generated, the one that completed the stop included), and the engine stream closed."""
    cut = StopText(stops)
    ids, lps, text = [], [], ""
    try:
        async for chunk in chunks:
            ids += chunk.token_ids
            lps += chunk.logprobs
            safe, stopped = cut.push(chunk.text)
            text += safe
            if stopped:
                done = chunk.final
                gen = Generation(
                    text=text,
                    token_ids=ids,
                    logprobs=lps,
                    prompt_tokens=chunk.prompt_tokens or (done.prompt_tokens if done else 0),
                    finish_reason="stop",
                    tokenizer=tokenizer,
                    embedding=done.embedding if done else None,
                )
                yield replace(chunk, text=safe, final=gen)
                return
            if chunk.final is not None:  # no stop string in the answer: what was held back is its end
                yield replace(chunk, text=safe + cut.flush())
                return
            yield replace(chunk, text=safe)
    finally:
        await chunks.aclose()
