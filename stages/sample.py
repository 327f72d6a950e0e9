"""Stage `sample`: draw n reasoning trajectories per problem and score them.

    gpo sample --problems 'toy:arith?n=200&split=train' --model data/toy-model --run runs/toy --n 4

Writes RUN/sample/*.parquet, one row per (problem, sample), with the exact prompt and response token ids
so later stages cut steps on ids and never re-tokenize.
"""

from __future__ import annotations

import pyarrow as pa

from stages.core.pipeline.runner import Context, Stage
from stages.core.generation.sampling import SAMPLE_SCHEMA, SampleSettings, sample_rows

__all__ = ["STAGE", "SampleSettings", "process"]


def process(problems: pa.Table, ctx: Context) -> dict[str, pa.Table]:
    return {"sample": sample_rows(problems, ctx, ctx.settings)}


STAGE = Stage(name="sample", input=None, outputs={"sample": SAMPLE_SCHEMA},
              key=("problem_id", "sample_idx"), process=process)
