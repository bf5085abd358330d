#!/usr/bin/env bash
# Set up the project's virtual environments on a fresh machine (idempotent).
#   .venv        the project with its runtimes (transformers 5.x, onnxruntime, llama.cpp)
#   .venv-hf457  transformers 4.57.6, for the portability test (the project is not installed there)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PIP_DISABLE_PIP_VERSION_CHECK=1
# torch is pinned: 2.13.0 is the CPU build this machine serves from disk; other requests pull CUDA builds.
TORCH=${LONGROPE_TORCH:-torch==2.13.0}
if [ ! -x .venv/bin/python ]; then "$PY" -m venv .venv; fi
.venv/bin/pip install -q "$TORCH"
CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF}" .venv/bin/pip install -q -e ".[test,onnx,gguf]" "$TORCH"
if [ ! -x .venv-hf457/bin/python ]; then "$PY" -m venv .venv-hf457; fi
.venv-hf457/bin/pip install -q "$TORCH" "transformers==4.57.6" safetensors numpy
