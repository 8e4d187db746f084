"""What ``bench report`` writes into README.md and docs/ from rows: seeds as mean ± std, profile arms against the
reference, and the README's headlines from clean-tree rows only."""
from __future__ import annotations

import pytest

from imagenet_kit.bench.summary import headlines_markdown, profiles_markdown, seed_groups, seeds_markdown

DEVICE = "Intel(R) Xeon(R) Processor (AVX512 + BF16)"


def _accuracy(run: str, top1: float, top5: float = 0.9, git: str = "abc1234", **extra) -> dict:
    return {"kind": "accuracy", "run": run, "top1": top1, "top5": top5, "device": DEVICE, "git": git,
            "train_minutes": 2.0, "precision": "bf16", "torch_threads": 2, "date": f"2026-12-06T0{len(run) % 10}",
            **extra}


def _describe(row: dict) -> tuple[str]:
    return (f"{row['run'].rsplit('-s', 1)[0]} recipe",)


def _command(row: dict) -> str:
    return f"`run {row['run']}`"


def _arm(arm: str, seed: int, top1: float) -> dict:
    return _accuracy(f"profiles-{arm}-s{seed}", top1, profiles={"arm": arm, "seed": seed, "changes": f"{arm} words"})


def test_runs_named_by_seed_are_one_group_with_mean_and_sample_std():
    rows = [_accuracy("sample-s0", 0.30), _accuracy("sample-s1", 0.40), _accuracy("sample-s2", 0.35),
            _accuracy("alone", 0.9), _accuracy("other-s0", 0.5)]  # a single seed is no group
    (group,) = seed_groups(rows, _describe)
    assert group["name"] == "sample" and len(group["rows"]) == 3
    table = seeds_markdown([group], _command)
    assert "| sample | sample recipe | 35.00% ± 5.00 | 90.00% ± 0.00 | 3 |" in table


def test_profile_arms_of_one_seed_say_there_is_no_spread_to_judge_by():
    table = profiles_markdown([_arm("reference", 0, 0.6665), _arm("fp32", 0, 0.6589)], _command)
    assert "| reference | reference words | 66.65% | 1 |  |" in table
    assert "| fp32 | fp32 words | 65.89% | 1 | -0.76 points (one seed each: no spread to judge it by) |" in table


@pytest.mark.parametrize("fp32, words", [
    ((0.63, 0.65), "-1.00 points (within the spread)"),  # both stds 1.41: |-1.00| within
    ((0.61, 0.61), "-4.00 points (beyond the spread, 1.41)"),
])
def test_profile_arms_are_judged_against_the_larger_spread(fp32, words):
    rows = [_arm("reference", 0, 0.64), _arm("reference", 1, 0.66), _arm("fp32", 0, fp32[0]), _arm("fp32", 1, fp32[1])]
    table = profiles_markdown(rows, _command)
    assert f"| {words} |" in table and "| reference | reference words | 65.00% ± 1.41 | 2 |  |" in table


def test_headlines_take_three_seeds_from_committed_trees_only():
    rows = [_accuracy("sample-s0", 0.30), _accuracy("sample-s1", 0.40), _accuracy("sample-s2", 0.35),
            _accuracy("sample-s3", 0.99, git="abc1234-dirty"),  # uncommitted code is not a result
            _accuracy("imagenette-s0", 0.80), _accuracy("imagenette-s1", 0.82)]
    table = headlines_markdown(rows, _describe, _command)
    assert "| 35.00% ± 5.00 / 90.00% ± 0.00 (mean ± std, 3 seeds); 2 min of training each |" in table
    assert ("Imagenette, the `imagenette` recipe, val top-1 / top-5 | 2 of 3 seeds run so far: 80.00%, 82.00% top-1 "
            "(one run each) |") in table
    assert "| not measured at 3 seeds yet |" not in table
    assert "| not measured at 3 seeds yet |" in headlines_markdown(rows[:2], _describe, _command)
    assert "| GPU training throughput | pending: no GPU has run the kit yet |" in table
