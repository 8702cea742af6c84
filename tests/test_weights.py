"""Loading: names, paths, format detection, strict errors, download and cache (all offline)."""
from __future__ import annotations

import shutil
import socket

import pytest
import torch

import common.download
from common.download import HubRepo, RemoteFile, hub_cache_dir
from weights import available_models, load_generator, model_cache_dir, write_random_checkpoint
from weights.formats import detect_format
from weights.registry import MODELS, ModelSource

Z = torch.zeros(1, 128)
CLASS = torch.tensor([7])


@pytest.fixture
def network_attempts(monkeypatch):
    """Name lookups and socket connections attempted during the test (each one refused)."""
    attempts = []

    def refuse_connect(self, address):
        attempts.append(address)
        raise OSError("network disabled in tests")

    def refuse_lookup(host, *args, **kwargs):
        attempts.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "network disabled in tests")

    monkeypatch.setattr(socket.socket, "connect", refuse_connect)
    monkeypatch.setattr(socket, "getaddrinfo", refuse_lookup)
    return attempts


@pytest.fixture
def hf_cache(tmp_path, monkeypatch, network_attempts):
    """An empty HF hub cache and project cache root for this test; HF_HUB_OFFLINE unset; no network."""
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("BIGGAN_ATTN_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return cache


def _source(name, folder, hub=None):
    """A model whose files are served from ``folder`` as file:// URLs (no hash published)."""
    files = tuple(RemoteFile(n, (folder / n).as_uri()) for n in ("config.json", "pytorch_model.bin"))
    return ModelSource(name, "biggan-deep", files, hub)


def _copy(folder, dest):
    shutil.copytree(folder, dest)
    return dest


def test_available_models():
    assert available_models() == ["biggan-deep-128", "biggan-deep-256", "biggan-deep-512", "biggan-128"]


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file or directory"):
        load_generator(tmp_path / "absent" / "pytorch_model.bin")


def test_directory_without_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"holds none of pytorch_model.bin \(biggan-deep\) / G_ema.pth"):
        load_generator(tmp_path)


def test_unknown_model_name():
    with pytest.raises(ValueError, match="unknown model name 'biggan-deep-64'.*biggan-deep-128"):
        load_generator("biggan-deep-64")


def test_biggan_128_name_asks_for_a_local_file():
    with pytest.raises(ValueError, match="local G_ema.pth.*drive.google.com.*openmmlab"):
        load_generator("biggan-128")


@pytest.mark.parametrize("content", [b"", b"definitely not a checkpoint", b"PK\x03\x04truncated zip"])
def test_garbage_file_is_not_a_checkpoint(tmp_path, content):
    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="is not a readable PyTorch checkpoint"):
        load_generator(path)


def test_truncated_checkpoint(tiny_deep_dir, tmp_path):
    folder = _copy(tiny_deep_dir, tmp_path / "cut")
    data = (folder / "pytorch_model.bin").read_bytes()
    (folder / "pytorch_model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError) as err:
        load_generator(folder)
    message = str(err.value)
    # one whole sentence naming the file, saying what is wrong; no clipped torch text, no exception class
    assert message.startswith(f"{folder / 'pytorch_model.bin'} is not a readable PyTorch checkpoint"), message
    assert "corrupt or truncated" in message and message.endswith(".") and "\n" not in message, message
    assert "Error" not in message and "miniz" not in message, message


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"x": torch.zeros(1), "obj": ModelSource("x", "y")}, path)  # needs unpickling a class
    with pytest.raises(ValueError, match="is not a readable PyTorch checkpoint"):
        load_generator(path)


def test_wrong_format(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(3, 3), "fc.bias": torch.zeros(3)}, path)
    known = "not a checkpoint of a known format .*BigGAN-deep.*BigGAN-PyTorch.*OpenMMLab.*conv.weight"
    with pytest.raises(ValueError, match=known):
        load_generator(path)


def test_missing_key_and_wrong_shape_are_listed(tiny_deep_dir, tmp_path):
    folder = _copy(tiny_deep_dir, tmp_path / "bad")
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    del state["generator.layers.3.conv_1.weight_v"]
    state["generator.layers.8.gamma"] = torch.ones(2)
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(ValueError) as err:
        load_generator(folder)
    message = str(err.value)
    assert "missing 1 key(s): generator.layers.3.conv_1.weight_v" in message
    assert "generator.layers.8.gamma (checkpoint (2,), expected (1,))" in message


def test_corrupt_spectral_norm_vectors(tiny_deep_dir, tmp_path):
    folder = _copy(tiny_deep_dir, tmp_path / "sn")
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    state["generator.layers.2.conv_1.weight_u"] *= -1  # u.Wv < 0: no valid spectral norm
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(ValueError, match="generator.layers.2.conv_1.weight_orig: spectral-norm estimate -"):
        load_generator(folder)


def test_bad_config_json(tiny_deep_dir, tmp_path):
    folder = _copy(tiny_deep_dir, tmp_path / "cfg")
    (folder / "config.json").write_text('{"output_dim": 128, "colour": 1}')
    with pytest.raises(ValueError, match="config.json: unknown BigGAN-deep config field"):
        load_generator(folder)


def test_bare_weights_file_infers_published_config(tiny_deep_dir, tmp_path):
    bare = tmp_path / "bare" / "weights.bin"
    bare.parent.mkdir()
    shutil.copyfile(tiny_deep_dir / "pytorch_model.bin", bare)
    expected = load_generator(tiny_deep_dir, device="cpu").generate(Z, CLASS, 0.5)
    # no config.json next to it: the 128 preset at the file's channel width is recognised from the keys
    assert torch.equal(load_generator(bare, device="cpu").generate(Z, CLASS, 0.5), expected)


@pytest.mark.parametrize("hub_offline", [False, True])
def test_local_paths_load_without_network(
    hf_cache, network_attempts, monkeypatch, tiny_deep_dir, tmp_path, hub_offline
):
    # An empty cache and no network, with or without HF_HUB_OFFLINE=1: a local directory or file (either
    # format) needs neither; fails if loading a path looks anything up online or writes to the cache.
    if hub_offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ajbrock = write_random_checkpoint(tmp_path / "G_ema.pth", fmt="biggan", G_ch=8)
    deep_file = tiny_deep_dir / "pytorch_model.bin"
    for path, family in ((tiny_deep_dir, "biggan-deep"), (deep_file, "biggan-deep"), (ajbrock, "biggan")):
        assert load_generator(path, device="cpu").family == family
    assert network_attempts == [] and not hf_cache.exists()


def test_write_random_checkpoint_rejects_unknown_format(tmp_path):
    with pytest.raises(ValueError, match="unknown checkpoint format 'onnx'; accepted: biggan-deep, biggan, openmmlab-"):
        write_random_checkpoint(tmp_path / "x", fmt="onnx")


def test_bad_dtype_and_attention(tiny_deep_dir):
    with pytest.raises(ValueError, match="unsupported dtype 'int8'"):
        load_generator(tiny_deep_dir, device="cpu", dtype="int8")
    with pytest.raises(ValueError, match="unknown attention 'softmax2'"):
        load_generator(tiny_deep_dir, attention="softmax2")


def test_ajbrock_file_is_dispatched(tmp_path):
    path = write_random_checkpoint(tmp_path / "G_ema.pth", fmt="biggan", G_ch=8)
    assert detect_format(torch.load(path, weights_only=True), str(path)).name == "biggan"
    model = load_generator(tmp_path, device="cpu")  # a directory holding G_ema.pth
    assert model.family == "biggan" and not model.training


@pytest.mark.parametrize("name", ["biggan-deep-128", "biggan-deep-256"])
def test_offline_without_cache_says_where_to_put_files(hf_cache, network_attempts, monkeypatch, name):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError) as err:
        load_generator(name)
    message = str(err.value)
    assert "HF_HUB_OFFLINE=1" in message and str(model_cache_dir(name)) in message
    assert "config.json and pytorch_model.bin" in message and "local directory" in message
    assert str(hf_cache.parent / "cache" / "models" / name) in message and network_attempts == []  # no network


def test_url_download_is_cached_for_offline_reuse(hf_cache, monkeypatch, tiny_deep_dir, tmp_path):
    served = _copy(tiny_deep_dir, tmp_path / "served")
    source = _source("biggan-deep-test", served)
    monkeypatch.setitem(MODELS, source.name, source)
    expected = load_generator(tiny_deep_dir, device="cpu").generate(Z, CLASS, 0.5)

    first = load_generator(source.name, device="cpu").generate(Z, CLASS, 0.5)
    cached = model_cache_dir(source.name)
    # no .part left; the digests of these unhashed files recorded beside them at first download
    assert sorted(p.name for p in cached.iterdir()) == [
        "config.json", "config.json.sha256", "pytorch_model.bin", "pytorch_model.bin.sha256"]
    shutil.rmtree(served)  # the source is gone: the second load must come from the cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    second = load_generator(source.name, device="cpu").generate(Z, CLASS, 0.5)
    assert torch.equal(first, expected) and torch.equal(second, expected)


def test_failed_download_leaves_no_partial_file(hf_cache, monkeypatch, tmp_path):
    gone = RemoteFile("config.json", (tmp_path / "gone.json").as_uri())
    source = ModelSource("biggan-deep-test", "biggan-deep", (gone,))
    monkeypatch.setitem(MODELS, source.name, source)
    with pytest.raises(FileNotFoundError, match="could not download biggan-deep-test .*put config.json in"):
        load_generator(source.name)
    assert not model_cache_dir(source.name).exists() or not any(model_cache_dir(source.name).iterdir())


def test_hub_snapshot_in_cache_is_used_offline(hf_cache, network_attempts, monkeypatch, tiny_deep_dir):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = hf_cache / "models--osanseviero--BigGAN-deep-128"
    shutil.copytree(tiny_deep_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = load_generator("biggan-deep-128", device="cpu")
    expected = load_generator(tiny_deep_dir, device="cpu").generate(Z, CLASS, 0.5)
    assert torch.equal(model.generate(Z, CLASS, 0.5), expected) and network_attempts == []


def test_hub_failure_falls_back_to_urls(hf_cache, monkeypatch, tiny_deep_dir):
    hub_calls = []

    def hub_down(*args, **kwargs):
        hub_calls.append(args)
        raise OSError("hub unreachable")

    import huggingface_hub

    monkeypatch.setattr(common.download, "hub_resolves", lambda: True)  # the Hub's name resolves, its download fails
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub_down)
    source = _source("biggan-deep-test", tiny_deep_dir, hub=HubRepo("someone/unreachable"))
    monkeypatch.setitem(MODELS, source.name, source)
    assert load_generator(source.name, device="cpu").family == "biggan-deep"
    assert hub_calls  # the Hub was tried first


def test_cache_directories_follow_the_environment(monkeypatch, tmp_path):
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME", "BIGGAN_ATTN_CACHE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert model_cache_dir("m") == tmp_path / "home" / ".cache" / "biggan-attn" / "models" / "m"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub_cache_dir() == tmp_path / "xdg" / "huggingface" / "hub"
    assert model_cache_dir("m") == tmp_path / "xdg" / "biggan-attn" / "models" / "m"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    assert hub_cache_dir() == tmp_path / "hf-home" / "hub"  # huggingface_hub's precedence for Hub snapshots
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("BIGGAN_ATTN_CACHE", str(tmp_path / "ours"))
    assert hub_cache_dir() == tmp_path / "hub" and model_cache_dir("m") == tmp_path / "ours" / "models" / "m"
