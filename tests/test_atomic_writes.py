"""Every atomic writer, and every user of one, under a deterministic fault: the write dies half-way.

The fault (``dies_half_way``) is injected below the writers: any file opened for writing under the test's
folder writes the first half of its first chunk and then raises ``Killed`` (a BaseException, as a SIGINT's
KeyboardInterrupt is), and ``torch.save`` given a path does the same (it writes through its own C++ file, not
``open``). A writer that goes through a temporary name and a rename leaves the file that was there untouched
(byte for byte) and no file under the final name when there was none; one that writes in place leaves half a
file, on every run. A rename that fails is the second fault: the old file stays, the temporary is removed.
Each case also checks the write without a fault, so a writer that writes nothing cannot pass.
"""

from __future__ import annotations

import builtins
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from app import sample_store
from common import files
from eval import reference_stats, report, runner


class Killed(BaseException):
    """The process died in the middle of a write."""


class _HalfThenDie:
    """A writable file that writes half of what it is given, then dies."""

    def __init__(self, real):
        self._real = real

    def write(self, data):
        data = bytes(data)
        self._real.write(data[: len(data) // 2])
        self._real.flush()
        raise Killed(f"killed while writing {self._real.name}")

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._real.close()
        return False

    def __getattr__(self, name):
        return getattr(self._real, name)


class Fault:
    """The fault, armed by ``arm()`` for files under one folder (disarmed: files are written normally)."""

    def __init__(self, root: Path):
        self.root, self.armed = root.resolve(), False

    def arm(self) -> None:
        self.armed = True

    def disarm(self) -> None:
        self.armed = False

    def applies(self, target) -> bool:
        if not self.armed or not isinstance(target, (str, os.PathLike)):
            return False
        return Path(os.fspath(target)).resolve().is_relative_to(self.root)


@pytest.fixture
def fault(monkeypatch, tmp_path) -> Fault:
    state = Fault(tmp_path)
    real_open, real_save = builtins.open, torch.save

    def fault_open(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        return _HalfThenDie(handle) if any(c in mode for c in "wax+") and state.applies(file) else handle

    def fault_save(obj, f, *args, **kwargs):
        if not state.applies(f):
            return real_save(obj, f, *args, **kwargs)
        buf = io.BytesIO()
        real_save(obj, buf, *args, **kwargs)
        with real_open(f, "wb") as out:
            out.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        raise Killed(f"killed while torch.save wrote {f}")

    monkeypatch.setattr(builtins, "open", fault_open)
    monkeypatch.setattr(io, "open", fault_open)
    monkeypatch.setattr(torch, "save", fault_save)
    return state


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def dies_and_nothing_changes(fault: Fault, folder: Path, write) -> None:
    """Arm the fault; ``write()`` dies half-way; every file under ``folder`` is as before, no new file (no temporary
    either); disarm."""
    before = snapshot(folder)
    fault.arm()
    try:
        with pytest.raises(Killed):
            write()
    finally:
        fault.disarm()
    assert snapshot(folder) == before


# -- common/files.py ------------------------------------------------------------------------------------------------


def test_write_atomic_keeps_the_old_file_when_the_writer_dies(tmp_path, fault):
    target = tmp_path / "out" / "table.json"
    target.parent.mkdir()
    target.write_bytes(b'{"old": 1}\n' * 100)
    dies_and_nothing_changes(fault, tmp_path, lambda: files.write_atomic(target, lambda f: f.write(b"new" * 1000)))
    files.write_atomic(target, lambda f: f.write(b"new" * 1000))
    assert target.read_bytes() == b"new" * 1000


def test_write_atomic_leaves_no_file_under_the_final_name(tmp_path, fault):
    # Nothing there before: a half-written file under the final name would pass for a finished one.
    target = tmp_path / "fresh.bin"
    dies_and_nothing_changes(fault, tmp_path, lambda: files.write_atomic(target, lambda f: f.write(b"x" * 4096)))
    assert not target.exists()


def test_write_atomic_keeps_the_old_file_when_the_rename_fails(tmp_path, monkeypatch):
    target = tmp_path / "table.json"
    target.write_bytes(b"old")

    def no_rename(src, dst):
        raise OSError("rename failed")

    monkeypatch.setattr(os, "replace", no_rename)
    with pytest.raises(OSError, match="rename failed"):
        files.write_atomic(target, lambda f: f.write(b"new"))
    assert snapshot(tmp_path) == {"table.json": b"old"}


def test_save_checkpoint_keeps_the_old_checkpoint(tmp_path, fault):
    target = tmp_path / "model.pt"
    files.save_checkpoint({"w": torch.ones(3)}, target)
    dies_and_nothing_changes(fault, tmp_path, lambda: files.save_checkpoint({"w": torch.zeros(3000)}, target))
    assert torch.equal(torch.load(target, weights_only=True)["w"], torch.ones(3))
    files.save_checkpoint({"w": torch.zeros(3000)}, target)
    assert torch.equal(torch.load(target, weights_only=True)["w"], torch.zeros(3000))


# -- users: shards, results, reference statistics, samples -----------------------------------------------------------


def test_eval_shard_is_never_half_written(tmp_path, fault):
    shard = {"features": torch.randn(4, 8), "logits": torch.randn(4, 10)}
    path = tmp_path / "exact-abc" / "shard_0_4.pt"
    path.parent.mkdir()
    runner.save_shard(shard, path)  # a finished shard of an earlier run
    dies_and_nothing_changes(fault, tmp_path, lambda: runner.save_shard({"features": torch.zeros(400, 8)}, path))
    assert torch.equal(torch.load(path, weights_only=True)["features"], shard["features"])
    fresh = tmp_path / "exact-abc" / "shard_4_8.pt"
    dies_and_nothing_changes(fault, tmp_path, lambda: runner.save_shard(shard, fresh))
    assert not fresh.exists()
    runner.save_shard(shard, fresh)
    assert torch.equal(torch.load(fresh, weights_only=True)["logits"], shard["logits"])


def test_results_files_are_never_half_written(tmp_path, fault):
    out = tmp_path / "results"
    rows = full_rows({"exact": {"fid": 1.0, "n": 4}})
    report.write_results(out, rows, {"n": 4}, {})
    assert json.loads((out / "results.json").read_text())["methods"]["exact"]["fid"] == 1.0
    bigger = full_rows({f"m{i}": {"fid": float(i), "n": 4} for i in range(20)})
    dies_and_nothing_changes(fault, tmp_path, lambda: report.write_results(out, bigger, {"n": 4}, {}))


def test_reference_statistics_are_never_half_written(tmp_path, fault):
    path = tmp_path / "ref.npz"
    reference_stats.save_stats(path, np.zeros(4), np.eye(4))
    dies_and_nothing_changes(fault, tmp_path, lambda: reference_stats.save_stats(path, np.ones(400), np.eye(400)))
    mu, sigma = reference_stats.read_stats(path, 4)
    assert np.array_equal(mu, np.zeros(4)) and np.array_equal(sigma, np.eye(4))


def test_sample_run_files_are_never_half_written(tmp_path, fault):
    out = tmp_path / "samples"
    out.mkdir()
    image = np.full((8, 8, 3), 200, dtype=np.uint8)
    sample_store.write_run_settings(out, {"seed": 0})
    sample_store.write_manifest(out, [{"index": 0}])
    png = sample_store.PngStore(out, total=3)
    png.prepare()
    png.add(0, image, 1)
    for write in (lambda: sample_store.write_run_settings(out, {"seed": 1, "more": "x" * 100}),
                  lambda: sample_store.write_manifest(out, [{"index": i} for i in range(50)]),
                  lambda: png.add(0, image // 2, 1),
                  lambda: png.add(1, image, 1)):  # a new image that dies is not there: it would count as finished
        dies_and_nothing_changes(fault, tmp_path, write)
    assert png.unit_done([0]) and not png.unit_done([1])
    png.add(1, image, 1)
    assert png.unit_done([1]) and np.array_equal(png.head(2)[1], image)


def test_npz_chunks_and_their_merge_are_never_half_written(tmp_path, fault):
    out = tmp_path / "samples"
    out.mkdir()
    image = np.full((8, 8, 3), 7, dtype=np.uint8)
    store = sample_store.NpzStore(out, total=4, chunk=2)
    store.prepare()
    store.add(0, image, 3)
    store.add(1, image, 3)  # chunk 0 is written
    store.add(2, image, 4)
    dies_and_nothing_changes(fault, tmp_path, lambda: store.add(3, image, 4))  # chunk 1 dies half-way
    assert not store.unit_done([2, 3])
    store.add(2, image, 4)
    store.add(3, image, 4)
    dies_and_nothing_changes(fault, tmp_path, store.finish)  # the merge dies: the chunks stay, no samples.npz
    assert not (out / sample_store.MERGED).exists()
    store.finish()
    with np.load(out / sample_store.MERGED) as merged:
        assert merged["arr_0"].shape == (4, 8, 8, 3) and merged["arr_1"].tolist() == [3, 3, 4, 4]


def full_rows(methods: dict) -> dict:
    """Result rows with every metric column (the given values, None elsewhere)."""
    from eval.metrics import METRIC_NAMES

    return {label: {name: row.get(name) for name in METRIC_NAMES} for label, row in methods.items()}


def test_the_fault_is_real(tmp_path, fault):
    # Control: an in-place write under the fault leaves half a file, through open() and through torch.save.
    target = tmp_path / "plain.json"
    target.write_bytes(b"old")
    fault.arm()
    with pytest.raises(Killed):
        with open(target, "wb") as f:
            f.write(b"new" * 100)
    assert target.read_bytes() == b"new" * 50
    with pytest.raises(Killed):
        torch.save({"w": torch.zeros(100)}, target)
    assert target.read_bytes() != b"new" * 50 and target.stat().st_size > 0
