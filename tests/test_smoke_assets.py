"""eval/smoke_assets.py at 256 and 512 (reduced width): the app/sample.py and app/app.py commands it prints run
offline on what it wrote, at that resolution."""
from __future__ import annotations

import contextlib
import io
import json
import shlex
import socket
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from eval.smoke_assets import main as smoke_main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=[256, 512])
def printed(request, tmp_path_factory) -> tuple[int, Path, dict[str, list[str]]]:
    """(resolution, folder, {program: its printed argv}) of one smoke_assets run."""
    folder = tmp_path_factory.mktemp(f"smoke{request.param}")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert smoke_main([str(folder), "--resolution", str(request.param)]) == 0
    commands = {}
    for line in stdout.getvalue().splitlines():
        if line.startswith("python "):
            words = shlex.split(line)
            commands[words[1]] = words[2:]
    assert sorted(commands) == ["app/app.py", "app/sample.py", "eval/fid.py"], stdout.getvalue()
    return request.param, folder, commands


def test_the_written_generator_has_the_resolution_at_reduced_width(printed):
    resolution, folder, commands = printed
    model = Path(commands["app/sample.py"][commands["app/sample.py"].index("--model") + 1])
    config = json.loads((model / "config.json").read_text())
    assert model.parent == folder and config["output_dim"] == resolution and config["channel_width"] == 8


def test_printed_sampler_command_writes_images_at_that_resolution(printed, monkeypatch):
    from app.sample import main

    resolution, _, commands = printed
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    argv = list(commands["app/sample.py"])
    argv[argv.index("--per-class") + 1] = "1"  # two images instead of eight: the suite stays fast
    assert main(argv) == 0
    out = Path(argv[argv.index("--out") + 1])
    images = sorted((out / "images").glob("*.png"))
    assert [p.name for p in images] == ["000000.png", "000001.png"]
    for path in images:
        with Image.open(path) as image:
            assert image.size == (resolution, resolution)
    assert (out / "grid.png").is_file()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_printed_app_command_serves_and_generates_at_that_resolution(printed, monkeypatch):
    from app.app import parse_args
    from app.ui import CSS, ComparisonApp

    resolution, _, commands = printed
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    port = _free_port()
    args = parse_args([*commands["app/app.py"], "--port", str(port)])
    app = ComparisonApp(args.model, args.device)
    demo = app.build()
    try:
        demo.queue(default_concurrency_limit=1)
        demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, ssr_mode=False,
                    css=CSS)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as response:
            assert response.status == 200 and b"biggan-attn" in response.read()
        status, html, _, table, grid_path, _ = app.generate(
            args.model, "goldfish", 0, 0.4, 1, ["performer"], [], "1/8", "", False)
        assert status == "" and [row[0] for row in table] == ["exact", "performer"]
        with Image.open(grid_path) as grid:
            pixels = np.asarray(grid)
        assert pixels.shape[0] > 2 * resolution and pixels.shape[1] > resolution  # two rows of full-size images
    finally:
        demo.close()
        app.cleanup()
