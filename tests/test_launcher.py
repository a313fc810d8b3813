"""``aimo-infer serve-model``: the model server child, its readiness wait, and its stop.

The real-server tests start llama.cpp's own OpenAI server (llama-cpp-python[server]) on
loopback with the embedded default model; vLLM and TensorRT-LLM need a GPU and are covered by
their command lines only.
"""

from __future__ import annotations

import importlib.util
import socket
import sys
from pathlib import Path

import httpx
import pytest

from aimo_infer.cli import main as cli_main
from aimo_infer.config import ConfigError
from aimo_infer.kaggle import launcher
from aimo_infer.kaggle.launcher import (
    LaunchError,
    ModelServer,
    ModelServerConfig,
    load_server_config,
    preread,
    server_command,
    weight_files,
)

NEEDS_SERVER = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("uvicorn") is None,
    reason="llama-cpp-python[server] is not installed (pip install 'aimo-infer[server]')")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def write_config(path: Path, **values: object) -> Path:
    lines = ["[model_server]"]
    for key, value in values.items():
        rendered = str(value).lower() if isinstance(value, bool) else \
            f'"{value}"' if isinstance(value, str) else \
            "[" + ", ".join(f'"{v}"' for v in value) + "]" if isinstance(value, list) else value
        lines.append(f"{key} = {rendered}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_command_lines_of_each_server() -> None:
    model = "/kaggle/input/m/transformers/default/1"
    vllm = server_command(ModelServerConfig("vllm", model, port=8001, served_model_name="m",
                                            args=["--max-model-len", "32768"]))
    assert vllm == ["vllm", "serve", model, "--host", "127.0.0.1", "--port", "8001",
                    "--served-model-name", "m", "--max-model-len", "32768"]
    trt = server_command(ModelServerConfig("trtllm", model, args=["--backend", "pytorch"]))
    assert trt == ["trtllm-serve", model, "--host", "127.0.0.1", "--port", "8000",
                   "--backend", "pytorch"]
    llama = server_command(ModelServerConfig("llamacpp", "/m.gguf", port=9000))
    assert llama[:3] == [sys.executable, "-m", "llama_cpp.server"]
    assert llama[3:] == ["--model", "/m.gguf", "--host", "127.0.0.1", "--port", "9000"]


@pytest.mark.parametrize(("values", "message"), [
    ({"kind": "tgi", "model": "/m"}, "kind must be one of"),
    ({"kind": "vllm", "model": "/m", "host": "0.0.0.0"}, "loopback"),
    ({"kind": "vllm", "model": "/m", "port": 0}, "port"),
    ({"kind": "vllm"}, "model is empty"),
    ({"kind": "vllm", "model": "/m", "flags": "x"}, "unknown key"),
    ({"kind": "vllm", "model": "/m", "ready_timeout_s": 0}, "ready_timeout_s"),
])
def test_bad_configs_get_one_clear_line(tmp_path: Path, values: dict[str, object],
                                        message: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path / "server.toml", **values)
    with pytest.raises(ConfigError, match=message):
        load_server_config(path)
    assert cli_main(["serve-model", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_a_config_without_the_table_or_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "x.toml").write_text("[engine]\nname = 'vllm'\n")
    with pytest.raises(ConfigError, match=r"no \[model_server\] table"):
        load_server_config(tmp_path / "x.toml")
    assert cli_main(["serve-model", "--config", str(tmp_path / "absent.toml")]) == 2


def test_preread_reads_every_weight_file(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    for name, size in (("a.safetensors", 3_000_000), ("sub/b.safetensors", 5), ("c.json", 9)):
        (tmp_path / name).write_bytes(b"x" * size)
    files = weight_files(str(tmp_path))
    assert [f.name for f in files] == ["a.safetensors", "b.safetensors"]
    assert preread(files) == 3_000_005
    assert weight_files(str(tmp_path / "a.safetensors")) == [tmp_path / "a.safetensors"]
    assert weight_files(str(tmp_path / "absent")) == []


def test_a_server_that_never_answers_times_out_and_is_stopped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = ModelServerConfig("llamacpp", "/m.gguf", port=free_port(), ready_timeout_s=1.0,
                            log=str(tmp_path / "server.log"))
    silent = [sys.executable, "-c", "import sys, time; print('loading...', flush=True); "
              "time.sleep(600)"]
    monkeypatch.setattr(launcher, "server_command", lambda _: silent)
    server = ModelServer(cfg)
    server.start()
    proc = server.proc
    assert proc is not None
    with pytest.raises(LaunchError, match=r"not ready within 1s .*ready_timeout_s.*\n.*loading"):
        server.wait_ready()
    assert proc.poll() is not None and server.proc is None  # stopped


def test_a_missing_server_program_is_a_clear_error(tmp_path: Path) -> None:
    cfg = ModelServerConfig("trtllm", "/m", log=str(tmp_path / "server.log"))
    if importlib.util.find_spec("tensorrt_llm") is not None:
        pytest.skip("trtllm-serve is installed here")
    with pytest.raises(LaunchError, match="'trtllm-serve' is not installed"):
        ModelServer(cfg).start()


@NEEDS_SERVER
def test_a_server_that_exits_early_is_reported_with_its_log(tmp_path: Path) -> None:
    cfg = ModelServerConfig("llamacpp", str(tmp_path / "absent.gguf"), port=free_port(),
                            ready_timeout_s=120.0, log=str(tmp_path / "server.log"))
    server = ModelServer(cfg)
    server.start()
    with pytest.raises(LaunchError, match=r"exited with code [1-9]") as err:
        server.wait_ready()
    assert "absent.gguf" in str(err.value)  # the log tail says what went wrong


@pytest.mark.slow
@NEEDS_SERVER
def test_llama_cpp_server_starts_answers_and_stops(tmp_path: Path, smollm2_gguf: Path) -> None:
    """The real llama.cpp OpenAI server on loopback: ready, serves a completion, stopped."""
    port = free_port()
    cfg = ModelServerConfig("llamacpp", str(smollm2_gguf), port=port, preread=True,
                            ready_timeout_s=120.0, served_model_name="smol",
                            args=["--n_ctx", "512"], log=str(tmp_path / "server.log"))
    with ModelServer(cfg) as server:
        assert server.proc is not None and server.proc.poll() is None
        models = httpx.get(server.base_url + "/v1/models", timeout=10).json()
        assert [m["id"] for m in models["data"]] == ["smol"]
        reply = httpx.post(server.base_url + "/v1/completions", timeout=60, json={
            "model": "smol", "prompt": "1+1=", "max_tokens": 4, "temperature": 0})
        assert reply.status_code == 200 and reply.json()["choices"][0]["text"] is not None
        proc = server.proc
    assert proc.poll() is not None and not port_open(port)
    assert server.preread_bytes in (0, smollm2_gguf.stat().st_size)  # done, or cut at stop


@pytest.mark.slow
@NEEDS_SERVER
def test_serve_model_command_checks_readiness(tmp_path: Path, smollm2_gguf: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    path = write_config(tmp_path / "server.toml", kind="llamacpp", model=str(smollm2_gguf),
                        port=port, args=["--n_ctx", "512"], log=str(tmp_path / "server.log"))
    assert cli_main(["serve-model", "--config", str(path), "--ready-only"]) == 0
    assert f"model server ready at http://127.0.0.1:{port}" in capsys.readouterr().out
    assert not port_open(port)


def test_the_kaggle_configs_pair_the_server_and_the_engine() -> None:
    """configs/kaggle-model-server.toml starts vLLM where kaggle-aimo3-server.toml looks."""
    from aimo_infer.backends.openai import OpenAIOptions
    from aimo_infer.config import load_config

    root = Path(__file__).resolve().parents[1] / "configs"
    server = load_server_config(root / "kaggle-model-server.toml")
    engine = load_config(root / "kaggle-aimo3-server.toml").engine
    options = OpenAIOptions.parse(engine.options)
    assert server.kind == "vllm" and server.model.startswith("/kaggle/input/")
    assert options.urls == (f"http://{server.host}:{server.port}/v1",)
    assert engine.name == "openai" and engine.model == server.served_model_name
    assert options.wait_ready_s >= server.ready_timeout_s  # the engine outwaits the server
