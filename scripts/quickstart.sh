#!/usr/bin/env bash
# One command for a newcomer: set everything up, then solve a problem with 12 seeded
# tool-integrated-reasoning streams on the embedded CPU engine, code executed in the sandbox.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/aimo-infer solve --max-tokens 384 --trace runs/quickstart/trace.jsonl \
  "${1:-What is the remainder when 2^100 is divided by 7? Use Python to check.}"
