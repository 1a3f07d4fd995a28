"""`python -m pipeline.llama_cpp.server ARGS`: llama-cpp-python's OpenAI-compatible server with
tunechain's llama.cpp loading rule (no weight repacking on AMX builds, see pipeline.llama_cpp.runtime)
and its image rule: a vision-language model (`--clip_model_path`) takes images as base64 data URLs; a
remote http(s) image URL is refused unless TUNECHAIN_REMOTE_IMAGES=1 (the server would otherwise fetch
any address a client names, from inside the machine). Its key rule: the key (API_KEY) is compared in
constant time, not with `==`. Its browser rule: no cross-origin requests unless TUNECHAIN_CORS_ORIGINS names
origins (comma-separated); llama-cpp-python alone allows every origin, with credentials. ARGS are the server's
own (`--model`, ...)."""
from __future__ import annotations

import os
import runpy

from pipeline.api_key import same_key
from pipeline.llama_cpp.runtime import disable_repack_for_process, repack_allowed

REMOTE_IMAGES_ENV = "TUNECHAIN_REMOTE_IMAGES"
CORS_ORIGINS_ENV = "TUNECHAIN_CORS_ORIGINS"


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


def harden_app() -> None:
    """Every app the server creates checks the key in constant time and allows only the named origins."""
    from fastapi import Depends, HTTPException, status
    from fastapi.middleware.cors import CORSMiddleware
    from llama_cpp.server import app as server_app

    async def constant_time_key(settings=Depends(server_app.get_server_settings),
                                authorization=Depends(server_app.bearer_scheme)):
        if settings.api_key is None:
            return True
        if authorization is not None and same_key(authorization.credentials, settings.api_key):
            return authorization.credentials
        raise HTTPException(status_code=status.HTTP_401_UNAUTHORIZED, detail="Invalid API key")

    create = server_app.create_app

    def create_app(*args, **kwargs):
        app = create(*args, **kwargs)
        app.dependency_overrides[server_app.authenticate] = constant_time_key  # the routes captured the original
        app.user_middleware = [m for m in app.user_middleware if m.cls is not CORSMiddleware]
        origins = [o.strip() for o in os.environ.get(CORS_ORIGINS_ENV, "").split(",") if o.strip()]
        if origins:  # a browser page on these origins may call the API (with the key); cookies are never sent
            app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["*"], allow_headers=["*"])
        return app

    server_app.create_app = create_app  # llama_cpp.server's __main__ imports it by name when it runs


if __name__ == "__main__":
    harden_app()
    if not repack_allowed():
        disable_repack_for_process()
    if os.environ.get(REMOTE_IMAGES_ENV) != "1":
        refuse_remote_images()
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
