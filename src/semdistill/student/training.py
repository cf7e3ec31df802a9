"""The student's training loop: AdamW on mini-batches of prompts, early stopping on the
validation NLL, and the best epoch's weights restored."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from scipy.stats import spearmanr

from semdistill.semantics.dispersion import teacher_dispersion
from semdistill.student.entropy import renyi2_entropy
from semdistill.student.mdn import MixtureDensityNetwork


@dataclass(frozen=True)
class EpochRecord:
    """One training epoch: mean negative log-likelihood (nats per sample) of the training and
    validation targets, and the validation fidelity: Spearman ρ between the student's entropy
    and the root-mean-square spread of each validation prompt's samples (None without
    validation data or with fewer than 2 samples per prompt)."""

    epoch: int
    train_nll: float
    val_nll: float | None
    val_fidelity: float | None = None


@dataclass(frozen=True)
class TrainingRun:
    """The optimiser and stopping settings of one training run."""

    learning_rate: float
    weight_decay: float
    batch_size: int
    max_epochs: int
    patience: int
    seed: int
    verbose: bool


def train_mdn(
    model: MixtureDensityNetwork,
    x: torch.Tensor,
    y: torch.Tensor,
    val: tuple[torch.Tensor, torch.Tensor] | None,
    run: TrainingRun,
    *,
    warm: bool = False,
) -> tuple[list[EpochRecord], int]:
    """Train ``model`` on prompts ``x (n, h)`` and targets ``y (n, N, d)`` in place, keep the
    epoch with the best validation NLL (training NLL without ``val``), and return the
    per-epoch history and that epoch (0: the weights as they were, when ``warm`` and no
    epoch improved on them)."""
    optimiser = torch.optim.AdamW(
        model.parameters(), lr=run.learning_rate, weight_decay=run.weight_decay
    )
    generator = torch.Generator().manual_seed(run.seed)
    spread = None
    if val is not None and val[1].shape[1] >= 2:
        spread = teacher_dispersion(val[1].numpy())
    history: list[EpochRecord] = []
    best_nll, best_state, since_best = math.inf, copy.deepcopy(model.state_dict()), 0
    best_epoch = 0
    if warm and val is not None:  # the student as it was is epoch 0
        model.eval()
        with torch.no_grad():
            best_nll = _nll(model, *val).item()
    progress = Progress(
        TextColumn("[bold]training student"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} epochs"),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        disable=not run.verbose,
    )
    with progress:
        task = progress.add_task("fit", total=run.max_epochs, status="")
        for epoch in range(1, run.max_epochs + 1):
            model.train()
            order = torch.randperm(len(x), generator=generator)
            total = 0.0
            for start in range(0, len(x), run.batch_size):
                idx = order[start : start + run.batch_size]
                loss = _nll(model, x[idx], y[idx])
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                total += loss.item() * len(idx)
            train_nll = total / len(x)
            val_nll = val_fidelity = None
            if val is not None:
                model.eval()
                with torch.no_grad():
                    mixture = model(val[0])
                    val_nll = -mixture.log_prob(val[1].transpose(0, 1)).mean().item()
                    if spread is not None:
                        entropy = renyi2_entropy(mixture).numpy()
                        val_fidelity = float(spearmanr(entropy, spread).statistic)
            history.append(EpochRecord(epoch, train_nll, val_nll, val_fidelity))
            monitored = val_nll if val_nll is not None else train_nll
            if monitored < best_nll:
                best_nll, since_best, best_epoch = monitored, 0, epoch
                best_state = copy.deepcopy(model.state_dict())
            else:
                since_best += 1
            status = f"train NLL {train_nll:.3f}" + (
                f"  val NLL {val_nll:.3f}" if val_nll is not None else ""
            )
            progress.update(task, completed=epoch, status=status)
            if val is not None and since_best >= run.patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    return history, best_epoch


def _nll(model: MixtureDensityNetwork, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean NLL of every sample ``y (n, N, d)`` under the mixture predicted from ``x (n, h)``."""
    return -model(x).log_prob(y.transpose(0, 1)).mean()
