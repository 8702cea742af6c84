"""common.download and its call sites: SHA-256 after download, trust on first use, pinned Hub revisions, offline.

Files are served by a local http.server on 127.0.0.1 (or as file:// URLs); nothing leaves the machine.
"""
from __future__ import annotations

import functools
import hashlib
import shutil
import threading
import urllib.request
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch

import common.download as dl
from common.download import ChecksumError, HubRepo, RemoteFile, download_url, fetch_files, hub_pins_path

PAYLOAD = b"weights of a generator\n" * 1000
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()
OTHER = hashlib.sha256(b"something else").hexdigest()


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Own cache root and Hub cache; online mode; the local server is not sent through any proxy."""
    monkeypatch.setenv("BIGGAN_ATTN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(var, "127.0.0.1,localhost")


@pytest.fixture
def server(tmp_path):
    """(served folder, base URL) of an HTTP server on 127.0.0.1, stopped after the test."""
    folder = tmp_path / "served"
    folder.mkdir()
    (folder / "model.bin").write_bytes(PAYLOAD)

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def _no_network(monkeypatch):
    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise OSError("network unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    return calls


def test_download_with_published_hash_or_prefix(server, tmp_path):
    folder, base = server
    for n, expected in enumerate((DIGEST, DIGEST[:8])):  # full digest, or torch.hub's file-name prefix
        dest = tmp_path / "cache" / f"m{n}" / "model.bin"
        assert download_url(f"{base}/model.bin", dest, expected) == dest
        assert dest.read_bytes() == PAYLOAD
        assert sorted(p.name for p in dest.parent.iterdir()) == ["model.bin"]  # no record, no partial file


def test_hash_mismatch_is_one_line_naming_both_hashes_and_keeps_nothing(server, tmp_path):
    folder, base = server
    dest = tmp_path / "cache" / "m" / "model.bin"
    with pytest.raises(ChecksumError) as err:
        download_url(f"{base}/model.bin", dest, OTHER)
    message = str(err.value)
    assert DIGEST in message and OTHER in message and f"{base}/model.bin" in message and "\n" not in message
    assert "discarded" in message and not any(dest.parent.iterdir())  # neither the file nor a .part left


def test_unpublished_hash_is_recorded_at_first_download_and_checked_after(server, tmp_path):
    folder, base = server
    dest = tmp_path / "cache" / "m" / "model.bin"
    download_url(f"{base}/model.bin", dest)
    assert dl.record_path(dest).read_text() == f"{DIGEST}  model.bin\n"  # sha256sum's format
    assert dl.verify_file(dest, None) == DIGEST
    dest.write_bytes(PAYLOAD[:-1])  # corrupted in the cache
    with pytest.raises(ChecksumError, match=f"{hashlib.sha256(PAYLOAD[:-1]).hexdigest()} does not match .*{DIGEST}"):
        dl.verify_file(dest, None)
    dest.unlink()
    (folder / "model.bin").write_bytes(b"changed upstream")  # a re-download must match the first one
    with pytest.raises(ChecksumError, match=f"download of {base}/model.bin: .* recorded at first download {DIGEST}"):
        download_url(f"{base}/model.bin", dest)
    assert not dest.exists()


def test_fetch_files_downloads_only_what_is_missing_and_checks_the_cache(server, tmp_path, monkeypatch):
    folder, base = server
    files = (RemoteFile("model.bin", f"{base}/model.bin", DIGEST),)
    cache = tmp_path / "cache" / "x"
    assert fetch_files(files, cache, "model x") == cache
    calls = _no_network(monkeypatch)
    assert fetch_files(files, cache, "model x") == cache and calls == []  # cached: no network needed
    (cache / "model.bin").write_bytes(b"tampered")
    with pytest.raises(ChecksumError, match=f"model.bin: SHA-256 .* does not match the published {DIGEST}; delete it"):
        fetch_files(files, cache, "model x")


def test_unreachable_or_offline_is_one_line_naming_files_and_directory(tmp_path, monkeypatch):
    files = (RemoteFile("a.bin", "https://example.invalid/a.bin"), RemoteFile("b.json", "https://example.invalid/b.json"))
    cache = tmp_path / "cache" / "y"
    calls = _no_network(monkeypatch)
    with pytest.raises(FileNotFoundError) as err:
        fetch_files(files, cache, "model y", alternative="or pass a path")
    message = str(err.value)
    assert message.startswith("could not download model y (https://example.invalid/a.bin: network unreachable)")
    assert f"put a.bin and b.json in {cache} or pass a path" in message and "\n" not in message
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    calls.clear()
    urls = r"\(https://example.invalid/a.bin and https://example.invalid/b.json\)"  # offline: the URLs are named
    with pytest.raises(FileNotFoundError, match=f"model y {urls} is not in the cache and HF_HUB_OFFLINE=1 .* {cache}"):
        fetch_files(files, cache, "model y")
    assert calls == []


def _hub_snapshot(tmp_path, commit: str, content: bytes) -> None:
    repo = tmp_path / "hf" / "models--someone--model"
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "model.bin").write_bytes(content)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)


def test_hub_revision_and_digests_pinned_at_first_use(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    first, second = "1" * 40, "2" * 40
    _hub_snapshot(tmp_path, first, PAYLOAD)
    files = (RemoteFile("model.bin", "https://example.invalid/model.bin"),)
    hub = HubRepo("someone/model")  # no revision published: pinned to the first one seen
    folder = fetch_files(files, tmp_path / "cache" / "z", "model z", hub)
    assert folder.name == first and (folder / "model.bin").read_bytes() == PAYLOAD
    assert hub_pins_path(hub.repo).is_file()
    # "main" moves to a new commit: the pinned one is still what loads
    _hub_snapshot(tmp_path, second, b"new upload")
    assert fetch_files(files, tmp_path / "cache" / "z", "model z", hub).name == first
    (folder / "model.bin").write_bytes(b"altered")
    with pytest.raises(ChecksumError, match=f"someone/model model.bin .* recorded at first use .* {DIGEST}"):
        fetch_files(files, tmp_path / "cache" / "z", "model z", hub)
    # a revision pinned in the code wins over the recorded one
    assert fetch_files(files, tmp_path / "cache" / "z", "model z", HubRepo(hub.repo, second)).name == second


def test_hub_file_with_published_hash_is_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _hub_snapshot(tmp_path, "3" * 40, PAYLOAD)
    files = (RemoteFile("model.bin", "https://example.invalid/model.bin", OTHER),)
    with pytest.raises(ChecksumError, match=f"SHA-256 {DIGEST} does not match the published {OTHER}"):
        fetch_files(files, tmp_path / "cache" / "w", "model w", HubRepo("someone/model"))


def test_bad_hash_declarations_are_refused():
    with pytest.raises(ValueError, match="at least 8 digits"):
        RemoteFile("x", "https://example.invalid/x", "6726825")
    with pytest.raises(ValueError, match="lowercase hex"):
        RemoteFile("x", "https://example.invalid/x", "6726825D")


def test_default_inception_weights_offline_name_path_and_url(tmp_path, monkeypatch):
    from eval.inception import FID_WEIGHTS_URL, default_weights_path, load_inception

    _no_network(monkeypatch)
    with pytest.raises(FileNotFoundError) as err:
        load_inception(None)
    message = str(err.value)
    assert default_weights_path() == tmp_path / "cache" / "inception" / "pt_inception-2015-12-05-6726825d.pth"
    assert str(default_weights_path().parent) in message and FID_WEIGHTS_URL in message and "\n" not in message


def test_default_inception_weights_in_the_cache_are_hash_checked(tmp_path, monkeypatch):
    import eval.inception as inc

    assert inc.FID_WEIGHTS_SHA256.startswith("6726825d")  # the prefix in the published file name
    _no_network(monkeypatch)
    cached = inc.default_weights_path()
    cached.parent.mkdir(parents=True)
    torch.save(inc.random_inception_state(1 / 16, seed=0), cached)
    with pytest.raises(ChecksumError, match=f"does not match the published {inc.FID_WEIGHTS_SHA256}"):
        inc.load_inception(None)  # random weights under the real name are not pytorch-fid's
    monkeypatch.setattr(inc, "FID_WEIGHTS_SHA256", dl.sha256_of(cached))
    net, weights_id = inc.load_inception(None)
    assert net.feature_dim == 128 and weights_id.startswith(cached.name + ":")


def test_reference_batch_download_keeps_mu_sigma_and_the_digest_record(tmp_path, monkeypatch):
    import eval.reference_stats as rs

    batch = tmp_path / "served" / "VIRTUAL_imagenet128_labeled.npz"
    batch.parent.mkdir()
    mu, sigma = np.arange(4.0), np.eye(4)
    np.savez(batch, arr_0=np.zeros((2, 8, 8, 3), np.uint8), mu=mu, sigma=sigma)
    monkeypatch.setitem(rs.NAMED_STATS, "imagenet-128", batch.as_uri())
    monkeypatch.setitem(rs.NAMED_STATS_SHA256, "imagenet-128", None)
    got_mu, got_sigma, source = rs.resolve_named_or_file("imagenet-128", 4)
    assert np.array_equal(got_mu, mu) and np.array_equal(got_sigma, sigma) and source == "imagenet-128"
    downloads = tmp_path / "cache" / "downloads"
    assert sorted(p.name for p in downloads.iterdir()) == ["VIRTUAL_imagenet128_labeled.npz.sha256"]  # batch deleted
    # the statistics are gone and upstream changed: the re-download must match the first one
    rs.named_stats_path("imagenet-128").unlink()
    np.savez(batch, arr_0=np.ones((2, 8, 8, 3), np.uint8), mu=mu, sigma=sigma)
    with pytest.raises(ChecksumError, match="recorded at first download"):
        rs.resolve_named_or_file("imagenet-128", 4)


def test_reference_batch_offline_names_the_file_and_where_it_goes(tmp_path, monkeypatch):
    import eval.reference_stats as rs

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError) as err:
        rs.resolve_named_or_file("imagenet-256", 2048)
    message = str(err.value)
    assert "VIRTUAL_imagenet256_labeled.npz" in message and str(tmp_path / "cache" / "downloads") in message
    assert str(rs.named_stats_path("imagenet-256")) in message and "--ref-stats" in message
    assert rs.NAMED_STATS_SHA256["imagenet-256"] == "b32732719497e42660a9affb4a966068cba0855ac449b82015e34ec376d20758"


def test_model_files_copied_by_hand_are_used_offline(tmp_path, monkeypatch, tiny_deep_dir):
    from weights import load_generator, model_cache_dir

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    target = model_cache_dir("biggan-deep-256")
    shutil.copytree(tiny_deep_dir, target)
    assert load_generator("biggan-deep-256", device="cpu").family == "biggan-deep"
    assert dl.record_path(target / "pytorch_model.bin").is_file()  # trusted on first use, checked from now on


def test_named_model_with_a_wrong_published_hash_is_not_loaded(server, tmp_path, monkeypatch, tiny_deep_dir):
    from weights import load_generator, model_cache_dir
    from weights.registry import MODELS, ModelSource

    folder, base = server
    for name in ("config.json", "pytorch_model.bin"):
        shutil.copyfile(tiny_deep_dir / name, folder / name)
    weights_file = RemoteFile("pytorch_model.bin", f"{base}/pytorch_model.bin", OTHER)
    files = (RemoteFile("config.json", f"{base}/config.json"), weights_file)
    monkeypatch.setitem(MODELS, "biggan-deep-test", ModelSource("biggan-deep-test", "biggan-deep", files))
    mismatch = f"pytorch_model.bin: SHA-256 [0-9a-f]{{64}} does not match the published {OTHER}"
    with pytest.raises(ChecksumError, match=mismatch):
        load_generator("biggan-deep-test", device="cpu")
    assert not (model_cache_dir("biggan-deep-test") / "pytorch_model.bin").exists()


def test_unwritable_record_warns_and_still_loads(tmp_path, monkeypatch):
    path = tmp_path / "file.bin"
    path.write_bytes(PAYLOAD)

    def read_only(*args, **kwargs):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(dl, "write_atomic", read_only)
    with pytest.warns(UserWarning, match="could not record the SHA-256 of .*file.bin"):
        assert dl.verify_file(path, None) == DIGEST
