"""One file per eval task; each registers itself with pipeline.evaluation.registry.task."""
