"""The jobs the CLI runs across stages: the main job (collect every preset set, then evaluate
the stores), the evaluation of stored collections (each set trained and put through every
experiment, a union scorer, transfer between the sets, the report) and the scoring of stores
with a saved scorer."""
