"""How the program files are put together: no import-path edits, and bench/ sharing only public names.

Reads the sources with ``ast`` / as text, so a new script is held to the same rules.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("common", "gan", "weights", "eval", "app", "bench")  # everything but tests/


def test_no_program_edits_the_import_path():
    # Scripts start as `python eval/fid.py`, `python -m eval.fid` or console scripts of the installed project.
    edits = [str(p.relative_to(ROOT)) for folder in FOLDERS for p in sorted((ROOT / folder).rglob("*.py"))
             if "sys.path" in p.read_text(encoding="utf-8")]
    assert edits == []


def test_bench_modules_import_no_private_names_of_each_other():
    # What the bench scripts share lives in public names (bench/harness.py): a _name is one module's own.
    private = []
    for path in sorted((ROOT / "bench").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "bench":
                private += [f"{path.name}: {node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
    assert private == []
