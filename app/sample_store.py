"""Where the sampler's images go: atomic writes, PNG files or NPZ chunks merged at the end, the manifest.

Layout of ``--out``::

    run.json          the settings of the run (a re-run must match them to resume)
    images/000123.png --format png: one file per image
    chunks/chunk_000004.npz
                      --format npz while running: images [c*K, (c+1)*K) as uint8 (n,H,W,3)
    samples.npz       --format npz when done: arr_0 uint8 (N,H,W,3), arr_1 int64 (N,) class ids
    manifest.jsonl    one JSON line per finished image (file, index, class, seed, backend, params): lines are
                      appended as images (png) or chunks (npz) finish, and the file is rewritten in index
                      order, each image once, at the start and the end of a run
    grid.png          --grid: the first images tiled

Every file is written under a temporary name in the same folder and renamed when complete, so a
killed run leaves only finished files (plus temporaries that the next run removes).
"""
from __future__ import annotations

import itertools
import json
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image

from common.files import write_atomic

RUN_FILE = "run.json"
MANIFEST = "manifest.jsonl"
GRID = "grid.png"
MERGED = "samples.npz"
_TEMP_GLOB = ".*.tmp"


def remove_stale_temporaries(out: Path) -> int:
    """Delete temporaries left by killed runs; returns how many."""
    stale = [p for p in out.rglob(_TEMP_GLOB) if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


def check_run_settings(out: Path, settings: dict[str, Any]) -> None:
    """Raise ValueError if ``out`` holds a run made with other settings (resuming would mix them)."""
    path = out / RUN_FILE
    if not path.exists():
        return
    previous = json.loads(path.read_text(encoding="utf-8"))
    changed = sorted(k for k in set(previous) | set(settings) if previous.get(k) != settings.get(k))
    if changed:
        raise ValueError(
            f"{out} holds a run with other settings ({', '.join(changed)} differ); "
            "use the same settings to resume or another --out"
        )


def write_run_settings(out: Path, settings: dict[str, Any]) -> None:
    write_atomic(out / RUN_FILE, lambda f: f.write((json.dumps(settings, indent=2) + "\n").encode()))


def write_manifest(out: Path, lines: Iterable[dict[str, Any]]) -> None:
    """Replace the manifest atomically with ``lines`` (one JSON object per line)."""
    write_atomic(out / MANIFEST, lambda f: f.writelines((json.dumps(line) + "\n").encode() for line in lines))


def append_manifest(out: Path, lines: Iterable[dict[str, Any]]) -> None:
    """Append ``lines`` in one write (O_APPEND: lines of concurrent ranks do not interleave on a local disk)."""
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    if data:
        with open(out / MANIFEST, "ab") as f:
            f.write(data)


class PngStore:
    """One PNG per image under ``images/``; the unit of work is one image."""

    def __init__(self, out: Path, total: int):
        self.dir = out / "images"
        self.total = total
        self.width = max(6, len(str(total - 1)))

    def prepare(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)

    def units(self) -> list[list[int]]:
        return [[i] for i in range(self.total)]

    def relative(self, index: int) -> str:
        return f"images/{index:0{self.width}d}.png"

    def unit_done(self, unit: list[int]) -> bool:
        return (self.dir / Path(self.relative(unit[0])).name).exists()

    def add(self, index: int, image: np.ndarray, label: int) -> list[tuple[int, str]]:
        """Write image ``index``; returns the (index, file) rows finished by this call."""
        write_atomic(self.dir / Path(self.relative(index)).name, lambda f: Image.fromarray(image).save(f, format="PNG"))
        return [(index, self.relative(index))]

    def finish(self) -> None:
        """Nothing to merge: every image is already its own file."""

    def done_rows(self) -> Iterator[tuple[int, str]]:
        """(index, file) of every finished image, in index order."""
        for i in range(self.total):
            rel = self.relative(i)
            if (self.dir / Path(rel).name).exists():
                yield i, rel

    def head(self, n: int) -> np.ndarray:
        """The first ``n`` finished images as (n', H, W, 3) uint8."""
        rows = [np.asarray(Image.open(self.dir / Path(rel).name).convert("RGB"))
                for _, rel in itertools.islice(self.done_rows(), n)]
        return np.stack(rows) if rows else np.zeros((0, 1, 1, 3), np.uint8)


class NpzStore:
    """Chunks of ``chunk`` images under ``chunks/``, streamed into ``samples.npz`` once all exist."""

    def __init__(self, out: Path, total: int, chunk: int):
        self.out = out
        self.dir = out / "chunks"
        self.total = total
        self.chunk = chunk
        self.merged = out / MERGED
        self._pending: dict[int, dict[int, tuple[np.ndarray, int]]] = {}

    def prepare(self) -> None:
        if not self.merged.exists():
            self.dir.mkdir(parents=True, exist_ok=True)

    def units(self) -> list[list[int]]:
        return [list(range(start, min(start + self.chunk, self.total))) for start in range(0, self.total, self.chunk)]

    def _chunk_path(self, c: int) -> Path:
        return self.dir / f"chunk_{c:06d}.npz"

    def unit_done(self, unit: list[int]) -> bool:
        return self.merged.exists() or self._chunk_path(unit[0] // self.chunk).exists()

    def add(self, index: int, image: np.ndarray, label: int) -> list[tuple[int, str]]:
        """Hold image ``index``; writes its chunk once complete and returns that chunk's (index, file) rows."""
        c = index // self.chunk
        pending = self._pending.setdefault(c, {})
        pending[index] = (image, label)
        if len(pending) == min(self.chunk, self.total - c * self.chunk):
            order = sorted(pending)
            images = np.stack([pending[i][0] for i in order])  # (n, H, W, 3) uint8
            labels = np.array([pending[i][1] for i in order], dtype=np.int64)
            write_atomic(self._chunk_path(c),
                         lambda f: np.savez(f, images=images, labels=labels, indices=np.array(order)))
            del self._pending[c]
            return [(i, self._relative(c)) for i in order]
        return []

    def _relative(self, c: int) -> str:
        return f"{self.dir.name}/{self._chunk_path(c).name}"

    def finish(self) -> None:
        """Stream every chunk into ``samples.npz`` (memory: one chunk) and drop the chunks; no-op until all exist."""
        if self.merged.exists():
            return
        paths = [self._chunk_path(c) for c in range(len(self.units()))]
        if not all(p.exists() for p in paths):
            return
        with np.load(paths[0]) as first:
            _, h, w, _ = first["images"].shape

        def write(f: BinaryIO) -> None:
            labels = []
            with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
                with zf.open("arr_0.npy", "w", force_zip64=True) as entry:
                    header = {"descr": "|u1", "fortran_order": False, "shape": (self.total, h, w, 3)}
                    np.lib.format.write_array_header_1_0(entry, header)
                    for path in paths:
                        with np.load(path) as chunk:
                            entry.write(np.ascontiguousarray(chunk["images"]).tobytes())
                            labels.append(chunk["labels"])
                with zf.open("arr_1.npy", "w") as entry:
                    np.lib.format.write_array(entry, np.concatenate(labels))

        write_atomic(self.merged, write)
        for path in paths:
            path.unlink()
        self.dir.rmdir()

    def done_rows(self) -> Iterator[tuple[int, str]]:
        """(index, file): every image in ``samples.npz`` once merged, else those of the finished chunks."""
        if self.merged.exists():
            yield from ((i, MERGED) for i in range(self.total))
            return
        for c, unit in enumerate(self.units()):
            if self._chunk_path(c).exists():
                yield from ((i, self._relative(c)) for i in unit)

    def head(self, n: int) -> np.ndarray:
        """The first ``n`` images of ``samples.npz``, read without loading the whole array (none before the merge)."""
        if not self.merged.exists():
            return np.zeros((0, 1, 1, 3), np.uint8)
        with zipfile.ZipFile(self.merged) as zf, zf.open("arr_0.npy") as entry:
            version = np.lib.format.read_magic(entry)
            fmt = np.lib.format
            read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, _, dtype = read_header(entry)
            count = min(n, shape[0])
            data = entry.read(count * int(np.prod(shape[1:])) * dtype.itemsize)
        return np.frombuffer(data, dtype=dtype).reshape(count, *shape[1:])
