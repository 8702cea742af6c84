"""One run per --out: a second eval/fid.py or app/sample.py on a folder in use exits 2 in one line while the first
finishes intact, and the lock a SIGKILLed run leaves behind is taken over by the next run."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common.run_lock import LOCK_NAME, RunLock
from eval.smoke_assets import smoke_command, write_smoke_assets

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Path]:
    return write_smoke_assets(tmp_path_factory.mktemp("lock_assets"))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BIGGAN_ATTN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _start(script: str, argv: list[str], tmp_path: Path) -> subprocess.Popen:
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "BIGGAN_ATTN_CACHE": str(tmp_path / "cache")}
    return subprocess.Popen([sys.executable, script, *argv], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for_lock(proc: subprocess.Popen, out: Path, timeout: float = 120) -> None:
    """Until ``proc`` holds the lock of ``out`` (its pid is written in the lock file); then ``proc`` is paused
    (SIGSTOP, still holding the lock) so that a second run surely meets it; ``_resume`` lets it go on."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        lock = out / LOCK_NAME
        if lock.is_file() and lock.read_text().startswith(f"{proc.pid} "):
            proc.send_signal(signal.SIGSTOP)
            return
        time.sleep(0.02)
    pytest.fail(f"pid {proc.pid} never took the lock of {out}")


def _resume(proc: subprocess.Popen) -> str:
    """Let the paused ``proc`` finish; its stderr."""
    proc.send_signal(signal.SIGCONT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    return err


def _one_line(err: str) -> str:
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err


def _sample_args(model: Path, out: Path, per_class: int) -> list[str]:
    return ["--model", str(model), "--classes", "goldfish,207", "--per-class", str(per_class), "--batch-size", "2",
            "--device", "cpu", "--out", str(out)]


def test_second_lock_on_a_folder_names_the_holder(tmp_path):
    out = tmp_path / "new" / "out"
    first = RunLock(out, "eval/fid.py")
    with pytest.raises(ValueError) as err:
        RunLock(out, "app/sample.py")
    assert str(err.value) == (f"--out {out} is in use by another run (pid {os.getpid()}, eval/fid.py); wait for it "
                              "to finish or choose another --out")
    first.release()
    assert not (tmp_path / "new").exists()  # nothing was written into it: the folders the lock made are gone
    RunLock(out, "app/sample.py").release()  # free again


def test_second_sampler_on_the_same_out_exits_2_while_the_first_finishes(assets, tmp_path, capsys):
    from app.sample import main

    out = tmp_path / "samples"
    first = _start("app/sample.py", _sample_args(assets["model"], out, 3), tmp_path)
    _wait_for_lock(first, out)
    assert main(_sample_args(assets["model"], out, 3)) == 2
    line = _one_line(capsys.readouterr().err)
    assert f"pid {first.pid}" in line and str(out) in line and "in use by another run" in line, line
    _resume(first)
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [row["index"] for row in manifest] == list(range(6))  # the first run's images, all of them, once
    assert len(list((out / "images").glob("*.png"))) == 6 and not (out / LOCK_NAME).exists()


def test_second_fid_run_on_the_same_out_exits_2_while_the_first_finishes(assets, tmp_path, capsys):
    from eval.fid import main

    out = tmp_path / "results"
    argv = smoke_command(assets, out)
    argv[argv.index("--num-samples") + 1] = "4"  # the smoke run's 20 images, cut to keep the suite fast
    first = _start("eval/fid.py", argv, tmp_path)
    _wait_for_lock(first, out)
    assert main(argv) == 2
    line = _one_line(capsys.readouterr().err)
    assert f"pid {first.pid}" in line and str(out) in line, line
    _resume(first)
    methods = json.loads((out / "results.json").read_text())["methods"]
    assert list(methods) == ["exact", "smyrf"] and all(row["n"] == 4 for row in methods.values())


def test_lock_of_a_killed_sampler_is_taken_over(assets, tmp_path, capsys):
    from app.sample import main

    out = tmp_path / "samples"
    killed = _start("app/sample.py", _sample_args(assets["model"], out, 3), tmp_path)
    _wait_for_lock(killed, out)
    killed.send_signal(signal.SIGKILL)  # paused, holding the lock
    killed.communicate(timeout=60)
    assert (out / LOCK_NAME).read_text().startswith(f"{killed.pid} ")  # left behind, with the dead run's pid
    assert main(_sample_args(assets["model"], out, 3)) == 0  # the same command: it resumes the killed run
    err = capsys.readouterr().err
    assert f"left by pid {killed.pid} (no longer running); taken over" in err, err
    assert len(list((out / "images").glob("*.png"))) == 6 and not (out / LOCK_NAME).exists()
