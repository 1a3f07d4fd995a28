"""Serve: start an OpenAI-compatible server for the chain's model and check it works.

A GGUF is served by llama.cpp's server (llama-cpp-python[server], CPU or GPU), an HF model folder
by vLLM (a CUDA GPU). The stage waits until GET /v1/models answers, then with the `openai` client
sends one chat completion (latency, tokens/s, whether it stopped at the end token), `concurrency`
chat requests at once, and a request with a wrong key (401 expected); it also
checks that the socket listens on the configured host only. It then stops the server, or with
`block: true` keeps serving until Ctrl-C.

    python main.py recipe=sft_to_gguf stages.serve.block=true

The server always wants a key. It comes from the environment variable named by `api_key_env`; when
that is unset, the stage makes a random one and writes it to <run folder>/<stage name>/api_key (mode
0600), and prints that path. A host other than loopback needs the user's own key (refused at plan
time without one). The key reaches the server through its own environment variable; it is never in
the config, the command line, the logs or the artifact (which records where the key came from).
Browsers on other origins get no CORS access unless `cors_origins` names them. The stage runs every
time (it is not cached); its record is <run folder>/<stage name>/ (artifact.json, server.log).
"""
from __future__ import annotations

import importlib.util
import re
import secrets
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import List, Optional

from pipeline import api_key
from pipeline.artifact import Artifact, ArtifactKind
from pipeline.backends import serving
from pipeline.llama_cpp.server import CORS_ORIGINS_ENV, REMOTE_IMAGES_ENV
from pipeline.engine.context import Inputs, StageContext
from pipeline.engine.registry import stage
from pipeline.errors import ConfigError, PlanError
from pipeline.models.memory import Workload
from pipeline.ranges import at_least, between, positive, setting
from pipeline.engine.contract import StageConfig

BACKENDS = ("auto", "llama.cpp", "vllm")
SERVABLE = (ArtifactKind.gguf, ArtifactKind.model)
# Top-level modules llama-cpp-python[server] and the checks need (found without importing them).
LLAMA_CPP_MODULES = ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings",
                     "openai")
REQUEST_TIMEOUT_S = 300.0
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
KEY_FLAGS = ("--api_key", "--api-key")
CPU_ALTERNATIVE = ("on CPU, add a gguf stage before serve (recipe sft_to_gguf) and serve the GGUF with "
                   "llama.cpp (backend auto or llama.cpp)")


@dataclass
class ServeConfig(StageConfig):
    kind: str = setting("serve", "the stage kind")
    backend: str = setting("auto", "auto (llama.cpp for a gguf, vllm for a model) | llama.cpp | vllm")
    host: str = setting("127.0.0.1", "0.0.0.0: reachable from other machines")
    port: int = between(0, 0, 65535, help="0: a free port")
    api_key_env: Optional[str] = setting(api_key.DEFAULT_ENV, "the variable holding your key (unset: a random key, "
                                         "written to <run folder>/<stage>/api_key; a non-loopback host needs yours)")
    cors_origins: List[str] = setting(factory=list, help="browser origins allowed to call the server, e.g. "
                                                         "[http://localhost:3000] (empty: none)")
    block: bool = setting(False, "true: keep serving after the checks, until Ctrl-C")
    ready_timeout_s: float = positive(120.0, help="seconds to wait for the server to answer before failing")
    smoke_prompt: str = setting("What is 12 plus 7?", "the chat request sent once to check the answer")
    max_tokens: int = at_least(1, 64, help="tokens per check answer")
    concurrency: int = at_least(0, 16, help="chat requests sent at once (0: skip)")
    n_ctx: int = at_least(16, 2048, help="llama.cpp context length")
    extra_args: List[str] = setting(factory=list, help="appended to the server's command line")
    model_alias: Optional[str] = setting(None, "the model name clients send (null: the chain's model name)")
    image_prompt: str = setting("What colour is the shape?", "a vision-language model: the question sent with a "
                                                             "drawn image (base64 data URL) to check it sees")
    remote_images: bool = setting(False, "let clients name http(s) image URLs the server then fetches (off: base64 "
                                         "data URLs only)")

    def validate(self, where: str, earlier: dict) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"{where}.backend: '{self.backend}' is not a serving backend; valid: {', '.join(BACKENDS)}")
        if not self.host:
            raise ConfigError(f"{where}.host: empty; use 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"{where}.port: {self.port} is not a port; use 1-65535, or 0 for a free one")
        for key, value, low in (("ready_timeout_s", self.ready_timeout_s, 0), ("max_tokens", self.max_tokens, 0),
                                ("n_ctx", self.n_ctx, 0), ("concurrency", self.concurrency, -1)):
            if value <= low:
                raise ConfigError(f"{where}.{key}: {value} must be {'>= 0' if low < 0 else '> 0'}")
        if self.api_key_env is not None and not ENV_NAME.match(self.api_key_env):
            raise ConfigError(f"{where}.api_key_env: '{self.api_key_env}' is not an environment variable name; it "
                              "names the variable that holds the key (e.g. TUNECHAIN_API_KEY), never the key itself")
        if any(arg.split("=")[0] in KEY_FLAGS for arg in self.extra_args):
            raise ConfigError(f"{where}.extra_args: do not put an API key on the command line; export it in an "
                              f"environment variable and name it in {where}.api_key_env")
        if not serving.is_loopback(self.host) and not api_key.from_env(self.api_key_env):
            raise ConfigError(_open_host(where, self.host, self.api_key_env))
        if self.inputs is not None and len(self.inputs) != 1:
            raise ConfigError(f"{where}.inputs: serve takes one input (a gguf or a model stage), got {self.inputs}")
        self._backend = self._resolve(where, _input_kind(self.inputs, earlier))

    def _resolve(self, where: str, input_kind: str | None) -> str | None:
        if input_kind is None:  # an unknown input name: the planner's input check reports it
            return None if self.backend == "auto" else self.backend
        if self.backend == "auto":
            return "llama.cpp" if input_kind == ArtifactKind.gguf else "vllm"
        if self.backend == "llama.cpp" and input_kind != ArtifactKind.gguf:
            raise ConfigError(f"{where}.backend: llama.cpp serves GGUF files but the input is a '{input_kind}'; add a "
                              "gguf stage before serve (recipe sft_to_gguf), or use backend vllm on a GPU")
        if self.backend == "vllm" and input_kind != ArtifactKind.model:
            raise ConfigError(f"{where}.backend: vllm serves HF model folders here but the input is a "
                              f"'{input_kind}'; use backend auto or llama.cpp for a GGUF")
        return self.backend

    @property
    def resolved_backend(self) -> str | None:
        """The backend validate() chose from the input's kind (None before validate)."""
        backend = getattr(self, "_backend", None)
        return backend or (self.backend if self.backend != "auto" else None)

    def check_device(self, where: str, device: str) -> None:
        backend = self.resolved_backend
        if backend == "llama.cpp":
            missing = [m for m in LLAMA_CPP_MODULES if importlib.util.find_spec(m) is None]
            if missing:
                raise PlanError(f"{where}: serving a GGUF needs llama-cpp-python[server] and openai (missing: "
                                f"{', '.join(missing)}): pip install -e '.[gguf]'")
        elif backend == "vllm":
            if device != "cuda":
                raise PlanError(f"{where}.backend: serving a model folder needs vLLM on a CUDA GPU, but the device "
                                f"is {device}; {CPU_ALTERNATIVE}")
            missing = [m for m in ("vllm", "openai") if importlib.util.find_spec(m) is None]
            if missing:
                raise PlanError(f"{where}.backend: vLLM serving needs {', '.join(missing)}: pip install -e "
                                f"'.[vllm,gguf]'; or {CPU_ALTERNATIVE}")

    def memory_profile(self, sources):
        return Workload(kind="inference")  # the server is another process; this one only sends requests


def _open_host(where: str, host: str, key_env: str | None) -> str:
    variable = key_env or api_key.DEFAULT_ENV
    named = "" if key_env else f" and set {where}.api_key_env={variable}"
    return (f"{where}.host: {host} is reachable from other machines and needs your own API key: export {variable}=..."
            f"{named}, or serve on loopback (127.0.0.1, ::1, localhost), where a random key is made")


def _input_kind(inputs: list[str] | None, earlier: dict) -> str | None:
    """The kind of what serve will take: the named stage, else the latest gguf/model stage, else the base."""
    if inputs:
        name = inputs[0]
        if name == "base":
            return ArtifactKind.model
        step = earlier.get(name)
        return step.output_kind if step is not None else None
    for step in reversed(list(earlier.values())):
        if step.output_kind in SERVABLE:
            return step.output_kind
    return ArtifactKind.model  # the chain's base model


@stage("serve", config=ServeConfig, consumes=set(SERVABLE), produces="serve", cache=False)
def run(cfg: ServeConfig, inputs: Inputs, ctx: StageContext) -> Artifact:
    """Serve the input over an OpenAI-compatible API, check it, then stop (or keep serving: block)."""
    import logging

    for name in ("httpx", "httpx2"):  # the client logs every request at INFO: 18 lines per check
        logging.getLogger(name).setLevel(logging.WARNING)

    source = inputs.primary
    backend = cfg._resolve(f"stages.{ctx.name}", source.kind)
    alias = cfg.model_alias or ctx.model.name or "tunechain"
    key = api_key.from_env(cfg.api_key_env)
    key_file = None
    if key:
        ctx.log(f"API key: read from ${cfg.api_key_env}; clients must send it as a Bearer token")
    elif not serving.is_loopback(cfg.host):  # the plan refuses this; the run's environment may differ
        raise ConfigError(_open_host(f"stages.{ctx.name}", cfg.host, cfg.api_key_env))
    else:
        key, key_file = api_key.generate(ctx.out_dir)
        where = f"${cfg.api_key_env} is unset" if cfg.api_key_env else "api_key_env is null"
        ctx.log(f"API key: {where}, so a random one is in {key_file} (readable by you only): "
                f"export {cfg.api_key_env or api_key.DEFAULT_ENV}=$(cat {key_file})")
    if not serving.is_loopback(cfg.host):
        print(f"warning: listening on {cfg.host}: reachable from other machines", flush=True)
    port = cfg.port or serving.free_port(cfg.host)
    if backend == "llama.cpp":
        threads = (ctx.hardware or {}).get("num_threads")
        command = serving.llama_cpp_command(source.gguf_file(), cfg.host, port, cfg.n_ctx, alias, threads,
                                            cfg.extra_args, ctx.device, mmproj=source.mmproj_file())
    else:
        command = serving.vllm_command(source.path, cfg.host, port, cfg.n_ctx, alias, cfg.extra_args,
                                       cfg.cors_origins)
    env = serving.server_env(backend, key, cfg.host, port)
    env[REMOTE_IMAGES_ENV] = "1" if cfg.remote_images else "0"
    env[CORS_ORIGINS_ENV] = ",".join(cfg.cors_origins)
    log_path = ctx.out_dir / "server.log"
    ctx.log(f"starting {backend}: {' '.join(command)}")  # safe to print: the key is in the environment
    server = serving.start(command, env, log_path, cfg.host, port)
    try:
        metrics = {"ready_seconds": serving.wait_ready(server, key, cfg.ready_timeout_s)}
        ctx.log(f"ready in {metrics['ready_seconds']}s at {server.base_url}/v1 (log: {log_path})")
        metrics.update(_bound(cfg, server))
        checked, extra = _checks(cfg, server, alias, key, ctx)
        metrics.update(checked)
        if backend == "llama.cpp" and source.mmproj_file() is not None:
            seen, said = image_checks(_client(server, key), alias, cfg, ctx)
            metrics.update(seen)
            extra.update(said)
        ctx.tracker.log(ctx.name, {k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        if cfg.block:
            _announce(server, alias, cfg.api_key_env or api_key.DEFAULT_ENV, key_file)
            hold(server)
    finally:
        serving.stop(server)
        ctx.log(f"server stopped (pid {server.pid})")
    return Artifact(kind="serve", path=str(ctx.out_dir), fingerprint="", format="openai-server",
                    base_model=source.base_model, metrics=metrics,
                    meta={"backend": backend, "base_url": f"{server.base_url}/v1", "model": alias,
                          "served": source.path, "auth_mode": _auth_mode(cfg, key_file), "server_pid": server.pid, **extra})


def drawn_image_url() -> str:
    """A red circle on white, 64x64, as a base64 PNG data URL (what an OpenAI client sends)."""
    import base64
    import io

    from PIL import Image, ImageDraw

    image = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(image).ellipse((16, 16, 48, 48), fill="red")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def image_checks(client, alias: str, cfg: ServeConfig, ctx: StageContext) -> tuple[dict, dict]:
    """A chat request carrying a base64 image must be answered; one naming a remote URL must be refused
    unless remote_images is on."""
    import openai

    def ask(url: str):
        return client.chat.completions.create(model=alias, max_tokens=cfg.max_tokens, temperature=0.0, messages=[
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": cfg.image_prompt}]}])

    started = time.time()
    reply = ask(drawn_image_url())
    text = reply.choices[0].message.content or ""
    metrics = {"image_latency_s": round(time.time() - started, 3),
               "image_prompt_tokens": reply.usage.prompt_tokens if reply.usage else 0}
    ctx.log(f"image request: {metrics['image_prompt_tokens']} prompt tokens (the image's included), answer "
            f"{text[:80]!r} in {metrics['image_latency_s']}s")
    if not cfg.remote_images:
        try:
            ask("http://127.0.0.1:9/image.png")
            refused = False
        except openai.APIStatusError:
            refused = True
        if not refused:
            raise RuntimeError("a request naming a remote image URL was answered, but remote_images is off")
        metrics["remote_image_refused"] = True
        ctx.log("remote image URL: refused (remote_images: false)")
    return metrics, {"image_answer": text[:500]}


def _bound(cfg: ServeConfig, server: serving.ServerProcess) -> dict:
    """Check the server listens on the configured host only (a wildcard bind would expose it)."""
    found = serving.listening_addresses(server.pid, server.port)
    if not found:
        raise RuntimeError(f"no socket of the server (pid {server.pid}) listens on port {server.port}")
    allowed = {cfg.host} | set(serving.resolve(cfg.host))
    wider = [ip for ip in found if ip not in allowed]
    if wider:
        raise RuntimeError(f"the server listens on {', '.join(wider)} port {server.port}, wider than the configured "
                           f"host {cfg.host}")
    return {"bound_address": ", ".join(f"{serving.url_host(ip)}:{server.port}" for ip in found)}


def _client(server: serving.ServerProcess, key: str):
    try:
        import openai
    except ImportError:
        raise PlanError("the serve checks need the openai client: pip install -e '.[gguf]'") from None
    # No retries: count what happens.
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0,
                         timeout=REQUEST_TIMEOUT_S)


def _chat(client, alias: str, prompt: str, max_tokens: int):
    return client.chat.completions.create(model=alias, messages=[{"role": "user", "content": prompt}],
                                          max_tokens=max_tokens, temperature=0.0)


def _checks(cfg: ServeConfig, server: serving.ServerProcess, alias: str, key: str,
            ctx: StageContext) -> tuple[dict, dict]:
    """Smoke chat, concurrent chats, wrong key: (metrics, meta)."""
    import openai

    client = _client(server, key)
    started = time.time()
    reply = _chat(client, alias, cfg.smoke_prompt, cfg.max_tokens)
    latency = time.time() - started
    choice = reply.choices[0]
    tokens = reply.usage.completion_tokens if reply.usage else 0
    text = choice.message.content or ""
    metrics = {"smoke_latency_s": round(latency, 3), "smoke_completion_tokens": tokens,
               "smoke_tokens_per_s": round(tokens / latency, 2) if latency > 0 else None,
               "smoke_finish_reason": choice.finish_reason}
    meta = {"smoke_text": text[:500]}
    ctx.log(f"smoke: {tokens} tokens in {latency:.2f}s ({metrics['smoke_tokens_per_s']} tokens/s): {text[:120]!r}")
    if choice.finish_reason == "stop":
        ctx.log("smoke: stopped at the end-of-turn token (finish_reason stop)")
    else:
        ctx.log(f"smoke: finish_reason {choice.finish_reason}: the answer did not end within max_tokens="
                f"{cfg.max_tokens} (a base model that never learned the chat format often runs on)")

    metrics["concurrent_n"] = cfg.concurrency
    if cfg.concurrency:
        errors: list[str] = []

        def one(i: int) -> bool:
            try:
                return bool(_chat(client, alias, cfg.smoke_prompt, cfg.max_tokens).choices)
            except Exception as e:  # counted, the first ones reported
                errors.append(f"{type(e).__name__}: {str(e)[:200]}")
                return False

        started = time.time()
        with ThreadPoolExecutor(max_workers=cfg.concurrency) as pool:
            ok = sum(pool.map(one, range(cfg.concurrency)))
        metrics["concurrent_ok"] = ok
        metrics["concurrent_seconds"] = round(time.time() - started, 3)
        ctx.log(f"concurrency: {ok}/{cfg.concurrency} chat requests at once answered in "
                f"{metrics['concurrent_seconds']}s")
        if errors:
            print(f"warning: {len(errors)} of {cfg.concurrency} concurrent requests failed; first: {errors[0]}",
                  flush=True)
    else:
        metrics["concurrent_ok"] = 0
        metrics["concurrent_seconds"] = 0.0

    wrong = client.with_options(api_key=f"wrong-{secrets.token_hex(8)}")
    try:
        _chat(wrong, alias, "hi", 1)
        status = 200
    except openai.APIStatusError as e:
        status = e.status_code
    metrics["wrong_key_status"] = status
    if status != 401:
        raise RuntimeError(f"a request with a wrong API key got HTTP {status}, not 401: the server is not protected")
    ctx.log(f"wrong key: HTTP {status}")
    return metrics, meta


def _auth_mode(cfg: ServeConfig, key_file) -> str:
    """How clients authenticate, for the record: where the key is, never the key (a field named `auth` would
    be redacted as a secret)."""
    return f"api-key from file {key_file}" if key_file else f"api-key from ${cfg.api_key_env}"


def _announce(server: serving.ServerProcess, alias: str, key_env: str, key_file) -> None:
    auth = f' -H "Authorization: Bearer ${key_env}"'
    key_py = f'os.environ["{key_env}"]'
    export = f"  export {key_env}=$(cat {key_file})   # the key made for this server\n\n" if key_file else ""
    print(f"\nserving '{alias}' at {server.base_url}/v1 (Ctrl-C stops it)\n\n{export}"
          f"  curl {server.base_url}/v1/chat/completions{auth} -H 'Content-Type: application/json' \\\n"
          f"    -d '{{\"model\": \"{alias}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hello\"}}]}}'\n\n"
          f"  import os, openai\n"
          f"  client = openai.OpenAI(base_url=\"{server.base_url}/v1\", api_key={key_py})\n"
          f"  client.chat.completions.create(model=\"{alias}\", messages=[{{\"role\": \"user\", \"content\": \"Hello\"}}])\n",
          flush=True)


def hold(server: serving.ServerProcess) -> None:
    """Keep serving until Ctrl-C; an exit of the server on its own is an error."""
    try:
        while server.alive():
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("\nCtrl-C: stopping the server", file=sys.stderr, flush=True)
        return
    raise RuntimeError(f"the server exited with code {server.proc.returncode} while serving; last lines of "
                       f"{server.log_path}:\n{server.log_tail()}")
