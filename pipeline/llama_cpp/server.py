"""`python -m pipeline.llama_cpp.server ARGS`: llama-cpp-python's OpenAI-compatible server with
tunechain's llama.cpp loading rule (no weight repacking on AMX builds, see pipeline.llama_cpp.runtime).
ARGS are the server's own (`--model`, `--host`, `--port`, ...)."""
from __future__ import annotations

import runpy

from pipeline.llama_cpp.runtime import disable_repack_for_process, repack_allowed

if __name__ == "__main__":
    if not repack_allowed():
        disable_repack_for_process()
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
