"""Prompt profiles (kept as data in ``prompt_profiles/*.toml``), rendered with the model's chat template."""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from importlib import resources

from aimo_infer.config import ConfigError
from aimo_infer.solve.tir import TOOL_FORMATS, ToolFormat

# gpt-oss's Harmony tool calls (``<|call|>`` to python), parsed by token in solve/harmony.py;
# the markers are for the record only: no text watcher looks for them.
HARMONY_TOOLS = ToolFormat("harmony", "<|channel|>", "<|call|>", ())
_FORMATS: dict[str, ToolFormat] = {**TOOL_FORMATS, HARMONY_TOOLS.name: HARMONY_TOOLS}

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass(frozen=True)
class PromptProfile:
    """A system and user template and the code-block format the model is asked to use."""

    name: str
    description: str
    system: str
    user: str
    tool_format: ToolFormat

    @property
    def runs_code(self) -> bool:
        """Whether the model is asked to write code blocks (a sandbox runs them)."""
        return bool(self.tool_format.open)

    def messages(self, problem: str, max_code_calls: int) -> list[dict[str, str]]:
        """Chat messages for one problem."""
        user = self.user.format(problem=problem, max_code_calls=max_code_calls)
        msgs = [{"role": "system", "content": self.system}] if self.system else []
        return [*msgs, {"role": "user", "content": user}]


def available_profiles() -> list[str]:
    """Names of the bundled prompt profiles."""
    return sorted(
        p.name.removesuffix(".toml")
        for p in resources.files("aimo_infer.solve.prompt_profiles").iterdir()
        if p.name.endswith(".toml")
    )


@functools.cache
def load_profile(name: str) -> PromptProfile:
    """Load a bundled profile by name; an unknown name lists the known ones."""
    path = resources.files("aimo_infer.solve.prompt_profiles").joinpath(f"{name}.toml")
    if not path.is_file():
        raise ConfigError(f"unknown prompt profile {name!r}; known: {', '.join(available_profiles())}")
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    fmt = data.get("tool_format", "none")
    if fmt not in _FORMATS:
        raise ConfigError(f"prompt profile {name!r}: unknown tool_format {fmt!r}")
    return PromptProfile(name, data.get("description", ""), data.get("system", ""),
                         data["user"], _FORMATS[fmt])


@functools.cache
def _load_tokenizer(path: str) -> object:
    from transformers import AutoTokenizer  # heavy import: only when a template is needed

    return AutoTokenizer.from_pretrained(path)


def prepare_template(tokenizer_path: str | None) -> None:
    """Load the chat template now (transformers' import and the tokenizer take seconds), so the
    first problem's clock does not pay for it."""
    if tokenizer_path is not None:
        _load_tokenizer(tokenizer_path)


def plain_template(messages: list[dict[str, str]]) -> str:
    """ChatML text for engines without a tokenizer (the replay engine); documented, not a guess."""
    parts = [f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages]
    return "".join(parts) + "<|im_start|>assistant\n"


def render_prompt(messages: list[dict[str, str]], tokenizer_path: str | None) -> str:
    """Render chat messages through the model's own chat template (transformers)."""
    if tokenizer_path is None:
        return plain_template(messages)
    tokenizer = _load_tokenizer(tokenizer_path)
    return tokenizer.apply_chat_template(  # type: ignore[attr-defined]
        messages, tokenize=False, add_generation_prompt=True
    )
