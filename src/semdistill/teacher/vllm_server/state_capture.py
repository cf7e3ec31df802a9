"""A vLLM worker extension that keeps every layer's state at each prompt's last token.

Loaded by vLLM in its worker process (``worker_extension_cls="state_capture.StateCapture"``);
:meth:`StateCapture.install_capture` hooks the decoder's embedding, layers and final norm.
Whenever a step's batch finishes the prefill of a request whose id starts with
:data:`PREFIX`, the row of its last prompt token is kept, found from the model runner's batch
(request order, query offsets, tokens computed before the step), so concurrent requests and
chunked prefills each get their own row. The states follow Hugging Face's
``output_hidden_states``: index 0 the embedding output, index ``i`` the residual stream after
decoder layer ``i`` (vLLM layers return it as ``hidden + residual``), the last one after the
final norm. :meth:`StateCapture.take_states` hands them out once.
"""

from __future__ import annotations

from typing import Any

import torch

PREFIX = "semdistill-states-"


class StateCapture:
    """Mixed into vLLM's worker: ``self.model_runner`` is the worker's model runner."""

    model_runner: Any

    def install_capture(self) -> None:
        """Hook the model (once)."""
        if getattr(self, "_capture", None) is not None:
            return
        decoder = self.model_runner.model.model
        layers = list(decoder.layers)
        self._capture: dict[str, list[torch.Tensor | None]] = {}
        self._targets: list[tuple[str, int]] = []
        width = len(layers) + 1

        def plan(_module: torch.nn.Module, _args: Any) -> None:
            self._targets = self._finishing_prefills()
            for request_id, _ in self._targets:
                self._capture[request_id] = [None] * width

        def keep(index: int, rows: torch.Tensor) -> None:
            picked = rows[[row for _, row in self._targets]].float().cpu()
            for (request_id, _), state in zip(self._targets, picked, strict=True):
                self._capture[request_id][index] = state

        def on_embedding(_module: torch.nn.Module, _args: Any, out: torch.Tensor) -> None:
            if self._targets:
                keep(0, out)

        def on_layer(index: int) -> Any:
            def hook(_module: torch.nn.Module, _args: Any, out: tuple) -> None:
                if self._targets:
                    hidden, residual = out
                    keep(index, hidden + residual)

            return hook

        def on_norm(_module: torch.nn.Module, _args: Any, out: Any) -> None:
            if self._targets:
                keep(len(layers), out[0] if isinstance(out, tuple) else out)

        # The decoder's own hooks are skipped by vLLM's compile wrapper; its embedding runs first.
        decoder.embed_tokens.register_forward_pre_hook(plan)
        decoder.embed_tokens.register_forward_hook(on_embedding)
        for index, layer in enumerate(layers[:-1], start=1):
            layer.register_forward_hook(on_layer(index))
        decoder.norm.register_forward_hook(on_norm)

    def _finishing_prefills(self) -> list[tuple[str, int]]:
        """(request id, row) of each captured request whose prompt's last token is in this step."""
        batch = self.model_runner.input_batch
        n = batch.num_reqs
        if n == 0:
            return []
        ends = self.model_runner.query_start_loc.np[1 : n + 1]
        starts = self.model_runner.query_start_loc.np[:n]
        done = batch.num_computed_tokens_cpu[:n]
        prompt = batch.num_prompt_tokens[:n]
        targets = []
        for i, request_id in enumerate(batch.req_ids[:n]):
            scheduled = int(ends[i] - starts[i])
            if request_id.startswith(PREFIX) and done[i] < prompt[i] <= done[i] + scheduled:
                targets.append((request_id, int(starts[i] + prompt[i] - done[i] - 1)))
        return targets

    def take_states(self, request_ids: list[str]) -> dict[str, list[list[float]] | None]:
        """Each request's captured states ``(states, hidden)`` as nested lists, then forgets
        them; None for a request with no complete capture. ``request_ids`` are the ids the
        requests were given."""
        taken: dict[str, list[list[float]] | None] = {}
        for request_id in request_ids:
            # vLLM may add a suffix of its own to the id a request was given
            key = next((k for k in self._capture if k.startswith(f"{request_id}-")), request_id)
            rows = self._capture.pop(key, None)
            complete = rows is not None and all(row is not None for row in rows)
            taken[request_id] = torch.stack(rows).tolist() if complete else None
        return taken
