"""Teacher collection sharded over Ray workers, written by the driver into one store.

Each worker (a Ray actor) loads the teacher, embedder and judge once and turns whole batches
of questions into store rows; the driver splits the questions not yet in the store into the
same batches a local run would make, hands them to idle workers, and appends the returned
rows to the store in batch order; rows without the greedy answer's scores then get them
teacher-forced on one worker. Store, manifest and resume rules are those of
:func:`semdistill.collect.local.collect`, so a run gives the store a local run gives for
the same seed (up to the floating-point noise of another thread count in the hidden states).
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import Any

from semdistill.collect.greedy import score_shards
from semdistill.collect.progress import (
    STAGES,
    CollectStats,
    Tally,
    finish_collection,
    progress_bar,
    to_do,
)
from semdistill.collect.rows import collect_rows
from semdistill.collect.settings import CollectSettings
from semdistill.data import Question
from semdistill.store import CollectConfig, Collection, Store
from semdistill.teacher.base import ScoringTeacher
from semdistill.teacher.decoder.jobs import TokenScores

RAY_HINT = "distributed collection needs Ray: pip install 'semdistill[ray]'"


def import_ray() -> ModuleType:
    """The ``ray`` module, or an ImportError saying how to install it."""
    try:
        import ray
    except ImportError as err:
        raise ImportError(RAY_HINT) from err
    return ray


@dataclass(frozen=True)
class WorkerSpec:
    """What every worker loads (the teacher, embedder and judge of ``settings``), the store
    folder it collects for and how many threads it uses."""

    settings: CollectSettings
    out: str
    threads: int


def pin_cpus(index: int, threads: int) -> None:
    """Keep this process on ``threads`` of its CPUs, the ``index``-th such slice (wrapping).

    Workers on one machine then do not oversubscribe it: llama.cpp sizes its thread pool
    from the CPUs a process may use, and its spinning threads slow down badly when shared.
    """
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) > threads:
        start = index * threads
        os.sched_setaffinity(0, {cpus[(start + k) % len(cpus)] for k in range(threads)})


class CollectWorker:
    """One Ray worker's teacher, embedder and judge, loaded once."""

    def __init__(self, spec: WorkerSpec, index: int) -> None:
        import torch

        pin_cpus(index, spec.threads)
        torch.set_num_threads(spec.threads)
        self.settings = spec.settings
        self.teacher, self.embedder, self.judge = spec.settings.load_models(spec.out)

    def config(self) -> CollectConfig:
        """The store config a local run with this worker's models would write."""
        return self.settings.store_config(self.teacher, self.embedder, self.judge)

    def decoder(self) -> dict[str, str]:
        """Which forward this worker's teacher runs, and why."""
        return self.teacher.decoder.to_dict()

    def can_score(self) -> bool:
        """Whether this worker's teacher scores given greedy answers (teacher-forced)."""
        return isinstance(self.teacher, ScoringTeacher)

    def greedy_scores(
        self, prompts: list[str], answers: list[str], max_new_tokens: int
    ) -> list[TokenScores]:
        """Each greedy answer's statistics, teacher-forced."""
        assert isinstance(self.teacher, ScoringTeacher)
        return self.teacher.greedy_scores(prompts, answers, max_new_tokens=max_new_tokens)

    def run(self, batch: list[Question], split_seed: int) -> tuple[Collection, dict[str, float]]:
        """The store rows of one batch and the seconds spent per stage."""
        return collect_rows(
            batch,
            self.teacher,
            self.embedder,
            self.judge,
            split_seed=split_seed,
            **asdict(self.settings.sampling),
        )


def collect_on_ray(
    questions: list[Question],
    store: Store,
    workers: list[Any],
    *,
    batch_size: int,
    progress: bool = True,
) -> CollectStats:
    """Collect every question not yet in ``store`` on the ``workers`` (CollectWorker actors).

    Batches are those of a local run; the driver appends each batch's rows in batch order
    and marks the store complete once every question is in it. Stage seconds are summed
    over the workers.
    """
    ray = import_ray()
    if not workers:
        raise ValueError("workers must hold at least one CollectWorker actor")
    todo = to_do(questions, store)
    batches = [todo[start : start + batch_size] for start in range(0, len(todo), batch_size)]
    seconds = dict.fromkeys(STAGES, 0.0)
    tally = Tally()
    in_flight: dict[Any, tuple[int, Any]] = {}
    finished: dict[int, tuple[Collection, dict[str, float]]] = {}
    next_batch = next_write = 0

    def dispatch(worker: Any) -> None:
        nonlocal next_batch
        if next_batch < len(batches):
            ref = worker.run.remote(batches[next_batch], store.config.split_seed)
            in_flight[ref] = (next_batch, worker)
            next_batch += 1

    with progress_bar("collect on Ray", progress) as bar:
        task = bar.add_task("collect", total=len(todo))
        for worker in workers:
            dispatch(worker)
        while in_flight:
            (ref,), _ = ray.wait(list(in_flight), num_returns=1)
            index, worker = in_flight.pop(ref)
            finished[index] = ray.get(ref)
            dispatch(worker)
            while next_write in finished:
                rows, stage_seconds = finished.pop(next_write)
                start = time.perf_counter()
                store.append(rows)
                seconds["writing"] += time.perf_counter() - start
                for stage in STAGES[:-1]:  # every stage but writing runs on the workers
                    seconds[stage] += stage_seconds.get(stage, 0.0)
                tally.add(rows)
                bar.advance(task, len(rows))
                next_write += 1
    return finish_collection(store, questions, todo, tally, seconds)


def _score_on_ray(store: Store, worker: Any, stats: CollectStats) -> CollectStats:
    """``stats`` after the store's rows without greedy-answer scores got them on ``worker``
    (teacher-forced), if its teacher can score."""
    ray = import_ray()
    if not store.unscored_shards() or not ray.get(worker.can_score.remote()):
        return stats
    start = time.perf_counter()
    scored = score_shards(
        store, lambda p, a, budget: ray.get(worker.greedy_scores.remote(p, a, budget))
    )
    return replace(stats, n_scored=scored, scoring=time.perf_counter() - start)


def run_collection_on_ray(
    out: str | Path,
    settings: CollectSettings,
    *,
    address: str | None = None,
    n_workers: int | None = None,
    cpus_per_worker: int = 1,
    progress: bool = True,
) -> CollectStats:
    """:func:`semdistill.collect.local.run_collection` with the batches collected on Ray.

    Joins the Ray cluster at ``address`` ("auto", "ray://host:port", ...; None starts a local
    one) unless Ray is already initialised, starts ``n_workers`` workers of
    ``cpus_per_worker`` CPUs each (default: as many as the cluster's CPUs allow), checks that
    all of them load the same models, and collects into the store at ``out``.
    """
    ray = import_ray()
    settings.check()
    if settings.judge == "llm":
        raise ValueError(
            "judge 'llm' is not supported with Ray (its verdict cache is one file per store); "
            "use judge 'match' or collect locally"
        )
    if cpus_per_worker < 1:
        raise ValueError(f"cpus_per_worker must be at least 1, got {cpus_per_worker}")
    if n_workers is not None and n_workers < 1:
        raise ValueError(f"n_workers must be at least 1, got {n_workers}")
    start = time.perf_counter()
    picked = settings.pick_questions()
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    workers: list[Any] = []
    try:
        cpus = int(ray.cluster_resources().get("CPU", 1))
        count = n_workers or max(1, cpus // cpus_per_worker)
        count = min(count, max(1, -(-len(picked) // settings.batch_size)))
        spec = WorkerSpec(settings, str(out), cpus_per_worker)
        actor = ray.remote(num_cpus=cpus_per_worker)(CollectWorker)
        workers = [actor.remote(spec, index) for index in range(count)]
        configs = ray.get([w.config.remote() for w in workers])
        for i, config in enumerate(configs[1:], start=1):
            differences = configs[0].differences(config)
            if differences:
                raise ValueError(
                    f"Ray worker {i} loads other models than worker 0: " + "; ".join(differences)
                )
        store = Store.open_or_create(out, configs[0])
        store.record("decoder", ray.get(workers[0].decoder.remote()))
        load_seconds = time.perf_counter() - start
        stats = collect_on_ray(
            picked, store, workers, batch_size=settings.batch_size, progress=progress
        )
        stats = _score_on_ray(store, workers[0], stats)
    finally:
        for worker in workers:
            ray.kill(worker)
        if started_here:
            ray.shutdown()
    return replace(stats, load=load_seconds)
