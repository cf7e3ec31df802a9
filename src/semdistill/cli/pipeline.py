"""The pipeline's commands: collect, run (the main job) and its presets, train, update and
evaluate."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from semdistill.cli.common import USER_ERRORS, command_line, fail


def collect(
    model: Annotated[
        str, typer.Option(help="Registered name, HF id, local model folder or .gguf file.")
    ],
    questions: Annotated[
        str,
        typer.Option(help="Question set name (trivia, mmlu, ...) or a .jsonl/.csv/.parquet file."),
    ],
    out: Annotated[Path, typer.Option(help="Store directory (created, or resumed).")],
    limit: Annotated[int | None, typer.Option(help="Collect a seeded subset of this size.")] = None,
    samples: Annotated[int, typer.Option(help="Sampled answers per question (N).")] = 10,
    temperature: Annotated[float, typer.Option(help="Sampling temperature.")] = 1.0,
    seed: Annotated[int, typer.Option(help="Seed of the question subset and the sampling.")] = 0,
    batch_size: Annotated[int, typer.Option(help="Questions per shard of the store.")] = 32,
    max_new_tokens: Annotated[int, typer.Option(help="Token budget of each answer.")] = 24,
    backend: Annotated[
        str,
        typer.Option(
            help="auto or transformers (the engine), llamacpp (optional), or vllm (a vLLM "
            "server: --vllm-url or --vllm-python)."
        ),
    ] = "auto",
    dtype: Annotated[
        str,
        typer.Option(
            help="auto (bfloat16 where the device computes it natively, else float32), "
            "bfloat16, float16 or float32."
        ),
    ] = "auto",
    device: Annotated[
        str,
        typer.Option(
            help="auto (CUDA if present), cpu, cuda[:N], or map (spread over the GPUs with "
            "accelerate; generic forward)."
        ),
    ] = "auto",
    decode_rows: Annotated[
        int, typer.Option(help="Answers decoded together (memory grows with it).")
    ] = 128,
    decoder: Annotated[
        str,
        typer.Option(
            help="auto (the lean forward where it is verified for the model, else the "
            "model's own), lean or generic."
        ),
    ] = "auto",
    embedder: Annotated[str, typer.Option(help="Sentence-transformers id or path.")] = (
        "all-MiniLM-L6-v2"
    ),
    judge: Annotated[str, typer.Option(help="match (alias matching) or llm (the teacher).")] = (
        "match"
    ),
    vllm_url: Annotated[
        str | None,
        typer.Option(help="With --backend vllm: the base URL of a running vLLM server."),
    ] = None,
    vllm_python: Annotated[
        str | None,
        typer.Option(
            help="With --backend vllm: start vLLM with this Python (.venv-vllm/bin/python)."
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
    ray: Annotated[
        bool, typer.Option(help="Shard the questions over Ray workers (pip install ray).")
    ] = False,
    ray_address: Annotated[
        str | None,
        typer.Option(help="Ray cluster to join (auto, ray://host:port); default: a local one."),
    ] = None,
    ray_workers: Annotated[
        int | None, typer.Option(help="Ray workers (default: one per CPU of the cluster).")
    ] = None,
) -> None:
    """Collect hidden states, sampled and greedy answers, embeddings and labels into a store."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from semdistill.collect import CollectSettings, SamplingSettings, run_collection

    if not ray and (ray_address is not None or ray_workers is not None):
        raise fail(ValueError("--ray-address and --ray-workers need --ray"))
    if ray and backend == "vllm":
        raise fail(ValueError("--backend vllm collects on one server: drop --ray"))
    settings = CollectSettings(
        model=model,
        questions=questions,
        limit=limit,
        sampling=SamplingSettings(samples, temperature, seed, max_new_tokens),
        batch_size=batch_size,
        backend=backend,
        dtype=dtype,
        device=device,
        decode_rows=decode_rows,
        decoder=decoder,
        embedder=embedder,
        judge=judge,
        vllm_url=vllm_url,
        vllm_python=vllm_python,
    )
    try:
        if ray:
            from semdistill.collect.distributed import run_collection_on_ray

            stats = run_collection_on_ray(
                out, settings, address=ray_address, n_workers=ray_workers, progress=not quiet
            )
        else:
            stats = run_collection(out, settings, progress=not quiet)
    except USER_ERRORS as err:
        raise fail(err) from err
    typer.echo(
        f"wrote {stats.n_written} questions to {out} ({stats.n_skipped} already there); "
        + (
            f"greedy accuracy {stats.default_accuracy:.3f} on {stats.n_labelled} labelled"
            if stats.n_labelled
            else "none labelled (no reference answers): no accuracy"
        )
    )
    if stats.n_scored:
        typer.echo(
            f"added the greedy answer's scores to {stats.n_scored} questions already in {out} "
            f"(teacher-forced, {stats.scoring:.1f} s)"
        )
    typer.echo(
        "seconds: "
        + ", ".join(
            f"{stage} {getattr(stats, stage):.1f}"
            for stage in ("load", "generation", "embedding", "judging", "writing")
        )
        + f"; {stats.prompts_per_second:.3f} prompts/s"
    )


def run(
    out: Annotated[Path, typer.Option(help="Output directory (collections are reused from it).")],
    preset: Annotated[
        str,
        typer.Option(help="A preset's name (`semdistill presets` says what each one runs)."),
    ] = "default",
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
) -> None:
    """The main job: collect, select the layer, fit PCA and students, run every experiment."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from semdistill.evaluate.summary import print_summary
    from semdistill.pipeline.main import PRESETS, run_main_job

    if preset not in PRESETS:
        raise fail(ValueError(f"preset must be one of {', '.join(PRESETS)}, got {preset!r}"))
    try:
        results = run_main_job(out, PRESETS[preset], progress=not quiet, command=command_line())
    except USER_ERRORS as err:
        raise fail(err) from err
    print_summary(results, out)


def presets() -> None:
    """What each preset of `semdistill run` collects: model, question sets, samples, tokens."""
    from semdistill.pipeline.main import PRESETS

    for preset in PRESETS.values():
        typer.echo(preset.describe())


def train(
    collection: Annotated[
        list[Path],
        typer.Option(
            help="A store written by `semdistill collect`; repeat to train on the union of "
            "several (labelled or not) from the same model, dtype, prompt, embedder and N."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Directory for ssd.json, the PCA and the students.")],
    layer: Annotated[int | None, typer.Option(help="Fix the input layer (default: select).")] = (
        None
    ),
    components: Annotated[int, typer.Option(help="Mixture components K.")] = 5,
    hidden_dim: Annotated[int, typer.Option(help="MLP width H.")] = 256,
    depth: Annotated[int, typer.Option(help="MLP depth D.")] = 3,
    risk_dim: Annotated[int, typer.Option(help="PCA dimension of the risk student.")] = 16,
    likelihood_dim: Annotated[int, typer.Option(help="PCA dimension of the likelihood one.")] = 32,
    transfer_selection: Annotated[
        bool,
        typer.Option(
            help="Choose the layer and the risk student on question groups (trivia lists, "
            "MMLU, a file's source) held out in turn, for a scorer meant for new question "
            "styles; needs two groups of 30 or more prompts, else changes nothing."
        ),
    ] = False,
) -> None:
    """Select the layer, fit PCA, choose and fit the risk and likelihood students (validation
    split, no labels) and the SEP/PCP probes (PCP on labelled rows) on stored collections."""
    from semdistill.scoring.export import save_trained
    from semdistill.store import Store
    from semdistill.store.union import union_of
    from semdistill.training import StudentSettings, TrainSettings
    from semdistill.training.trained import train_question_set

    try:
        stores = {path.name: Store.open(path) for path in collection}
        if len(stores) != len(collection):
            raise ValueError("--collection names two stores with the same folder name")
        settings = TrainSettings(
            risk_dim=risk_dim,
            likelihood_dim=likelihood_dim,
            layer=layer,
            student=StudentSettings(n_components=components, hidden_dim=hidden_dim, depth=depth),
            transfer_selection=transfer_selection,
        )
        name, rows, config, where = union_of(stores)
        trained = train_question_set(name, rows, settings)
        save_trained(trained, config, where, out)
    except USER_ERRORS as err:
        raise fail(err) from err
    p = trained.prepared
    typer.echo(
        f"layer {p.layer} ({p.layer_note}); trained on {len(p.train)} prompts "
        f"({int(p.labelled[p.train].sum())} labelled, used by PCP only): risk student "
        f"d={risk_dim} ({trained.risk.setting.describe()}), likelihood student "
        f"d={likelihood_dim} ({trained.likelihood.setting.describe()}); wrote {out}"
    )


def update(
    scorer: Annotated[Path, typer.Option(help="The trained scorer directory to fit further.")],
    collection: Annotated[
        list[Path],
        typer.Option(help="New store(s), labelled or not, of the scorer's model; repeatable."),
    ],
    out: Annotated[Path, typer.Option(help="New directory for the updated scorer.")],
    max_epochs: Annotated[int, typer.Option(help="Most further epochs per student.")] = 100,
) -> None:
    """Fit a scorer's students further on new prompts (no labels read): same PCA, inputs and
    standardisation, warm-started students, early stopping on the new validation split."""
    from semdistill.scoring.update import update_scorer
    from semdistill.store import Store
    from semdistill.store.union import union_of

    try:
        stores = {path.name: Store.open(path) for path in collection}
        _name, rows, config, where = union_of(stores)
        updates = update_scorer(scorer, rows, config, where, out, max_epochs=max_epochs)
    except USER_ERRORS as err:
        raise fail(err) from err
    for u in updates:
        typer.echo(
            f"{u.role}: {u.n_train} new training prompts, {u.epochs} epochs, kept epoch "
            f"{u.best_epoch}; validation NLL {u.val_nll_before:.3f} -> {u.val_nll_after:.3f}"
        )
    typer.echo(f"wrote {out}")


def evaluate(
    collection: Annotated[
        list[Path], typer.Option(help="Stored collection(s); repeat for several question sets.")
    ],
    out: Annotated[Path, typer.Option(help="Directory for metrics.json, report and figures.")],
    latency: Annotated[
        bool, typer.Option(help="Also time every method on the collection's model.")
    ] = False,
    n_boot: Annotated[int, typer.Option(help="Bootstrap resamples per CI.")] = 1000,
    ablations: Annotated[bool, typer.Option(help="Run the Appendix C ablations.")] = True,
    scorer: Annotated[
        Path | None,
        typer.Option(
            help="Score the collections with this trained SSD directory instead of training "
            "(cross-set transfer: SSD, SEP, PCP, TD)."
        ),
    ] = None,
    split: Annotated[
        str, typer.Option(help="With --scorer: the split to score (train, validation, test, all).")
    ] = "test",
) -> None:
    """Run every experiment of the paper on stored collections and write the report; with
    --scorer, score them with a scorer trained elsewhere."""
    from semdistill.evaluate.evaluation import EvalSettings
    from semdistill.evaluate.summary import print_summary
    from semdistill.pipeline.store_jobs import evaluate_stores, score_stores
    from semdistill.store import Store

    if scorer is None and split != "test":
        raise fail(ValueError("--split needs --scorer"))
    if split not in ("train", "validation", "test", "all"):
        raise fail(ValueError(f"--split must be train, validation, test or all, got {split!r}"))
    try:
        stores = {path.name: Store.open(path) for path in collection}
        if scorer is not None:
            results = score_stores(
                scorer,
                stores,
                out,
                split=split,
                n_boot=n_boot,
                settings={"command": command_line()},
            )
            print_summary(results, out)
            return
        evaluation = (
            EvalSettings(n_boot=n_boot)
            if ablations
            else EvalSettings(n_boot=n_boot, ablation_grid={})
        )
        teacher = embedder = None
        if latency:
            from semdistill.semantics.embed import load_embedder
            from semdistill.teacher import load_teacher

            config = next(iter(stores.values())).config
            model = config.model.location
            teacher = load_teacher(model, backend=config.backend, dtype=config.dtype)
            embedder = load_embedder(config.embedder)
        results = evaluate_stores(
            stores,
            evaluation,
            out,
            teacher=teacher,
            embedder=embedder,
            settings={"command": command_line()},
        )
    except USER_ERRORS as err:
        raise fail(err) from err
    print_summary(results, out)
