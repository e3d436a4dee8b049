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
