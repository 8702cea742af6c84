"""Command-line plumbing shared by ``eval/fid.py``, the ``app/`` programs and ``bench/``.

User mistakes (``ValueError`` / ``FileNotFoundError``, argparse errors included) become one line
on stderr and exit code 2, never a traceback or argparse's usage dump. ``parse_attention_kwargs``
is the one ``--attn-kwargs`` grammar of every CLI (documented in docs/eval.md); ``parse_budget`` and
``parse_truncation`` read the budget and the truncation wherever a user types them.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from fractions import Fraction
from typing import Any

USER_ERRORS = (ValueError, FileNotFoundError)

_NAMED_JSON = re.compile(r"^\s*([A-Za-z0-9_.@-]+)\s*[=:]\s*([{[].*)$", re.S)  # NAME={json} or NAME:{json}
_NAMED_PAIRS = re.compile(r"^\s*([A-Za-z0-9_.@-]+)\s*:(.*)$", re.S)  # NAME:key=value,...


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors raise ValueError (reported by ``report_error``) instead of printing usage."""

    def error(self, message: str):
        raise ValueError(message)


def report_error(err: BaseException) -> int:
    """Print ``err`` as ``error: <one line>`` on stderr; returns the exit code 2.

    The one exception: an error with a ``lines`` list (eval/fid.py's first run without downloads) prints
    those lines, the first after ``error: ``.
    """
    lines = getattr(err, "lines", None)
    if lines:
        print("error: " + "\n".join(" ".join(line.split()) for line in lines), file=sys.stderr)
        return 2
    print(f"error: {' '.join(str(err).split()) or type(err).__name__}", file=sys.stderr)
    return 2


BUDGET_HELP = "memory budget of the approximate backends: a fraction in (0, 1] of the dense score matrix, e.g. 1/8"


def parse_budget(text: Any, what: str = "budget") -> float:
    """'1/8' or '0.125' -> 0.125: a fraction in (0, 1] of the dense score matrix; ``what`` names the field in errors."""
    item = str(text if text is not None else "").strip()
    try:
        value = float(Fraction(item))
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"{what} {item!r} is not a fraction; give one in (0, 1] like 1/8 or 0.125") from None
    if not 0.0 < value <= 1.0:
        raise ValueError(f"{what} {item} is outside (0, 1]; a budget is a fraction of the dense score matrix")
    return value


def parse_budgets(text: str, what: str = "--budget") -> list[tuple[str, float]]:
    """'1/32,0.125' -> [('1/32', 0.03125), ('0.125', 0.125)]: each item read by ``parse_budget``."""
    return [(item, parse_budget(item, what)) for item in (s.strip() for s in text.split(","))]


def with_budget(name: str, kwargs: dict[str, Any], budget: float | None) -> dict[str, Any]:
    """Backend ``name``'s kwargs with a ``--budget`` value added: exact attention (the baseline) takes none, and
    a budget given in ``--attn-kwargs`` as well is refused (ValueError) rather than silently replaced."""
    if budget is None or name == "exact":
        return kwargs
    if "budget" in kwargs:
        raise ValueError(f"{name}: give the budget either in --attn-kwargs or with --budget, not both")
    return {**kwargs, "budget": budget}


def check_at_least(what: str, value: int, least: int = 1) -> None:
    """ValueError ``{what} must be >= {least}, got {value}`` when a count is below its least value."""
    if value < least:
        raise ValueError(f"{what} must be >= {least}, got {value}")


def parse_truncation(value: Any, what: str = "truncation") -> float:
    """Truncation in (0, 1]; ValueError otherwise (0 included: it would collapse every latent to zero)."""
    try:
        trunc = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number in (0, 1], got {value!r}") from None
    if not (math.isfinite(trunc) and 0.0 < trunc <= 1.0):
        raise ValueError(f"{what} must be in (0, 1], got {value!r}")
    return trunc


def _literal(text: str) -> Any:
    """A key=value value: a JSON literal (8, 0.5, true, null, "x", [1, 2]) when it parses as one, else the text."""
    text = text.strip()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _json_object(blob: str, where: str) -> dict[str, Any]:
    try:
        value = json.loads(blob)
    except json.JSONDecodeError as err:
        raise ValueError(f"bad JSON in --attn-kwargs {where}: {err.msg} at column {err.colno}") from None
    if not isinstance(value, dict):
        raise ValueError(f"--attn-kwargs {where} must be a JSON object, got {type(value).__name__}")
    return value


def _pairs(text: str, where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"cannot read --attn-kwargs {where} item {item!r}; "
                             "write key=value pairs separated by commas")
        out[key.strip()] = _literal(value)
    return out


def parse_attention_kwargs(values: list[str], names: list[str]) -> dict[str, dict]:
    """Backend parameters from ``--attn-kwargs`` values -> {backend name: {parameter: value}}.

    Each value is ``[NAME:]key=value[,key=value...]`` or ``[NAME=|NAME:]{json object}``; NAME is one of
    ``names`` (the backends on the command line) and may be left out when there is exactly one. Values of
    key=value pairs are JSON literals when they parse as one (``8``, ``0.5``, ``true``), else strings.
    Repeated values for one backend merge, later keys winning. Empty values are ignored.
    """
    out: dict[str, dict] = {}
    listed = ", ".join(names) or "none"
    for raw in values:
        if not raw or not raw.strip():
            continue
        named = _NAMED_JSON.match(raw)
        if named:
            name, params = named.group(1), _json_object(named.group(2), named.group(1))
        else:
            named = _NAMED_PAIRS.match(raw)
            if named:
                name, params = named.group(1), _pairs(named.group(2), named.group(1))
            elif len(names) != 1:
                raise ValueError(
                    f"--attn-kwargs {raw.strip()!r} names no backend; with several backends ({listed}) "
                    f"write NAME:key=value,... or NAME='{{json}}'"
                )
            else:
                name = names[0]
                params = _json_object(raw, name) if raw.strip().startswith("{") else _pairs(raw, name)
        if name not in names:
            raise ValueError(f"--attn-kwargs given for {name}, which is not among the backends on the command line "
                             f"({listed})")
        out.setdefault(name, {}).update(params)
    return out
