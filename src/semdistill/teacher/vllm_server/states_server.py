"""vLLM's OpenAI server with one more route, ``POST /semdistill/states``: every layer's
last-prompt-token state of each prompt, from vLLM's own forward.

Run with the Python of a venv that has vLLM (never imported by semdistill itself)::

    .venv-vllm/bin/python states_server.py --model DIR [any `vllm serve` option]

It is ``vllm serve`` with the worker extension of ``state_capture.py`` (this folder) installed.
The route takes ``{"prompts": [[token ids], ...]}``, prefills each prompt as a one-token
request and answers ``{"states": [[[float]]]}``: per prompt ``(layers + 1, hidden)`` float32.
"""

# No `from __future__ import annotations`: FastAPI reads the route's local annotations at runtime.
import asyncio
import os
import sys
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
EXTENSION = "state_capture.StateCapture"
ROUTE = "/semdistill/states"


def _states_router() -> Any:
    """The FastAPI router of the states route."""
    from fastapi import APIRouter, HTTPException, Request
    from pydantic import BaseModel, Field
    from state_capture import PREFIX
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    class StatesRequest(BaseModel):
        prompts: list[list[int]] = Field(min_length=1, max_length=256)

    router = APIRouter()
    installed: list[bool] = []

    async def one(engine: Any, ids: list[int], request_id: str) -> None:
        params = SamplingParams(max_tokens=1, temperature=0.0)
        async for _ in engine.generate(TokensPrompt(prompt_token_ids=ids), params, request_id):
            pass

    @router.post(ROUTE)
    async def states(body: StatesRequest, request: Request) -> dict[str, Any]:
        engine = request.app.state.engine_client
        if not installed:
            await engine.collective_rpc("install_capture")
            installed.append(True)
        if any(not ids for ids in body.prompts):
            raise HTTPException(422, "every prompt needs at least one token")
        ids = [f"{PREFIX}{uuid.uuid4().hex}" for _ in body.prompts]
        await asyncio.gather(*(one(engine, p, i) for p, i in zip(body.prompts, ids, strict=True)))
        # every tensor-parallel rank holds the whole residual stream: the first one's copy
        taken = (await engine.collective_rpc("take_states", args=(ids,)))[0]
        missing = [i for i in ids if taken.get(i) is None]
        if missing:
            raise HTTPException(500, f"no states were captured for {len(missing)} prompts")
        return {"states": [taken[i] for i in ids]}

    return router


def main() -> None:
    """``vllm serve`` with the capture extension and the states route."""
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(HERE), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    sys.path.insert(0, str(HERE))
    from vllm.entrypoints.launchers import app as launcher_app
    from vllm.entrypoints.launchers.api_server import entry

    build_app = launcher_app.build_app

    def with_states(*args: Any, **kwargs: Any) -> Any:
        app = build_app(*args, **kwargs)
        app.include_router(_states_router())
        return app

    entry.build_app = with_states
    sys.argv[1:1] = ["--worker-extension-cls", EXTENSION]
    entry.main()


if __name__ == "__main__":
    main()
