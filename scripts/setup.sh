#!/usr/bin/env bash
# Create .venv with midblock and the TRL / DeepSpeed / lm-eval / test stack (pinned versions).
# Idempotent: reuses .venv if it is already complete.  Usage: bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch first and pinned: pip then takes the CPU wheel available locally instead of a CUDA build.
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[trl,deepspeed,eval,analysis,dev]" -c requirements/constraints.txt
python -c "import midblock_plugin, trl, peft, lm_eval; print('midblock', midblock_plugin.__version__, '| trl', trl.__version__, '| peft', peft.__version__)"
