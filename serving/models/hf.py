"""Hugging Face transformers backend.

Loads with AutoTokenizer / AutoModelForCausalLM from a hub id, a local directory, or a GGUF file
(through transformers' own GGUF loading), applies the chat template when the tokenizer has one,
decodes greedily by default, and returns the chosen tokens' log-probs (log-softmax of the raw
logits). Batches are left-padded, so a prompt gives the same tokens alone or in a batch.
"""

from __future__ import annotations

import logging
import queue
import threading
from pathlib import Path
from typing import Iterator, Optional, Union

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from serving.config import Generation as GenerationDefaults
from serving.config import ModelSource
from serving.models.base import Generation, GenerationRequest

log = logging.getLogger(__name__)
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_source(src: ModelSource) -> tuple[str, Optional[str]]:
    """(path-or-hub-id, gguf file name or None). A ``.gguf`` path splits into directory and file."""
    if src.gguf_file is None and src.source.endswith(".gguf"):
        p = Path(src.source)
        return str(p.parent), p.name
    return src.source, src.gguf_file


class _Cancelled(StoppingCriteria):
    """Ends the rows whose request was cancelled (the client went away or gave up); generation
    stops at the next token once every row has ended."""

    def __init__(self, events: list[threading.Event]):
        self.events = events

    def __call__(self, input_ids, scores, **kwargs) -> torch.BoolTensor:
        return torch.tensor([e.is_set() for e in self.events], dtype=torch.bool, device=input_ids.device)


class _QueueStreamer(BaseStreamer):
    """Hands each newly generated token id to a queue (the prompt, sent first, is skipped)."""

    def __init__(self, q: queue.Queue):
        self.q, self.prompt_seen = q, False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.q.put(("token", int(value.reshape(-1)[0])))

    def end(self) -> None:
        pass


class HFBackend:
    def __init__(self, source: ModelSource, defaults: GenerationDefaults | None = None):
        self.source, self.defaults = source, defaults or GenerationDefaults()
        if source.torch_threads:
            torch.set_num_threads(source.torch_threads)
        path, gguf = resolve_source(source)
        common = dict(revision=source.revision, trust_remote_code=source.trust_remote_code)
        if gguf:
            common["gguf_file"] = gguf
        self.tokenizer = AutoTokenizer.from_pretrained(path, **common)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        device = source.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = _DTYPES.get(source.dtype, "auto")
        if dtype == "auto" and (gguf or device == "cpu"):
            dtype = torch.float32  # GGUF dequantises; half precision is slow or unsupported on CPU
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **common).to(device).eval()
        self.device = torch.device(device)
        self.use_chat = source.chat_template == "auto" and bool(getattr(self.tokenizer, "chat_template", None))
        eos = self.model.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        if self.tokenizer.eos_token_id is not None:
            eos.append(self.tokenizer.eos_token_id)
        self.eos_ids = sorted(set(eos))
        self.params = sum(p.numel() for p in self.model.parameters())
        log.info("loaded %s (gguf=%s) on %s: %d params, chat template: %s", path, gguf, device, self.params, self.use_chat)

    # ---- prompts -------------------------------------------------------------------------
    def render(self, req: GenerationRequest) -> str:
        """The text the model sees: the chat template applied, or the raw prompt."""
        messages = req.messages or [{"role": "user", "content": req.prompt}]
        if self.use_chat:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return req.prompt or "\n".join(m["content"] for m in messages)

    def encode(self, req: GenerationRequest) -> list[int]:
        # A rendered chat template already holds its special tokens (e.g. BOS).
        return self.tokenizer(self.render(req), add_special_tokens=not self.use_chat)["input_ids"]

    def count_tokens(self, req: GenerationRequest) -> int:
        return len(self.encode(req))

    # ---- generation ----------------------------------------------------------------------
    def _max_new(self, req: GenerationRequest) -> int:
        return req.max_new_tokens or self.defaults.max_new_tokens

    @property
    def context_length(self) -> Optional[int]:
        n = getattr(self.model.config, "max_position_embeddings", None)
        return n if isinstance(n, int) and n > 0 else None

    @torch.inference_mode()
    def generate(self, reqs: list[GenerationRequest], streamer: BaseStreamer | None = None,
                 cancel: list[threading.Event] | None = None) -> list[Generation]:
        """``cancel``: one event per request; a set event ends that request's generation early
        (its result is then incomplete and meant to be discarded)."""
        encoded = [self.encode(r) for r in reqs]
        limits = [self._max_new(r) for r in reqs]
        batch = self.tokenizer.pad({"input_ids": encoded}, padding=True, return_tensors="pt").to(self.device)
        width = batch["input_ids"].shape[1]
        d = self.defaults
        sampling = dict(do_sample=True, temperature=d.temperature, top_p=d.top_p) if d.do_sample else \
            dict(do_sample=False, temperature=None, top_p=None, top_k=None)
        out = self.model.generate(
            **batch, max_new_tokens=max(limits), **sampling, output_logits=True, return_dict_in_generate=True,
            pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.eos_ids, streamer=streamer,
            stopping_criteria=StoppingCriteriaList([_Cancelled(cancel)]) if cancel else None,
        )
        new = out.sequences[:, width:]
        logits = torch.stack(out.logits, dim=1)[:, : new.shape[1]].float()
        chosen = torch.log_softmax(logits, dim=-1).gather(-1, new.unsqueeze(-1)).squeeze(-1)
        results = []
        for i, limit in enumerate(limits):
            ids, lps = new[i, :limit].tolist(), chosen[i, :limit].tolist()
            stop = next((k for k, t in enumerate(ids) if t in self.eos_ids), None)
            if stop is not None:
                ids, lps = ids[: stop + 1], lps[: stop + 1]
            reason = "stop" if stop is not None else "length"
            if cancel and cancel[i].is_set():  # ended early; generate() padded the rest of the row
                pad = self.tokenizer.pad_token_id
                cut = next((k for k, t in enumerate(ids) if t == pad), len(ids))
                ids, lps, reason = ids[:cut], lps[:cut], "cancelled"
            results.append(Generation(
                text=self.tokenizer.decode(ids, skip_special_tokens=True),
                token_ids=ids, logprobs=lps, prompt_tokens=len(encoded[i]), finish_reason=reason,
            ))
        if any(r.embed for r in reqs):
            self._embed(out.sequences, batch["attention_mask"], results)
        return results

    def _embed(self, sequences: torch.Tensor, prompt_mask: torch.Tensor, results: list[Generation]) -> None:
        """Final hidden state, mean-pooled over each answer's generated tokens (one extra forward)."""
        width = prompt_mask.shape[1]
        gen_mask = torch.zeros((len(results), sequences.shape[1] - width), dtype=prompt_mask.dtype, device=self.device)
        for i, g in enumerate(results):
            gen_mask[i, : len(g.token_ids)] = 1
        mask = torch.cat([prompt_mask, gen_mask], dim=1)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # what generate() uses under left padding
        hidden = self.model(input_ids=sequences, attention_mask=mask, position_ids=positions,
                            output_hidden_states=True).hidden_states[-1].float()
        for i, g in enumerate(results):
            n = max(len(g.token_ids), 1)
            g.embedding = hidden[i, width : width + n].mean(0).tolist()

    def stream(self, req: GenerationRequest, cancel: threading.Event | None = None
               ) -> Iterator[Union[str, Generation]]:
        """Yields text deltas as tokens are generated, then the finished ``Generation``.

        Generation runs in a thread; setting ``cancel`` (or closing the iterator) stops it at the
        next token.
        """
        q: queue.Queue = queue.Queue()
        cancel = cancel or threading.Event()

        def work():
            try:
                q.put(("done", self.generate([req], streamer=_QueueStreamer(q), cancel=[cancel])[0]))
            except BaseException as e:  # surfaced to the consumer below
                q.put(("error", e))

        threading.Thread(target=work, daemon=True, name="hf-stream").start()
        ids: list[int] = []
        sent = ""
        try:
            while True:
                kind, value = q.get()
                if kind == "token":
                    if value in self.eos_ids:
                        continue
                    ids.append(value)
                    text = self.tokenizer.decode(ids, skip_special_tokens=True)
                    if len(text) > len(sent) and not text.endswith("\ufffd"):
                        yield text[len(sent):]
                        sent = text
                elif kind == "error":
                    raise value
                else:
                    if len(value.text) > len(sent):
                        yield value.text[len(sent):]
                    yield value
                    return
        finally:
            cancel.set()
