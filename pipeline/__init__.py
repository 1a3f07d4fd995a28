"""tunechain: declarative chains of LLM stages driven by Hydra."""
__version__ = "0.1.0"
