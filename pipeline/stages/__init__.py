"""Training, evaluation and serving stages: one module per stage kind (see pipeline.engine.registry)."""
