"""Fetch named checkpoints into the Hugging Face cache: the Hub first, then the original URLs.

Files from URLs go to ``<HF hub cache>/biggan-attn/<name>/`` (HF_HUB_CACHE, else HF_HOME/hub, else
~/.cache/huggingface/hub), written under a temporary name and renamed when complete, so a second
run needs no network. With ``HF_HUB_OFFLINE=1`` nothing touches the network. When the Hub's host
name does not resolve (no network), the Hub is only asked for its local cache, so an offline run
fails at once with one message instead of huggingface_hub's retry warnings and back-off.
"""
from __future__ import annotations

import logging
import os
import socket
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

from huggingface_hub import hf_hub_download, try_to_load_from_cache
from tqdm.auto import tqdm

from .registry import ModelSource

_TRUE = {"1", "on", "yes", "true"}
_CHUNK = 1 << 20


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache directory, following huggingface_hub's environment rules."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg).expanduser() / "huggingface" / "hub"


def is_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def url_cache_dir(name: str) -> Path:
    """Where files downloaded from plain URLs (and files put there by hand) live for model ``name``."""
    return hf_cache_dir() / "biggan-attn" / name


def download_url(url: str, dest: Path) -> Path:
    """Stream ``url`` (http(s) or file://) to ``dest`` atomically: a partial download never has the final name."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(f"{dest.name}.{os.getpid()}.part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, leave=False) as bar:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
        partial.replace(dest)
    finally:
        partial.unlink(missing_ok=True)
    return dest


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
    """Hide huggingface_hub's retry warnings: a failure is reported once, by ``fetch``'s own error."""
    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _from_hub(repo: str, filenames: list[str], offline: bool) -> Path:
    """The snapshot folder of ``repo`` holding ``filenames`` (one revision, so one folder)."""
    if offline or not hub_resolves():
        # Read the cache directly: hf_hub_download(local_files_only=True) still asks the Hub for its
        # user-agent registry unless HF_HUB_OFFLINE was already set when huggingface_hub was imported.
        cached = [try_to_load_from_cache(repo, name, cache_dir=hf_cache_dir()) for name in filenames]
        missing = [name for name, path in zip(filenames, cached) if not isinstance(path, str)]
        if missing:
            raise FileNotFoundError(f"{repo}: {', '.join(missing)} not in the local Hub cache")
        return Path(cached[0]).parent
    with _quiet_hub():
        paths = [Path(hf_hub_download(repo, name, cache_dir=hf_cache_dir())) for name in filenames]
    return paths[0].parent


def fetch(source: ModelSource) -> Path:
    """A local directory holding all of ``source.urls``' files, downloading only what is missing."""
    names = list(source.urls)
    local = url_cache_dir(source.name)
    if all((local / name).is_file() for name in names):
        return local
    offline = is_offline()
    failures: list[str] = []
    if source.hub_repo:
        try:
            return _from_hub(source.hub_repo, names, offline)
        except Exception as err:  # any Hub failure (offline miss, HTTP, connection): fall back to the URLs
            failures.append(f"Hub {source.hub_repo}: {type(err).__name__}")
    remedy = f"put {' and '.join(names)} in {local} or pass a local directory path"
    if offline:
        raise FileNotFoundError(f"{source.name} is not in the cache and HF_HUB_OFFLINE=1 forbids downloading; {remedy}")
    try:
        for name in names:
            if not (local / name).is_file():
                download_url(source.urls[name], local / name)
    except OSError as err:
        failures.append(f"{source.urls[name]}: {err}")
        raise FileNotFoundError(f"could not download {source.name} ({'; '.join(failures)}); {remedy}") from None
    return local
