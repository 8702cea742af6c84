"""Every download of the project: one cache root, pinned Hub revisions, SHA-256 checked before use.

Cache root: ``$BIGGAN_ATTN_CACHE``, else ``$XDG_CACHE_HOME/biggan-attn``, else ``~/.cache/biggan-attn``.
Files from URLs live there (``models/<name>/``, ``inception/``, ``downloads/``). Hub snapshots stay in the
Hugging Face cache, where huggingface_hub puts them (``HF_HUB_CACHE``, else ``HF_HOME/hub``, else
``~/.cache/huggingface/hub``); what was verified about them is kept in ``<root>/hub/``.

Integrity: a ``RemoteFile`` carries its published SHA-256 (or a prefix of at least 8 hex digits, the
convention of torch.hub's file names), or ``None`` when none is published. A download streams to a
hidden ``.<name>.<pid>.part`` file while hashing; only a file whose digest matches gets its final name,
so an interrupted or corrupted download never looks complete and the next run starts it again. A file
without a published hash is trusted on first use: its digest is written beside it as ``<name>.sha256``
(``sha256sum`` format) and every later load, or re-download, must match it. A mismatch is a
``ChecksumError`` (a ``ValueError``) naming both digests. A Hub repo without a pinned revision is pinned
the same way to the commit its first download got.

Offline: with ``HF_HUB_OFFLINE=1`` nothing touches the network; when the Hub's host name does not
resolve, the Hub is only read from its cache. A missing file is then a one-line ``DownloadMissing``
(a ``FileNotFoundError``) naming the files, their URLs and the directory to put them in.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import urllib.request
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from tqdm.auto import tqdm

from .files import write_atomic

CACHE_ENV = "BIGGAN_ATTN_CACHE"
OFFLINE_ENV = "HF_HUB_OFFLINE"
_TRUE = {"1", "on", "yes", "true"}
_CHUNK = 1 << 20
_TIMEOUT_S = 60
_HEX = set("0123456789abcdef")


class ChecksumError(ValueError):
    """A file's SHA-256 is not the published or recorded one."""


class DownloadMissing(FileNotFoundError):
    """Files that are neither in the cache nor downloadable now; ``str()`` is the one-line message.

    ``what`` names the files ("biggan-deep-128"), ``urls`` are those of the missing files, ``folder`` is where
    they may be put by hand (under ``names``), ``reason`` says what failed (URL: cause; ...), ``cause`` the last
    failure in a few words, ``alternative`` ends the remedy ("or pass ...").
    """

    def __init__(self, what: str, urls: Sequence[str], folder: Path, names: Sequence[str], reason: str,
                 alternative: str = "", offline: bool = False, cause: str = ""):
        self.what, self.urls, self.folder, self.names = what, tuple(urls), Path(folder), tuple(names)
        self.reason, self.alternative, self.offline, self.cause = reason, alternative, offline, cause or reason
        remedy = f"put {' and '.join(self.names)} in {self.folder}" + (f" {alternative}" if alternative else "")
        head = f"{what} ({' and '.join(self.urls)}) is {reason}" if offline else f"could not download {what} ({reason})"
        super().__init__(f"{head}; {remedy}")

    def __reduce__(self):  # picklable with its fields (broadcast between torchrun ranks)
        return type(self), (self.what, self.urls, self.folder, self.names, self.reason, self.alternative,
                            self.offline, self.cause)


def _reason(err: BaseException) -> str:
    """An error's cause in a few words, without its class name (``<urlopen error [Errno -2] X>`` -> ``X``)."""
    cause = getattr(err, "reason", None) or err  # urllib's URLError wraps the socket error
    text = getattr(cause, "strerror", None) or str(cause)
    return " ".join(text.split())[:160] or "failed"


@dataclass(frozen=True)
class RemoteFile:
    """A file to fetch: its name in the cache, its URL, its published SHA-256 (or >= 8-digit prefix; None: unknown)."""

    name: str
    url: str
    sha256: str | None = None

    def __post_init__(self):
        if self.sha256 is not None and not (len(self.sha256) >= 8 and set(self.sha256) <= _HEX):
            raise ValueError(f"{self.name}: sha256 must be lowercase hex of at least 8 digits, got {self.sha256!r}")


@dataclass(frozen=True)
class HubRepo:
    """A Hugging Face Hub model repo and the commit to fetch (None: the one the first download gets, then pinned)."""

    repo: str
    revision: str | None = None


def cache_root() -> Path:
    """``$BIGGAN_ATTN_CACHE``, else ``$XDG_CACHE_HOME/biggan-attn``, else ``~/.cache/biggan-attn``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "biggan-attn"


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, by huggingface_hub's rules (read at call time, so tests can move it)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "huggingface" / "hub"


def is_offline() -> bool:
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in _TRUE


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def record_path(path: Path) -> Path:
    """Where the digest of a file without a published hash is recorded at first use: ``<file>.sha256``."""
    return path.with_name(path.name + ".sha256")


def _read_record(path: Path) -> str | None:
    record = record_path(path)
    if not record.is_file():
        return None
    fields = record.read_text(encoding="utf-8").split()
    if not fields or len(fields[0]) != 64 or not set(fields[0]) <= _HEX:
        raise ChecksumError(f"{record} is not a SHA-256 record ('<64 hex digits>  <name>'); delete it and {path.name}")
    return fields[0]


def _write_record(path: Path, digest: str) -> None:
    """Record ``digest`` beside ``path``; a read-only cache only loses the later checks (with a warning)."""
    try:
        write_atomic(record_path(path), lambda f: f.write(f"{digest}  {path.name}\n".encode()))
    except OSError as err:
        warnings.warn(f"could not record the SHA-256 of {path} ({err}); later loads cannot check it", stacklevel=3)


def _check(digest: str, expected: str, what: str, origin: str, remedy: str) -> None:
    if not digest.startswith(expected):
        raise ChecksumError(f"{what}: SHA-256 {digest} does not match the {origin} {expected}; {remedy}")


def verify_file(path: Path, sha256: str | None) -> str:
    """Check ``path`` against ``sha256`` or, without one, its record (written now if this is its first use)."""
    digest = sha256_of(path)
    remedy = "delete it to download it again"
    if sha256 is not None:
        _check(digest, sha256, str(path), "published", remedy)
    elif (recorded := _read_record(path)) is not None:
        _check(digest, recorded, str(path), f"one recorded at first use in {record_path(path)}", remedy)
    else:
        _write_record(path, digest)
    return digest


def download_url(url: str, dest: Path, sha256: str | None = None) -> Path:
    """Stream ``url`` (http(s) or file://) to ``dest``; it gets that name only once its SHA-256 is checked.

    Checked against ``sha256``, else against ``dest``'s record from an earlier download (else recorded now).
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as response, open(partial, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, leave=False) as bar:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
        recorded = _read_record(dest) if sha256 is None else None
        expected, origin = (sha256, "published") if sha256 is not None else (recorded, "one recorded at first download")
        if expected is not None:
            _check(digest.hexdigest(), expected, f"download of {url}", origin, "the file was discarded")
        os.replace(partial, dest)
        if expected is None:
            _write_record(dest, digest.hexdigest())
    finally:
        partial.unlink(missing_ok=True)
    return dest


def fetch_files(
    files: Sequence[RemoteFile], folder: Path, what: str, hub: HubRepo | None = None, alternative: str = ""
) -> Path:
    """A directory holding every one of ``files``, each checked: ``folder`` if it has them all, else the Hub
    snapshot of ``hub``, else ``folder`` after downloading what it lacks from the URLs.

    ``what`` names the files in errors; ``alternative`` ends the remedy ("or pass ...").
    """
    names = [f.name for f in files]
    if all((folder / name).is_file() for name in names):
        for f in files:
            verify_file(folder / f.name, f.sha256)
        return folder
    offline = is_offline()
    failures: list[str] = []
    if hub is not None:
        try:
            return hub_snapshot(hub, files, offline)
        except ChecksumError:
            raise
        except Exception as err:  # any other Hub failure (offline miss, HTTP, connection): fall back to the URLs
            failures.append(_reason(err) if isinstance(err, FileNotFoundError) else f"Hub {hub.repo}: {_reason(err)}")
    missing = [f for f in files if not (folder / f.name).is_file()]
    urls = [f.url for f in missing]
    if offline:
        raise DownloadMissing(what, urls, folder, names, f"not in the cache and {OFFLINE_ENV}=1 forbids downloading",
                              alternative, offline=True, cause=f"{OFFLINE_ENV}=1 forbids downloading")
    for f in files:
        dest = folder / f.name
        if dest.is_file():
            verify_file(dest, f.sha256)
            continue
        try:
            download_url(f.url, dest, f.sha256)
        except OSError as err:
            failures.append(f"{f.url}: {_reason(err)}")
            raise DownloadMissing(what, urls, folder, names, "; ".join(failures), alternative,
                                  cause=_reason(err)) from None
    return folder


def hub_resolves() -> bool:
    """Whether the Hub endpoint's host name resolves (a cheap test for "no network at all")."""
    from huggingface_hub import constants

    try:
        socket.getaddrinfo(urlparse(constants.ENDPOINT).hostname, 443)
    except (OSError, UnicodeError):
        return False
    return True


@contextmanager
def _quiet_hub() -> Iterator[None]:
    """Hide huggingface_hub's retry warnings: a failure is reported once, by ``fetch_files``' own error."""
    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def hub_pins_path(repo: str) -> Path:
    """What was verified about a Hub repo: ``<root>/hub/<owner>--<name>.json``.

    ``{"repo", "revision": the commit pinned at first download, "sha256": {commit: {file: digest}}}``.
    """
    return cache_root() / "hub" / (repo.replace("/", "--") + ".json")


def hub_snapshot(hub: HubRepo, files: Sequence[RemoteFile], offline: bool) -> Path:
    """The snapshot folder of ``hub`` holding ``files`` (one revision, so one folder), each file checked.

    The revision is ``hub.revision``, else the one pinned at first download. Files without a published
    hash are checked against the digests recorded at first use.
    """
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    pins_file = hub_pins_path(hub.repo)
    try:
        pins = json.loads(pins_file.read_text(encoding="utf-8")) if pins_file.is_file() else {}
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ChecksumError(f"{pins_file} is unreadable ({err}); delete it to pin {hub.repo} again") from None
    revision = hub.revision or pins.get("revision")
    names = [f.name for f in files]
    if offline or not hub_resolves():
        # Read the cache directly: hf_hub_download(local_files_only=True) still asks the Hub for its
        # user-agent registry unless HF_HUB_OFFLINE was already set when huggingface_hub was imported.
        cached = [try_to_load_from_cache(hub.repo, n, cache_dir=hub_cache_dir(), revision=revision) for n in names]
        missing = [name for name, path in zip(names, cached, strict=False) if not isinstance(path, str)]
        if missing:
            raise FileNotFoundError(f"{hub.repo}: {', '.join(missing)} not in the local Hub cache")
        paths = [Path(path) for path in cached]
    else:
        with _quiet_hub():
            paths = [Path(hf_hub_download(hub.repo, n, cache_dir=hub_cache_dir(), revision=revision)) for n in names]
    commit = paths[0].parent.name  # snapshots/<commit>/<file>
    digests = pins.get("sha256", {})
    recorded = dict(digests.get(commit, {}))
    for f, path in zip(files, paths, strict=False):
        digest = sha256_of(path)
        expected, origin = f.sha256, "published"
        if expected is None and f.name in recorded:
            expected, origin = recorded[f.name], f"one recorded at first use in {pins_file}"
        if expected is None:
            recorded[f.name] = digest
        else:
            remedy = "delete it from the Hub cache to download it again"
            _check(digest, expected, f"{hub.repo} {f.name} ({path})", origin, remedy)
    pinned = pins.get("revision") or (None if hub.revision else commit)
    updated = {"repo": hub.repo, "revision": pinned, "sha256": {**digests, commit: recorded}}
    if updated != pins:
        try:
            write_atomic(pins_file, lambda f: f.write((json.dumps(updated, indent=2) + "\n").encode()))
        except OSError as err:
            warnings.warn(f"could not record the pins of {hub.repo} in {pins_file} ({err})", stacklevel=2)
    return paths[0].parent
