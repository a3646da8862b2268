#!/usr/bin/env bash
# Create (or reuse) a virtual environment holding Axolotl, DeepSpeed and midblock (editable, from this
# checkout). Axolotl pins its own transformers / trl / peft, so it gets an environment of its own.
#
#   bash scripts/setup-axolotl.sh && . .venv-axolotl/bin/activate            # Axolotl 0.19, Python 3.11 (~3 min)
#   AXOLOTL_VERSION=0.21.0 bash scripts/setup-axolotl.sh                     # Axolotl 0.21, Python 3.12 -> .venv-axolotl021
#   AXOLOTL_DO_NOT_TRACK=1 axolotl train examples/axolotl/tiny-cpu.yml       # then train (see that file's header)
#
# The work is done by .ci/axolotl-setup.sh, the script CI runs (its header lists the variables:
# AXOLOTL_VERSION, AXOLOTL_VENV, PYTHON, TORCH_VERSION); this is its name for users.
set -euo pipefail
exec bash "$(cd "$(dirname "$0")/.." && pwd)/.ci/axolotl-setup.sh" "$@"
