"""The serve stage: a llama.cpp server of the embedded model's GGUF, checked through the openai
client (smoke chat, 16 concurrent chats, wrong key -> 401, loopback bind), the key kept out of
every record, a random key in a 0600 file when none is set, no CORS for other origins, the server
gone afterwards; and the plan-time refusals of vLLM on CPU and of a non-loopback host without a key."""
from __future__ import annotations

import json
import os
import re
import secrets
import socket
import stat
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp.server")
pytest.importorskip("openai")

from conftest import EMBEDDED, compose  # noqa: E402

from pipeline.artifact import MANIFEST, Artifact  # noqa: E402
from pipeline.engine import registry  # noqa: E402
from pipeline.engine.context import Inputs, StageContext  # noqa: E402
from pipeline.engine.plan import Step  # noqa: E402
from pipeline.engine.runner import run_stage  # noqa: E402
from pipeline.engine.store import Store  # noqa: E402
from pipeline.engine.tracking import LoggerConfig, Tracker  # noqa: E402
from pipeline.errors import ConfigError, PlanError  # noqa: E402
from pipeline.models.config import ModelConfig  # noqa: E402
from pipeline.stages import serve  # noqa: E402


@pytest.fixture(scope="module")
def gguf(tmp_path_factory) -> Artifact:
    """The embedded model as an f16 GGUF (llama.cpp's converter, cached in TUNECHAIN_CACHE)."""
    from pipeline.llama_cpp.converter import convert

    out = tmp_path_factory.mktemp("gguf") / "m.gguf"
    convert(EMBEDDED, out, "f16")
    return Artifact(kind="gguf", path=str(out), fingerprint="gguf-test", format="gguf-f16",
                    base_model=str(EMBEDDED), meta={"file": out.name})


def _context(run_dir: Path) -> StageContext:
    model = ModelConfig(name="embedded", path=str(EMBEDDED))
    tracker = Tracker(LoggerConfig(backends=[]), run_dir, {}, name="t", group=None)
    return StageContext(name="serve", out_dir=run_dir, run_dir=run_dir, model=model, device="cpu", seed=0,
                        tracker=tracker, hardware={"num_threads": 1})


def _serve(cfg: serve.ServeConfig, gguf: Artifact, run_dir: Path) -> Artifact:
    """Run the stage the way the runner does (cache=False: the record goes to run_dir/<name>)."""
    spec = registry._REGISTRY["serve"]  # registered by importing pipeline.stages.serve
    step = Step("serve", spec, cfg, ["gguf"], "serve", fingerprint="f" * 20)
    artifact, outcome = run_stage(step, Inputs([gguf]), _context(run_dir), Store(run_dir / "store"))
    assert outcome == "done" and not (run_dir / "store").exists()  # nothing goes to the store
    return artifact


def _gone(artifact: Artifact) -> None:
    import psutil

    assert not psutil.pid_exists(artifact.meta["server_pid"]) or \
        psutil.Process(artifact.meta["server_pid"]).status() == psutil.STATUS_ZOMBIE
    port = int(artifact.metrics["bound_address"].rsplit(":", 1)[1])
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_serves_with_a_key_checks_it_and_never_records_it(gguf, tmp_path, monkeypatch, capfd):
    key = f"tc-{secrets.token_hex(16)}"
    monkeypatch.setenv("TUNECHAIN_API_KEY", key)
    monkeypatch.setenv("API_KEY", "a-stray-key-of-the-shell")  # must not become the server's key
    seen = {}

    def from_outside(server):  # block: true holds here; a client of our own, then Ctrl-C
        import openai

        good = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0)
        reply = good.chat.completions.create(model="embedded", max_tokens=4,
                                             messages=[{"role": "user", "content": "Hi"}])
        seen["right_key_tokens"] = reply.usage.completion_tokens
        bad = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="a-stray-key-of-the-shell", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
        seen["wrong_key"] = 401
        raise KeyboardInterrupt

    original_hold = serve.hold
    monkeypatch.setattr(serve, "hold", lambda server: original_hold(_Interrupting(server, from_outside)))
    cfg = serve.ServeConfig(max_tokens=16, block=True)
    cfg.validate("stages.serve", {})
    artifact = _serve(cfg, gguf, tmp_path)

    m = artifact.metrics
    assert artifact.kind == "serve" and artifact.format == "openai-server"
    assert artifact.path == str(tmp_path / "serve")
    assert artifact.meta["backend"] == "llama.cpp" and artifact.meta["auth_mode"] == "api-key from $TUNECHAIN_API_KEY"
    assert artifact.meta["model"] == "embedded" and artifact.meta["base_url"].startswith("http://127.0.0.1:")
    assert m["smoke_completion_tokens"] > 0 and m["smoke_tokens_per_s"] > 0
    assert m["smoke_finish_reason"] in ("stop", "length")  # the untrained base may run to max_tokens
    assert m["concurrent_n"] == 16 and m["concurrent_ok"] == 16
    assert m["wrong_key_status"] == 401
    assert m["bound_address"].startswith("127.0.0.1:") and "," not in m["bound_address"]
    assert m["ready_seconds"] > 0
    assert seen == {"right_key_tokens": seen["right_key_tokens"], "wrong_key": 401} and seen["right_key_tokens"] > 0

    out = capfd.readouterr()
    record = (tmp_path / "serve" / MANIFEST).read_text()
    log = (tmp_path / "serve" / "server.log").read_text()
    metrics_file = (tmp_path / "metrics.jsonl").read_text()
    assert "Invalid API key" in log or "401" in log
    for text in (record, log, metrics_file, out.out, out.err):
        assert key not in text
    assert "serving 'embedded' at http://127.0.0.1:" in out.out and "$TUNECHAIN_API_KEY" in out.out
    _gone(artifact)


class _Interrupting:
    """A ServerProcess whose first liveness check runs a client and then raises Ctrl-C."""

    def __init__(self, server, action):
        self._server, self._action, self._done = server, action, False

    def __getattr__(self, name):
        return getattr(self._server, name)

    def alive(self) -> bool:
        if not self._done:
            self._done = True
            self._action(self._server)
        return self._server.alive()


def _get(url: str, key: str | None = None, origin: str | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url)
    if key is not None:
        request.add_header("Authorization", f"Bearer {key}")
    if origin is not None:
        request.add_header("Origin", origin)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers)
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers)


def test_without_a_key_a_random_one_is_made_kept_in_a_private_file_and_required(gguf, tmp_path, monkeypatch, capfd):
    monkeypatch.delenv("TUNECHAIN_API_KEY", raising=False)
    printed, seen = [], {}

    def from_outside(server):  # a client that knows only what the stage printed
        printed.append(capfd.readouterr())
        path = Path(re.search(r"export TUNECHAIN_API_KEY=\$\(cat (\S+)\)", printed[0].out).group(1))
        seen["mode"] = stat.S_IMODE(path.stat().st_mode)
        key = path.read_text().strip()
        models = f"{server.base_url}/v1/models"
        seen["no_key"], _ = _get(models)
        seen["wrong_key"], _ = _get(models, key=key[:-1] + ("a" if key[-1] != "a" else "b"))
        seen["file_key"], headers = _get(models, key=key, origin="http://evil.example")
        seen["cors"] = {k.lower() for k in headers} & {"access-control-allow-origin", "access-control-allow-credentials"}
        seen["key"] = key
        raise KeyboardInterrupt

    original_hold = serve.hold
    monkeypatch.setattr(serve, "hold", lambda server: original_hold(_Interrupting(server, from_outside)))
    cfg = serve.ServeConfig(max_tokens=8, concurrency=4, model_alias="tiny", block=True)
    artifact = _serve(cfg, gguf, tmp_path)
    printed.append(capfd.readouterr())

    key_file = tmp_path / "serve" / "api_key"
    assert seen["mode"] == 0o600 and seen["key"] == key_file.read_text().strip() and len(seen["key"]) >= 32
    assert (seen["no_key"], seen["wrong_key"], seen["file_key"]) == (401, 401, 200)
    assert seen["cors"] == set()  # no cross-origin access by default
    assert artifact.metrics["wrong_key_status"] == 401 and artifact.metrics["concurrent_ok"] == 4
    assert json.loads((tmp_path / "serve" / MANIFEST).read_text())["meta"]["auth_mode"] == f"api-key from file {key_file}"
    out = "".join(p.out + p.err for p in printed)
    assert f"export TUNECHAIN_API_KEY=$(cat {key_file})" in out and 'os.environ["TUNECHAIN_API_KEY"]' in out
    assert seen["key"] not in out
    holding = [path for path in tmp_path.rglob("*") if path.is_file() and seen["key"].encode() in path.read_bytes()]
    assert holding == [key_file]
    _gone(artifact)


def test_a_failing_server_is_reported_and_stopped(gguf, tmp_path, monkeypatch):
    monkeypatch.delenv("TUNECHAIN_API_KEY", raising=False)
    cfg = serve.ServeConfig(extra_args=["--no_such_flag", "1"], ready_timeout_s=30)
    with pytest.raises(RuntimeError, match="exited with code"):
        _serve(cfg, gguf, tmp_path)
    assert "no_such_flag" in (tmp_path / "serve" / "server.log").read_text()


class _Earlier:
    def __init__(self, kind: str, output_kind: str):
        self.kind, self.output_kind = kind, output_kind


def test_backend_follows_the_input_and_vllm_is_refused_on_cpu():
    earlier = {"sft": _Earlier("sft", "adapter"), "merge": _Earlier("merge", "model"),
               "gguf": _Earlier("gguf", "gguf"), "eval": _Earlier("eval", "eval")}
    cfg = serve.ServeConfig()
    cfg.validate("stages.serve", earlier)
    assert cfg.resolved_backend == "llama.cpp"
    cfg.check_device("stages.serve", "cpu")
    cfg = serve.ServeConfig(inputs=["merge"])
    cfg.validate("stages.serve", earlier)
    assert cfg.resolved_backend == "vllm"
    with pytest.raises(PlanError, match=r"stages\.serve\.backend: .*CUDA GPU.*device is cpu.*recipe sft_to_gguf"):
        cfg.check_device("stages.serve", "cpu")
    with pytest.raises(ConfigError, match=r"stages\.serve\.backend: llama\.cpp serves GGUF"):
        serve.ServeConfig(backend="llama.cpp", inputs=["merge"]).validate("stages.serve", earlier)
    with pytest.raises(ConfigError, match=r"stages\.serve\.backend: 'tgi'.*auto, llama\.cpp, vllm"):
        serve.ServeConfig(backend="tgi").validate("stages.serve", earlier)
    with pytest.raises(ConfigError, match=r"stages\.serve\.extra_args: do not put an API key"):
        serve.ServeConfig(extra_args=["--api_key", "x"]).validate("stages.serve", earlier)
    with pytest.raises(ConfigError, match=r"stages\.serve\.api_key_env: .*not an environment variable name"):
        serve.ServeConfig(api_key_env="sk-123").validate("stages.serve", earlier)


def test_a_host_other_than_loopback_needs_your_own_key_at_plan_time(tmp_path, monkeypatch):
    from pipeline.engine.plan import build_plan

    monkeypatch.delenv("TUNECHAIN_API_KEY", raising=False)
    cfg = compose(["recipe=sft_to_gguf", "logger=none", "stages.serve.host=0.0.0.0"])
    with pytest.raises(ConfigError, match=r"^stages\.serve\.host: 0\.0\.0\.0 is reachable from other machines and "
                                          r"needs your own API key: export TUNECHAIN_API_KEY=\.\.\., or serve on "
                                          r"loopback \(127\.0\.0\.1, ::1, localhost\)"):
        build_plan(cfg, Store(tmp_path / "store"), recipe="sft_to_gguf", device="cpu")
    with pytest.raises(ConfigError, match=r"set stages\.serve\.api_key_env=TUNECHAIN_API_KEY"):
        serve.ServeConfig(host="0.0.0.0", api_key_env=None).validate("stages.serve", {})
    monkeypatch.setenv("TUNECHAIN_API_KEY", "the-users-own-key-0123")
    serve.ServeConfig(host="0.0.0.0").validate("stages.serve", {})
    monkeypatch.delenv("TUNECHAIN_API_KEY")
    for loopback in ("127.0.0.1", "::1", "localhost"):  # a random key is made there
        serve.ServeConfig(host=loopback).validate("stages.serve", {})


def test_keys_are_compared_in_constant_time_and_the_made_key_is_private(tmp_path):
    from pipeline import api_key
    from pipeline.redaction import scrub

    assert api_key.same_key("k-123", "k-123") and not api_key.same_key("k-124", "k-123")
    assert not api_key.same_key(None, "k-123") and not api_key.same_key("", "k-123")
    assert not api_key.same_key("ключ", "k-123")  # not ASCII: compared as bytes, no TypeError
    key, path = api_key.generate(tmp_path / "serve")
    assert path == tmp_path / "serve" / "api_key" and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert key not in scrub(f"the key is {key}")  # redaction knows the made key from now on


def test_a_model_fed_to_serve_on_cpu_fails_at_plan_time(tmp_path):
    from pipeline.engine.plan import build_plan

    cfg = compose(["recipe=lora_merge", "logger=none", "+stage@stages.api=serve"])
    with pytest.raises(PlanError, match=r"stages\.api\.backend: .*device is cpu.*add a gguf stage"):
        build_plan(cfg, Store(tmp_path / "store"), recipe="lora_merge", device="cpu")


def test_the_stage_default_composes():
    cfg = compose(["+stage@stages.api=serve"])
    assert cfg.stages.api.kind == "serve" and cfg.stages.api.api_key_env == "TUNECHAIN_API_KEY"


def test_the_key_travels_in_the_environment_only(monkeypatch):
    from pipeline.backends import serving

    monkeypatch.setenv("api_key", "stray")  # pydantic-settings would read it whatever its case
    monkeypatch.setenv("HOST", "0.0.0.0")   # uvicorn would bind it in place of --host
    env = serving.server_env("llama.cpp", "k-123", "127.0.0.1", 8001)
    assert env["API_KEY"] == "k-123" and "api_key" not in env and env["HOST"] == "127.0.0.1"
    assert "API_KEY" not in serving.server_env("llama.cpp", None, "127.0.0.1", 8001)
    assert serving.server_env("vllm", "k-123", "127.0.0.1", 8001)["VLLM_API_KEY"] == "k-123"
    for command in (serving.llama_cpp_command(Path("m.gguf"), "127.0.0.1", 8001, 2048, "m", None, []),
                    serving.vllm_command("/models/m", "127.0.0.1", 8001, 2048, "m", [])):
        assert "k-123" not in command and not any("api" in part for part in command)
    vllm = serving.vllm_command("/models/m", "127.0.0.1", 8001, 2048, "m", [])
    assert vllm[vllm.index("--allowed-origins") + 1] == "[]"  # vLLM alone allows every origin
    vllm = serving.vllm_command("/models/m", "127.0.0.1", 8001, 2048, "m", [], ["http://localhost:3000"])
    assert vllm[vllm.index("--allowed-origins") + 1] == '["http://localhost:3000"]'


def test_the_llama_cpp_server_checks_the_key_with_the_constant_time_compare(gguf, monkeypatch):
    from fastapi.testclient import TestClient
    from llama_cpp.server import app as server_app
    from llama_cpp.server.settings import ModelSettings, ServerSettings

    from pipeline.llama_cpp import server

    monkeypatch.setattr(server_app, "create_app", server_app.create_app)  # harden_app replaces it: restored after
    compared = []
    monkeypatch.setattr(server, "same_key", lambda given, expected: compared.append(given) or given == expected)
    server.harden_app()
    app = server_app.create_app(server_settings=ServerSettings(api_key="k-0123456789"),
                                model_settings=[ModelSettings(model=gguf.path, n_ctx=64, verbose=False)])
    client = TestClient(app)
    assert client.get("/v1/models", headers={"Authorization": "Bearer k-0123456789"}).status_code == 200
    assert client.get("/v1/models", headers={"Authorization": "Bearer k-0123456780"}).status_code == 401
    assert compared == ["k-0123456789", "k-0123456780"]
