"""Stored collections in, a report out: train and save each set's scorer, run every
experiment, train on the union of the sets, score each set with every other set's scorer."""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from semdistill.data import train_beyond
from semdistill.evaluate.evaluation import EvalSettings, check_labelled_test, evaluate_trained
from semdistill.evaluate.protocol import run_protocol
from semdistill.evaluate.report import write_report
from semdistill.evaluate.results import RunResults, SetResults
from semdistill.evaluate.transfer import TransferResult, transfer
from semdistill.scoring.artifacts import load_artifacts
from semdistill.scoring.compatibility import check_compatible
from semdistill.scoring.export import save_trained
from semdistill.scoring.familiarity import Familiarity
from semdistill.store import Collection, Store
from semdistill.store.union import UNION, pool
from semdistill.timing import StageTimer
from semdistill.training.trained import TrainedSet, train_question_set


def evaluate_stores(
    stores: dict[str, Store],
    evaluation: EvalSettings,
    out: str | os.PathLike,
    *,
    stages: StageTimer | None = None,
    settings: dict[str, Any] | None = None,
    teacher: Any = None,
    embedder: Any = None,
    latency_prompts: int = 8,
) -> RunResults:
    """Train, save the scorer artifacts into ``out/ssd/<set>``, run every experiment and write
    the report. With several compatible sets a scorer is also trained on their union and each
    scorer scores every set's test split (``transfer``). With ``evaluation.groups`` the
    leave-one-group-out protocol runs on the pooled sets into ``out/groups`` (resuming its
    folds). With a ``teacher`` and ``embedder`` the latency of every method is measured too.
    """
    from semdistill.evaluate.latency import measure_latency

    stages = stages or StageTimer(Console(stderr=True))
    root = Path(out)
    results: dict[str, SetResults] = {}
    collections: dict[str, Collection] = {}
    trained_sets: dict[str, TrainedSet] = {}
    for name, store in stores.items():
        with stages.stage(f"train {name}: SE, layer and model selection, PCA, students"):
            collections[name] = _evaluated_splits(store, evaluation)
            check_labelled_test(
                name,
                int(
                    np.sum(
                        collections[name].labelled[np.asarray(collections[name].splits) == "test"]
                    )
                ),
            )
            trained = train_question_set(name, collections[name], evaluation.train)
            save_trained(trained, store.config, str(store.path), root / "ssd" / name)
        with stages.stage(f"experiments {name}"):
            results[name] = evaluate_trained(trained, evaluation, source=store.config.questions)
        trained_sets[name] = trained
    scorers = {name: root / "ssd" / name for name in stores}
    configs = [store.config for store in stores.values()]
    try:
        pooled = pool(collections, {name: store.config for name, store in stores.items()})
    except ValueError as err:
        pooled = None
        settings = {**(settings or {}), "not_pooled": str(err)}
        stages.note(f"[yellow]no {UNION} scorer or leave-one-group-out protocol:[/] {err}")
    if len(stores) > 1 and pooled is not None:
        with stages.stage(f"train {UNION} of {', '.join(stores)}"):
            union = train_question_set(UNION, pooled, evaluation.train)
            paths = ", ".join(str(store.path) for store in stores.values())
            save_trained(union, configs[0], paths, root / "ssd" / UNION)
            scorers[UNION] = root / "ssd" / UNION
    cross: list[TransferResult] = []
    if len(stores) > 1:
        with stages.stage("transfer: every scorer on every set"):
            for source, directory in scorers.items():
                loaded, familiarity = load_artifacts(directory), Familiarity.load(directory)
                for target, collection in collections.items():
                    cross.append(
                        transfer(
                            loaded,
                            source,
                            collection,
                            target,
                            n_boot=evaluation.n_boot,
                            seed=evaluation.seed,
                            familiarity=familiarity,
                        )
                    )
    groups = None
    if evaluation.groups is not None and pooled is not None:
        with stages.stage("transfer: leave one question group out"):
            groups = run_protocol(
                pooled, configs[0], evaluation.train, evaluation.groups, root / "groups"
            )
    latency = None
    if teacher is not None and embedder is not None:
        first = next(iter(results))
        config = stores[first].config
        with stages.stage("latency"):
            latency = measure_latency(
                teacher,
                embedder,
                trained_sets[first],
                n_prompts=latency_prompts,
                n_samples=config.n_samples,
                temperature=config.temperature,
                max_new_tokens=config.max_new_tokens,
                se_cosine=evaluation.train.se_cosine,
            )
    run = RunResults(
        _run_settings(settings, stores, asdict(evaluation)),
        results,
        latency,
        dict(stages.seconds),
        cross,
        groups,
    )
    with stages.stage("report"):
        write_report(run, root)
    return run


def score_stores(
    scorer: str | os.PathLike,
    stores: dict[str, Store],
    out: str | os.PathLike,
    *,
    split: str = "test",
    n_boot: int = 1000,
    seed: int = 0,
    stages: StageTimer | None = None,
    settings: dict[str, Any] | None = None,
) -> RunResults:
    """Score each store's ``split`` with the scorer trained into ``scorer`` and write the
    report (its transfer section) into ``out``; ``settings`` go into the report as given."""
    stages = stages or StageTimer(Console(stderr=True))
    directory = Path(scorer)
    loaded, familiarity = load_artifacts(directory), Familiarity.load(directory)
    cross = []
    for name, store in stores.items():
        check_compatible(loaded.artifacts, store.config, str(store.path))
        with stages.stage(f"score {name} with {directory}"):
            collection = store.load()
            cross.append(
                transfer(
                    loaded,
                    directory.name,
                    collection,
                    name,
                    split=split,
                    n_boot=n_boot,
                    seed=seed,
                    familiarity=familiarity,
                )
            )
    settings = {"scorer": str(directory), "split": split, "n_boot": n_boot, **(settings or {})}
    run = RunResults(_run_settings(settings, stores, {}), {}, None, dict(stages.seconds), cross)
    with stages.stage("report"):
        write_report(run, out)
    return run


def _evaluated_splits(store: Store, evaluation: EvalSettings) -> Collection:
    """The store's rows, those beyond ``evaluation.evaluated_first`` moved to training."""
    collection = store.load()
    first = evaluation.evaluated_first.get(store.config.questions)
    if first is not None:
        collection.splits = train_beyond(
            collection.ids, collection.splits, first, seed=store.config.question_seed
        )
    return collection


def _run_settings(
    settings: dict[str, Any] | None, stores: dict[str, Store], evaluation: dict[str, Any]
) -> dict[str, Any]:
    """The run's settings: the model and sampling settings read from the stores' manifests,
    then the caller's (the command line among them, when a command ran it)."""
    first = next(iter(stores.values())).config
    return {
        "model": first.model.name,
        "n_samples": first.n_samples,
        "temperature": first.temperature,
        "max_new_tokens": first.max_new_tokens,
        **(settings or {}),
        "evaluation": evaluation,
        "collections": {name: store.config.to_dict() for name, store in stores.items()},
    }
