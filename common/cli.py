"""Command-line plumbing shared by ``eval/fid.py`` and the ``app/`` programs.

User mistakes (``ValueError`` / ``FileNotFoundError``, argparse errors included) become one line
on stderr and exit code 2, never a traceback or argparse's usage dump.
"""
from __future__ import annotations

import argparse
import sys

USER_ERRORS = (ValueError, FileNotFoundError)


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors raise ValueError (reported by ``report_error``) instead of printing usage."""

    def error(self, message: str):
        raise ValueError(message)


def report_error(err: BaseException) -> int:
    """Print ``err`` as ``error: <one line>`` on stderr; returns the exit code 2."""
    print(f"error: {' '.join(str(err).split()) or type(err).__name__}", file=sys.stderr)
    return 2
