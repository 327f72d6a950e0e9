#!/usr/bin/env bash
# The main job: set up, then run the built-in GPO demo on the toy task and tiny model (CPU, no network).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/gpo demo "$@"
