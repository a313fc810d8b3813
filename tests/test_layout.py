"""The floor plan holds: engines never import the job wings, and the public API stays importable."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WINGS = ("aimo_infer.solve", "aimo_infer.kaggle", "aimo_infer.evaluate")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _offenders(folder: str, forbidden: tuple[str, ...]) -> list[str]:
    found = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        for name in _imports(path):
            if name.startswith(forbidden):
                found.append(f"{path.relative_to(ROOT)} imports {name}")
    return found


def test_backends_never_import_the_job_wings() -> None:
    assert _offenders("aimo_infer/backends", WINGS) == []


def test_solve_never_imports_kaggle_or_evaluate() -> None:
    assert _offenders("aimo_infer/solve", ("aimo_infer.kaggle", "aimo_infer.evaluate",
                                           "aimo_infer.cli", "aimo_infer.runtime")) == []


def test_sandbox_never_imports_the_harness() -> None:
    assert _offenders("sandbox", ("aimo_infer",)) == []


def test_public_api_and_no_engine_package_on_import() -> None:
    code = (
        "import sys; from aimo_infer import extract_answer; "
        "assert extract_answer(r'so \\boxed{42}.') == 42; "
        "assert extract_answer(r'\\boxed{1042}', 'aimo2') == 42; "
        "heavy = {'torch', 'vllm', 'tensorrt_llm', 'llama_cpp'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
