"""Inference backends (transformers, llama.cpp) and the OpenAI-compatible servers."""
