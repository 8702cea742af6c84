"""The console scripts declared in pyproject.toml point at real ``main(argv) -> int`` functions."""
from __future__ import annotations

import importlib
import inspect
import tomllib
from pathlib import Path

import pytest

SCRIPTS = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]["scripts"]


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
