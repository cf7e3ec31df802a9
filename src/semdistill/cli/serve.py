"""The ``serve`` command: a trained SSD behind an HTTP service."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from semdistill.cli.common import USER_ERRORS, err_console, fail

if TYPE_CHECKING:
    from semdistill.scoring.scorer import Scorer
    from semdistill.serve.upstream import Upstream


def serve(
    directory: Annotated[Path, typer.Argument(help="Trained SSD directory (from train or run).")],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    max_prompts: Annotated[int, typer.Option(help="Prompts per /v1/risk request.")] = 64,
    max_answers: Annotated[int, typer.Option(help="Answers or options per request.")] = 64,
    max_chars: Annotated[int, typer.Option(help="Characters per prompt or answer.")] = 2000,
    max_new_tokens: Annotated[
        int, typer.Option(help="Most tokens per chat-completion choice (max_tokens).")
    ] = 256,
    batch_window_ms: Annotated[
        float, typer.Option(help="How long concurrent requests are gathered into one batch.")
    ] = 5.0,
    max_rows: Annotated[
        int, typer.Option(help="Answer rows decoded together (all requests' choices).")
    ] = 64,
    max_queue: Annotated[
        int, typer.Option(help="Requests (completions, scoring) that may wait for the model (429).")
    ] = 64,
    request_timeout: Annotated[
        float, typer.Option(help="Seconds a chat completion may take in all (503 after).")
    ] = 300.0,
    max_body: Annotated[
        int, typer.Option(help="Bytes per request body (413 beyond, before it is parsed).")
    ] = 1 << 20,
    max_request_chars: Annotated[
        int, typer.Option(help="Characters per risk/verify/choose request, all texts (413).")
    ] = 32_000,
    allowed_hosts: Annotated[
        list[str] | None,
        typer.Option(
            help="Host header values to accept (400 otherwise); default: loopback names when "
            "listening on loopback, any host otherwise.",
            show_default=False,
        ),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="SEMDISTILL_API_KEY",
            help="Require 'Authorization: Bearer KEY' on every /v1 route.",
            show_default=False,
        ),
    ] = None,
    abstain_above: Annotated[
        float | None,
        typer.Option(help="Abstain when the calibrated P(wrong answer) is above this."),
    ] = None,
    abstain_above_entropy: Annotated[
        float | None, typer.Option(help="Abstain when the risk entropy (nats) is above this.")
    ] = None,
    target_error: Annotated[
        float | None,
        typer.Option(
            help="Pick the entropy threshold on held-out labelled questions so that the error "
            "rate among answered questions stays at most this (with probability 1 - delta)."
        ),
    ] = None,
    delta: Annotated[float, typer.Option(help="Failure probability of --target-error.")] = 0.1,
    calibration_collection: Annotated[
        Path | None,
        typer.Option(help="Labelled store for --target-error (default: the training one)."),
    ] = None,
    calibration_split: Annotated[
        str, typer.Option(help="Held-out split of that store: validation or test.")
    ] = "validation",
    risk_report: Annotated[
        Path | None,
        typer.Option(help="Write the --target-error risk-coverage curve here (.json + .png)."),
    ] = None,
    flag_only: Annotated[
        bool, typer.Option(help="Answer anyway; only flag answers the rule would withhold.")
    ] = False,
    unfamiliar_below: Annotated[
        float | None,
        typer.Option(
            help="Take --unfamiliar-action when a question's familiarity (share of the "
            "scorer's validation prompts farther from its training prompts) is below this."
        ),
    ] = None,
    unfamiliar_action: Annotated[
        str, typer.Option(help="flag or abstain, for questions below --unfamiliar-below.")
    ] = "flag",
    refine_above: Annotated[
        float | None,
        typer.Option(
            help="Above this risk entropy (nats), sample the scorer's N answers beside the "
            "answer and return their Semantic Entropy with the risk.",
            show_default=False,
        ),
    ] = None,
    refine_budget: Annotated[
        float | None,
        typer.Option(
            help="Refine this share of questions instead: the threshold is that quantile of "
            "the risk of the scorer's validation prompts.",
            show_default=False,
        ),
    ] = None,
    upstream: Annotated[
        str | None,
        typer.Option(
            help="Answer chat completions with this vLLM server (base URL) after the local "
            "prefill gave the risk; checked to serve the SSD's base model.",
            show_default=False,
        ),
    ] = None,
    upstream_key: Annotated[
        str | None,
        typer.Option(
            envvar="SEMDISTILL_UPSTREAM_KEY",
            help="API key of the --upstream server.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Serve risk, verify, choose and OpenAI-compatible guarded chat completions over HTTP."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        import uvicorn

        from semdistill.serve import (
            ServiceLimits,
            create_app,
            default_allowed_hosts,
            exposure_warning,
        )
    except ImportError as err:
        hint = f"serving needs FastAPI and uvicorn: pip install 'semdistill[serve]' ({err})"
        raise fail(ImportError(hint)) from err
    from semdistill.scoring.policy import Policy
    from semdistill.scoring.risk_control import control_selective_risk, held_out_risk, save_report
    from semdistill.scoring.scorer import Scorer

    if target_error is None and (calibration_collection is not None or risk_report is not None):
        raise fail(ValueError("--calibration-collection and --risk-report need --target-error"))
    if refine_above is not None and refine_budget is not None:
        raise fail(ValueError("--refine-above and --refine-budget are mutually exclusive"))
    try:
        limits = ServiceLimits(
            max_prompts=max_prompts,
            max_answers=max_answers,
            max_chars=max_chars,
            batch_window_ms=batch_window_ms,
            max_body=max_body,
            max_request_chars=max_request_chars,
            max_new_tokens=max_new_tokens,
            max_rows=max_rows,
            max_queue=max_queue,
            request_timeout_s=request_timeout,
        )
        scorer = Scorer.load(directory)
        control = None
        if target_error is not None:
            risk, incorrect, grid = held_out_risk(
                scorer, calibration_collection, split=calibration_split
            )
            control = control_selective_risk(
                risk, incorrect, grid, target_error=target_error, delta=delta
            )
            typer.echo(f"risk control: {control.describe()}")
            if risk_report is not None:
                written = save_report(control, risk_report)
                typer.echo("wrote " + ", ".join(str(path) for path in written))
        policy = Policy(
            abstain_above=abstain_above,
            abstain_above_entropy=abstain_above_entropy,
            risk_control=control,
            flag_only=flag_only,
            unfamiliar_below=unfamiliar_below,
            unfamiliar_action=unfamiliar_action,
        )
        policy.check(scorer)
        refine = None
        if refine_above is not None or refine_budget is not None:
            refine = scorer.refinement.threshold(above=refine_above, budget=refine_budget)
            n = scorer.refinement.n_samples
            typer.echo(f"refine: questions above risk {refine:.6g} get {n} sampled answers")
        relay = None if upstream is None else upstream_of(scorer, upstream, upstream_key)
        hosts = allowed_hosts or default_allowed_hosts(host)
        service = create_app(
            scorer,
            limits,
            policy=policy,
            api_key=api_key,
            allowed_hosts=hosts,
            refine_above=refine,
            upstream=relay,
        )
    except USER_ERRORS as err:
        raise fail(err) from err
    warning = exposure_warning(host, api_key)
    if warning:
        err_console.print(f"[bold yellow]warning:[/] {escape(warning)}", highlight=False)
    if relay is not None:
        typer.echo(f"answers from {relay.url} ({relay.model}); risk from the local prefill")
    typer.echo(
        f"serving {directory} ({scorer.teacher.spec.name}) on http://{host}:{port}/docs; "
        f"OpenAI-compatible base URL http://{host}:{port}/v1"
    )
    uvicorn.run(service, host=host, port=port, log_level="info")


def upstream_of(scorer: Scorer, url: str, api_key: str | None) -> Upstream:
    """The vLLM server at ``url``, after checking that it serves the scorer's base model
    (:func:`~semdistill.teacher.vllm_teacher.check_server`)."""
    from semdistill.serve.upstream import Upstream
    from semdistill.teacher.vllm_client import VLLMServer
    from semdistill.teacher.vllm_teacher import check_server

    server = VLLMServer(url, api_key=api_key)
    check_server(scorer.teacher, server)
    return Upstream(server.url, server.model, api_key=api_key)
