"""toy:borrow: problems, the ground truth on every solution form, the premise statistics, the source."""

import json
import random

import pytest

from stages.core.sources import toy_borrow as tb
from stages.core.pipeline.errors import GpoError


def _meta(p):
    return json.loads(p["meta"])


def test_problems_are_deterministic_prefix_stable_and_splits_disjoint():
    a = tb.problems(40, 0, "train")
    assert a == tb.problems(40, 0, "train") and a[:10] == tb.problems(10, 0, "train")
    assert [p["problem_id"] for p in a] == [f"borrow-train-{i:04d}" for i in range(40)]
    questions = {s: {p["question"] for p in tb.problems(200, 0, s)} for s in tb.SPLITS}
    assert not questions["train"] & questions["valid"]
    assert not questions["train"] & questions["test"] and not questions["valid"] & questions["test"]
    assert tb.problems(5, 1, "train") != tb.problems(5, 0, "train")


def test_structure_trap_in_the_second_half_and_only_subtractions_after_it():
    for p in tb.problems(200, 3, "train"):
        m = _meta(p)
        n = len(m["ops"])
        assert tb.MIN_OPS <= n <= tb.MAX_OPS
        assert (n + 1) // 2 <= m["trap"] <= n - 2
        kinds = tb.line_kinds(m)
        assert kinds[m["trap"]] == f"trap-{m['trap_kind']}"
        assert all(k == "routine" for k in kinds[:m["trap"]])  # nothing before the trap borrows
        assert all(op == "-" for op, _ in m["ops"][m["trap"] + 1:])
        if m["trap_kind"] == "hard":
            assert m["ops"][m["trap"]][1] in tb.HARD_DIGITS
        assert int(p["gold_answer"]) == m["answer"]
    after_add = tb.problems(50, 3, "train", after="add")
    assert any(op == "+" for p in after_add for op, _ in _meta(p)["ops"][_meta(p)["trap"] + 1:])


def test_every_correct_form_is_correct_and_forms_vary():
    rng = random.Random(0)
    for p in tb.problems(50, 0, "test"):
        texts = {tb.solution_text(_meta(p), rng, slips=False) for _ in range(8)}
        assert all(tb.first_wrong_line(p["meta"], t) is None for t in texts)
        assert len(texts) > 1  # two addition forms: many correct texts
    assert tb.first_wrong_line(p["meta"], p["gold_solution"]) is None


def _lines(p):
    return tb.solution_text(_meta(p), random.Random(1), slips=False).split("\n")


def test_first_wrong_line_finds_each_kind_of_mistake():
    p = tb.problems(1, 0, "train")[0]
    m, lines = _meta(p), _lines(p)
    trap = m["trap"]
    label, rest = lines[trap].split(": ", 1)
    v, _, d, _, r = rest.split()
    slipped = lines[:trap] + [f"{label}: {v} - {d} = {int(r) + 10}"] + lines[trap + 1:]
    assert tb.first_wrong_line(p["meta"], "\n".join(slipped)) == trap
    assert tb.first_wrong_line(p["meta"], "\n".join(lines[:trap] + [f"{label}: {d} - {v} = {r}"]
                                                    + lines[trap + 1:])) == trap  # no swapped subtraction
    first_add = next(i for i, (op, _) in enumerate(m["ops"]) if op == "+")
    wrong_label = lines[:first_add] + ["z" + lines[first_add][1:]] + lines[first_add + 1:]
    assert tb.first_wrong_line(p["meta"], "\n".join(wrong_label)) == first_add
    assert tb.first_wrong_line(p["meta"], "\n".join(lines[:5])) == 5  # stopped early
    assert tb.first_wrong_line(p["meta"], "\n".join(lines[:-1] + ["answer: 999"])) == len(lines) - 1
    assert tb.first_wrong_line(p["meta"], "\n".join(lines + ["x"])) == len(lines)
    assert tb.first_wrong_line(p["meta"], "\n".join(lines + ["", ""])) is None


def test_sft_slips_concentrate_on_the_trap():
    rng, counts = random.Random(0), {}
    problems = tb.problems(600, 0, "train")
    for p in problems:
        w = tb.first_wrong_line(p["meta"], tb.solution_text(_meta(p), rng))
        if w is not None and w < len(_meta(p)["ops"]):
            kind = tb.line_kinds(_meta(p))[w]
            counts[kind] = counts.get(kind, 0) + 1
    assert counts["trap-hard"] + counts["trap-easy"] > 2 * counts.get("routine", 0)


def _fail_at(p, line: int) -> str:
    lines = _lines(p)
    label, rest = lines[line].split(": ", 1)
    *head, r = rest.split()
    lines[line] = f"{label}: {' '.join(head)} {int(r) + 1}"
    return "\n".join(lines)


def test_premise_stats_tell_repeatable_errors_from_shuffled_noise():
    problems = tb.problems(60, 0, "train")
    rng = random.Random(0)
    correct = [tb.solution_text(_meta(p), rng, slips=False) for p in problems]
    # Repeatable: every failure of a problem is at its trap.
    repeatable = [[c, c, _fail_at(p, _meta(p)["trap"]), _fail_at(p, _meta(p)["trap"])]
                  for p, c in zip(problems, correct)]
    # Noise: failures at uniformly random lines.
    noise = [[c, c, _fail_at(p, rng.randrange(len(_meta(p)["ops"]))),
              _fail_at(p, rng.randrange(len(_meta(p)["ops"])))] for p, c in zip(problems, correct)]
    r, n = tb.premise_stats(problems, repeatable), tb.premise_stats(problems, noise)
    assert r["accuracy"] == n["accuracy"] == 0.5
    assert r["repeat_same_line"] == 1.0 and r["repeat_ratio"] > 3
    assert n["repeat_ratio"] < 2
    assert r["first_errors_by_kind"].keys() <= {"trap-hard", "trap-easy"}
    assert r["error_rate_by_kind"]["routine"]["rate"] == 0.0


def test_premise_stats_diversity():
    problems = tb.problems(20, 0, "train")
    same = [[p["gold_solution"]] * 3 + [_fail_at(p, _meta(p)["trap"])] for p in problems]
    s = tb.premise_stats(problems, same)
    assert s["distinct_correct_texts"] == 1.0
    rng = random.Random(0)
    varied = [[tb.solution_text(_meta(p), rng, slips=False) for _ in range(3)] + [_fail_at(p, _meta(p)["trap"])]
              for p in problems]
    v = tb.premise_stats(problems, varied)
    assert v["distinct_correct_texts"] > 2.5 and v["diverge_before_first_wrong"] > 0.8


def test_source_and_ground_truth_in_locate():
    from stages.core.sources.problems import load_problems
    from stages.locate import ground_truth

    table = load_problems("toy:borrow?n=5&seed=2&split=valid").table.to_pylist()
    assert [r["source"] for r in table] == ["toy:borrow"] * 5 and table[0]["checker"] == "numeric"
    assert load_problems("toy:borrow?n=3&after=add").table.num_rows == 3
    for bad in ("toy:borrow?after=mul", "toy:borrow?colour=red", "toy:borrow?split=dev", "toy:nope"):
        with pytest.raises(GpoError):
            load_problems(bad)
    p = table[0]
    trap = json.loads(p["meta"])["trap"]
    sample = {**p, "reward": 0, "response_text": _fail_at({"meta": p["meta"]}, trap)}
    assert ground_truth(sample) == trap
    assert ground_truth({**sample, "reward": 1}) is None
    assert ground_truth({**sample, "source": "reasoning-gym:x"}) is None
