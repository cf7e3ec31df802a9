"""Label-free one-pass risk signals of a trained set, oriented so that higher means riskier.

Pre-generation signals read the prompt's states only: the SSD rows' Rényi-2 entropy (one
value per training seed) and the SE probe. Post-generation signals also read the greedy
answer the guard decodes anyway, at no extra forward pass: LM-Polygraph's white-box
single-sample scores from its tokens (maximum sequence probability as ``-log p``, log
perplexity, mean token entropy) and the likelihood student's ``-log p`` of its embedding
(how atypical it is of what the model would say).
"""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import KFold

from semdistill.evaluate.experiments import POST_SIGNALS, ssd_rows
from semdistill.training.prepare import PreparedSet
from semdistill.training.probes import SemanticEntropyProbe
from semdistill.training.trained import TrainedSet

PRE_SIGNALS = ("SSD", "SSD-multi", "SEP")

OUT_OF_FOLD = 5
"""Folds of the out-of-fold SE probe scores on the train split (its in-sample scores would
overstate it to a combination fitted there)."""


def has_greedy_scores(p: PreparedSet) -> bool:
    """Whether the set's collection carries the greedy answer's token statistics."""
    return p.collection.greedy is not None


def pre_generation(
    trained: TrainedSet, rows: np.ndarray, *, out_of_fold: bool = False
) -> dict[str, np.ndarray]:
    """Each pre-generation signal on ``rows``, ``(seeds, n)`` (the SE probe's broadcast over
    the seeds); ``out_of_fold`` (train rows) scores the SE probe out of fold."""
    p = trained.prepared
    hidden = p.collection.hidden[rows]
    selection = ssd_rows(trained.selection)
    n_seeds = len(selection["SSD"])
    signals = {
        name: np.stack([student.renyi2_entropy(hidden) for student in selection[name]])
        for name in ("SSD", "SSD-multi")
        if name in selection
    }
    sep = _sep_risk(trained, rows, out_of_fold=out_of_fold)
    if sep is not None:
        signals["SEP"] = np.broadcast_to(sep, (n_seeds, len(rows)))
    return signals


def post_generation(trained: TrainedSet, rows: np.ndarray) -> dict[str, np.ndarray]:
    """Each post-generation signal on ``rows``, ``(n,)``; a ValueError naming how to add the
    greedy answer's token statistics when the collection has none."""
    p = trained.prepared
    command = "semdistill collect, resuming it with the arguments that made it"
    scores = p.collection.require_greedy(p.name, command)[rows]
    likelihood = trained.likelihood
    d = likelihood.student.n_targets_
    features = likelihood.features(p.collection.hidden[rows])
    values = (
        -scores.logprob.astype(np.float64),
        np.log(scores.perplexity),
        scores.entropy.astype(np.float64),
        -likelihood.student.log_prob(features, p.default_targets(d)[rows]),
    )
    return dict(zip(POST_SIGNALS, values, strict=True))


def _sep_risk(trained: TrainedSet, rows: np.ndarray, *, out_of_fold: bool) -> np.ndarray | None:
    """The deployed SE probe's risk on ``rows``, or out of fold over ``rows`` themselves."""
    p, probe = trained.prepared, trained.probes.get("SEP")
    if probe is None:
        return None
    states = p.collection.hidden[rows, trained.probe_layers.sep]
    if not out_of_fold:
        return probe.predict_risk(states)
    risk = np.empty(len(rows))
    for fitted, held in KFold(OUT_OF_FOLD, shuffle=True, random_state=0).split(states):
        try:
            probe_of_fold = SemanticEntropyProbe(seed=0).fit(states[fitted], p.se[rows][fitted])
        except ValueError:  # a fold with a single SE class: no out-of-fold SEP at all
            return None
        risk[held] = probe_of_fold.predict_risk(states[held])
    return risk
