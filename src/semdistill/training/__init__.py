"""Training stage: semantic-entropy targets, layer selection and PCA for the students.

Imported eagerly: the function ``prepare`` shares its name with the module
``semdistill.training.prepare``, which a lazy ``__getattr__`` would return instead.
"""

from semdistill.semantics.pca import PCAReducer
from semdistill.training.prepare import (
    PreparedSet,
    StudentSettings,
    TrainSettings,
    prepare,
    se_judge_name,
    semantic_entropy_of,
    split_indices,
)

__all__ = [
    "PCAReducer",
    "PreparedSet",
    "StudentSettings",
    "TrainSettings",
    "prepare",
    "se_judge_name",
    "semantic_entropy_of",
    "split_indices",
]
