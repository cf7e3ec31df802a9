"""Per-prompt latency of SSD, the probes and the sampling baselines on the same teacher."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from semdistill.evaluate.results import Latency
from semdistill.semantics.dispersion import teacher_dispersion
from semdistill.semantics.embed import Embedder
from semdistill.semantics.semantic_entropy import RuleEquivalence, cluster_answers, semantic_entropy
from semdistill.teacher.base import Teacher
from semdistill.training.prepare import se_judge_name
from semdistill.training.trained import TrainedSet


def measure_latency(
    teacher: Teacher,
    embedder: Embedder,
    trained: TrainedSet,
    *,
    n_prompts: int = 8,
    n_samples: int = 10,
    temperature: float = 1.0,
    max_new_tokens: int = 24,
    se_cosine: float = 0.85,
    seed: int = 0,
) -> Latency:
    """Mean wall time per prompt (batch of one) of each method, measured back to back.

    SSD, SEP and PCP time one prefill up to their layer plus their head; TD and SE time
    sampling ``n_samples`` answers, embedding them and computing the statistic.
    """
    p = trained.prepared
    rows = p.test[:n_prompts]
    prompts = [p.collection.prompts[i] for i in rows]
    layers, probes = trained.probe_layers, trained.probes
    judge = RuleEquivalence(None, threshold=se_cosine)
    risk = trained.risk
    d = risk.student.n_targets_

    def prefill(prompt: str, layer: int) -> np.ndarray:
        return teacher.hidden_states([prompt], layers=[layer])[:, 0].astype(np.float64)

    def ssd(prompt: str) -> np.ndarray:
        states = teacher.hidden_states([prompt], layers=list(risk.setting.layers))
        return risk.student.renyi2_entropy(risk.inputs.transform(states.astype(np.float32)))

    def sample(prompt: str) -> tuple[list[str], np.ndarray]:
        answers = teacher.sample(
            [prompt],
            n=n_samples,
            temperature=temperature,
            seeds=[seed],
            max_new_tokens=max_new_tokens,
        )[0]
        return answers, embedder.encode(answers)

    methods: dict[str, Callable[[str], object]] = {
        "prefill": lambda q: prefill(q, p.layer),
        "SSD": ssd,
    }
    for name, layer in (("SEP", layers.sep), ("PCP", layers.pcp)):
        probe = probes[name]
        if probe is not None:  # a probe that could not be fitted has no latency to measure
            methods[name] = lambda q, probe=probe, layer=layer: probe.predict_risk(
                prefill(q, layer)
            )

    def td(q: str) -> object:
        _, emb = sample(q)
        return teacher_dispersion(p.pca.transform(emb, d)[None])

    def se(q: str) -> object:
        answers, emb = sample(q)
        return semantic_entropy(cluster_answers(answers, judge, embeddings=emb))

    methods["TD"] = td
    methods["SE"] = se
    methods["prefill"](prompts[0])  # warm-up (allocations, kernels)
    ms = {}
    for name, run in methods.items():
        start = time.perf_counter()
        for prompt in prompts:
            run(prompt)
        ms[name] = 1000 * (time.perf_counter() - start) / len(prompts)
    notes = {
        "prefill": f"forward pass up to layer {p.layer} only",
        "SSD": f"prefill to layer {max(risk.setting.layers)} "
        f"({risk.inputs.describe()}) + MDN head + closed-form Rényi-2",
        "SEP": f"prefill to layer {layers.sep} + logistic probe",
        "PCP": f"prefill to layer {layers.pcp} + logistic probe",
        "TD": f"{n_samples} sampled answers + embedding + dispersion",
        "SE": f"{n_samples} sampled answers + embedding + clustering ({se_judge_name(se_cosine)})",
    }
    return Latency(teacher.spec.name, len(prompts), n_samples, ms, notes)
