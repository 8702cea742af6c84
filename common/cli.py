"""Command-line plumbing shared by ``eval/fid.py`` and the ``app/`` programs.

User mistakes (``ValueError`` / ``FileNotFoundError``, argparse errors included) become one line
on stderr and exit code 2, never a traceback or argparse's usage dump. ``parse_attention_kwargs``
is the one ``--attn-kwargs`` grammar of every CLI (documented in docs/eval.md).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any

USER_ERRORS = (ValueError, FileNotFoundError)

_NAMED_JSON = re.compile(r"^\s*([A-Za-z0-9_.@-]+)\s*[=:]\s*([{[].*)$", re.S)  # NAME={json} or NAME:{json}
_NAMED_PAIRS = re.compile(r"^\s*([A-Za-z0-9_.@-]+)\s*:(.*)$", re.S)  # NAME:key=value,...


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors raise ValueError (reported by ``report_error``) instead of printing usage."""

    def error(self, message: str):
        raise ValueError(message)


def report_error(err: BaseException) -> int:
    """Print ``err`` as ``error: <one line>`` on stderr; returns the exit code 2."""
    print(f"error: {' '.join(str(err).split()) or type(err).__name__}", file=sys.stderr)
    return 2


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
