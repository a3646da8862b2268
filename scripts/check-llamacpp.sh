#!/usr/bin/env bash
# The compiled llama.cpp check (run by hand, once per llama.cpp version; not part of scripts/test.sh:
# building the runtime takes tens of minutes on 2 cores). Results go in docs/serving.md.
#
#   bash scripts/check-llamacpp.sh          # builds .venv-llamacpp once, then ~2 minutes
#
# 1. the converters from the pinned llama-cpp-python sdist (scripts/llamacpp-converter.sh, cached);
# 2. .venv-llamacpp: llama-cpp-python built from the SAME sdist (CPU, no llava / tools / tests);
# 3. scripts/check_llamacpp.py with the main .venv: an rsLoRA '01110' adapter on SmolLM2-135M-Instruct
#    (~/.cache/midblock/SmolLM2-135M-Instruct, or MODEL=DIR), its `midblock export --target llama.cpp`,
#    both converted to GGUF (f32) and run by llama.cpp; logits against HF + PEFT at every position.
#    Exit 0 when the export matches (max |logit diff| within twice the base model's own llama.cpp-vs-HF
#    difference and under 5% of the adapter's effect, same argmax everywhere); the original
#    rsLoRA adapter's error is reported, not checked (it is the trap the export removes).
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
VENV="${LLAMACPP_VENV:-.venv-llamacpp}"
PYTHON="${PYTHON:-python3.11}"
WORK="${WORK:-runs/check-llamacpp}"
MODEL="${MODEL:-$HOME/.cache/midblock/SmolLM2-135M-Instruct}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PIP_DISABLE_PIP_VERSION_CHECK=1

# llama.cpp's convert_hf_to_gguf.py imports sentencepiece before it falls back to a BPE vocabulary
# (SmolLM2's), so the base-model conversion needs it in the main environment (a 1 MB wheel).
.venv/bin/python -c "import sentencepiece" 2>/dev/null || .venv/bin/python -m pip install -q "sentencepiece==0.2.3"
CONVERTER="$(PYTHON=.venv/bin/python bash scripts/llamacpp-converter.sh | tail -n 1)"
SDIST="${MIDBLOCK_LLAMACPP_SDIST:-$(dirname "$CONVERTER")/llama_cpp_python-$VERSION.tar.gz}"

if ! "$VENV/bin/python" -c "import llama_cpp, sys; sys.exit(llama_cpp.__version__ != '$VERSION')" 2>/dev/null; then
    echo "check-llamacpp: building llama-cpp-python $VERSION from $SDIST into $VENV (tens of minutes on 2 cores)"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    start=$(date +%s)
    CMAKE_ARGS="-DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF" \
    CMAKE_BUILD_PARALLEL_LEVEL="${JOBS:-2}" \
        "$VENV/bin/python" -m pip install -q "$SDIST"
    echo "check-llamacpp: built in $(( $(date +%s) - start )) s"
fi
.venv/bin/python scripts/check_llamacpp.py --converter "$CONVERTER" --llama-python "$VENV/bin/python" \
    --work "$WORK" --model "$MODEL"
