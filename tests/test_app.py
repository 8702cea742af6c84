"""The comparison app, served by ``python app/app.py`` on 127.0.0.1 with the tiny random checkpoint.

Driven through gradio_client (every endpoint the page uses: /generate and /render) and through a
real headless Chromium (Playwright). One server process serves the whole module.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from gan.attention import available_attentions

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
RESOLUTION = 128  # the tiny checkpoint keeps biggan-deep-128's layout
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
APPROXIMATE = [name for name in available_attentions() if name != "exact"][:2]
NUMBER = r"\d+(\.\d+)?(e[-+]?\d+)?"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_deep_dir, tmp_path_factory):
    """URL of a running app; the process is stopped (by its pid) after the module."""
    port = _free_port()
    work = tmp_path_factory.mktemp("app")
    log = work / "server.log"
    env = os.environ | {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "NO_PROXY": "127.0.0.1,localhost",
                        "GRADIO_TEMP_DIR": str(work / "gradio")}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, str(ROOT / "app" / "app.py"), "--model", str(tiny_deep_dir),
                                 "--port", str(port), "--device", "cpu"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                 # Ctrl-C must reach the app even when pytest runs as a background job (SIGINT ignored)
                                 preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"app exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"app did not answer on {url} within 120 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C: Gradio shuts down and the app's exit handlers run
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def client(server, tmp_path_factory):
    from gradio_client import Client

    return Client(server, verbose=False, download_files=str(tmp_path_factory.mktemp("downloads")), analytics_enabled=False)


def _items(gallery, per_row: int) -> list[dict]:
    """The gallery's images; it comes back as an update that also sets one column per image, one row per backend."""
    assert gallery["columns"] == per_row  # exact: fails if rows would wrap and mix backends
    return gallery["value"]


def _request(**overrides):
    values = dict(model=None, class_choice="goldfish", seed=3, truncation=0.4, num_images=2, backends=APPROXIMATE,
                  budget=0.25, advanced={"headers": ["backend", "parameter", "default", "value"], "data": []}, show_diff=False)
    return values | overrides


def test_server_binds_localhost_only(server):
    # The server was started without --host. A socket bound to 127.0.0.1 refuses connections
    # addressed to 127.0.0.2 (another loopback address on Linux); one bound to 0.0.0.0 or :: accepts
    # them, so this fails if the default host listened on every interface.
    port = int(server.rstrip("/").rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.2", port), timeout=5):
        pass


def test_generate_gives_one_row_per_backend(client, tiny_deep_dir):
    assert len(APPROXIMATE) == 2, f"need two approximate backends to compare, have {available_attentions()}"
    gallery, table, grid_path = client.predict(**_request(model=str(tiny_deep_dir)), api_name="/generate")
    gallery = _items(gallery, 2)
    names = ["exact", *APPROXIMATE]
    # Exact: one row of num_images per backend, exact first; fails if a backend is dropped or rows are mixed.
    assert len(gallery) == len(names) * 2
    for i, item in enumerate(gallery):
        assert item["caption"].startswith(names[i // 2] + " |"), item["caption"]
        # Captions carry generation time, attention time, memory, attention error and pixel difference.
        for key in ("gen", "attn", "mem", "attn err", "pixel diff"):
            assert re.search(rf"{key} {NUMBER}", item["caption"]), (key, item["caption"])
        with Image.open(item["image"]) as image:
            assert image.size == (RESOLUTION, RESOLUTION)  # exact: fails if images were resized or cropped
    rows = table["data"]
    assert [row[0] for row in rows] == names
    assert rows[0][4] == 0 and rows[0][5] == 0  # exact vs itself: error and pixel diff exactly 0
    for row in rows[1:]:
        # An approximation of a random network moves the output; < 1 since the budget keeps the dominant keys.
        assert 0 < row[4] < 1.0, row
        assert row[3] > 0 and row[1] > 0 and row[2] > 0, row  # memory and times measured (> 0)
    with Image.open(grid_path) as grid:
        # Grid: 3 rows of 128 px plus 2 px padding; fails if a row or an image is missing from the PNG.
        assert grid.size[1] == 2 + 3 * (RESOLUTION + 2) and grid.size[0] > 2 * RESOLUTION


def test_render_switches_to_difference_heatmaps(client, tiny_deep_dir):
    client.predict(**_request(model=str(tiny_deep_dir), backends=APPROXIMATE[:1]), api_name="/generate")
    gallery, grid_path = client.predict(show_diff=True, api_name="/render")
    gallery = _items(gallery, 2)
    assert len(gallery) == 2 * 2  # same rows as the stored run: exact + one backend, 2 images each
    with Image.open(gallery[0]["image"]) as exact_heat:
        # Exact vs itself is zero everywhere -> the colour map's darkest colour only (magma(0) is near black).
        assert max(exact_heat.convert("L").getextrema()) < 10
    assert Path(grid_path).is_file()


def test_advanced_parameters_reach_the_backend(client, tiny_deep_dir):
    name = APPROXIMATE[0]
    from app.params import tunable_parameters

    param = next(p for p, default in tunable_parameters(name).items() if default is None or isinstance(default, int))
    value = 2
    data = [[name, param, "auto (budget)", str(value)]]
    _, table, _ = client.predict(**_request(model=str(tiny_deep_dir), backends=[name], num_images=1,
                                            advanced={"headers": ["backend", "parameter", "default", "value"], "data": data}),
                                 api_name="/generate")
    # Exact: the resolved parameters shown for the backend include the override; fails if the table is ignored.
    assert f"{param}={value}" in table["data"][1][6]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"class_choice": "not a class"}, "unknown imagenet class name 'not a class'"),
        ({"class_choice": "1000"}, "class id 1000 out of range"),
        # the sliders' own range check (Gradio) or ours, whichever answers first
        ({"truncation": 1.5}, r"truncation must be in|greater than maximum value 1\.0"),
        ({"truncation": 0.0}, r"truncation must be in|less than minimum value 0\.02"),
        ({"num_images": 9}, r"number of images|greater than maximum value 8"),
        ({"model": "/no/such/checkpoint"}, "no such file or directory"),
        ({"budget": 0.0}, r"budget|less than minimum value"),
    ],
)
def test_invalid_input_is_reported_and_app_stays_usable(client, tiny_deep_dir, overrides, message):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as err:
        client.predict(**_request(model=str(tiny_deep_dir), num_images=1, backends=[]) | overrides, api_name="/generate")
    # The page shows this one-line message; fails if the error were swallowed or a traceback leaked.
    assert re.search(message, str(err.value).lower()), str(err.value)
    assert "Traceback" not in str(err.value)
    gallery, _, _ = client.predict(**_request(model=str(tiny_deep_dir), num_images=1, backends=[]), api_name="/generate")
    assert len(_items(gallery, 1)) == 1  # the next valid request works: exact only, one image


@pytest.mark.browser
def test_browser_generates_the_gallery(server, tmp_path):
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} missing in CI; install Debian's chromium")
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)")
    from playwright.sync_api import expect, sync_playwright

    per_row = 4  # the page's default number of images
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.goto(server, timeout=60_000)
            for name in APPROXIMATE:
                page.locator("#backends").get_by_label(name, exact=True).check()
            page.locator("#generate").click()
            images = page.locator("#gallery img")
            # Fails if the gallery does not show one row of images per backend (exact + the two picked).
            expect(images).to_have_count((1 + len(APPROXIMATE)) * per_row, timeout=120_000)
            page.wait_for_function(
                "() => [...document.querySelectorAll('#gallery img')].every(i => i.complete && i.naturalWidth > 0)",
                timeout=30_000)
            widths = images.evaluate_all("imgs => imgs.map(i => i.naturalWidth)")
            page.screenshot(path=str(tmp_path / "app.png"), full_page=True)
        finally:
            browser.close()
    assert widths == [RESOLUTION] * len(widths)  # every image decoded at full size; fails on broken images
    assert (tmp_path / "app.png").stat().st_size > 10_000
