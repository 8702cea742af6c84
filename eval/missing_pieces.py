"""eval/fid.py's start-up error when the generator, the Inception weights or the reference statistics fail.

A first run without network misses up to three downloads, and one line holding all of them is
unreadable, so that case is the documented exception to the CLIs' one-line errors: a header, one line
per missing piece (what, its URLs, the folder to put it in, the flag that replaces it), and last the
command of the offline smoke run. Any other mix of errors stays one line.
"""
from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path

from common.download import DownloadMissing

SMOKE_FOLDER = Path("smoke")


class MissingPieces(FileNotFoundError):
    """Missing downloads; ``lines`` is the message, which ``common.cli.report_error`` prints line by line."""

    def __init__(self, lines: Sequence[str]):
        self.lines = list(lines)
        super().__init__(" ".join(self.lines))


def _entry(err: BaseException, flag: str) -> str:
    if not isinstance(err, DownloadMissing):
        return f"- {err}"
    renamed = [n for n, url in zip(err.names, err.urls, strict=False) if not url.endswith("/" + n)]
    names = f" as {' and '.join(renamed)}" if renamed else ""
    return f"- {err.what}: download {' and '.join(err.urls)} into {err.folder}/{names}, or pass {flag}"


def smoke_line() -> str:
    """The offline alternative: write random stand-ins, then run eval/fid.py on them."""
    from eval.smoke_assets import smoke_command, smoke_paths

    fid = ["python", "eval/fid.py", *smoke_command(smoke_paths(SMOKE_FOLDER), SMOKE_FOLDER / "results")]
    setup = ["python", "eval/smoke_assets.py", str(SMOKE_FOLDER)]
    return f"offline smoke run on random weights (meaningless numbers): {shlex.join(setup)} && {shlex.join(fid)}"


def startup_error(errors: Sequence[tuple[str, BaseException]]) -> Exception:
    """(flag that replaces the piece, its error) pairs -> the exception to raise: ``MissingPieces`` when a
    download is among them, else one ValueError / FileNotFoundError naming every error on one line."""
    downloads = [err for _, err in errors if isinstance(err, DownloadMissing)]
    if downloads:
        causes = {err.cause for err in downloads}
        why = f" ({causes.pop()})" if len(causes) == 1 else ""
        if len(downloads) == len(errors):
            some = f"{len(errors)} downloads this run needs are" if len(errors) > 1 else "a download this run needs is"
            head = f"{some} not in the cache and could not be fetched{why}:"
        else:
            head = f"{len(errors)} things are missing or wrong; the downloads failed{why}:"
        return MissingPieces([head, *(_entry(err, flag) for flag, err in errors), smoke_line()])
    kind = FileNotFoundError if all(isinstance(err, FileNotFoundError) for _, err in errors) else ValueError
    if len(errors) == 1:
        return kind(str(errors[0][1]))
    listed = "; ".join(f"({i}) {err}" for i, (_, err) in enumerate(errors, 1))
    return kind(f"{len(errors)} things are missing or wrong: {listed}")
