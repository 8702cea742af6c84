"""Command-line plumbing shared by ``eval/fid.py`` and the ``app/`` programs.

User mistakes (``ValueError`` / ``FileNotFoundError``, argparse errors included) become one line
on stderr and exit code 2, never a traceback or argparse's usage dump.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

USER_ERRORS = (ValueError, FileNotFoundError)


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors raise ValueError (reported by ``report_error``) instead of printing usage."""

    def error(self, message: str):
        raise ValueError(message)


def report_error(err: BaseException) -> int:
    """Print ``err`` as ``error: <one line>`` on stderr; returns the exit code 2."""
    print(f"error: {' '.join(str(err).split()) or type(err).__name__}", file=sys.stderr)
    return 2


def parse_attention_kwargs(values: Sequence[str] | None, names: Sequence[str]) -> dict[str, dict]:
    """``--attn-kwargs`` values -> {name: kwargs} for every name in ``names`` (``{}`` where none given).

    Each value is ``NAME='{json object}'`` (parameters of backend NAME) or a bare JSON object (parameters
    of every name); later values update earlier ones. ValueError (one line, listing the accepted names)
    on a NAME not in ``names``, bad JSON or a JSON value that is not an object.
    """
    import json

    accepted = ", ".join(names) or "(none)"
    out: dict[str, dict] = {name: {} for name in names}
    for value in values or []:
        text = value.strip()
        if text.startswith("{"):
            targets, blob, what = list(names), text, "--attn-kwargs"
        else:
            name, sep, blob = text.partition("=")
            name = name.strip()
            if not sep or not name:
                raise ValueError(f"bad --attn-kwargs {value!r}; expected NAME='{{json object}}' or '{{json object}}' "
                                 f"with NAME one of: {accepted}")
            if name not in out:
                raise ValueError(f"--attn-kwargs names {name!r}, which is not a chosen backend; accepted: {accepted}")
            targets, what = [name], f"--attn-kwargs {name}"
        try:
            params = json.loads(blob)
        except json.JSONDecodeError as err:
            raise ValueError(f"bad JSON in {what}: {err.msg} at column {err.colno}; expected a JSON object "
                             f"such as '{{\"n_hashes\": 4}}'") from None
        if not isinstance(params, dict):
            raise ValueError(f"{what} must be a JSON object such as '{{\"n_hashes\": 4}}', got {type(params).__name__}")
        for target in targets:
            out[target].update(params)
    return out
