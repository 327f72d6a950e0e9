"""Are two output folders the same? For a refactor that must not change behaviour: run the same commands
before and after (e.g. a chain and `gpo demo --quick`, with SLURM_CPUS_PER_TASK=1 so torch's thread count,
and with it the sampled tokens, does not follow the machine's load), then

    .venv/bin/python bench/same_outputs.py BEFORE AFTER

compares every Parquet file (row for row, sorted) and every summary.json found under both, after dropping
what measures the machine rather than the method: wall and CPU times, throughput, and absolute paths (the
two folders' own names). Prints one line per difference and a count; exits 1 if any."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pyarrow.parquet as pq

TIMING = re.compile(r"(runtime|per_second|seconds|wall|cpu|timings|tok_per|elapsed|throughput|started|finished"
                    r"|created|_at$)", re.I)


def scrub(value, roots: tuple[str, ...]):
    """The value with timing keys dropped and the folder's own path replaced by a placeholder."""
    if isinstance(value, dict):
        return {k: scrub(v, roots) for k, v in value.items() if not TIMING.search(str(k))}
    if isinstance(value, list):
        return [scrub(v, roots) for v in value]
    if isinstance(value, str):
        for root in roots:
            value = value.replace(root, "<OUT>")
        return value
    return value


def parquet_rows(path: Path, roots: tuple[str, ...]) -> list[str]:
    table = pq.read_table(path)
    keep = [c for c in table.column_names if not TIMING.search(c)]
    return sorted(json.dumps(scrub(r, roots), sort_keys=True, default=str) for r in table.select(keep).to_pylist())


def files(root: Path) -> dict[str, Path]:
    return {str(p.relative_to(root)): p for p in root.rglob("*")
            if p.is_file() and (p.suffix == ".parquet" or p.name == "summary.json") and "/." not in str(p)}


def compare(a: Path, b: Path) -> list[str]:
    fa, fb = files(a), files(b)
    diffs = [f"only in {a}: {n}" for n in sorted(fa.keys() - fb.keys())]
    diffs += [f"only in {b}: {n}" for n in sorted(fb.keys() - fa.keys())]
    for name in sorted(fa.keys() & fb.keys()):
        ra, rb = (str(a.resolve()), str(a)), (str(b.resolve()), str(b))
        if name.endswith(".parquet"):
            x, y = parquet_rows(fa[name], ra), parquet_rows(fb[name], rb)
        else:
            x, y = ([json.dumps(scrub(json.loads(f[name].read_text()), r), sort_keys=True)]
                    for f, r in ((fa, ra), (fb, rb)))
        if x != y:
            diffs.append(f"differs: {name} ({sum(u != v for u, v in zip(x, y)) + abs(len(x) - len(y))} rows)")
    print(f"{len(fa.keys() & fb.keys())} files in both, {len(diffs)} differences")
    return diffs


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not all(Path(p).is_dir() for p in argv):
        print("error: usage: same_outputs.py BEFORE_DIR AFTER_DIR (two existing folders)", file=sys.stderr)
        return 2
    diffs = compare(Path(argv[0]), Path(argv[1]))
    for line in diffs:
        print(line)
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
