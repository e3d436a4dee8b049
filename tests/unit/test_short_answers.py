"""The SmolLM2 pair's prompt family: reproducible, disjoint splits, every task drawn, ground truth checked."""

import pytest

from serving.tasks.short_answers import SPLITS, TASKS, correct, family, split


def test_splits_are_reproducible_disjoint_and_sized():
    parts = {name: split(name) for name in SPLITS}
    assert {k: len(v) for k, v in parts.items()} == SPLITS
    assert split("test") == parts["test"]  # same seed, same questions
    prompts = {k: {q.prompt for q in v} for k, v in parts.items()}
    assert not prompts["train"] & prompts["test"] and not prompts["train"] & prompts["val"]
    assert not prompts["val"] & prompts["test"]
    assert {q.task for q in parts["train"]} == set(TASKS)
    with pytest.raises(ValueError, match="split must be one of"):
        split("calibration")


def test_answers_vary_in_length_and_ground_truth_is_word_bounded():
    qs = family(500)
    lengths = {len(q.truth.split()) for q in qs}
    assert min(lengths) == 1 and max(lengths) >= 8  # one word up to a long list
    assert correct("The capital of Peru is Lima.", "Lima")
    assert correct("HELLO WORLD", "hello world")
    assert not correct("The answer is 125.", "12")  # 12 is not a word of 125
    assert not correct("Paris", "Lima")


def test_the_shipped_splits_are_what_the_shipped_answers_were_made_from():
    """The refactored family (phrasings per task) still draws the shipped prompts, so the shipped answers,
    calibration and every benchmark number stay comparable."""
    import json
    from pathlib import Path

    data = Path(__file__).parents[2] / "serving" / "smol_pair" / "data"
    for name in SPLITS:
        shipped = [json.loads(line) for line in (data / f"{name}.jsonl").read_text().splitlines() if line]
        assert [(r["task"], r["prompt"], r["truth"]) for r in shipped] == [
            (q.task, q.prompt, q.truth) for q in split(name)
        ]


def test_phrasings_are_disjoint_and_the_training_pool_never_holds_an_evaluated_prompt():
    from serving.tasks.short_answers import HELDOUT, training_pool

    for name, task in TASKS.items():
        shipped, extra, held = set(task.forms), set(task.extra), set(task.heldout)
        assert held and not held & (shipped | extra), name  # nothing trains or tunes on a held-out template
        assert not shipped & extra, name
    heldout = split("heldout")
    assert len(heldout) == HELDOUT and {q.task for q in heldout} == set(TASKS)
    held_forms = {f for t in TASKS.values() for f in t.heldout}
    train_forms = {f for t in TASKS.values() for f in t.forms + t.extra}

    # every held-out prompt is made from a held-out template, none from a training one
    def made_from(q, forms):
        body = q.prompt.removesuffix(" Answer in a few words.")
        return any(_matches(f, body) for f in forms)

    assert all(made_from(q, held_forms) and not made_from(q, train_forms) for q in heldout)
    pool = training_pool(3000)
    assert len(pool) == 3000 == len({q.prompt for q in pool})
    evaluated = {q.prompt for name in ("val", "test", "heldout") for q in split(name)}
    assert not {q.prompt for q in pool} & evaluated
    assert any(made_from(q, {f for t in TASKS.values() for f in t.extra}) for q in pool)  # new phrasings are used


def _matches(form: str, text: str) -> bool:
    import re

    parts = re.split(r"\{\d*\}", form)
    return re.fullmatch(".+?".join(map(re.escape, parts)), text) is not None
