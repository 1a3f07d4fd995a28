#!/usr/bin/env bash
# Build llama.cpp's command-line tools (llama-simple, llama-cli, llama-quantize) at the exact
# llama.cpp version the installed llama-cpp-python was built from, to check a GGUF outside Python:
#   scripts/build_llama_cpp_tools.sh && $TUNECHAIN_CACHE/llama.cpp-<version>-bin/llama-simple -m model.gguf "prompt"
# About 5 minutes on 2 cores. The tests use llama-simple when TUNECHAIN_LLAMA_SIMPLE points at it.
set -euo pipefail
python=${PYTHON:-python}
version=$("$python" -c "import importlib.metadata as m; print(m.version('llama-cpp-python'))")
cache=${TUNECHAIN_CACHE:-$HOME/.cache/tunechain}
out="$cache/llama.cpp-$version-bin"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$python" -m pip download --no-deps --no-binary :all: -q -d "$work" "llama-cpp-python==$version"
tar xzf "$work"/llama_cpp_python-*.tar.gz -C "$work"
src=$(echo "$work"/llama_cpp_python-*/vendor/llama.cpp)
cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
      -DLLAMA_BUILD_SERVER=OFF -DBUILD_SHARED_LIBS=OFF > "$work/cmake.log"
cmake --build "$work/build" --target llama-simple llama-cli llama-quantize -j "$(nproc)" > "$work/build.log"
mkdir -p "$out"
cp "$work"/build/bin/llama-simple "$work"/build/bin/llama-cli "$work"/build/bin/llama-quantize "$out"/
echo "$out"
