#!/usr/bin/env bash
# The test suite: set up, lint (ruff), type-check (mypy; both configured in pyproject.toml), then run every test
# (slow ones included; GPU-only ones skip without a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 TOKENIZERS_PARALLELISM=false
.venv/bin/ruff check gpo_cli stages tests bench
.venv/bin/mypy  # files and settings: [tool.mypy] in pyproject.toml
# One worker per core (at most 4), each taking a whole file at a time (module fixtures are built once), in
# the order tests/conftest.py gives (longest first, not xdist's most-tests-first);
# `-n 0` after the script runs serially.
exec .venv/bin/python -m pytest -q -n auto --maxprocesses 4 --dist loadfile --no-loadscope-reorder "$@"
