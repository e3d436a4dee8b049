"""Per-request decoding controls: what a client may ask of every tier's decoding (OpenAI's and vLLM's
sampling fields), validated once here; each engine honours what it can per request
(``Engine.decoding_support``) and a tier refuses the rest, naming the field and itself.

Defaults are what the cascade does without them: greedy decoding up to the tier's max tokens, ending
at the model's end-of-sequence token. The deferral rules always read the log-probs of the emitted tokens
under the model's unmodified distribution, so a score does not move with temperature."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Optional

from serving.core.errors import BadRequest

MAX_STOPS = 8  # stop strings per request
MAX_STOP_CHARS = 256  # characters per stop string
MAX_TOP_LOGPROBS = 20  # alternatives per token (OpenAI's limit)
MAX_LOGIT_BIAS = 300  # entries (OpenAI's limit)


@dataclass
class Decoding:
    temperature: float = 0.0  # 0: greedy (the default); > 0 samples
    top_p: float = 1.0
    top_k: int = 0  # 0 (or -1): off
    min_p: float = 0.0
    seed: Optional[int] = None
    stop: list[str] = field(default_factory=list)  # the answer ends before the first of these
    stop_token_ids: list[int] = field(default_factory=list)  # ... or after one of these tokens
    min_tokens: int = 0
    ignore_eos: bool = False  # decode on past the end-of-sequence token, to the max tokens
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    top_logprobs: Optional[int] = None  # return this many alternatives per token (0: the chosen token only)

    @property
    def sampled(self) -> bool:
        return self.temperature > 0

    def requested(self) -> list[str]:
        """The fields set away from their defaults (what an engine must honour)."""
        default = Decoding()
        return [f.name for f in fields(self) if getattr(self, f.name) != getattr(default, f.name)]

    def check(self) -> Decoding:
        """Raises BadRequest naming the first field out of range; returns self."""

        def need(ok: bool, name: str, problem: str):
            if not ok:
                raise BadRequest(problem, name)

        finite = lambda x: isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)  # noqa: E731
        need(
            finite(self.temperature) and 0 <= self.temperature <= 2,
            "temperature",
            f"must be between 0 and 2, got {self.temperature}",
        )
        need(finite(self.top_p) and 0 < self.top_p <= 1, "top_p", f"must be in (0, 1], got {self.top_p}")
        need(
            isinstance(self.top_k, int) and self.top_k >= -1,
            "top_k",
            f"must be -1, 0 (off) or positive, got {self.top_k}",
        )
        need(finite(self.min_p) and 0 <= self.min_p <= 1, "min_p", f"must be in [0, 1], got {self.min_p}")
        need(
            self.seed is None or (isinstance(self.seed, int) and -(2**63) <= self.seed < 2**63),
            "seed",
            "must be a 64-bit integer",
        )
        need(len(self.stop) <= MAX_STOPS, "stop", f"has {len(self.stop)} strings; the limit is {MAX_STOPS}")
        for i, s in enumerate(self.stop):
            need(
                isinstance(s, str) and 0 < len(s) <= MAX_STOP_CHARS,
                f"stop[{i}]",
                f"must be a non-empty string of at most {MAX_STOP_CHARS} characters",
            )
        need(
            all(isinstance(t, int) and t >= 0 for t in self.stop_token_ids),
            "stop_token_ids",
            "must be token ids (non-negative integers)",
        )
        need(isinstance(self.min_tokens, int) and self.min_tokens >= 0, "min_tokens", "must be 0 or more")
        need(
            finite(self.repetition_penalty) and 0 < self.repetition_penalty <= 2,
            "repetition_penalty",
            f"must be in (0, 2], got {self.repetition_penalty}",
        )
        for name in ("presence_penalty", "frequency_penalty"):
            v = getattr(self, name)
            need(finite(v) and -2 <= v <= 2, name, f"must be between -2 and 2, got {v}")
        need(
            len(self.logit_bias) <= MAX_LOGIT_BIAS,
            "logit_bias",
            f"has {len(self.logit_bias)} entries; the limit is {MAX_LOGIT_BIAS}",
        )
        for k, v in self.logit_bias.items():
            need(isinstance(k, int) and k >= 0, "logit_bias", f"keys must be token ids, got {k!r}")
            need(finite(v) and -100 <= v <= 100, "logit_bias", f"values must be between -100 and 100, got {v!r}")
        need(
            self.top_logprobs is None
            or (isinstance(self.top_logprobs, int) and 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS),
            "top_logprobs",
            f"must be between 0 and {MAX_TOP_LOGPROBS}",
        )
        return self
