#!/usr/bin/env bash
# Create (or reuse) a virtual environment holding Axolotl, because Axolotl pins its own
# transformers / trl / peft. One script, two supported lines:
#
#   bash .ci/axolotl-setup.sh                          # 0.19.0, Python 3.11 -> .venv-axolotl
#   AXOLOTL_VERSION=0.21.0 bash .ci/axolotl-setup.sh   # 0.21.0, Python 3.12 -> .venv-axolotl021
#   .venv-axolotl/bin/python -m pytest tests/axolotl -q
#   .venv-axolotl021/bin/python -m pytest tests/axolotl -q
#
# Variables (all optional):
#   AXOLOTL_VERSION  0.19.0 (default) or 0.21.0; any other release is tried with the defaults of the nearest line
#   AXOLOTL_VENV     where the environment goes (default .venv-axolotl for 0.19, .venv-axolotl021 for 0.21)
#   PYTHON           the interpreter to build it from (default: python3 for 0.19; for 0.21 the first python3.12
#                    under `pyenv root`/versions, else python3.12 on PATH)
#   TORCH_VERSION    torch to install first (default 2.13.0)
#
# Axolotl 0.19.0 is the newest release for Python 3.11; 0.20+ need Python >= 3.12. For 0.19 the local
# CPU torch 2.13.0 wheel (cp311) is taken; for Python 3.12 PyPI only has CUDA builds of torch (several GB
# with their nvidia-* packages), which run on the CPU. Measured on a 2-core machine:
#   0.19.0: ~3 min, 4.3 GB (torch 2.13.0+cpu, transformers 5.16.1, trl 1.9.0, peft 0.20.0, accelerate 1.13.0)
#   0.21.0: see docs/axolotl.md (torch 2.13.0 CUDA build, transformers 5.20.1, trl 1.14.1, peft 0.21.2)
# Where no Python 3.12 exists, the script exits with status 3 and says how to provide one; the test
# command then skips the 0.21 suite with that message.
set -euo pipefail
cd "$(dirname "$0")/.."

AXOLOTL_VERSION="${AXOLOTL_VERSION:-0.19.0}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
case "$AXOLOTL_VERSION" in
    0.1[0-9]*) LINE=py311 ;;
    *) LINE=py312 ;;
esac
if [ "$LINE" = py311 ]; then
    VENV="${AXOLOTL_VENV:-.venv-axolotl}"
    PYTHON="${PYTHON:-python3}"
    DEEPSPEED_SPEC="deepspeed>=0.18.6,<0.19"
else
    VENV="${AXOLOTL_VENV:-.venv-axolotl021}"
    if [ -z "${PYTHON:-}" ]; then
        for candidate in "$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")"/versions/3.12*/bin/python3.12; do
            [ -x "$candidate" ] && PYTHON="$candidate" && break
        done
    fi
    if [ -z "${PYTHON:-}" ] && command -v python3.12 >/dev/null 2>&1; then
        PYTHON="$(command -v python3.12)"
    fi
    if [ -z "${PYTHON:-}" ]; then
        echo "axolotl-setup: SKIP axolotl $AXOLOTL_VERSION: it needs Python 3.12 and none was found" >&2
        echo "  (looked in \$(pyenv root)/versions/3.12*/bin/python3.12 and for python3.12 on PATH)." >&2
        echo "  Provide one with 'pyenv install 3.12' or your package manager, or set PYTHON=/path/to/python3.12." >&2
        exit 3
    fi
    # Axolotl 0.21's `deepspeed` extra range
    DEEPSPEED_SPEC="deepspeed>=0.18.6,<0.20"
fi
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
    echo "axolotl-setup: creating $VENV from $PYTHON ($("$PYTHON" --version 2>&1))"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q "torch==$TORCH_VERSION"
    "$VENV/bin/python" -m pip install -q "axolotl==$AXOLOTL_VERSION" "torch==$TORCH_VERSION" pytest pyyaml
fi
# Axolotl's `deepspeed` extra range, for the ZeRO-3 tests; no ops compiled ahead of time,
# and no build isolation (its setup imports the torch installed above).
if ! "$VENV/bin/python" -c "import deepspeed" 2>/dev/null; then
    DS_BUILD_OPS=0 "$VENV/bin/python" -m pip install -q --no-build-isolation "$DEEPSPEED_SPEC" "torch==$TORCH_VERSION"
fi
# the plugin itself, editable, without letting pip touch Axolotl's pins
"$VENV/bin/python" -m pip install -q -e . --no-deps
"$VENV/bin/python" -W ignore -c "import axolotl, midblock_plugin.integrations.axolotl.plugin; print('axolotl-setup: ok, axolotl', axolotl.__version__)"
