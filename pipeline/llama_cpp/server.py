"""`python -m pipeline.llama_cpp.server ARGS`: llama-cpp-python's OpenAI-compatible server with
tunechain's llama.cpp loading rule (no weight repacking on AMX builds, see pipeline.llama_cpp.runtime)
and its image rule: a vision-language model (`--clip_model_path`) takes images as base64 data URLs; a
remote http(s) image URL is refused unless TUNECHAIN_REMOTE_IMAGES=1 (the server would otherwise fetch
any address a client names, from inside the machine). ARGS are the server's own (`--model`, ...)."""
from __future__ import annotations

import os
import runpy

from pipeline.llama_cpp.runtime import disable_repack_for_process, repack_allowed

REMOTE_IMAGES_ENV = "TUNECHAIN_REMOTE_IMAGES"


def refuse_remote_images() -> None:
    """Every image handler of the bindings loads data URLs only."""
    from llama_cpp import llama_chat_format

    for handler in (llama_chat_format.MTMDChatHandler, llama_chat_format.Llava15ChatHandler):
        fetch = handler._load_image

        def data_urls_only(image_url: str, _fetch=fetch) -> bytes:
            if not image_url.startswith("data:"):
                raise ValueError(f"remote image URLs are off on this server ({image_url[:60]!r}); send the image as a "
                                 f"base64 data URL, or start the server with {REMOTE_IMAGES_ENV}=1")
            return _fetch(image_url)

        handler._load_image = staticmethod(data_urls_only)


if __name__ == "__main__":
    if not repack_allowed():
        disable_repack_for_process()
    if os.environ.get(REMOTE_IMAGES_ENV) != "1":
        refuse_remote_images()
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
