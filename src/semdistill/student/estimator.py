"""``SSDStudent``: fit an MDN to sampled answer embeddings and query its predictive density."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from sklearn.exceptions import NotFittedError
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

from semdistill._validation import ArrayLike, as_float_array, check_width
from semdistill.student.entropy import mixture_parts, renyi2_entropy
from semdistill.student.io import HYPERPARAMETERS, load_student, save_student
from semdistill.student.mdn import MDNConfig, MixtureDensityNetwork
from semdistill.student.training import TrainingRun, train_mdn

_CHUNK = 4096  # prompts per forward pass at inference time


Targets = Literal["samples", "centred"]
TARGETS: tuple[Targets, ...] = ("samples", "centred")


def centred(Y: np.ndarray) -> np.ndarray:
    """Each prompt's samples minus their own mean: ``Y - Y.mean(axis=1, keepdims=True)``."""
    return Y - Y.mean(axis=1, keepdims=True)


class SSDStudent:
    """Semantic Self-Distillation student: ``p(y | h)`` as a K-component diagonal Gaussian mixture.

    ``fit(H, Y)`` maximises the conditional likelihood of the ``N`` sampled answer embeddings
    ``Y[i]`` (shape ``(n, N, d)``) given prompt representations ``H`` (shape ``(n, h)``).
    Afterwards every query is one forward pass: :meth:`entropy` (closed-form Rényi-2),
    :meth:`log_prob`, :meth:`mean`, :meth:`sample` and :meth:`distribution`.

    ``targets`` says what is fitted. ``"samples"`` (the paper's objective): the embeddings as
    they are, so the mixture places the answers and spreads around them. ``"centred"`` (the
    location-free objective): each prompt's samples minus their own mean, so the mixture is the
    distribution of an answer's offset from the prompt's answer centroid. Rényi-2 entropy is
    translation invariant, so both measure the same spread, but with ``"samples"`` the predicted
    scales must also cover the student's own error in placing the centroid on unseen prompts;
    ``"centred"`` removes that nuisance. For a centred student, :meth:`log_prob`, :meth:`mean`
    and :meth:`sample` are in offset coordinates: use ``"samples"`` to score or place answers.

    Training uses AdamW on mini-batches of prompts, early stopping on the validation NLL (a
    seeded ``validation_fraction`` of the prompts, or ``validation=(H_val, Y_val)``), and restores
    the best epoch's weights. Inputs are standardised with statistics of the training split.
    """

    def __init__(
        self,
        n_components: int = 5,
        hidden_dim: int = 256,
        depth: int = 3,
        *,
        targets: Targets = "samples",
        min_scale: float = 1e-3,
        learning_rate: float = 1e-3,
        weight_decay: float = 1e-4,
        batch_size: int = 64,
        max_epochs: int = 300,
        patience: int = 20,
        validation_fraction: float = 0.1,
        seed: int = 0,
        verbose: bool = True,
    ) -> None:
        self.n_components = n_components
        self.hidden_dim = hidden_dim
        self.depth = depth
        self.targets = targets
        self.min_scale = min_scale
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.seed = seed
        self.verbose = verbose

    def _check_hyperparameters(self) -> None:
        """Raise a ValueError naming the first unusable hyperparameter (checked by ``fit``,
        as scikit-learn's estimators do, so ``__init__`` only stores them)."""
        if self.targets not in TARGETS:
            raise ValueError(f"targets must be one of {TARGETS}, got {self.targets!r}")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(
                f"validation_fraction must be in [0, 1), got {self.validation_fraction}"
            )
        for name in ("batch_size", "max_epochs", "patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        # the architecture (in_dim/out_dim are placeholders until the data is seen)
        MDNConfig(1, 1, self.n_components, self.hidden_dim, self.depth, self.min_scale)

    # ------------------------------------------------------------------ fitting
    def fit(
        self,
        H: ArrayLike,
        Y: ArrayLike,
        *,
        validation: tuple[ArrayLike, ArrayLike] | None = None,
    ) -> SSDStudent:
        """Fit the student to prompt representations ``H (n, h)`` and embeddings ``Y (n, N, d)``
        (each prompt's samples are centred first when ``targets="centred"``)."""
        self._check_hyperparameters()
        self.metadata_: dict[str, object] = {}
        H_arr, Y_arr = _check_training_pair(H, Y, "H", "Y")
        if self.targets == "centred":
            Y_arr = centred(Y_arr)
        if validation is not None:
            H_val, Y_val = _check_training_pair(*validation, "validation H", "validation Y")
            if self.targets == "centred":
                Y_val = centred(Y_val)
            check_width(H_val, H_arr.shape[1], "validation H", "width")
            check_width(Y_val, Y_arr.shape[2], "validation Y", "dimension")
        elif self.validation_fraction > 0:
            order = np.random.default_rng(self.seed).permutation(len(H_arr))
            n_val = min(len(H_arr) - 1, max(1, round(self.validation_fraction * len(H_arr))))
            val_idx, train_idx = order[:n_val], order[n_val:]
            H_val, Y_val = H_arr[val_idx], Y_arr[val_idx]
            H_arr, Y_arr = H_arr[train_idx], Y_arr[train_idx]
        else:
            H_val = Y_val = None

        config = MDNConfig(
            in_dim=H_arr.shape[1],
            out_dim=Y_arr.shape[2],
            n_components=self.n_components,
            hidden_dim=self.hidden_dim,
            depth=self.depth,
            min_scale=self.min_scale,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            model = MixtureDensityNetwork(config)
        _set_standardisation(model, H_arr, Y_arr)

        x = torch.as_tensor(H_arr, dtype=torch.float32)
        y = torch.as_tensor(Y_arr, dtype=torch.float32)
        val = None
        if H_val is not None:
            val = (
                torch.as_tensor(H_val, dtype=torch.float32),
                torch.as_tensor(Y_val, dtype=torch.float32),
            )
        self.model_ = model
        self._train(model, x, y, val)
        return self

    def fit_more(
        self, H: ArrayLike, Y: ArrayLike, *, validation: tuple[ArrayLike, ArrayLike]
    ) -> SSDStudent:
        """Go on training the fitted student on new prompts (warm start), keeping its input
        and target standardisation; early stopping on ``validation``, whose NLL under the
        student as it was counts as epoch 0 (so the student only changes if that improves)."""
        model = self._fitted_model()
        self._check_hyperparameters()
        arrays = _check_training_pair(H, Y, "H", "Y")
        arrays += _check_training_pair(*validation, "validation H", "validation Y")
        for name, array in zip(("H", "Y", "validation H", "validation Y"), arrays, strict=True):
            width = model.config.in_dim if array.ndim == 2 else model.config.out_dim
            check_width(array, width, name, "width" if array.ndim == 2 else "dimension")
        H_arr, Y_arr, H_val, Y_val = arrays
        if self.targets == "centred":
            Y_arr, Y_val = centred(Y_arr), centred(Y_val)

        def tensor(a: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(a, dtype=torch.float32)

        self._train(model, tensor(H_arr), tensor(Y_arr), (tensor(H_val), tensor(Y_val)), warm=True)
        return self

    def _train(
        self,
        model: MixtureDensityNetwork,
        x: torch.Tensor,
        y: torch.Tensor,
        val: tuple[torch.Tensor, torch.Tensor] | None,
        *,
        warm: bool = False,
    ) -> None:
        self.history_, self.best_epoch_ = train_mdn(
            model,
            x,
            y,
            val,
            TrainingRun(
                self.learning_rate,
                self.weight_decay,
                self.batch_size,
                self.max_epochs,
                self.patience,
                self.seed,
                self.verbose,
            ),
            warm=warm,
        )

    # ------------------------------------------------------------------ queries
    def distribution(self, H: ArrayLike) -> MixtureSameFamily:
        """The predicted mixture for each prompt, in float64, detached from the graph."""
        model = self._fitted_model()
        H_arr = as_float_array(H, "H", 2)
        check_width(H_arr, model.config.in_dim, "H", "width")
        parts = [_mixture_parts_f64(model, chunk) for chunk in _chunks(H_arr)]
        logits, loc, scale = (torch.cat(p) for p in zip(*parts, strict=True))
        return MixtureSameFamily(Categorical(logits=logits), Independent(Normal(loc, scale), 1))

    def renyi2_entropy(self, H: ArrayLike) -> np.ndarray:
        """Closed-form Rényi-2 entropy (nats) of the predicted mixture, shape ``(n,)``:
        ``-log ∫ p(y | h)² dy``, the SSD risk."""
        model = self._fitted_model()
        H_arr = as_float_array(H, "H", 2)
        check_width(H_arr, model.config.in_dim, "H", "width")
        out = [renyi2_entropy(_mixture_f64(model, chunk)) for chunk in _chunks(H_arr)]
        return torch.cat(out).numpy()

    def log_prob(self, H: ArrayLike, y: ArrayLike) -> np.ndarray:
        """Log-density of candidate embeddings: ``y (n, d) -> (n,)``, ``y (n, m, d) -> (n, m)``."""
        model = self._fitted_model()
        H_arr = as_float_array(H, "H", 2)
        y_arr = as_float_array(y, "y", (2, 3))
        check_width(H_arr, model.config.in_dim, "H", "width")
        check_width(y_arr, model.config.out_dim, "y", "dimension")
        if y_arr.shape[0] != H_arr.shape[0]:
            raise ValueError(
                f"y has {y_arr.shape[0]} rows but H has {H_arr.shape[0]}; one per prompt expected"
            )
        out = []
        for rows in _chunk_slices(len(H_arr)):
            mixture = _mixture_f64(model, H_arr[rows])
            target = torch.as_tensor(y_arr[rows], dtype=torch.float64)
            if target.ndim == 3:  # (n, m, d) -> (m, n, d) so the batch dim lines up
                out.append(mixture.log_prob(target.transpose(0, 1)).transpose(0, 1))
            else:
                out.append(mixture.log_prob(target))
        return torch.cat(out).numpy()

    def mean(self, H: ArrayLike) -> np.ndarray:
        """Mixture mean ``Σ_k π_k μ_k`` per prompt, shape ``(n, d)``."""
        return self.distribution(H).mean.numpy()

    def sample(self, H: ArrayLike, n_samples: int, seed: int = 0) -> np.ndarray:
        """Latent samples from the predicted mixture, shape ``(n, n_samples, d)``."""
        if n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}")
        mixture = self.distribution(H)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            draws = mixture.sample((n_samples,))
        return draws.transpose(0, 1).numpy()

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | object, *, metadata: dict[str, object] | None = None) -> None:
        """Write ``student.safetensors`` (weights) and ``student.json`` (config) into ``path``."""
        training = {name: getattr(self, name) for name in HYPERPARAMETERS}
        save_student(path, self._fitted_model(), training, self.best_epoch_, metadata=metadata)

    @classmethod
    def load(cls, path: str | object) -> SSDStudent:
        """Load a student written by :meth:`save`; refuses corrupt or mismatched files."""
        saved = load_student(path)
        config = saved.model.config
        student = cls(
            n_components=config.n_components,
            hidden_dim=config.hidden_dim,
            depth=config.depth,
            min_scale=config.min_scale,
            verbose=False,
            **saved.training,
        )
        student.model_ = saved.model
        student.history_ = []
        student.best_epoch_ = saved.best_epoch
        student.metadata_ = saved.metadata
        return student

    def _fitted_model(self) -> MixtureDensityNetwork:
        if getattr(self, "model_", None) is None:
            raise NotFittedError("this SSDStudent is not fitted yet; call fit(H, Y) first")
        return self.model_

    @property
    def n_features_in_(self) -> int:
        """Width ``h`` of the prompt representations the student was fitted on."""
        return self._fitted_model().config.in_dim

    @property
    def n_targets_(self) -> int:
        """Dimension ``d`` of the answer embeddings the student was fitted on."""
        return self._fitted_model().config.out_dim


def _check_training_pair(
    H: ArrayLike, Y: ArrayLike, h_name: str, y_name: str
) -> tuple[np.ndarray, np.ndarray]:
    H_arr = as_float_array(H, h_name, 2)
    Y_arr = as_float_array(Y, y_name, 3)
    if H_arr.shape[0] != Y_arr.shape[0]:
        raise ValueError(f"{h_name} has {H_arr.shape[0]} prompts but {y_name} has {Y_arr.shape[0]}")
    if H_arr.shape[0] < 2:
        raise ValueError(f"{h_name} must hold at least 2 prompts, got {H_arr.shape[0]}")
    if Y_arr.shape[1] < 1:
        raise ValueError(f"{y_name} must hold N >= 1 samples per prompt, got shape {Y_arr.shape}")
    if H_arr.shape[1] < 1 or Y_arr.shape[2] < 1:
        raise ValueError(f"{h_name} and {y_name} must have non-empty feature dimensions")
    return H_arr, Y_arr


def _set_standardisation(model: MixtureDensityNetwork, H: np.ndarray, Y: np.ndarray) -> None:
    flat_y = Y.reshape(-1, Y.shape[-1])
    for name, values in (
        ("input_mean", H.mean(axis=0)),
        ("input_std", _safe_std(H)),
        ("target_mean", flat_y.mean(axis=0)),
        ("target_std", _safe_std(flat_y)),
    ):
        getattr(model, name).copy_(torch.as_tensor(values, dtype=torch.float32))


def _safe_std(values: np.ndarray) -> np.ndarray:
    std = values.std(axis=0)
    return np.where(std > 1e-8 * max(1.0, float(np.abs(values).max())), std, 1.0)


def _mixture_parts_f64(
    model: MixtureDensityNetwork, H: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        mixture = model(torch.as_tensor(H, dtype=torch.float32))
    return tuple(t.double() for t in mixture_parts(mixture))


def _mixture_f64(model: MixtureDensityNetwork, H: np.ndarray) -> MixtureSameFamily:
    logits, loc, scale = _mixture_parts_f64(model, H)
    return MixtureSameFamily(Categorical(logits=logits), Independent(Normal(loc, scale), 1))


def _chunk_slices(n: int) -> list[slice]:
    return [slice(start, start + _CHUNK) for start in range(0, n, _CHUNK)]


def _chunks(H: np.ndarray) -> list[np.ndarray]:
    return [H[rows] for rows in _chunk_slices(len(H))]
