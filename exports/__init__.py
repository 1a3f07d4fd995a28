"""Merge and quantize/export stages: one module per format (see pipeline.engine.registry)."""
