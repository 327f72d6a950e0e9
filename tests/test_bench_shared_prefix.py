"""bench/shared_prefix_attention.py measures a kernel only if it computes attention: its shared-prefix arms
must equal SDPA over the padded rows the backend holds (grouped-query heads, rows of several cohorts, finished
rows alone, groups larger than a chunk)."""

from __future__ import annotations

import pytest

from bench import shared_prefix_attention as spa

torch = pytest.importorskip("torch")


def _rows():
    # (prompt id, root id, prefix columns, own columns): 2 roots, 36 states of 4 rows, 3 cohorts, 2 finished rows
    rows = []
    for state in range(36):
        own = (1, 7, 30)[state % 3]
        for _ in range(4):
            rows.append((state, state % 2, 20 + 3 * state, own))
    rows += [(-1, -1, 95, 1), (-1, -1, 40, 1)]
    return rows


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (6, 2)])
@pytest.mark.parametrize("level", [0, 1])
def test_shared_prefix_attention_equals_padded_sdpa(heads, kv_heads, level):
    rows = _rows()
    width = max(p + o for *_, p, o in rows) + 5  # padded beyond the widest row, as a batch's cache can be
    with torch.inference_mode():
        step = spa.Step(torch, width, rows, heads, kv_heads, 16, level)
        assert len(step.cohorts) == 3
        assert any(c.n > 1 for c in step.cohorts)  # prefixes are shared: fewer groups than rows
        if level:
            assert max(c.n for c in step.cohorts) == spa.CHUNK  # 24 same-root rows of one cohort: chunked
        torch.testing.assert_close(step.shared(), step.padded(), atol=1e-4, rtol=1e-4)  # the bench stops above 1e-4


def test_a_wrong_prefix_length_is_caught():
    rows = _rows()
    width = max(p + o for *_, p, o in rows) + 5
    with torch.inference_mode():
        step = spa.Step(torch, width, rows, 4, 4, 16, 0)
        step.mask[0, ..., width - 2] = False  # the backend's row 0 (prefix 20, own 1) sees one prefix column fewer
        assert (step.shared() - step.padded()).abs().max() > 1e-4
