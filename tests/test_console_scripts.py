"""The console scripts declared in pyproject.toml point at real ``main(argv) -> int`` functions, and the program
files start as README documents them (``python app/sample.py``, from any folder)."""
from __future__ import annotations

import importlib
import inspect
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def test_the_three_programs_are_declared():
    assert set(SCRIPTS) == {"biggan-fid", "biggan-sample", "biggan-app"}


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_entry_point_is_a_main_taking_argv(script):
    module, _, attr = SCRIPTS[script].partition(":")
    main = getattr(importlib.import_module(module), attr)
    assert "argv" in inspect.signature(main).parameters


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_help_exits_zero(script, capsys):
    module, _, attr = SCRIPTS[script].partition(":")
    main = getattr(importlib.import_module(module), attr)
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "usage" in capsys.readouterr().out


def test_a_program_file_in_app_imports_the_app_package(tmp_path):
    # `python app/sample.py` puts app/ first on the import path, where app/app.py stands where the package would be
    # found; the sampler imports app.imaging, app.sample_store ... at the top, so --help fails unless they resolve.
    result = subprocess.run([sys.executable, str(ROOT / "app" / "sample.py"), "--help"], cwd=tmp_path, timeout=120,
                            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""})
    assert result.returncode == 0 and "--budget" in result.stdout, result.stderr
