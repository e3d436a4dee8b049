"""Train the shipped models (``weak`` and ``strong``, the default pair, and ``medium``, the middle tier of
the 3-tier example) on the arithmetic task.

Both are small Llama models with a character-level tokenizer, saved with ``save_pretrained`` so that
they load with ``AutoTokenizer`` / ``AutoModelForCausalLM`` from a directory exactly like a hub model.

    python -m serving.default_models.train            # all three, into serving/default_models/{weak,medium,strong}
    python -m serving.default_models.train --only medium

Deterministic: fixed seeds, fixed thread count, data drawn from seeded generators. Training stops
at the first evaluation whose held-out exact match reaches the tier's `stop_at` (or at ``max_steps``), so rerunning
reproduces the shipped weights on the same torch build.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from serving.tasks.arithmetic import examples, make_example

HERE = Path(__file__).parent
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
# Scratchpad tokens: the model first writes the sum least-significant digit first (the order in
# which carries are computed), then the answer. They are special tokens, so decoding with
# skip_special_tokens (what the server does) leaves only the answer text.
SCRATCH = [f"<d{i}>" for i in range(10)]
CHARS = ["\n"] + [chr(c) for c in range(32, 127)]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ message['content'] }}\n"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] }}{{ eos_token }}{% endif %}"
    "{% endfor %}"
)

# name -> (architecture, training schedule, stopping rule)
PAIR = {
    "weak": dict(
        arch=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4),
        lr=3e-3,
        batch=64,
        max_steps=4000,
        eval_every=100,
        stop_at=0.70,
    ),
    # the third tier of the 3-tier example (serving/three_tier_config.yaml): between the pair
    "medium": dict(
        arch=dict(hidden_size=96, intermediate_size=384, num_hidden_layers=3, num_attention_heads=4),
        lr=2.5e-3,
        batch=64,
        max_steps=3000,
        eval_every=250,
        stop_at=0.90,
    ),
    "strong": dict(
        arch=dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4),
        lr=2e-3,
        batch=64,
        max_steps=4000,
        eval_every=250,
        stop_at=0.985,
    ),
}
TRAIN_SEED, EVAL_SEED, EVAL_N = 0, 1, 300


def build_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {tok: i for i, tok in enumerate(SPECIALS + SCRATCH + CHARS)}
    # BPE without merges = one token per character; Fuse joins them back without spaces.
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        padding_side="left",
        additional_special_tokens=SCRATCH,
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def target(answer: str) -> str:
    """What the model is trained to write: the digits reversed in scratchpad tokens, then the answer."""
    return "".join(f"<d{c}>" for c in reversed(answer)) + answer


def encode_batch(tok, batch, device="cpu"):
    """Right-padded training batch; loss only on the answer and the end-of-sequence token."""
    seqs, masks = [], []
    for ex in batch:
        p = tok.encode(tok.bos_token + ex.prompt + "\n", add_special_tokens=False)
        a = tok.encode(target(ex.reference), add_special_tokens=False) + [tok.eos_token_id]
        seqs.append(p + a)
        masks.append([0] * len(p) + [1] * len(a))
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), tok.pad_token_id)
    labels = torch.full((len(seqs), width), -100)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, (s, m) in enumerate(zip(seqs, masks)):
        ids[i, : len(s)] = torch.tensor(s)
        attn[i, : len(s)] = 1
        labels[i, : len(s)] = torch.tensor([t if k else -100 for t, k in zip(s, m)])
    return ids, attn, labels


@torch.no_grad()
def exact_match(model, tok, exs, batch=250) -> float:
    model.eval()
    ok = 0
    for i in range(0, len(exs), batch):
        chunk = exs[i : i + batch]
        enc = tok(
            [tok.bos_token + e.prompt + "\n" for e in chunk],
            return_tensors="pt",
            padding=True,
            add_special_tokens=False,
        )
        out = model.generate(
            **enc, max_new_tokens=16, do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id
        )
        texts = tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        ok += sum(t.strip() == e.reference for t, e in zip(texts, chunk))
    model.train()
    return ok / len(exs)


def train(name: str, out_dir: Path, threads: int) -> dict:
    spec = PAIR[name]
    torch.manual_seed(1234)
    torch.set_num_threads(threads)
    tok = build_tokenizer()
    cfg = LlamaConfig(
        vocab_size=len(tok),
        max_position_embeddings=64,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        rope_theta=10000.0,
        **spec["arch"],
    )
    model = LlamaForCausalLM(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=spec["lr"], weight_decay=0.01, betas=(0.9, 0.98))
    warmup, total = 200, spec["max_steps"]
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    )
    rng = random.Random(TRAIN_SEED)
    held_out = list(examples(EVAL_SEED, EVAL_N))
    t0, acc, step, history = time.time(), 0.0, 0, []
    model.train()
    for step in range(1, total + 1):
        ids, attn, labels = encode_batch(tok, [make_example(rng) for _ in range(spec["batch"])])
        loss = model(input_ids=ids, attention_mask=attn, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % spec["eval_every"] == 0:
            acc = exact_match(model, tok, held_out)
            history.append({"step": step, "loss": round(loss.item(), 4), "exact_match": acc})
            print(
                f"[{name}] step {step} loss {loss.item():.4f} held-out EM {acc:.3f} ({time.time() - t0:.0f}s)",
                flush=True,
            )
            if acc >= spec["stop_at"]:
                break
    out_dir.mkdir(parents=True, exist_ok=True)
    model.generation_config.do_sample = False
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    info = {
        "name": name,
        "params": n_params,
        "steps": step,
        "exact_match_held_out": acc,
        "train_seconds": round(time.time() - t0, 1),
        "threads": threads,
        "torch": torch.__version__,
        "spec": spec,
        "history": history,
    }
    (out_dir / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=sorted(PAIR), action="append")
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    for name in args.only or ["weak", "medium", "strong"]:
        info = train(name, args.out / name, args.threads)
        print(json.dumps({k: info[k] for k in ("name", "params", "steps", "exact_match_held_out")}))


if __name__ == "__main__":
    main()
