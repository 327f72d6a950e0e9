"""bench/estimate_throughput.py's bound (issue 19): what it charges a rollout, and that no committed result
ran faster than it (a variant above the bound means the bound bounds nothing)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import estimate_throughput as bench  # noqa: E402

RESULTS = sorted((ROOT / "bench" / "results").glob("estimate_throughput*.json"))


def test_each_decode_forward_is_charged_the_cost_at_or_below_its_cache_length():
    table = {"contexts": [1, 10, 20], "cpu": [1.0, 2.0, 5.0], "wall": [0.5, 1.0, 3.0]}
    # cache lengths 8, 9 at the first grid point's cost, then 10, 11, 12 at the second's
    assert bench.bound_seconds([[8, 5]], table, "cpu") == 2 * 1.0 + 3 * 2.0
    # past the last grid point its cost holds; rollouts add up; the clock picks the column
    assert bench.bound_seconds([[19, 3], [1, 1]], table, "cpu") == 2.0 + 2 * 5.0 + 1.0
    assert bench.bound_seconds([[8, 5]], table, "wall") == 2 * 0.5 + 3 * 1.0
    # the prefill yields the first token; a stopped row's EOS costs a forward, a row cut at its budget does not
    assert bench.decode_steps(7, 4, True) == [7, 4] and bench.decode_steps(7, 4, False) == [7, 3]


def test_two_measurements_of_the_bound_keep_the_cheaper_cost_at_each_length():
    a = {"contexts": [1, 10], "cpu": [1.0, 4.0], "wall": [2.0, 1.0], "best_batch": [64, 256]}
    b = {"contexts": [1, 10], "cpu": [2.0, 3.0], "wall": [1.0, 2.0], "best_batch": [128, 128]}
    both = bench.cheaper(a, b)
    assert both["cpu"] == [1.0, 3.0] and both["wall"] == [1.0, 1.0] and both["best_batch"] == [64, 128]


@pytest.mark.parametrize("path", RESULTS, ids=[p.name for p in RESULTS])
def test_no_committed_variant_ran_faster_than_the_bound(path):
    data = json.loads(path.read_text())
    assert data["bound_ok"] is True and data["bound_violations"] == []
    key = "cpu_seconds" if data["clock"] == "cpu" else "seconds"
    results = {name: r for name, r in data["results"].items() if "error" not in r}
    assert {"hf", "stage"} <= set(results)  # the backend and the stage itself were both measured
    for name, r in results.items():
        assert 0 < r["bound_seconds"] <= r[key], name
        assert r["fraction_of_bound"] == pytest.approx(r["bound_seconds"] / r[key]), name


def test_the_committed_results_cover_the_issues_three_workloads():
    models = {json.loads(p.read_text())["model"].rstrip("/").split("/")[-1] for p in RESULTS}
    assert {"toy-model", "borrow-model", "model"} <= models  # toy:arith, toy:borrow, SmolLM2 (runs/…/model)
