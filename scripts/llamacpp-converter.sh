#!/usr/bin/env bash
# Download llama.cpp's converters ONCE (cached) and print the directory that holds them.
#
#   bash scripts/llamacpp-converter.sh       # last line of stdout: DIR with convert_lora_to_gguf.py
#   python DIR/convert_lora_to_gguf.py --base BASE_DIR --outfile out.gguf ADAPTER_DIR
#
# The converters come from the pinned llama-cpp-python sdist, which vendors llama.cpp
# (vendor/llama.cpp: convert_hf_to_gguf.py, convert_lora_to_gguf.py, conversion/, gguf-py/).
# The sdist (77 MB) is fetched with `pip download --no-deps --no-binary llama-cpp-python`
# (not --no-binary :all:, which would build its build dependencies too) into the cache,
# and only the converters are unpacked; nothing is compiled. scripts/check-llamacpp.sh builds
# the runtime from the same sdist.
#
# Cache: $MIDBLOCK_LLAMACPP_CACHE, default ~/.cache/midblock/llama-cpp-python-$VERSION. An sdist
# already in it (or named by $MIDBLOCK_LLAMACPP_SDIST) is used without any network.
# Exit status 3 (and a message on stderr) when the sdist can be neither found nor downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
CACHE="${MIDBLOCK_LLAMACPP_CACHE:-$HOME/.cache/midblock/llama-cpp-python-$VERSION}"
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
NAME="llama_cpp_python-$VERSION"
SDIST="${MIDBLOCK_LLAMACPP_SDIST:-$CACHE/$NAME.tar.gz}"
DEST="$CACHE/converter"

mkdir -p "$CACHE"
if [ ! -f "$SDIST" ]; then
    echo "llamacpp-converter: downloading the llama-cpp-python==$VERSION sdist into $CACHE" >&2
    tmp="$(mktemp -d "$CACHE/download.XXXXXX")"
    if ! "$PYTHON" -m pip download -q --no-deps --no-binary llama-cpp-python "llama-cpp-python==$VERSION" \
            -d "$tmp" >&2 || [ ! -f "$tmp/$NAME.tar.gz" ]; then
        rm -rf "$tmp"
        echo "llamacpp-converter: could not download llama-cpp-python==$VERSION (no network?). Put $NAME.tar.gz" \
             "in $CACHE or name it with MIDBLOCK_LLAMACPP_SDIST." >&2
        exit 3
    fi
    mv "$tmp/$NAME.tar.gz" "$SDIST"
    rm -rf "$tmp"
fi
if [ ! -f "$DEST/.complete" ] || [ "$(cat "$DEST/.complete")" != "$(basename "$SDIST") $(stat -c %s "$SDIST")" ]; then
    echo "llamacpp-converter: unpacking the converters of $(basename "$SDIST")" >&2
    rm -rf "$DEST" "$CACHE/unpack"
    mkdir -p "$CACHE/unpack"
    src="$NAME/vendor/llama.cpp"
    tar xzf "$SDIST" -C "$CACHE/unpack" --no-wildcards-match-slash --wildcards \
        "$src/convert_hf_to_gguf.py" "$src/convert_lora_to_gguf.py" "$src/conversion" "$src/gguf-py"
    mv "$CACHE/unpack/$src" "$DEST"
    rm -rf "$CACHE/unpack"
    echo "$(basename "$SDIST") $(stat -c %s "$SDIST")" > "$DEST/.complete"
fi
echo "$DEST"
