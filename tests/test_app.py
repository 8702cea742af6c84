"""The comparison app, served by ``python app/app.py`` on 127.0.0.1 with the tiny random checkpoint.

Driven through gradio_client (the endpoints the page uses: /generate and /render) and through a
real headless Chromium (Playwright) at 1400x900. One server process serves the whole module; the
last test stops it with SIGTERM and checks that its scratch folder is gone.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.inputs import MAX_BACKENDS
from gan.attention import available_attentions

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
RESOLUTION = 128  # the tiny checkpoint keeps biggan-deep-128's layout
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1400, "height": 900}
PUBLISHED = [name for name in available_attentions(published=True) if name != "exact"]
APPROXIMATE = [name for name in available_attentions() if name != "exact"]
HEADER_H = 2 * 16 + 4  # the grid PNG's settings header: two 16-px lines and padding
NUMBER_KEYS = {"gen": r"gen \d+\.\d{3} s", "attn": r"attn \d+\.\d{2} ms", "mem": r"mem \d+\.\d{2} MiB",
               "err": r"attn err \d(\.\d+)?(e[-+]?\d+)?", "pix": r"pixel diff \d(\.\d+)?(e[-+]?\d+)?",
               "attn_share": r"attn share [01]\.\d{3}", "attn_speedup": r"attn x \d+\.\d{2}",
               "gen_speedup": r"gen x \d+\.\d{2}"}


def _unchanged(output) -> bool:
    """True for what gradio_client receives for an output the callback left as it was (an update without a value)."""
    return (isinstance(output, dict) and output.get("__type__") == "update" and "value" not in output
            and "value" not in output.get("props", {}))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_process(tiny_deep_dir, tmp_path_factory):
    """(process, URL, work folder) of a running app; stopped (by its pid) after the module if still running."""
    port = _free_port()
    work = tmp_path_factory.mktemp("app")
    (work / "tmp").mkdir()
    log = work / "server.log"
    env = os.environ | {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "NO_PROXY": "127.0.0.1,localhost",
                        "GRADIO_TEMP_DIR": str(work / "gradio"), "TMPDIR": str(work / "tmp"),
                        "BIGGAN_ATTN_CACHE": str(work / "cache")}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, str(ROOT / "app" / "app.py"), "--model", str(tiny_deep_dir),
                                 "--port", str(port), "--device", "cpu"], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 180
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
                pytest.fail(f"app did not answer on {url} within 180 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield proc, url, work
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture(scope="module")
def server(app_process) -> str:
    return app_process[1]


@pytest.fixture(scope="module")
def client(server, tmp_path_factory):
    from gradio_client import Client

    downloads = str(tmp_path_factory.mktemp("downloads"))
    client = Client(server, verbose=False, download_files=downloads, analytics_enabled=False)
    yield client
    client.close()


def _request(**overrides):
    values = dict(model=None, class_choice="goldfish", seed=3, truncation=0.4, num_images=2, published=PUBLISHED[:2],
                  variants=[], budget="1/8", parameters="", show_diff=False)
    return values | overrides


def _columns(table: dict) -> dict[str, int]:
    """The Measurements table's column index by header."""
    return {header: i for i, header in enumerate(table["headers"])}


def _rows(html: str) -> list[dict]:
    """The rows of the results HTML: backend name, group and the label's numbers by key, image count."""
    rows = []
    for block in re.split(r"(?=<div class='bg-row')", html)[1:]:
        rows.append({
            "name": re.search(r"data-backend='([^']+)'", block).group(1),
            "group": re.search(r"class='bg-group [^']+'>([^<]+)<", block).group(1),
            "numbers": dict(re.findall(r"data-key='(\w+)'[^>]*>([^<]+)<", block)),  # a title may come between
            "images": block.count("<img "),
        })
    return rows


def test_server_binds_localhost_only(server):
    # The server was started without --host. A socket bound to 127.0.0.1 refuses connections
    # addressed to 127.0.0.2 (another loopback address on Linux); one bound to 0.0.0.0 or :: accepts
    # them, so this fails if the default host listened on every interface.
    port = int(server.rstrip("/").rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.2", port), timeout=5):
        pass


def test_generate_gives_one_labelled_row_per_backend(client, tiny_deep_dir):
    status, html, plot, table, grid_path = client.predict(**_request(model=str(tiny_deep_dir)), api_name="/generate")
    names = ["exact", *PUBLISHED[:2]]
    assert status == ""
    rows = _rows(html)
    assert [row["name"] for row in rows] == names  # exact first, then the chosen ones in order
    assert [row["group"] for row in rows] == ["reference", "published", "published"]
    for row in rows:
        assert row["images"] == 2
        assert set(row["numbers"]) == set(NUMBER_KEYS)  # every number in the row's own label
        for key, pattern in NUMBER_KEYS.items():
            assert re.fullmatch(pattern, row["numbers"][key]), (key, row["numbers"][key])
    # exact is the reference of the speed-ups: its own are its time over itself, and attention is part of its time
    assert rows[0]["numbers"]["attn_speedup"] == "attn x 1.00" and rows[0]["numbers"]["gen_speedup"] == "gen x 1.00"
    data, col = table["data"], _columns(table)
    assert [row[0] for row in data] == names and [row[1] for row in data] == ["reference", "published", "published"]
    assert data[0][col["attn err"]] == 0 and data[0][col["pixel diff"]] == 0  # exact vs itself: exactly 0
    assert data[0][col["gen x"]] == 1 and data[0][col["attn x"]] == 1 and 0 < data[0][col["attn share"]] <= 1
    for row in data[1:]:
        assert 0 < row[col["attn err"]] < 1.0 and row[col["attn mem (MiB)"]] > 0, row
        assert row[col["gen (s)"]] > 0 and row[col["attn (ms)"]] > 0, row
        assert row[col["gen x"]] > 0 and row[col["attn x"]] > 0 and 0 < row[col["attn share"]] <= 1, row
    assert plot and plot.get("plot"), plot  # the error / pixel-difference figure was sent
    with Image.open(grid_path) as grid:
        pixels = np.asarray(grid.convert("L"))
    # the settings header (two 16-px lines), then 3 rows of 128 px (+2 px padding); a label column left of 2
    # images; fails if the header, a row or the labels are missing
    assert pixels.shape[0] == HEADER_H + 2 + 3 * (RESOLUTION + 2) and pixels.shape[1] > 2 * (RESOLUTION + 2) + 100
    assert pixels[:HEADER_H].min() < 100 and pixels[HEADER_H:, :100].min() < 100  # header and label text
    # named after the settings: model, budget 1/8, seed 3, truncation 0.4, class 1 (goldfish), digest
    assert re.fullmatch(r"grid-biggan-deep-tiny-budget1_8-seed3-trunc0\.4-classes1-[0-9a-f]{8}\.png",
                        Path(grid_path).name), grid_path


def test_render_switches_to_heatmaps_with_a_stated_scale(client, tiny_deep_dir):
    *_, table, _ = client.predict(**_request(model=str(tiny_deep_dir), published=PUBLISHED[:1]), api_name="/generate")
    html, grid_path = client.predict(show_diff=True, api_name="/render")
    assert [row["name"] for row in _rows(html)] == ["exact", PUBLISHED[0]]  # the stored run, not regenerated
    stated = float(re.search(r"class='bg-max'>max ([0-9.e+-]+)<", html).group(1))
    assert "linear-gradient" in html and "bg-bar" in html  # the colour bar
    assert stated >= table["data"][1][_columns(table)["pixel diff"]] > 0  # the maximum is at least the mean
    with Image.open(grid_path) as grid:
        assert grid.size[1] == HEADER_H + 2 + 2 * (RESOLUTION + 2) + 3 * 16 + 4  # header, two rows, colour bar
    assert Path(grid_path).name.endswith("-heatmaps.png")


def test_backend_parameters_reach_the_backend(client, tiny_deep_dir):
    _, _, _, table, _ = client.predict(**_request(model=str(tiny_deep_dir), published=["topk"], num_images=1,
                                                  parameters='topk={"k": 7}'), api_name="/generate")
    assert "k=7" in table["data"][1][-1]  # the resolved parameters (last column) include the override


def test_error_keeps_previous_results_and_next_success_clears_it(client, tiny_deep_dir):
    first = client.predict(**_request(model=str(tiny_deep_dir), seed=11), api_name="/generate")
    assert first[0] == ""
    failed = client.predict(**_request(model=str(tiny_deep_dir), truncation=0), api_name="/generate")
    assert "truncation must be in (0, 1], got 0" in failed[0]  # refused, not clamped to the smallest value
    assert len(failed) == 5 and all(map(_unchanged, failed[1:]))  # rows, plot, table and grid stay as they were
    html, _ = client.predict(show_diff=False, api_name="/render")  # the session still holds the first results
    assert _rows(html) == _rows(first[1])
    again = client.predict(**_request(model=str(tiny_deep_dir), num_images=1), api_name="/generate")
    assert again[0] == "" and len(_rows(again[1])) == 3  # the message is cleared by the next success


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"class_choice": "not a class"}, "unknown ImageNet class name 'not a class'"),
        ({"class_choice": "1000"}, "class id 1000 out of range"),
        ({"truncation": 1.5}, "truncation must be in (0, 1], got 1.5"),
        ({"num_images": 9}, "number of images must be a whole number in 1..8, got 9"),
        ({"num_images": 2.5}, "number of images must be a whole number in 1..8, got 2.5"),
        ({"model": "/no/such/checkpoint"}, "no such file or directory"),
        ({"budget": "0"}, "budget 0 is outside (0, 1]"),
        ({"budget": "a lot"}, "budget 'a lot' is not a fraction"),
        ({"published": ["topk"], "parameters": 'topk={"k": 5000}'}, "k=5000 exceeds the number of keys Nk=1024"),
        ({"parameters": "n_hashes=4"}, "n_hashes"),  # not a chosen backend: the message lists the chosen ones
        ({"parameters": "[4]"}, "backend parameters"),
    ],
)
def test_invalid_input_is_refused_with_a_message(client, tiny_deep_dir, overrides, message):
    form = _request(model=str(tiny_deep_dir), num_images=1) | overrides
    status, *outputs = client.predict(**form, api_name="/generate")
    assert message in status.replace("&#x27;", "'"), status  # one line on the page, next to the controls
    assert "Traceback" not in status and len(outputs) == 4 and all(map(_unchanged, outputs))


def test_nan_checkpoint_is_an_error_naming_the_backend(client, nan_deep_dir):
    status, *outputs = client.predict(**_request(model=str(nan_deep_dir), num_images=1), api_name="/generate")
    assert "exact produced NaN/inf pixels" in status and len(outputs) == 4 and all(map(_unchanged, outputs))


def _check(page, names: list[str]) -> None:
    published = set(available_attentions(published=True))
    for name in names:
        group = "#backends-published" if name in published else "#backends-variants"
        page.locator(group).get_by_label(name, exact=True).check()


def _boxes(page, selector: str) -> list[dict]:
    """Bounding box, text, overflow and whether the element is the one drawn at its centre, for each match."""
    return page.locator(selector).evaluate_all("""els => els.map(e => {
        const r = e.getBoundingClientRect();
        const top = document.elementFromPoint(r.x + r.width / 2, r.y + r.height / 2);
        return {x: r.x, y: r.y, right: r.right, bottom: r.bottom, text: e.innerText,
                clipped: e.scrollWidth > e.clientWidth + 1, drawn: !!top && (top === e || e.contains(top))};
    })""")


# For each Measurements cell or header: its text, the positions where a line break falls between two characters
# of one word or number (letters, digits, '.', '_'), and whether its text runs past the cell's right edge or its
# own box (the cell hides what overflows).
_CELL_BREAKS = """els => els.map(e => {
    const node = [...e.childNodes].find(n => n.nodeType === Node.TEXT_NODE);
    const cell = e.closest('[role=gridcell], [role=columnheader]');
    const broken = [];
    if (node) {
        const range = document.createRange();
        let top = null;
        for (let i = 0; i < node.length; i++) {
            range.setStart(node, i);
            range.setEnd(node, i + 1);
            const rects = range.getClientRects();
            if (!rects.length) continue;
            const word = c => /[\\w.]/.test(c);
            if (top !== null && rects[0].top > top + 1 && word(node.data[i - 1]) && word(node.data[i])) broken.push(i);
            top = rects[0].top;
        }
    }
    return {text: node ? node.data : e.innerText, broken,
            clipped: e.getBoundingClientRect().right > cell.getBoundingClientRect().right + 1
                     || e.scrollWidth > e.clientWidth + 1};  // the text runs past its own box, hidden by the cell
})"""


def _assert_no_cell_breaks_a_number(page) -> None:
    cells = page.locator("#measurements [role=gridcell] span").evaluate_all(_CELL_BREAKS)
    assert len(cells) >= 11, cells  # one row at least, every column
    headers = page.locator("#measurements [role=columnheader] span.header").evaluate_all(_CELL_BREAKS)
    assert len(headers) == 11, headers
    cells += headers
    for cell in cells:
        assert not cell["broken"] and not cell["clipped"], f"table cell breaks a word or number: {cell}"


def _save_grid_png(page, server: str, shots: Path) -> Path:
    """The grid PNG the page offers for download, saved under its own name in ``shots``."""
    from urllib.parse import urljoin, urlparse

    href = page.locator("#grid a[href]").first.get_attribute("href")
    path = shots / Path(urlparse(href).path).name
    with urllib.request.urlopen(urljoin(server, href), timeout=30) as response:
        path.write_bytes(response.read())
    return path


def _assert_in_viewport(box: dict, what: str) -> None:
    inside = (box["x"] >= 0 and box["y"] >= 0
              and box["right"] <= VIEWPORT["width"] and box["bottom"] <= VIEWPORT["height"])
    assert inside and box["drawn"], f"{what} {box['text']!r} is not fully visible: {box}"


@pytest.mark.browser
def test_browser_rows_are_readable_at_1400x900(server, tmp_path):
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} missing in CI; install Debian's chromium")
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)")
    from playwright.sync_api import expect, sync_playwright

    shots = Path(os.environ.get("APP_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    # + exact = 8 backends (the most the page lays out), published ones and two project variants: the longest
    # name and the cheapest other one (8 images per backend on one core)
    variants = sorted(available_attentions(published=False), key=len, reverse=True)
    variants = [variants[0], *[name for name in variants[1:] if name == "smyrf-topkeys"][:1]]
    names = [*PUBLISHED[:MAX_BACKENDS - 1 - len(variants)], *variants]
    per_row = 8
    with sync_playwright() as pw, tempfile.TemporaryDirectory() as profile:
        browser = pw.chromium.launch_persistent_context(profile, executable_path=str(CHROMIUM), args=CHROMIUM_ARGS,
                                                        viewport=VIEWPORT)
        try:
            # a first run that fails (a named model, offline): its long message replaces the idle hint and
            # wraps inside the left column (a page of its own: this session then holds no results)
            page = browser.new_page()
            page.goto(server, timeout=60_000)
            page.locator("#model input").fill("biggan-deep-256")
            page.locator("#model input").press("Enter")
            page.locator("#generate").click()
            expect(page.locator("#status")).to_contain_text("HF_HUB_OFFLINE=1 forbids downloading", timeout=60_000)
            expect(page.get_by_text("Choose backends and press Generate.")).to_be_hidden()
            page.screenshot(path=str(shots / "offline_error.png"))
            (message,) = _boxes(page, "#status .bg-error")
            (controls,) = _boxes(page, "#controls")
            assert not message["clipped"] and controls["x"] <= message["x"] and message["right"] <= controls["right"], (
                message, controls)
            page.close()

            page = browser.new_page()
            page.goto(server, timeout=60_000)
            expect(page.get_by_text("Choose backends and press Generate.")).to_be_visible()
            _check(page, names)
            # the page at rest fits the window: with nothing to scroll, no focus or click can move it
            assert page.evaluate("document.documentElement.scrollHeight") <= VIEWPORT["height"]
            page.locator("#num-images input").fill(str(per_row))
            page.locator("#generate").click()
            rows = page.locator("#bg-results .bg-row")
            expect(rows).to_have_count(1 + len(names), timeout=240_000)
            page.wait_for_function(
                "() => [...document.querySelectorAll('#bg-results img')].every(i => i.complete && i.naturalWidth > 0)",
                timeout=30_000)
            page.screenshot(path=str(shots / "rows.png"))
            assert page.evaluate("window.scrollY") == 0  # nothing scrolled the page to show the results
            _assert_no_cell_breaks_a_number(page)
            grid_png = _save_grid_png(page, server, shots)
            assert re.fullmatch(r"grid-biggan-deep-tiny-budget1_8-seed0-trunc0\.4-classes[0-9_]+-[0-9a-f]{8}\.png",
                                grid_png.name), grid_png
            with Image.open(grid_png) as picture:
                assert np.asarray(picture.convert("L"))[:HEADER_H].min() < 100  # the settings header is drawn
            labels = _boxes(page, "#bg-results .bg-label")
            assert [box["text"].split()[0] for box in labels] == ["exact", *names]
            for box in labels:
                _assert_in_viewport(box, "row label")
                assert not box["clipped"], f"row label is truncated: {box}"
            for selector in (".bg-name", ".bg-group", ".bg-num"):
                for box in _boxes(page, f"#bg-results {selector}"):
                    _assert_in_viewport(box, selector)
            numbers = _boxes(page, "#bg-results .bg-num")
            assert len(numbers) == len(NUMBER_KEYS) * (1 + len(names))  # every number of every row, none hidden
            images = _boxes(page, "#bg-results img")
            assert len(images) == per_row * (1 + len(names))
            for box in images:
                _assert_in_viewport(box, "image")

            page.locator("#show-diff input").check()
            page.wait_for_selector("#bg-scale", timeout=60_000)
            page.wait_for_function(
                "() => [...document.querySelectorAll('#bg-results img')].every(i => i.complete && i.naturalWidth > 0)",
                timeout=30_000)
            page.screenshot(path=str(shots / "heatmaps.png"))
            for selector in ("#bg-scale .bg-bar", "#bg-scale .bg-max"):
                (box,) = _boxes(page, selector)
                _assert_in_viewport(box, selector)
            assert re.fullmatch(r"max \d+(\.\d+)?(e-\d+)?", page.locator("#bg-scale .bg-max").inner_text())
            for box in _boxes(page, "#bg-results .bg-label"):
                _assert_in_viewport(box, "row label")

            page.locator("#truncation input").fill("0")
            page.locator("#generate").click()
            expect(page.locator("#status")).to_contain_text("truncation must be in (0, 1], got 0", timeout=60_000)
            (box,) = _boxes(page, "#status")
            _assert_in_viewport(box, "error message")
            expect(rows).to_have_count(1 + len(names))  # the previous results stay
            page.screenshot(path=str(shots / "error.png"))
            page.screenshot(path=str(shots / "full_page.png"), full_page=True)
        finally:
            browser.close()
    print(f"screenshots: {shots}")


def test_sigterm_removes_the_scratch_folder(app_process, client, tiny_deep_dir):
    """Runs last: stops the module's server. Its grid PNGs live in TMPDIR/biggan-attn-app-*; SIGTERM removes them."""
    proc, _, work = app_process
    client.predict(**_request(model=str(tiny_deep_dir), published=[], num_images=1), api_name="/generate")
    scratch = list((work / "tmp").glob("biggan-attn-app-*"))
    assert len(scratch) == 1 and list(scratch[0].glob("grid-*.png"))  # a grid was written there
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    assert not scratch[0].exists()
    log = (work / "server.log").read_text()  # the server's stdout and stderr
    assert "Traceback" not in log and "CancelledError" not in log, log[-3000:]
    assert "--share" in log and "share=True" not in log, log  # the start-up line names our flag, not launch()'s
