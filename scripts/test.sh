#!/usr/bin/env bash
# The test suite: set up, lint (ruff), type-check (mypy; both configured in pyproject.toml), then run every test
# (slow ones included; GPU-only ones skip without a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 TOKENIZERS_PARALLELISM=false
.venv/bin/ruff check gpo_cli stages tests bench
.venv/bin/mypy  # files and settings: [tool.mypy] in pyproject.toml
exec .venv/bin/python -m pytest -q "$@"
