#!/usr/bin/env bash
# Install llama-cpp-python's OpenAI-compatible server into the active Python environment, for the
# real-server integration test of the auto-interp stage (tests/test_interp_server.py).
#
# llama-cpp-python ships only as a source distribution on PyPI: the first install compiles llama.cpp
# (about 5 minutes on 2 cores); pip keeps the built wheel in its cache, so later installs take seconds.
# Needs only PyPI: cmake and ninja come from PyPI when the machine has none; a C/C++ compiler is taken
# from the system (gcc/clang) or, failing that, from the `ziglang` wheel on PyPI.
#
# Usage: .ci/install-llama-server.sh            (uses `python` on PATH, e.g. an activated venv)
#        PYTHON=/path/to/python .ci/install-llama-server.sh
set -euo pipefail

PYTHON="${PYTHON:-python}"
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"

if "$PYTHON" -c "import llama_cpp.server, uvicorn" 2>/dev/null; then
    echo "llama-cpp-python server already installed: $("$PYTHON" -c 'import llama_cpp; print(llama_cpp.__version__)')"
    exit 0
fi

# The torch build must never be replaced: check that the install plan leaves it alone.
plan="$("$PYTHON" -m pip install --dry-run "llama-cpp-python[server]==$VERSION" 2>&1 || true)"
if grep -qiE "Would install.*\btorch-" <<<"$plan"; then
    echo "refusing: installing llama-cpp-python would replace torch" >&2
    exit 1
fi

if ! command -v cc >/dev/null && ! command -v gcc >/dev/null && ! command -v clang >/dev/null; then
    echo "no system C compiler: using zig's from PyPI (ziglang)"
    "$PYTHON" -m pip install --quiet ziglang
    shim="$(mktemp -d)"
    printf '#!/bin/sh\nexec "%s" -m ziglang cc "$@"\n' "$PYTHON" >"$shim/zcc"
    printf '#!/bin/sh\nexec "%s" -m ziglang c++ "$@"\n' "$PYTHON" >"$shim/zcxx"
    chmod +x "$shim/zcc" "$shim/zcxx"
    export CC="$shim/zcc" CXX="$shim/zcxx"
fi

# Only the library and its Python server are needed: skip the multimodal (llava/mtmd) targets.
# A portable AVX2 build, not -march=native: on VMs that advertise AMX without enabling it (seen here),
# a native build dies with an invalid opcode (tilezero) on the first request.
export CMAKE_ARGS="${CMAKE_ARGS:--DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON}"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc 2>/dev/null || echo 2)}"

start=$(date +%s)
"$PYTHON" -m pip install "llama-cpp-python[server]==$VERSION"
"$PYTHON" -c "import llama_cpp.server, uvicorn; import llama_cpp; print('llama-cpp-python', llama_cpp.__version__, 'installed')"
echo "install took $(( $(date +%s) - start )) s"
