"""The SSD student: a mixture density network over answer embeddings and its closed forms."""

from semdistill.student.entropy import renyi2_entropy
from semdistill.student.estimator import SSDStudent
from semdistill.student.mdn import MDNConfig, MixtureDensityNetwork
from semdistill.student.training import EpochRecord

__all__ = ["EpochRecord", "MDNConfig", "MixtureDensityNetwork", "SSDStudent", "renyi2_entropy"]
