#!/usr/bin/env bash
# The main job: `midblock run` with the GSM8K copy beside the checkout when there is one.
#   bash scripts/run.sh --output-dir runs/main [more `midblock run` options]
# midblock itself reads GSM8K from --data-dir, else $MIDBLOCK_GSM8K_DIR, else the hub.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${MIDBLOCK_GSM8K_DIR:-}" ] && [ -f ../shared/data/gsm8k/test.jsonl ]; then
  export MIDBLOCK_GSM8K_DIR="$(cd ../shared/data/gsm8k && pwd)"
fi
exec .venv/bin/midblock run "$@"
