"""Loading a transformers model for an engine: tokenizer, weights, chat template, prompt encoding,
incremental detokenisation and the answer embedding. Shared by every transformers-based engine.

Loads with AutoTokenizer / AutoModelForCausalLM from a hub id, a local directory, or a GGUF file
(through transformers' own GGUF loading); applies the chat template when the tokenizer has one.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from serving.core.types import GenerationRequest

if TYPE_CHECKING:
    from serving.config import ModelSource

log = logging.getLogger(__name__)
ENCODED_KEPT = 256  # prompts whose token ids a tokenizer keeps (a tier's in-flight requests and more)
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_source(src: ModelSource) -> tuple[str, Optional[str]]:
    """(path-or-hub-id, gguf file name or None). A ``.gguf`` path splits into directory and file."""
    if src.gguf_file is None and src.source.endswith(".gguf"):
        p = Path(src.source)
        return str(p.parent), p.name
    return src.source, src.gguf_file


class HFTokenizer:
    """A model's tokenizer, chat template and end-of-sequence ids (no weights): prompt encoding and
    decoding for every engine, transformers-based or not."""

    def __init__(self, source: ModelSource):
        from transformers import AutoConfig, GenerationConfig

        self.source = source
        path, gguf = resolve_source(source)
        self.common = dict(revision=source.revision, trust_remote_code=source.trust_remote_code)
        if gguf:
            self.common["gguf_file"] = gguf
        self.path = path
        self.tokenizer = AutoTokenizer.from_pretrained(path, **self.common)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.config = AutoConfig.from_pretrained(path, **self.common)
        try:
            eos = GenerationConfig.from_pretrained(path, **self.common).eos_token_id
        except Exception:
            eos = getattr(self.config, "eos_token_id", None)
        self._set_eos(eos)
        self.use_chat = source.chat_template == "auto" and bool(getattr(self.tokenizer, "chat_template", None))
        self._encoded: OrderedDict[tuple, tuple[int, ...]] = OrderedDict()  # the latest prompts' ids (encode)

    @property
    def context_length(self) -> Optional[int]:
        n = getattr(self.config, "max_position_embeddings", None)
        return n if isinstance(n, int) and n > 0 else None

    def _set_eos(self, eos) -> None:
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        if self.tokenizer.eos_token_id is not None:
            eos.append(self.tokenizer.eos_token_id)
        self.eos_ids = sorted(set(eos))

    # ---- prompts -------------------------------------------------------------------------
    def render(self, req: GenerationRequest) -> str:
        """The text the model sees: the chat template applied, or the raw prompt."""
        messages = req.messages or [{"role": "user", "content": req.prompt}]
        if self.use_chat:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return req.prompt or "\n".join(m["content"] for m in messages)

    def encode(self, req: GenerationRequest) -> list[int]:
        """The prompt's token ids. A tier reads them twice a request (its length check, then the engine), so the
        latest prompts' ids are kept: the chat template and the tokenizer run once a prompt."""
        key = (req.prompt, tuple(tuple(m.items()) for m in req.messages))
        cache = self._encoded
        ids = cache.get(key)
        if ids is None:
            # A rendered chat template already holds its special tokens (e.g. BOS).
            ids = tuple(self.tokenizer(self.render(req), add_special_tokens=not self.use_chat)["input_ids"])
            cache[key] = ids
            if len(cache) > ENCODED_KEPT:
                cache.popitem(last=False)
        return list(ids)

    def count_tokens(self, req: GenerationRequest) -> int:
        return len(self.encode(req))

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    @property
    def tokenizer_id(self) -> str:
        """A fingerprint of the vocabulary: two tiers with the same one can exchange token ids."""
        if not hasattr(self, "_tokenizer_id"):
            import hashlib
            import json

            vocab = json.dumps(sorted(self.tokenizer.get_vocab().items()), ensure_ascii=False)
            self._tokenizer_id = hashlib.sha256(vocab.encode()).hexdigest()[:16]
        return self._tokenizer_id


class HFModel(HFTokenizer):
    """A tokenizer and a causal LM, ready for an engine."""

    def __init__(self, source: ModelSource, attn_implementation: Optional[str] = None):
        super().__init__(source)
        if source.torch_threads:
            torch.set_num_threads(source.torch_threads)
        device = source.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = _DTYPES.get(source.dtype, "auto")
        if dtype == "auto" and ("gguf_file" in self.common or device == "cpu"):
            dtype = torch.float32  # GGUF dequantises; half precision is slow or unsupported on CPU
        extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
        self.model = (
            AutoModelForCausalLM.from_pretrained(self.path, dtype=dtype, **self.common, **extra).to(device).eval()
        )
        self.config = self.model.config
        self._set_eos(self.model.generation_config.eos_token_id)
        self.device = torch.device(device)
        self.params = sum(p.numel() for p in self.model.parameters())
        log.info(
            "loaded %s (gguf=%s) on %s: %d params, chat template: %s",
            self.path,
            self.common.get("gguf_file"),
            device,
            self.params,
            self.use_chat,
        )

    def info(self) -> dict:
        return {
            "params": self.params,
            "device": str(self.device),
            "chat_template": self.use_chat,
            "dtype": str(self.model.dtype).replace("torch.", ""),
        }

    # ---- answers -------------------------------------------------------------------------
    @torch.inference_mode()
    def score(
        self, prompt_ids: list[int], continuation: list[int], fixed: int = 0
    ) -> tuple[list[float], list[int], list[float]]:
        """One forward over prompt + continuation: the log-prob of each continuation token, and this
        model's argmax (greedy choice) with its log-prob at every continuation position plus the one
        after it (len(continuation) + 1 entries), from the ``fixed``-th continuation token on."""
        ids = torch.tensor([prompt_ids + continuation], device=self.device)
        start = len(prompt_ids) + fixed - 1
        logits = self.model(input_ids=ids, logits_to_keep=ids.shape[1] - start).logits[0].float()
        lp = torch.log_softmax(logits, dim=-1)
        best = lp.argmax(-1)
        given = lp[:-1].gather(-1, torch.tensor(continuation[fixed:], device=self.device).view(-1, 1))
        return given.view(-1).tolist(), best.tolist(), lp.gather(-1, best.view(-1, 1)).view(-1).tolist()

    @torch.inference_mode()
    def choice_logprobs(self, prompts: list[list[int]], choices: list[int]) -> list[list[float]]:
        """One batched forward over the prompts, left-padded (positions counted from each prompt's first real
        token) so that every prompt ends at the last position and only that position's logits are computed:
        per prompt, the log-prob of each choice token next."""
        if not prompts:
            return []
        width = max(len(p) for p in prompts)
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=self.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=1).logits
        lp = torch.log_softmax(logits[:, -1].float(), dim=-1)
        return lp[:, torch.tensor(choices, device=self.device)].tolist()

    @torch.inference_mode()
    def prompt_logprobs(self, prompt_ids: list[int], top_k: int = 0):
        """One forward over the prompt: (its token ids, each token's log-prob given the ones before it
        (the first: NaN), per position its ``top_k`` most likely tokens as (id, log-prob), most likely
        first (an empty list at the first position, and everywhere when ``top_k`` is 0))."""
        ids = torch.tensor([prompt_ids], device=self.device)
        lp = torch.log_softmax(self.model(input_ids=ids).logits[0, :-1].float(), dim=-1)
        given = lp.gather(-1, ids[0, 1:].view(-1, 1)).view(-1).tolist()
        tops: list[list[tuple[int, float]]] = [[] for _ in prompt_ids]
        if top_k and len(prompt_ids) > 1:
            vals, idx = lp.topk(min(top_k, lp.shape[-1]), dim=-1)
            for i, (v, t) in enumerate(zip(vals.tolist(), idx.tolist())):
                tops[i + 1] = list(zip(t, v))
        return list(prompt_ids), [float("nan")] + given, tops

    @torch.inference_mode()
    def embed(self, prompt_ids: list[int], answer_ids: list[int]) -> list[float]:
        """Final hidden state over prompt + answer, mean-pooled over the answer's tokens (one forward)."""
        ids = torch.tensor([prompt_ids + answer_ids], device=self.device)
        hidden = self.model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0].float()
        n = max(len(answer_ids), 1)
        return hidden[len(prompt_ids) : len(prompt_ids) + n].mean(0).tolist()


class TextStream:
    """Incremental detokenisation: the text each new token adds, without re-decoding the prefix
    (tokenizers' DecodeStream for fast tokenizers, else a re-decode of the answer so far)."""

    def __init__(self, model: HFModel):
        self.model, self.ids, self.sent = model, [], ""
        backend = getattr(model.tokenizer, "_tokenizer", None)
        self.backend = None
        if backend is not None:
            from tokenizers.decoders import DecodeStream

            self.backend, self.ds = backend, DecodeStream(skip_special_tokens=True)

    def push(self, ids: list[int]) -> str:
        if self.backend is not None:
            out = []
            for i in ids:
                piece = self.ds.step(self.backend, i)
                if piece:
                    out.append(piece)
            delta = "".join(out)
            self.sent += delta
            return delta
        self.ids += ids
        text = self.model.decode(self.ids)
        if len(text) > len(self.sent) and not text.endswith("\ufffd") and text.startswith(self.sent):
            delta, self.sent = text[len(self.sent) :], text
            return delta
        return ""

    def finish(self, text: str) -> str:
        """The rest of the final text (whatever the incremental pieces have not covered yet)."""
        return text[len(self.sent) :] if text.startswith(self.sent) else ""
