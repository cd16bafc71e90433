#!/usr/bin/env bash
# Builds llama.cpp's own llama-server from the very source the installed llama-cpp-python was
# built from (the sdist vendors it), into bench/.llama-server/ (never committed).
# Usage: bench/build_llama_server.sh [python]   -> prints the path of the binary
set -euo pipefail
PY=${1:-.venv/bin/python}
here=$(cd "$(dirname "$0")" && pwd)
out="$here/.llama-server"
version=$("$PY" -c "import llama_cpp; print(llama_cpp.__version__)")
bin="$out/build-$version/bin/llama-server"
if [ -x "$bin" ]; then echo "$bin"; exit 0; fi
mkdir -p "$out"
"$PY" -m pip download --quiet --no-binary :all: --no-deps -d "$out" "llama-cpp-python==$version" >&2
src="$out/src-$version"
rm -rf "$src" && mkdir -p "$src"
tar -xzf "$out/llama_cpp_python-$version.tar.gz" -C "$src" --strip-components=1
cmake -S "$src/vendor/llama.cpp" -B "$out/build-$version" -DCMAKE_BUILD_TYPE=Release \
  -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DGGML_NATIVE=ON >&2
cmake --build "$out/build-$version" --target llama-server -j "$(nproc)" >&2
echo "$bin"
