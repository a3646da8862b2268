#!/usr/bin/env bash
# Create (or reuse) .venv-axolotl: Axolotl in its own virtual environment, because it pins
# its own transformers / trl / peft (0.19.0: transformers 5.16, trl 1.9, peft 0.20).
#
#   bash .ci/axolotl-setup.sh            # idempotent; ~3 min and 4.3 GB on a fresh machine
#   .venv-axolotl/bin/python -m pytest tests/axolotl -q
#
# Axolotl 0.19.0 is the newest release for Python 3.11 (0.20+ need Python >= 3.12); the
# plugin supports 0.17 and newer. torch 2.13.0 is installed first so pip takes the local CPU
# wheel; Axolotl 0.19.0's requirements accept it (measured: torch 2.13.0+cpu, axolotl 0.19.0,
# transformers 5.16.1, trl 1.9.0, peft 0.20.0, accelerate 1.13.0, datasets 4.8.4).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${AXOLOTL_VENV:-.venv-axolotl}"
PYTHON="${PYTHON:-python3}"
AXOLOTL_VERSION="0.19.0"
TORCH_VERSION="2.13.0"
export AXOLOTL_DO_NOT_TRACK=1 DO_NOT_TRACK=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PIP_DISABLE_PIP_VERSION_CHECK=1

have_versions() {
    [ -x "$VENV/bin/python" ] || return 1
    "$VENV/bin/python" - "$AXOLOTL_VERSION" "$TORCH_VERSION" <<'PY' 2>/dev/null
import sys
from importlib.metadata import PackageNotFoundError, version

axolotl, torch = sys.argv[1], sys.argv[2]
try:
    ok = (version("axolotl") == axolotl and version("torch").split("+")[0] == torch
          and version("pytest") and version("pyyaml"))
except PackageNotFoundError:
    ok = False
sys.exit(0 if ok else 1)
PY
}

if have_versions; then
    echo "axolotl-setup: reusing $VENV (axolotl $AXOLOTL_VERSION, torch $TORCH_VERSION)"
else
    echo "axolotl-setup: creating $VENV"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q "torch==$TORCH_VERSION"
    "$VENV/bin/python" -m pip install -q "axolotl==$AXOLOTL_VERSION" pytest pyyaml
fi
# Axolotl 0.19's `deepspeed` extra range, for the ZeRO-3 tests; no ops compiled ahead of time,
# and no build isolation (its setup imports the torch installed above).
if ! "$VENV/bin/python" -c "import deepspeed" 2>/dev/null; then
    DS_BUILD_OPS=0 "$VENV/bin/python" -m pip install -q --no-build-isolation "deepspeed>=0.18.6,<0.19"
fi
# the plugin itself, editable, without letting pip touch Axolotl's pins
"$VENV/bin/python" -m pip install -q -e . --no-deps
"$VENV/bin/python" -W ignore -c "import axolotl, midblock_plugin.integrations.axolotl.plugin; print('axolotl-setup: ok, axolotl', axolotl.__version__)"
