"""Everything llama.cpp: loading (runtime), the inference backend, its server, the HF -> GGUF
converter, the GGUF metadata checks and the Ollama Modelfile."""
