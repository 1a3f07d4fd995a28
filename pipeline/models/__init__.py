"""The chain's model: its config and tuning, locating and loading it, GGUF/PyPI sources, memory."""
