"""What sampled answers mean: the sentence embedder, the answer PCA, the NLI judge,
semantic entropy and teacher dispersion. Used by collection, training and the served scorer."""
