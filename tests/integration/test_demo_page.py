"""The demo page at ``/`` in a real browser (Debian's headless Chromium, driven by playwright):
a photo goes in and its cutout loads at the size the API reported; a GIF shows the API's own
message. The screenshot in docs/pictures/demo.png is made here (``UPDATE_DOCS_PICTURES=1``)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from tests.harness import ROOT
from tests.images import encode, product_photo

pytestmark = pytest.mark.integration
CHROMIUM = os.environ.get("CUTOUT_CHROMIUM", "/usr/bin/chromium")
SCREENSHOT = ROOT / "docs" / "pictures" / "demo.png"


@pytest.fixture(scope="module")
def browser():
    missing = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing = "playwright is not installed (pip install '.[test]')"
    if missing is None and not Path(CHROMIUM).exists():
        missing = f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(missing)
        pytest.skip(missing)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser, service):
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    problems: list[str] = []
    # (an answer with an error status is logged by the browser as well: that is no problem)
    page.on(
        "console", lambda m: problems.append(m.text) if m.type == "error" and "responded with a status" not in m.text else None
    )
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto(service.url + "/")
    page.wait_for_selector("#options input[type=checkbox]")  # the options came from /openapi.json
    yield page
    assert problems == []  # nothing blocked by the Content-Security-Policy, no script error
    assert page.evaluate("localStorage.length + sessionStorage.length") == 0 and context.cookies() == []
    context.close()


def coffee_photo() -> bytes:
    """The input panel of docs/pictures/coffee.jpg (a public-domain photo): a real product."""
    with Image.open(ROOT / "docs" / "pictures" / "coffee.jpg") as panels:
        return encode(panels.crop((0, 22, 451, 322)).convert("RGB"), "JPEG", quality=92)


def drop(page, name: str, mime: str, data: bytes) -> None:
    """Drag a file onto the drop zone, as a user does."""
    transfer = page.evaluate_handle(
        """([name, mime, bytes]) => {
            const t = new DataTransfer();
            t.items.add(new File([new Uint8Array(bytes)], name, {type: mime}));
            return t;
        }""",
        [name, mime, list(data)],
    )
    page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})


def test_a_dropped_photo_comes_back_cut_out_at_the_size_the_api_reported(page, service, tmp_path):
    page.fill("#token", service.token)
    drop(page, "coffee.jpg", "image/jpeg", coffee_photo())
    page.fill("#sku", "COFFEE-1")
    with page.expect_response("**/product/cutout") as answer:
        page.click("#submit")
    assert answer.value.status == 200
    reported = answer.value.json()
    page.wait_for_selector("#result-info[data-width]")
    natural = page.evaluate("[document.getElementById('result').naturalWidth, document.getElementById('result').naturalHeight]")
    assert natural == [reported["crop"]["width"], reported["crop"]["height"]]
    assert page.is_visible("#crop") and page.is_visible("#download")
    assert page.get_attribute("#download", "href") == reported["result_url"]
    shot = tmp_path / "demo.png"
    page.screenshot(path=str(shot), full_page=True)
    if os.environ.get("UPDATE_DOCS_PICTURES") == "1":
        shutil.copyfile(shot, SCREENSHOT)


def test_a_gif_shows_the_apis_error_message_as_it_is(page, service):
    page.fill("#token", service.token)
    page.set_input_files(
        "#file", files=[{"name": "spin.gif", "mimeType": "image/gif", "buffer": encode(product_photo(64, 48), "GIF")}]
    )
    with page.expect_response("**/product/cutout") as answer:
        page.click("#submit")
    assert answer.value.status == 415
    message = answer.value.json()["error"]["message"]
    page.wait_for_selector("#error:not([hidden])")
    assert page.inner_text("#error-message") == message == "The image must be JPEG, PNG or WebP."
    assert "415" in page.inner_text("#error-code")
    assert page.get_attribute("#result", "src") is None
