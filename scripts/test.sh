#!/usr/bin/env bash
# The test command: set up the three virtual environments (main, Axolotl, vLLM) and run every CPU test.
#   bash scripts/test.sh            # everything
#   bash scripts/test.sh -k window  # extra arguments go to the main pytest run
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 AXOLOTL_DO_NOT_TRACK=1 DO_NOT_TRACK=1 WANDB_DISABLED=true
# the real GSM8K beside the checkout (tests/conftest.py does the same when run directly)
if [ -z "${MIDBLOCK_GSM8K_DIR:-}" ] && [ -f ../shared/data/gsm8k/test.jsonl ]; then
  export MIDBLOCK_GSM8K_DIR="$(cd ../shared/data/gsm8k && pwd)"
fi
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest tests --ignore=tests/axolotl --ignore=tests/vllm -q --durations=30 "$@"
# Axolotl in its own environments: the full suite on the newest release (0.21, Python 3.12 from
# pyenv), a smoke subset on 0.19 (the newest for Python 3.11); docs/axolotl.md says why.
if [ -f .ci/axolotl-setup.sh ] && [ -d tests/axolotl ]; then
  bash .ci/axolotl-setup.sh
  .venv-axolotl/bin/python -m pytest tests/axolotl -q -m axolotl_smoke --durations=10
  rc=0; AXOLOTL_VERSION=0.21.0 bash .ci/axolotl-setup.sh || rc=$?
  if [ "$rc" = 0 ]; then
    .venv-axolotl021/bin/python -m pytest tests/axolotl -q --durations=20
  elif [ "$rc" = 3 ]; then
    echo "test.sh: SKIPPED the Axolotl 0.21 suite: no Python 3.12 (pyenv install 3.12, or PYTHON=/path/to/python3.12)"
  else
    exit "$rc"
  fi
fi
# the real vLLM (PyPI's CPU build) in its own environment: adapters served against HF + PEFT
bash scripts/setup-vllm.sh
.venv-vllm/bin/python -m pytest tests/vllm -q --durations=10
