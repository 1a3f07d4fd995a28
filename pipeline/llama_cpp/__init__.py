"""The llama.cpp toolkit: loading (runtime), its server, the HF -> GGUF converter, the GGUF metadata
checks and the Ollama Modelfile. The GGUF inference backend over it is pipeline/backends/gguf.py."""
