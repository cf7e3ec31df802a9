"""The batched decoder: the engine that prefills prompts and decodes answer rows, its jobs,
worker thread, caches, sampling and stopping, and the forward backends it runs a model with
(the lean forward where verified, the model's own otherwise)."""
