"""Every ```python block of README.md and docs/*.md runs as written, offline.

A file's blocks run in order in one namespace (a later block may use an earlier one's names), in an
empty working folder with empty caches and HF_HUB_OFFLINE=1. A block whose first line says it "needs a
download" runs twice: with the empty cache it must stop at the download with the offline error (so every
line before it ran), and with random stand-ins written by eval/smoke_assets.py in the cache under the
registry names it must run to its end.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from common.download import DownloadMissing
from eval.smoke_assets import write_smoke_assets

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)
NEEDS_DOWNLOAD = re.compile(r"\A#[^\n]*needs a download")
STAND_INS = (128, 256, 512)  # biggan-deep-<resolution> in the cache: reduced-width random generators


def python_blocks(path: Path) -> list[tuple[int, str]]:
    """(first line number, code) of each ```python block of ``path``."""
    text = path.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in FENCE.finditer(text)]


@pytest.fixture(scope="module")
def stocked_cache(tmp_path_factory) -> Path:
    """A cache root whose models/biggan-deep-{128,256,512} hold the smoke stand-ins."""
    root = tmp_path_factory.mktemp("stocked")
    for resolution in STAND_INS:
        assets = write_smoke_assets(root / "assets", resolution=resolution)
        shutil.copytree(assets["model"], root / "cache" / "models" / f"biggan-deep-{resolution}")
    return root / "cache"


def test_the_docs_have_python_blocks():
    found = {path.name: len(python_blocks(path)) for path in DOCS}
    assert found["README.md"] >= 1 and sum(found.values()) >= 2, found


@pytest.mark.parametrize("path", [p for p in DOCS if python_blocks(p)], ids=lambda p: p.name)
def test_python_blocks_run_offline(path, stocked_cache, tmp_path, monkeypatch):
    empty = tmp_path / "empty-cache"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__doc_snippet__"}
    for line, code in python_blocks(path):
        where = f"{path.relative_to(ROOT)}:{line}"
        compiled = compile(code, where, "exec")
        monkeypatch.setenv("BIGGAN_ATTN_CACHE", str(empty))
        if NEEDS_DOWNLOAD.match(code):
            with pytest.raises(DownloadMissing, match="HF_HUB_OFFLINE=1 forbids downloading"):
                exec(compiled, dict(namespace))  # runs up to the download, which is refused offline
            monkeypatch.setenv("BIGGAN_ATTN_CACHE", str(stocked_cache))
        exec(compiled, namespace)  # a failure names the doc and line (the traceback's file name)
