"""Opening llama.cpp on this machine: weight repacking where it is safe, GPU layers where there is a GPU.

llama.cpp repacks quantized weights into CPU-specific buffers ("extra buffer types") at load time.
On CPUs with AMX (Sapphire Rapids and later Xeons) a build that compiled the AMX kernels (the
default `-march=native` pip build on such a machine) repacks q8_0/q4 weights into AMX buffers, and
`llama_decode` then segfaults in ggml_backend_amx_mul_mat on the first generation
(ggml-org/llama.cpp#20824, machine-dependent, no upstream fix). Loading with
`use_extra_bufts = False` (llama.cpp's `--no-repack`) avoids it. Repacking is a real speed-up
elsewhere (AVX2/AVX512 q4_0 x8 layouts), so it is only turned off where the loaded ggml reports
AMX, unless TUNECHAIN_LLAMA_REPACK says otherwise:

    TUNECHAIN_LLAMA_REPACK=auto   (default) off where ggml reports AMX_INT8, on elsewhere
    TUNECHAIN_LLAMA_REPACK=off    never repack
    TUNECHAIN_LLAMA_REPACK=on     always repack (the library's default; crashes on AMX builds)

Every way tunechain runs llama.cpp goes through here: the in-process backend (eval, parity,
perplexity) through `open_llama`, the OpenAI-compatible server through pipeline.backends.serving's
`llama_cpp_command` (which starts `python -m pipeline.llama_cpp.server`: this same rule applied in the
server's process). The
quantizer never allocates backend weight buffers (it reads tensors through the file loader), and
vocab-only loads hold no weights, so neither needs it.
"""
from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import Iterator

REPACK_ENV = "TUNECHAIN_LLAMA_REPACK"
REPACK_CHOICES = ("auto", "on", "off")
AMX_FEATURE = "AMX_INT8 = 1"  # how llama_print_system_info reports a build that will use AMX buffers

_patch_lock = threading.Lock()


def system_info() -> str:
    """ggml's feature line for the loaded library (which SIMD/AMX kernels it will use)."""
    import llama_cpp

    return llama_cpp.llama_print_system_info().decode("utf-8", errors="replace")


def repack_mode() -> str:
    mode = os.environ.get(REPACK_ENV, "auto").strip().lower() or "auto"
    if mode not in REPACK_CHOICES:
        raise ValueError(f"{REPACK_ENV}={mode!r}: valid values are {', '.join(REPACK_CHOICES)}")
    return mode


def repack_allowed(info: str | None = None) -> bool:
    """Whether llama.cpp may repack weights into extra CPU buffers here."""
    mode = repack_mode()
    if mode != "auto":
        return mode == "on"
    return AMX_FEATURE not in (system_info() if info is None else info)


def _without_repack(defaults):
    def patched():
        params = defaults()
        params.use_extra_bufts = False
        return params

    return patched


@contextlib.contextmanager
def _default_params_without_repack() -> Iterator[None]:
    """llama_cpp.Llama builds its model params from llama_model_default_params() inside __init__
    and has no argument for use_extra_bufts: for the duration of one construction, hand it
    defaults with repacking off."""
    import llama_cpp.llama_cpp as bindings

    with _patch_lock:
        original = bindings.llama_model_default_params
        bindings.llama_model_default_params = _without_repack(original)
        try:
            yield
        finally:
            bindings.llama_model_default_params = original


def disable_repack_for_process() -> None:
    """For a process that only serves (the llama.cpp server): every model it loads skips repacking."""
    import llama_cpp.llama_cpp as bindings

    bindings.llama_model_default_params = _without_repack(bindings.llama_model_default_params)


def gpu_layers(device: str) -> int:
    """-1 (every layer) on a CUDA device when the bindings were built with GPU offload, else 0."""
    if device != "cuda":
        return 0
    import llama_cpp

    return -1 if llama_cpp.llama_supports_gpu_offload() else 0


def open_llama(path: str | Path, device: str = "cpu", **kwargs):
    """llama_cpp.Llama for `path`, with repacking only where it is safe and layers on the GPU if any."""
    from llama_cpp import Llama

    kwargs.setdefault("n_gpu_layers", gpu_layers(device))
    kwargs.setdefault("verbose", False)
    if repack_allowed():
        return Llama(model_path=str(path), **kwargs)
    with _default_params_without_repack():
        return Llama(model_path=str(path), **kwargs)
