"""A trained set written out as a deployable scorer: the artifacts ``Scorer.load`` reads."""

from __future__ import annotations

import os

import numpy as np

from semdistill.scoring.artifacts import SSDArtifacts, save_artifacts
from semdistill.scoring.familiarity import Familiarity
from semdistill.scoring.refine import REFINE_KEY, RefineSettings
from semdistill.scoring.scorer import LIKELIHOOD, RISK
from semdistill.store import CollectConfig
from semdistill.training.trained import TrainedSet


def save_trained(
    trained: TrainedSet, config: CollectConfig, collection: str, directory: str | os.PathLike
) -> None:
    """Write the scorer artifacts of a trained set: manifest, PCA, the deployed risk student
    and the likelihood student with their inputs, the SEP/PCP probes and the familiarity
    model (training and validation prompts' states at fixed depths, see
    :mod:`semdistill.scoring.familiarity`) and what the sampling cascade needs (the
    collection's sampling, the SE judge and the validation prompts' risk, see
    :mod:`semdistill.scoring.refine`)."""
    p = trained.prepared
    risk, likelihood = trained.risk, trained.likelihood
    val_entropy = risk.renyi2_entropy(p.collection.hidden[p.validation])
    artifacts = SSDArtifacts(
        teacher=config.model,
        dtype=config.dtype,
        prompt_template=config.prompt_template,
        prompt_version=config.prompt_version,
        layer=p.layer,
        embedder=config.embedder,
        embedder_dim=config.embedding_dim,
        students={RISK: risk.student.n_targets_, LIKELIHOOD: likelihood.student.n_targets_},
        collection=collection,
        extra={
            "settings": {RISK: risk.setting.to_dict(), LIKELIHOOD: likelihood.setting.to_dict()},
            "validation_risk": {
                "mean": float(np.mean(val_entropy)),
                "std": float(np.std(val_entropy)),
            },
            REFINE_KEY: RefineSettings.record(config, p.se_cosine, val_entropy),
        },
    )
    layers = trained.probe_layers
    probes = {
        name: (probe, layer)
        for name, layer in (("SEP", layers.sep), ("PCP", layers.pcp))
        if (probe := trained.probes.get(name)) is not None
    }
    save_artifacts(
        directory,
        artifacts,
        p.pca,
        {RISK: risk.student, LIKELIHOOD: likelihood.student},
        inputs={RISK: risk.inputs, LIKELIHOOD: likelihood.inputs},
        probes=probes,
        familiarity=Familiarity.fit(
            p.collection.hidden[p.train], p.collection.hidden[p.validation]
        ),
    )
