"""The offline o200k vocabulary that openai-harmony needs, unpacked from the ``bpe-openai`` package.

``openai_harmony.load_harmony_encoding`` downloads ``o200k_base.tiktoken`` unless the folder in
``TIKTOKEN_ENCODINGS_BASE`` holds it (the package checks its SHA-256). ``bpe-openai`` ships that
exact file gzipped; ``prepare_vocab`` unpacks it once into the model cache, hash-checked and
atomically, and ``use_offline_vocab`` points the environment variable at it, so nothing is fetched.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os
import tempfile
from pathlib import Path

VOCAB_FILENAME = "o200k_base.tiktoken"
VOCAB_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
ENV_VAR = "TIKTOKEN_ENCODINGS_BASE"
SOURCE_PACKAGE = "bpe_openai"
INSTALL_HINT = "pip install bpe-openai (or aimo-infer[harmony])"


class VocabUnavailable(RuntimeError):
    """The vocabulary cannot be prepared here; the message names the fix."""


def vocab_dir(cache_root: Path | None = None) -> Path:
    """Where the unpacked vocabulary lives: ``<cache root>/tiktoken``."""
    from aimo_infer.models import default_cache_root

    root = Path(cache_root).expanduser() if cache_root is not None else default_cache_root()
    return root / "tiktoken"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def packaged_vocab() -> Path:
    """The gzipped file inside ``bpe-openai``, found without importing the package."""
    spec = importlib.util.find_spec(SOURCE_PACKAGE)
    for location in list(spec.submodule_search_locations or []) if spec is not None else []:
        candidate = Path(location) / "data" / f"{VOCAB_FILENAME}.gz"
        if candidate.is_file():
            return candidate
    raise VocabUnavailable(f"{VOCAB_FILENAME}.gz not found: {INSTALL_HINT}")


def is_prepared(directory: Path) -> bool:
    """Whether ``directory`` holds the vocabulary with the expected hash."""
    path = directory / VOCAB_FILENAME
    return path.is_file() and file_sha256(path) == VOCAB_SHA256


def prepare_vocab(cache_root: Path | None = None) -> Path:
    """Unpack and hash-check the vocabulary into the cache (once); returns its folder."""
    directory = vocab_dir(cache_root)
    if is_prepared(directory):
        return directory
    source = packaged_vocab()
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{VOCAB_FILENAME}.", dir=directory)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, gzip.open(source, "rb") as raw:
            for chunk in iter(lambda: raw.read(1 << 20), b""):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != VOCAB_SHA256:
            raise VocabUnavailable(
                f"{source} unpacks to SHA-256 {digest.hexdigest()}, expected {VOCAB_SHA256}"
            )
        os.replace(tmp, directory / VOCAB_FILENAME)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise VocabUnavailable(f"cannot unpack {source}: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return directory


def use_offline_vocab(cache_root: Path | None = None) -> Path:
    """Point ``TIKTOKEN_ENCODINGS_BASE`` at a hash-checked vocabulary, preparing it when needed.

    A folder already named by the variable is kept when it holds the right file (the Kaggle
    bundle ships one); otherwise the cache copy is used, unpacked from ``bpe-openai`` if missing.
    """
    named = os.environ.get(ENV_VAR)
    if named and is_prepared(Path(named)):
        return Path(named)
    directory = prepare_vocab(cache_root)
    os.environ[ENV_VAR] = str(directory)
    return directory
