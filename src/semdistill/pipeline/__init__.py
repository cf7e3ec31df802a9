"""The jobs behind the CLI: the main job (collect, train, evaluate, report), training and
saving a scorer on stored collections, and scoring stores with a saved scorer."""
