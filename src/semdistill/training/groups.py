"""Question groups of a training set, for selection that is judged on unseen groups.

A group is read from a question id: ``trivia/<list>/<n>`` gives the trivia list,
``mmlu/<subject>/<n>`` the group ``mmlu`` (one group; its subjects are too small), anything
else its source (the id's first part). With ``TrainSettings.transfer_selection`` the layer and
the risk student are chosen by how well they do on training groups held out in turn (inner
leave-group-out), which needs at least two groups that are large enough and hold both
classes of binarised semantic entropy (no correctness label is read).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def question_group(question_id: str) -> str:
    """The group of a question id (see the module docstring)."""
    parts = str(question_id).split("/")
    if parts[0] == "trivia" and len(parts) >= 3:
        return parts[1]
    return parts[0]


def groups_of(ids: Iterable[str]) -> np.ndarray:
    """The group of every id, as a string array."""
    return np.array([question_group(i) for i in ids], dtype=object).astype(str)


def selection_groups(
    groups: np.ndarray, rows: np.ndarray, high_se: np.ndarray, min_rows: int
) -> tuple[str, ...]:
    """The groups that can be held out for selection: at least ``min_rows`` of ``rows``
    (indices) and both classes of ``high_se`` among them, in sorted order; empty unless at
    least two qualify (a single group leaves nothing to train on that is not itself)."""
    names = np.unique(groups[rows])
    usable = []
    for name in names:
        members = rows[groups[rows] == name]
        positives = int(np.sum(high_se[members]))
        if len(members) >= min_rows and 0 < positives < len(members):
            usable.append(str(name))
    return tuple(usable) if len(usable) >= 2 else ()
