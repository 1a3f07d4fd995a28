"""Server process helpers for the serve stage: build the command, start it with its log in a
file, wait until it answers, find the address it listens on, and stop it (with its children).

The API key never goes on a command line: llama.cpp's server reads it from the API_KEY
environment variable (its settings are pydantic-settings), vLLM from VLLM_API_KEY. Command lines
built here are therefore safe to print and to write into the server log.
"""
from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from pipeline.llama_cpp.runtime import gpu_layers
from pipeline.processes import die_with_parent

# Environment variables each server reads its key from (never a command-line argument).
KEY_ENV = {"llama.cpp": "API_KEY", "vllm": "VLLM_API_KEY"}
# Variables the llama.cpp server would read in place of its command line: uvicorn takes HOST and
# PORT from the environment before its settings, CONFIG_FILE replaces every setting.
_LLAMA_CPP_OVERRIDES = ("HOST", "PORT", "CONFIG_FILE")


@dataclass
class ServerProcess:
    proc: subprocess.Popen
    command: list[str]
    log_path: Path
    base_url: str           # where a client on this machine connects (http://HOST:PORT)
    port: int

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])


def is_loopback(host: str) -> bool:
    """True for 127.x, ::1 and names that resolve only to loopback addresses (localhost)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    addresses = resolve(host)
    return bool(addresses) and all(ipaddress.ip_address(ip).is_loopback for ip in addresses)


def resolve(host: str) -> list[str]:
    """The IP addresses a host name or literal stands for ([] when it does not resolve)."""
    try:
        return sorted({info[4][0] for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)})
    except socket.gaierror:
        return []


def connect_host(host: str) -> str:
    """The address a local client uses for a server bound to `host` (wildcards -> loopback)."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def free_port(host: str) -> int:
    """A port nobody listens on at `host` now (the server binds it a moment later)."""
    family = socket.AF_INET6 if ":" in connect_host(host) else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def llama_cpp_command(model_file: Path, host: str, port: int, n_ctx: int, alias: str,
                      n_threads: int | None, extra_args: list[str], device: str = "cpu",
                      mmproj: Path | None = None) -> list[str]:
    """llama-cpp-python's server, started through pipeline.llama_cpp.server (llama.cpp's weight repacking off
    where it crashes: pipeline.llama_cpp.runtime), with every layer on the GPU when there is one; with
    `mmproj`, a vision-language model that takes image_url content (libmtmd, the GGUF's own chat template)."""
    command = [sys.executable, "-m", "pipeline.llama_cpp.server", "--model", str(model_file), "--host", host,
               "--port", str(port), "--n_ctx", str(n_ctx), "--model_alias", alias]
    if mmproj is not None:
        command += ["--clip_model_path", str(mmproj), "--chat_format", "mtmd"]
    if n_threads and "--n_threads" not in extra_args:
        command += ["--n_threads", str(n_threads)]
    layers = gpu_layers(device)
    if layers and "--n_gpu_layers" not in extra_args:
        command += ["--n_gpu_layers", str(layers)]
    return command + list(extra_args)


def vllm_command(model_path: str, host: str, port: int, n_ctx: int, alias: str, extra_args: list[str],
                 cors_origins: list[str] = ()) -> list[str]:
    """`vllm serve`; browsers get only `cors_origins` (vLLM alone allows every origin)."""
    beside = Path(sys.executable).with_name("vllm")  # the vllm of this environment first
    program = str(beside) if beside.is_file() else (shutil.which("vllm") or "vllm")
    command = [program, "serve", model_path, "--host", host, "--port", str(port), "--served-model-name", alias,
               "--max-model-len", str(n_ctx)]
    if not any(arg.split("=")[0] == "--allowed-origins" for arg in extra_args):
        command += ["--allowed-origins", json.dumps(list(cors_origins))]
    return command + list(extra_args)


def server_env(backend: str, key: str | None, host: str, port: int) -> dict[str, str]:
    """The server's environment: the key (or no key at all) in the variable its backend reads."""
    env = dict(os.environ)
    name = KEY_ENV[backend]
    for existing in [k for k in env if k.upper() == name]:  # pydantic-settings matches names case-insensitively
        del env[existing]  # a stray API_KEY of the user's shell must not become this server's key
    if backend == "llama.cpp":
        for existing in [k for k in env if k.upper() in _LLAMA_CPP_OVERRIDES]:
            del env[existing]
        env["HOST"], env["PORT"] = host, str(port)
    if key:
        env[name] = key
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def start(command: list[str], env: dict[str, str], log_path: Path, host: str, port: int) -> ServerProcess:
    """Start the server in its own process group, stdout and stderr into `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(command) + "\n")  # the key is in the environment, never here
        log.flush()
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True, preexec_fn=die_with_parent)
    base_url = f"http://{url_host(connect_host(host))}:{port}"
    return ServerProcess(proc, command, log_path, base_url, port)


def wait_ready(server: ServerProcess, key: str | None, timeout_s: float) -> float:
    """Poll GET /v1/models until it answers 200; return the seconds it took."""
    started = time.time()
    request = urllib.request.Request(f"{server.base_url}/v1/models")
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    last = "no answer yet"
    while time.time() - started < timeout_s:
        if not server.alive():
            raise RuntimeError(f"the server exited with code {server.proc.returncode} before it was ready; "
                               f"last lines of {server.log_path}:\n{server.log_tail()}")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                if response.status == 200:
                    return round(time.time() - started, 3)
                last = f"HTTP {response.status}"
        except urllib.error.HTTPError as e:
            last = f"HTTP {e.code}"
            if e.code == 401:
                raise RuntimeError("the server refused the configured API key on /v1/models (401): the key did "
                                   "not reach it") from None
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as e:
            last = str(getattr(e, "reason", e))
        time.sleep(0.2)
    raise RuntimeError(f"the server did not answer GET /v1/models within {timeout_s:g}s ({last}); raise "
                       f"ready_timeout_s for a large model; last lines of {server.log_path}:\n{server.log_tail()}")


def listening_addresses(pid: int, port: int) -> list[str]:
    """The local IPs the process tree of `pid` listens on at `port` (psutil, else /proc/net/tcp*)."""
    try:
        import psutil

        found: set[str] = set()
        root = psutil.Process(pid)
        for proc in [root, *root.children(recursive=True)]:
            lister = getattr(proc, "net_connections", None) or proc.connections
            for conn in lister(kind="inet"):
                if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
                    found.add(conn.laddr.ip)
        if found:
            return sorted(found)
    except Exception:  # psutil missing, or no permission: fall back to the kernel's tables
        pass
    return _proc_net_listeners(port)


def _proc_net_listeners(port: int) -> list[str]:
    found = set()
    for table, width in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state = fields[1], fields[3]
            address, hex_port = local.split(":")
            if state != "0A" or int(hex_port, 16) != port:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(address)
            # the kernel prints each 32-bit word in host (little-endian) order
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, width, 4))
            found.add(str(ipaddress.ip_address(raw)))
    return sorted(found)


def stop(server: ServerProcess, grace_s: float = 10.0) -> None:
    """SIGTERM the server's process group, wait, then SIGKILL what is left (children included)."""
    proc = server.proc
    children = _children(proc.pid)
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)  # its own group (start_new_session): vLLM's engine processes too
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=5)
    for child in children:  # any that outlived the leader
        try:
            if child.is_running():  # is_running also checks the start time: never a reused pid
                child.kill()
        except Exception:
            pass


def _children(pid: int) -> list:
    try:
        import psutil

        return psutil.Process(pid).children(recursive=True)
    except Exception:
        return []
