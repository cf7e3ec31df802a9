"""From a teacher collection to trained students: SE targets, layer selection, PCA, MDN fits."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from semdistill.semantics.dispersion import projected_dispersion
from semdistill.semantics.pca import PCAReducer
from semdistill.semantics.semantic_entropy import RuleEquivalence, semantic_entropies
from semdistill.store import Collection
from semdistill.student import SSDStudent
from semdistill.student.estimator import Targets
from semdistill.student.inputs import LayerInputs
from semdistill.training.groups import groups_of, selection_groups
from semdistill.training.layers import LayerSelection, select_layer, select_layer_by_groups
from semdistill.training.probes import binarize_threshold


@dataclass(frozen=True)
class StudentSettings:
    """Hyper-parameters of one student (K, H, D of the paper, its targets, scale floor and the
    optimiser's); see :class:`~semdistill.student.SSDStudent`."""

    n_components: int = 5
    hidden_dim: int = 256
    depth: int = 3
    targets: Targets = "samples"
    min_scale: float = 1e-3
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 64
    max_epochs: int = 300
    patience: int = 20
    seed: int = 0

    def build(self, *, verbose: bool = False) -> SSDStudent:
        """An unfitted student with these settings."""
        return SSDStudent(**asdict(self), verbose=verbose)


@dataclass(frozen=True)
class TrainSettings:
    """Everything that decides what `prepare` and the students' fits compute.

    ``risk_dim``/``likelihood_dim`` are the PCA dimensions of the two students (16 and 32 in
    the paper); ``pca_dim`` the widest basis fitted (ablations go up to it); ``layer`` fixes the
    single-layer input instead of selecting it; ``se_cosine`` is the rule equivalence
    judge's cosine threshold for semantic entropy. ``student`` holds the architecture and
    optimiser shared by every student. The model selection of
    :func:`~semdistill.training.selection.select_risk` (validation data only, no labels) tries
    ``min_scales`` as scale floors and, for the multi-layer input, the layer sets
    ``layer_offsets`` (relative to the single layer, clipped to the model's depth), each layer
    reduced to ``layer_dim`` principal components; every candidate is fitted once per
    training seed in ``seeds``.

    ``transfer_selection`` (off by default) judges the choices on unseen question groups
    instead of the random validation split, where the training and validation prompts span at
    least two groups (:mod:`semdistill.training.groups`) of ``min_group_rows`` prompts or more:
    the layer by the SE probe's mean AUROC on each group held out in turn
    (:func:`~semdistill.training.layers.select_layer_by_groups`), and the risk student's
    objective, layers and deployed input by its mean fidelity on each group held out in turn
    (see :func:`~semdistill.training.selection.select_risk`). Still label-free; with fewer
    groups it changes nothing.
    """

    risk_dim: int = 16
    likelihood_dim: int = 32
    pca_dim: int = 128
    layer: int | None = None
    se_cosine: float = 0.85
    student: StudentSettings = field(default_factory=StudentSettings)
    seeds: tuple[int, ...] = (0, 1, 2)
    min_scales: tuple[float, ...] = (1e-3, 1e-2, 5e-2)
    layer_offsets: tuple[tuple[int, ...], ...] = (
        (-6, -3, 0),
        (-3, 0, 3),
        (-9, -6, -3, 0),
        (-12, -8, -4, 0, 4),
    )
    layer_dim: int = 64
    transfer_selection: bool = False
    min_group_rows: int = 30


@dataclass
class PreparedSet:
    """One question set's collection with every shared statistic computed once.

    ``train``/``validation``/``test`` index the collection; ``incorrect`` is 1 where the
    default (greedy) answer was judged wrong, and means something only where ``labelled``
    (rows without reference answers train the students, never a label-based metric); ``se``
    is semantic entropy of the samples under ``se_judge`` (the rule judge at cosine
    ``se_cosine``); ``H`` the chosen layer's prompt
    representation (float32); ``inputs_cache`` keeps fitted :class:`LayerInputs` by (layers,
    reduction, training rows). ``groups`` holds every row's question group and
    ``held_out_groups`` the training groups that selection holds out in turn, when
    ``TrainSettings.transfer_selection`` found at least two (else None and empty).
    """

    name: str
    collection: Collection
    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray
    incorrect: np.ndarray
    se: np.ndarray
    se_judge: str
    se_cosine: float
    se_threshold: float
    layer_selection: LayerSelection | None
    layer: int
    layer_note: str
    H: np.ndarray
    pca: PCAReducer
    labelled: np.ndarray
    groups: np.ndarray | None = None
    held_out_groups: tuple[str, ...] = ()
    inputs_cache: dict[tuple, LayerInputs] = field(default_factory=dict, repr=False)

    def labelled_rows(self, rows: np.ndarray) -> np.ndarray:
        """The labelled ones among ``rows`` (indices into the collection)."""
        return rows[self.labelled[rows]]

    def targets(self, d: int) -> np.ndarray:
        """Sample embeddings in the first ``d`` PCA coordinates, ``(n, N, d)``."""
        return self.pca.transform(self.collection.sample_embeddings, d)

    def dispersion(self, d: int) -> np.ndarray:
        """Teacher dispersion of every row's samples in the first ``d`` PCA axes, ``(n,)``."""
        return projected_dispersion(self.collection.sample_embeddings, self.pca.components_[:d])

    def default_targets(self, d: int) -> np.ndarray:
        """Greedy-answer embeddings in the first ``d`` PCA coordinates, ``(n, d)``."""
        return self.pca.transform(self.collection.default_embedding, d)


def split_indices(collection: Collection) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of the train, validation and test rows; each split must be non-empty."""
    splits = np.asarray(collection.splits)
    out = tuple(np.flatnonzero(splits == name) for name in ("train", "validation", "test"))
    for name, idx in zip(("train", "validation", "test"), out, strict=True):
        if len(idx) < 2:
            raise ValueError(
                f"the collection has {len(idx)} '{name}' questions; at least 2 are needed "
                "(collect more questions)"
            )
    return out


def semantic_entropy_of(collection: Collection, cosine: float) -> tuple[np.ndarray, str]:
    """SE of every row's sampled answers with the rule judge over the stored embeddings."""
    judge = RuleEquivalence(None, threshold=cosine)
    se = semantic_entropies(
        collection.samples,
        judge,
        questions=list(collection.questions),
        embeddings=collection.sample_embeddings,
    )
    return se, se_judge_name(cosine)


def se_judge_name(cosine: float) -> str:
    """Name of the SE judge over stored embeddings: normalised string match or cosine."""
    return RuleEquivalence(None, threshold=cosine).with_embeddings([], np.zeros((0, 1))).name


def prepare(name: str, collection: Collection, settings: TrainSettings) -> PreparedSet:
    """Split, score SE, select the layer (Appendix D.1) and fit PCA on the training split."""
    train, validation, test = split_indices(collection)
    se, se_judge = semantic_entropy_of(collection, settings.se_cosine)
    threshold = binarize_threshold(se[train])
    high_se = se >= threshold
    selection, layer, layer_note = None, settings.layer, "fixed by the caller"
    groups, held_out = None, ()
    if settings.transfer_selection:
        groups = groups_of(collection.ids)
        held_out = selection_groups(
            groups, np.r_[train, validation], high_se, settings.min_group_rows
        )
        groups = groups if held_out else None
    if layer is None and held_out:
        seen = np.r_[train, validation]
        selection = select_layer_by_groups(
            collection.hidden[seen], high_se[seen], groups[seen], held_out
        )
        layer = selection.best_layer
        layer_note = (
            f"best mean AUROC of the SE probe on {len(held_out)} training groups held out in turn"
        )
    elif layer is None:
        try:
            selection = select_layer(
                collection.hidden[train],
                high_se[train],
                collection.hidden[validation],
                high_se[validation],
            )
            layer, layer_note = selection.best_layer, "best validation AUROC of the SE probe"
        except ValueError as err:  # e.g. one SE class in a tiny validation split
            layer = round(2 * (collection.hidden.shape[1] - 1) / 3)
            layer_note = f"selection impossible ({err}); fell back to 2/3 of the depth"
    pca_dim = min(
        settings.pca_dim,
        collection.sample_embeddings.shape[-1],
        len(train) * collection.sample_embeddings.shape[1],
    )
    pca = PCAReducer(pca_dim).fit(collection.sample_embeddings[train])
    return PreparedSet(
        name=name,
        collection=collection,
        train=train,
        validation=validation,
        test=test,
        incorrect=~np.asarray(collection.default_correct, dtype=bool),
        se=se,
        se_judge=se_judge,
        se_cosine=settings.se_cosine,
        se_threshold=threshold,
        layer_selection=selection,
        layer=layer,
        layer_note=layer_note,
        H=collection.hidden[:, layer, :].astype(np.float32),
        pca=pca,
        labelled=np.asarray(collection.labelled, dtype=bool),
        groups=groups,
        held_out_groups=held_out,
    )
