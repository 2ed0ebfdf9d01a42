"""The web page in a real browser: Debian's Chromium driven by Playwright, against a live server.

KYARA_SCREENSHOT=docs/serve-screenshot.png python -m pytest tests/test_browser.py   # also redraws the README's picture
"""

from __future__ import annotations

import base64
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kyara.bundle import default_model_path, load_bundle
from tests.conftest import ROOT
from tests.servers import serving

pytest.importorskip("fastapi", reason="the server needs the serve extra")
pytest.importorskip("uvicorn", reason="the server needs the serve extra")
playwright = pytest.importorskip("playwright.sync_api", reason="the browser test needs playwright (test extra)")

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
EXAMPLE = ROOT / "docs" / "example.png"
# How many cells of a heat-map canvas are painted (alpha above 0).
OPAQUE_CELLS = (
    "c => c.getContext('2d').getImageData(0, 0, c.width, c.height).data.filter((v, i) => i % 4 == 3 && v).length"
)
KNOWN = str(len(load_bundle(default_model_path()).all_labels()))
"""How many characters the page lists before anything is enrolled."""
SLOW = 90_000  # ms: recognition of a picture takes seconds on a busy 2-core machine


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A live server on a free loopback port, over a copy of the default model."""
    from kyara.server import create_app

    model = tmp_path_factory.mktemp("browser") / "model.kyara"
    shutil.copy(default_model_path(), model)
    with serving(create_app(model), log_level="warning") as address:
        yield f"{address}/"


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: apt-get install chromium (Playwright cannot download its own here)")
    with playwright.sync_playwright() as driver:
        chromium = driver.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def open_page(browser, site, **context):
    page = browser.new_context(**context).new_page()
    page.on("dialog", lambda dialog: dialog.accept())  # the "remove this character?" confirmation
    page.goto(site)
    playwright.expect(page.locator("#character-count")).to_have_text(KNOWN, timeout=SLOW)
    return page


def percent(confidence: float) -> int:
    """As the page shows it: JavaScript's Math.round rounds halves up, Python's round to even."""
    return math.floor(confidence * 100 + 0.5)


def test_upload_shows_boxes_names_and_top5(browser, site):
    import httpx

    expected = httpx.post(f"{site}api/recognize", content=EXAMPLE.read_bytes(), timeout=SLOW / 1000).json()
    page = open_page(browser, site, viewport={"width": 1280, "height": 760})
    page.set_input_files("#file", EXAMPLE)
    boxes = page.locator(".box")
    playwright.expect(boxes).to_have_count(3, timeout=SLOW)
    names = [face["label"] or "unknown" for face in expected["faces"]]
    assert "unknown" in names
    for number, (face, name) in enumerate(zip(expected["faces"], names), 1):
        # An unknown face shows no percentage of its own: that would be its closest guess's.
        tag = f"{number} {name} {percent(face['confidence'])}%" if face["label"] else f"{number} unknown"
        playwright.expect(boxes.nth(number - 1).locator(".tag")).to_have_text(tag)
        card = page.locator(".face").nth(number - 1)
        playwright.expect(card.locator(".name")).to_have_text(name)
        if face["label"] is None:
            closest = face["top_k"][0]
            hint = f"closest guess: {closest['label']} ({percent(closest['confidence'])}%)"
            playwright.expect(card.locator(".hint")).to_contain_text(hint)
        playwright.expect(card.locator(".bars li")).to_have_count(5)
        assert card.locator(".teach").evaluate("d => d.open") is (face["label"] is None)
    assert "unknown" in page.locator(".box.unknown .tag").first.inner_text()

    # Boxes sit on the faces: the drawn box is the face's box scaled to the displayed picture.
    shown = page.locator("#picture").bounding_box()
    drawn = boxes.first.bounding_box()
    x, y, w, h = expected["faces"][0]["box"]
    scale = shown["width"] / expected["width"]
    assert abs(drawn["x"] - (shown["x"] + x * scale)) < 2 and abs(drawn["width"] - w * scale) < 2
    assert abs(drawn["y"] - (shown["y"] + y * scale)) < 2 and abs(drawn["height"] - h * scale) < 2
    assert page.locator("#fallback").is_hidden()
    if os.environ.get("KYARA_SCREENSHOT"):
        page.screenshot(path=os.environ["KYARA_SCREENSHOT"], full_page=True)


def test_teach_an_unknown_face_then_remove_it(browser, site):
    page = open_page(browser, site, viewport={"width": 1280, "height": 900})
    page.set_input_files("#file", EXAMPLE)
    playwright.expect(page.locator(".box")).to_have_count(3, timeout=SLOW)
    card = page.locator(".face.unknown").first
    number = card.locator(".badge").inner_text()
    card.locator("input[name=name]").fill("Mikan <b>OC</b>")  # shown as text, never as markup
    card.locator("button").click()
    playwright.expect(page.locator("#status")).to_have_text("Enrolled Mikan <b>OC</b>; recognized again.", timeout=SLOW)
    playwright.expect(page.locator(".box .tag", has_text=f"{number} Mikan <b>OC</b>")).to_have_count(1)
    listed = page.locator("#characters li", has_text="Mikan <b>OC</b>")
    playwright.expect(listed).to_contain_text("1 enrolled")
    playwright.expect(page.locator("#character-count")).to_have_text(str(int(KNOWN) + 1))

    page.locator("#characters-details summary").click()
    listed.locator("button.remove").click()
    playwright.expect(page.locator("#character-count")).to_have_text(KNOWN, timeout=SLOW)
    playwright.expect(page.locator(".box")).to_have_count(3, timeout=SLOW)
    playwright.expect(page.locator(".box .tag", has_text="Mikan")).to_have_count(0, timeout=SLOW)


def test_phone_drop_paste_fallback_and_errors(browser, site, tmp_path):
    page = open_page(browser, site, viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    blank = tmp_path / "blank.png"
    Image.new("RGB", (600, 400), (250, 250, 250)).save(blank)
    send = """([how, data]) => {
        const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], "picture.png", { type: "image/png" }));
        const event = how === "drop"
            ? new DragEvent("drop", { dataTransfer: transfer, bubbles: true, cancelable: true })
            : new ClipboardEvent("paste", { clipboardData: transfer, bubbles: true, cancelable: true });
        document.dispatchEvent(event);
    }"""
    page.evaluate(send, ["drop", base64.b64encode(blank.read_bytes()).decode()])
    playwright.expect(page.locator("#fallback")).to_be_visible(timeout=SLOW)
    playwright.expect(page.locator(".face")).to_have_count(1)
    playwright.expect(page.locator(".box")).to_have_count(0)
    playwright.expect(page.locator(".face .teach")).to_have_count(0)  # nothing to learn from a whole picture

    page.evaluate(send, ["paste", base64.b64encode(EXAMPLE.read_bytes()).decode()])
    playwright.expect(page.locator(".box")).to_have_count(3, timeout=SLOW)
    assert page.locator("#fallback").is_hidden()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # no sideways scrolling on a phone
    picture, faces = page.locator("#picture").bounding_box(), page.locator("#faces").bounding_box()
    assert picture["width"] <= 390 and faces["y"] >= picture["y"] + picture["height"]  # one column

    note = tmp_path / "note.txt"
    note.write_text("not a picture")
    page.set_input_files("#file", note)
    playwright.expect(page.locator("#status.error")).to_contain_text("unsupported type 'text/plain'", timeout=SLOW)


def test_explain_switch_lays_a_heat_map_over_each_face(browser, site):
    import httpx

    expected = httpx.post(f"{site}api/explain", content=EXAMPLE.read_bytes(), timeout=SLOW / 1000).json()
    page = open_page(browser, site, viewport={"width": 1280, "height": 760})
    assert page.locator("#explain-bar").is_hidden()  # nothing to explain before a picture
    page.set_input_files("#file", EXAMPLE)
    playwright.expect(page.locator(".box")).to_have_count(3, timeout=SLOW)
    page.locator("#explain").check()
    maps = page.locator("#heat canvas.heatmap")
    playwright.expect(maps).to_have_count(3, timeout=SLOW)
    playwright.expect(page.locator("#explain-legend")).to_be_visible()
    playwright.expect(page.locator("#status")).to_have_text("Explained 3 faces.")

    shown = page.locator("#picture").bounding_box()
    scale = shown["width"] / expected["width"]
    for number, face in enumerate(expected["faces"]):
        caption = page.locator("#heat .caption").nth(number)
        playwright.expect(caption.locator(".for")).to_have_text(face["label"] + ("" if face["known"] else "?"))
        painted = maps.nth(number).evaluate(OPAQUE_CELLS)
        strength = np.abs(face["heatmap"]) / np.abs(face["heatmap"]).max()
        assert (strength > 0.11).sum() <= painted <= (strength > 0.1).sum()  # weak cells stay clear
        if face["angle"] == 0:  # an unrotated map covers exactly the crop it explains
            drawn, (x, y, w, h) = maps.nth(number).bounding_box(), face["crop_box"]
            assert abs(drawn["x"] - (shown["x"] + x * scale)) < 2 and abs(drawn["width"] - w * scale) < 2
            assert abs(drawn["y"] - (shown["y"] + y * scale)) < 2 and abs(drawn["height"] - h * scale) < 2

    page.locator("#explain").uncheck()
    playwright.expect(page.locator("#heat")).to_be_hidden()
    playwright.expect(page.locator("#explain-legend")).to_be_hidden()
    page.locator("#explain").check()  # the maps already made come back without another request
    playwright.expect(maps).to_have_count(3)
    playwright.expect(page.locator("#heat")).to_be_visible()
