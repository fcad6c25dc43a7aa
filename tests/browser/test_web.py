"""The web page in headless Chromium against the real server (`bentoml serve`) on the demo model,
with a tiny FLUX.1 schnell model in its store too (the form follows the chosen model's family).

The server has an API key, so the page's key prompt is part of every test. Screenshots of
each page go to test-output/screenshots/ (desktop and phone size).
"""

from __future__ import annotations

import base64
import io
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.downloads.fake_sources import FakeSources, start
from harness.tiny_pipelines import BUILDERS
from alice.http.web_routes import WEB_DIR
from alice.images.store import ImageStore
from alice.protocol.a1111 import a1111_parameters
from harness.environment import ROOT, alice_environment
from harness.lora import write_demo_lora
from harness.server import ServerProcess

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip("Debian's chromium is not installed (apt-get install -y chromium)", allow_module_level=True)

from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright  # noqa: E402

API_KEY = "browser-test-key-3f9a"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
USER_KEY = "browser-user-key-81c2"
SHOTS = ROOT / "test-output" / "screenshots"
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
HOSTILE = "<img src=x onerror=alert(1)><b>bold</b>"
QUICK = {"width": 64, "height": 64, "steps": 3}
# Long enough to still run while the page is looked at; cancelled by the tests.
SLOW = {"width": 256, "height": 256, "steps": 150, "scheduler": "euler"}
PAGES = ["dashboard", "generate", "gallery", "models", "queue", "settings"]
FLUX = "tiny-schnell"  # a FLUX.1 schnell model: no negative prompt, flow schedulers, 4 steps

expect.set_options(timeout=30_000)


# -- fixtures ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[ServerProcess]:
    """`bentoml serve` with a key, and stand-ins for Hugging Face and CivitAI so the Models page
    searches and downloads offline."""
    tmp = tmp_path_factory.mktemp("web")
    sources = FakeSources()
    http = start(sources)
    sources.hf_repos["alice-tests/tiny-sd"] = tmp / "tiny-sd"  # listed by search only, never fetched
    (tmp / "tiny-sd").mkdir()
    # The tests' key is an admin's (it does everything, as without roles); a user key to see what it is not offered.
    env = {"ALICE_ADMIN_KEYS": API_KEY, "ALICE_API_KEYS": f"viewer={USER_KEY}", "HF_ENDPOINT": sources.url, "ALICE_CIVITAI_URL": sources.url,
           "ALICE_MAX_IMAGES_PER_REQUEST": "16"}  # the gallery test makes a page and a bit in one request
    with alice_environment(tmp, env) as root:
        from alice.models import checkpoints

        # Stored before the server starts, as a download would store it: its family told from its configs.
        assert checkpoints.import_pipeline_folder(BUILDERS["flux-schnell"](tmp / FLUX), FLUX).family == "flux1-schnell"
        server = ServerProcess(root / "server.log")
        try:
            # Made while the server starts: the LoRA CivitAI "serves".
            sources.add_civitai_file(101, 1001, "Inky Style", "LORA", write_demo_lora(tmp / "lora"))
            server.data_dir = root / "data"  # type: ignore[attr-defined]
            yield server.wait_ready()
        finally:
            server.close()
            http.shutdown()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS, headless=True)
        yield browser
        browser.close()


class Watch:
    """What the page did that it must not: dialogs (alert), script errors, the key in a URL,
    a file of its own (a module) that did not load, anything its CSP refused."""

    def __init__(self, page: Page) -> None:
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        self.urls: list[str] = []
        self.api_headers: list[dict[str, str]] = []
        self.modules: list[str] = []
        self.failed_files: list[str] = []
        self.refused: list[str] = []
        page.on("dialog", self._dialog)
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on("request", self._request)
        page.on("response", self._response)
        page.on("requestfailed", self._failed)
        page.on("console", self._console)

    def _dialog(self, dialog) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def _request(self, request) -> None:
        self.urls.append(request.url)
        if "/v1/" in request.url:
            self.api_headers.append(request.headers)
        if request.resource_type == "script":
            self.modules.append(request.url.split("/web/", 1)[-1])

    def _response(self, response) -> None:
        if "/web/" in response.url and response.status >= 400:
            self.failed_files.append(f"{response.url}: HTTP {response.status}")

    def _failed(self, request) -> None:
        if "/web/" in request.url:
            self.failed_files.append(f"{request.url}: {request.failure}")

    def _console(self, message) -> None:
        if message.type == "error" and "Content Security Policy" in message.text:
            self.refused.append(message.text)

    def check(self) -> None:
        assert self.dialogs == [], f"the page opened dialogs: {self.dialogs}"
        assert self.errors == [], f"script errors: {self.errors}"
        assert not [url for url in self.urls if API_KEY in url], "the API key appeared in a URL"
        assert self.failed_files == [], f"the page's own files did not load: {self.failed_files}"
        assert self.refused == [], f"the page's policy refused: {self.refused}"


def keyed_context(browser: Browser, server: ServerProcess, **options) -> BrowserContext:
    """A fresh browser profile that already holds the key (as after the first visit)."""
    context = browser.new_context(base_url=server.url, **{"viewport": {"width": 1280, "height": 900}, **options})
    context.add_init_script(f"localStorage.setItem('alice.apiKey', {json.dumps(API_KEY)})")
    return context


@pytest.fixture
def page(browser, server) -> Iterator[Page]:
    context = keyed_context(browser, server)
    page = context.new_page()
    page.watch = Watch(page)  # type: ignore[attr-defined]
    yield page
    page.watch.check()  # type: ignore[attr-defined]
    context.close()


def shot(page: Page, name: str) -> None:
    page.wait_for_timeout(150)  # let the last progress-bar transition settle
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def api(server: ServerProcess, method: str, path: str, **kwargs) -> httpx.Response:
    return httpx.request(method, server.url + path, headers=AUTH, timeout=120, **kwargs)


def wait_job(server: ServerProcess, job_id: str, states: set[str], timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = api(server, "GET", f"/v1/jobs/{job_id}").json()
        if job["state"] in states:
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} never reached {states}: {job}")


def fill_generate(page: Page, prompt: str, *, seed: int | None = None, negative: str = "", **settings) -> None:
    values = {**QUICK, **settings}
    page.fill("#gen-prompt", prompt)
    page.fill("#gen-negative", negative)
    page.fill("#gen-width", "" if values["width"] is None else str(values["width"]))  # None: the model's size
    page.fill("#gen-height", "" if values["height"] is None else str(values["height"]))
    page.fill("#gen-steps", str(values["steps"]))
    page.fill("#gen-seed", "" if seed is None else str(seed))
    if "scheduler" in values:
        page.select_option("#gen-scheduler", values["scheduler"])


def loaded_images(page: Page, selector: str) -> int:
    return page.evaluate(
        "s => Array.from(document.querySelectorAll(s)).filter(i => i.complete && i.naturalWidth > 0).length", selector
    )


# -- tests -------------------------------------------------------------------------------------

def test_key_prompt_then_generate_and_see_the_image_with_its_parameters(browser, server, tmp_path):
    profile = tmp_path / "profile"
    playwright_browser_type = browser.browser_type  # a persistent profile: the key must survive a restart
    context = playwright_browser_type.launch_persistent_context(
        str(profile), executable_path=str(CHROMIUM), args=LAUNCH_ARGS, headless=True,
        base_url=server.url, viewport={"width": 1280, "height": 900},
    )
    page = context.new_page()
    watch = Watch(page)
    page.goto("/web")  # the bare path redirects to the page
    expect(page).to_have_url(f"{server.url}/web/")

    # No key stored: the first API call answers 401 and the page asks for the key.
    expect(page.locator("#key-input")).to_be_visible()
    page.fill("#key-input", "not-the-key")
    page.click("#key-save")
    expect(page.locator("#key-error")).to_contain_text("not accepted")
    page.fill("#key-input", API_KEY)
    page.click("#key-save")
    expect(page.locator("#key-input")).to_have_count(0)
    expect(page.locator("#dash-server")).to_contain_text("ok")
    assert page.evaluate("localStorage.getItem('alice.apiKey')") == API_KEY

    page.click("#nav a[data-page=generate]")
    expect(page.locator("#gen-model")).to_have_value("alice-demo")
    expect(page.locator("#gen-scheduler option")).not_to_have_count(0)
    expect(page.locator("#gen-width")).to_have_value("")  # no size chosen: the model's native size
    fill_generate(page, "a lighthouse at dusk", seed=1234, negative="fog", steps=4, scheduler="euler_a",
                  width=None, height=None)
    page.click("#gen-submit")
    # The progress bar shows while the job is queued and running, and ends full.
    expect(page.locator("#gen-progress")).to_be_visible()
    expect(page.locator("#gen-progress-text")).to_contain_text("Done", timeout=60_000)
    expect(page.locator("#gen-progress-bar")).to_have_attribute("aria-valuenow", "100")
    image = page.locator("#gen-result .result-images img")
    expect(image).to_have_count(1)
    page.wait_for_function("() => { const i = document.querySelector('#gen-result img'); return i.complete && i.naturalWidth === 64; }")
    params = page.locator("#gen-params")
    for text in ("a lighthouse at dusk", "fog", "alice-demo", "64x64", "euler_a", "1234"):
        expect(params).to_contain_text(text)
    name = image.get_attribute("src").rsplit("/", 1)[1]
    assert httpx.get(f"{server.url}/images/{name}").headers["content-type"] == "image/png"
    shot(page, "generate")

    # "Reuse these settings" puts them back after the form was changed.
    page.fill("#gen-prompt", "something else")
    page.fill("#gen-seed", "")
    page.select_option("#gen-scheduler", "ddim")
    page.click("#gen-reuse")
    expect(page.locator("#gen-prompt")).to_have_value("a lighthouse at dusk")
    expect(page.locator("#gen-seed")).to_have_value("1234")
    expect(page.locator("#gen-scheduler")).to_have_value("euler_a")

    # img2img: an uploaded picture is the starting image.
    picture = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 40, 40)).save(picture, format="PNG")
    page.set_input_files("#gen-image", files=[{"name": "red.png", "mimeType": "image/png", "buffer": picture.getvalue()}])
    expect(page.locator("#gen-image-thumb")).to_be_visible()
    page.fill("#gen-strength", "0.5")
    page.click("#gen-submit")
    expect(page.locator("#gen-progress-text")).to_contain_text("Done", timeout=60_000)
    expect(page.locator("#gen-params")).to_contain_text("Strength0.5")

    # Inpainting: the mask brush paints the area to redraw over the picture; the rest is kept.
    canvas = page.locator("#gen-mask-canvas")
    expect(canvas).to_be_visible()
    page.wait_for_function("() => document.querySelector('#gen-mask-canvas').width === 64")
    page.fill("#gen-mask-brush", "24")
    box = canvas.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.4, box["y"] + box["height"] * 0.5)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + box["height"] * 0.5, steps=5)
    page.mouse.up()
    page.fill("#gen-strength", "1")
    page.click("#gen-submit")
    expect(page.locator("#gen-progress-text")).to_contain_text("Done", timeout=60_000)
    expect(page.locator("#gen-params")).to_contain_text("inpainted")
    src = page.locator("#gen-result .result-images img").get_attribute("src")
    drawn = Image.open(io.BytesIO(httpx.get(f"{server.url}{src}" if src.startswith("/") else src).content)).convert("RGB")
    assert [drawn.getpixel(corner) for corner in ((0, 0), (63, 0), (0, 63), (63, 63))] == [(200, 40, 40)] * 4
    assert drawn.getpixel((32, 32)) != (200, 40, 40)  # painted: redrawn
    shot(page, "generate-mask")
    # Cleared, the mask is not sent: the whole picture is redrawn; here as a WebP.
    page.click("#gen-mask-clear")
    page.select_option("#gen-format", "webp")
    page.fill("#gen-compression", "80")
    page.click("#gen-submit")
    expect(page.locator("#gen-progress-text")).to_contain_text("Done", timeout=60_000)
    expect(page.locator("#gen-params")).not_to_contain_text("inpainted")
    src = page.locator("#gen-result .result-images img").get_attribute("src")
    served = httpx.get(f"{server.url}{src}" if src.startswith("/") else src)
    assert served.headers["content-type"] == "image/webp" and served.content[8:12] == b"WEBP"
    page.click("#gen-reuse")  # the format is a setting like the others
    expect(page.locator("#gen-format")).to_have_value("webp")
    expect(page.locator("#gen-compression")).to_have_value("80")

    # Every API call carried the key in the Authorization header; no URL ever held it.
    keyed = [h for h in watch.api_headers if h.get("authorization") == f"Bearer {API_KEY}"]
    assert keyed and all("authorization" in h for h in watch.api_headers[-len(keyed):])
    watch.check()
    context.close()

    # The key is kept in the browser profile: a new visit asks for nothing.
    context = playwright_browser_type.launch_persistent_context(
        str(profile), executable_path=str(CHROMIUM), args=LAUNCH_ARGS, headless=True,
        base_url=server.url, viewport={"width": 1280, "height": 900},
    )
    page = context.new_page()
    watch = Watch(page)
    page.goto("/web/#/dashboard")
    expect(page.locator("#dash-jobs")).to_contain_text("Succeeded")
    expect(page.locator(f"#dash-recent img[src$='{name}']")).to_be_visible()
    assert page.locator("#key-input").count() == 0
    watch.check()
    context.close()


def test_the_generate_view_shows_the_picture_forming(page, server):
    page.goto("/web/#/generate")
    expect(page.locator("#gen-model")).to_have_value("alice-demo")
    # Every picture the preview shows, as the page sets it (a poll every 0.3 s may see a few).
    page.evaluate("""() => {
        window.shownPreviews = [];
        new MutationObserver(() => {
            const img = document.getElementById("gen-preview");
            if (!img.hidden && img.src) window.shownPreviews.push(img.src);
        }).observe(document.getElementById("gen-preview"), { attributes: true });
    }""")
    requests: list[dict] = []
    page.on("request", lambda request: request.method == "POST" and request.url.endswith("/v1/jobs")
            and requests.append(request.post_data_json))
    # 60 steps: about two seconds on a quiet machine, several of the page's polls (every 0.3 s) while
    # it draws. A preview shows for one poll only, so the observer above records what was shown:
    # waiting for the element to be visible would miss it on a fast machine.
    fill_generate(page, "a red circle on a blue background", seed=9, steps=60, scheduler="ddim")
    page.click("#gen-submit")
    expect(page.locator("#gen-progress-text")).to_contain_text("Done", timeout=300_000)
    expect(page.locator("#gen-preview")).to_be_hidden()  # the finished image takes its place
    shown = page.evaluate("window.shownPreviews")
    assert shown and all(src.startswith("data:image/png;base64,") for src in shown)
    assert requests[0]["previews"] == 6  # within the server's limit, from /v1/settings


def test_the_page_loads_every_module_under_its_policy(page, server):
    page.goto("/web/")
    expect(page.locator("#dash-server")).to_contain_text("ok")
    expect(page.locator("#server-status")).to_contain_text("ready")
    on_disk = {str(path.relative_to(WEB_DIR)) for path in WEB_DIR.rglob("*.js")}
    assert set(page.watch.modules) == on_disk  # type: ignore[attr-defined]
    # Modules share only what they export: the page's code puts nothing on window.
    assert page.evaluate("() => ['el', 'api', 'gen', 'route', 'dashboard'].filter(n => n in window)") == []


def test_cancel_a_queued_job_from_the_queue_page(page, server):
    first = api(server, "POST", "/v1/jobs", json={**SLOW, "prompt": "first slow job"}).json()
    second = None
    try:
        # The second is sent once the first runs: sent before, both could share one batch.
        wait_job(server, first["id"], {"running"})
        second = api(server, "POST", "/v1/jobs", json={**SLOW, "prompt": "second slow job"}).json()
        # The dashboard shows the running job with live progress.
        page.goto("/web/#/dashboard")
        expect(page.locator("#dash-queue")).to_contain_text("first slow job")
        expect(page.locator("#dash-queue")).to_contain_text("1 waiting")
        page.wait_for_function("() => Number(document.querySelector('#dash-queue .bar').getAttribute('aria-valuenow')) >= 1")
        shot(page, "dashboard")

        page.click("#nav a[data-page=queue]")
        queued = page.locator("#queue-active .job-item", has_text="second slow job")
        running = page.locator("#queue-active .job-item", has_text="first slow job")
        expect(queued.locator(".job-state")).to_have_text("queued")
        expect(running.locator(".job-state")).to_have_text("running")
        expect(running.locator(".bar")).to_be_visible()
        expect(running.locator(".meta")).to_contain_text(" · by key-")  # roles are on: whose job, by its key's name
        shot(page, "queue")
        queued.locator(".job-cancel").click()
        page.click("#confirm-ok")
        done = page.locator("#queue-done .job-item", has_text="second slow job")
        expect(done.locator(".job-state")).to_have_text("cancelled")
        expect(running.locator(".job-state")).to_have_text("running")
        assert api(server, "GET", f"/v1/jobs/{second['id']}").json()["state"] == "cancelled"
        assert api(server, "GET", f"/v1/jobs/{first['id']}").json()["state"] == "running"
        expect(page.locator("#queue-active .job-item")).to_have_count(1)
    finally:
        for job in (second, first):
            if job:
                api(server, "DELETE", f"/v1/jobs/{job['id']}")
        wait_job(server, first["id"], {"cancelled", "failed", "succeeded"})


def test_a_prompt_with_html_in_it_is_shown_as_text_everywhere(page, server):
    page.goto("/web/#/generate")
    expect(page.locator("#gen-model")).to_have_value("alice-demo")
    fill_generate(page, HOSTILE, negative="<script>alert(2)</script>", steps=2)
    page.click("#gen-submit")
    expect(page.locator("#gen-params")).to_be_visible(timeout=60_000)

    def no_markup_ran() -> None:
        # No element came out of the prompt: no <b>, no img with src=x, no inline script.
        assert page.evaluate("""() => document.querySelectorAll('b, img[src="x"], script:not([src])').length""") == 0

    prompt = page.locator("#gen-params dd").first
    expect(prompt).to_have_text(HOSTILE)
    expect(page.locator("#gen-params")).to_contain_text("<script>alert(2)</script>")
    no_markup_ran()

    page.click("#nav a[data-page=queue]")
    expect(page.locator("#queue-done .job-prompt").first).to_have_text(HOSTILE)
    no_markup_ran()

    page.click("#nav a[data-page=gallery]")
    card = page.locator(".gallery-card").first
    expect(card.locator(".prompt")).to_have_text(HOSTILE)
    card.locator(".picture").click()
    expect(page.locator("#detail-params dd").first).to_have_text(HOSTILE)
    no_markup_ran()
    page.keyboard.press("Escape")

    page.click("#nav a[data-page=dashboard]")
    expect(page.locator("#dash-recent a").first).to_have_attribute("title", HOSTILE)
    page.wait_for_timeout(500)  # time for an onerror handler to have fired, had one been created
    no_markup_ran()
    assert page.watch.dialogs == []  # type: ignore[attr-defined]


def test_gallery_pages_shows_parameters_and_deletes(page, server):
    # A page and a bit of images, stored as the server stores them (drawing them would take a while).
    store = ImageStore(server.data_dir / "images")
    for index in range(13):
        time.sleep(0.01)  # distinct modification times: newest first is well defined
        store.save(Image.new("RGB", (64, 64), (index * 19, 90, 200 - index * 15)), a1111_parameters(
            prompt=f"gallery image {index}", negative_prompt="", steps=20, sampler="Euler a", guidance_scale=7,
            seed=300 + index, width=64, height=64, model="alice-demo"))
    total = api(server, "GET", "/v1/gallery?limit=1").json()["total"]
    assert total > 12

    page.goto("/web/#/gallery")
    page.select_option("#gal-size", "12")
    cards = page.locator(".gallery-card")
    expect(cards).to_have_count(12)
    expect(page.locator("#gal-count")).to_have_text(f"{total} images")
    pages = -(-total // 12)
    expect(page.locator("#gal-page")).to_have_text(f"Page 1 of {pages}")
    newest = cards.first
    expect(newest.locator(".prompt")).to_have_text("gallery image 12")
    expect(newest.locator(".meta").first).to_contain_text("64x64")
    page.wait_for_function("() => Array.from(document.querySelectorAll('.gallery-card img')).every(i => i.complete && i.naturalWidth > 0)")
    shot(page, "gallery")

    first_page = cards.evaluate_all("cards => cards.map(c => c.dataset.name)")
    page.click("#gal-next")
    expect(page.locator("#gal-page")).to_have_text(f"Page 2 of {pages}")
    # The page's label may change before its cards do (and a second page can hold 12 too).
    expect(cards.first).not_to_have_attribute("data-name", first_page[0])
    expect(cards).to_have_count(min(12, total - 12))
    second_page = cards.evaluate_all("cards => cards.map(c => c.dataset.name)")
    assert not set(first_page) & set(second_page)
    page.click("#gal-prev")
    expect(page.locator("#gal-page")).to_have_text(f"Page 1 of {pages}")
    expect(cards.first).to_have_attribute("data-name", first_page[0])

    # Details: the image's parameters as stored in the PNG.
    cards.first.locator(".picture").click()
    detail = page.locator("#detail-params")
    for text in ("gallery image 12", "Seed312", "SamplerEuler a", "CFG scale7.0", "Size64x64"):
        expect(detail).to_contain_text(text)
    shot(page, "gallery-detail")
    page.keyboard.press("Escape")
    expect(detail).to_have_count(0)

    # Delete the newest image: it leaves the page and the server.
    name = cards.first.get_attribute("data-name")
    cards.first.get_by_role("button", name="Delete").click()
    page.click("#confirm-ok")
    expect(page.locator(f".gallery-card[data-name='{name}']")).to_have_count(0)
    expect(page.locator("#gal-count")).to_have_text(f"{total - 1} images")
    assert httpx.get(f"{server.url}/images/{name}").status_code == 404

    # "Reuse" reads the settings back from the PNG into the Generate form.
    cards.first.get_by_role("button", name="Reuse").click()
    expect(page.locator("#gen-prompt")).to_have_value("gallery image 11")
    expect(page.locator("#gen-seed")).to_have_value("311")
    expect(page.locator("#gen-steps")).to_have_value("20")
    expect(page.locator("#gen-scheduler")).to_have_value("euler_a")


def test_models_page_lists_searches_downloads_and_deletes(page, server):
    page.goto("/web/#/models")
    demo = page.locator("#models-list .model-item[data-name='alice-demo']")
    expect(demo).to_contain_text("default")
    expect(demo).to_contain_text("loaded")
    expect(demo.get_by_role("button", name="Delete")).to_be_disabled()
    expect(page.locator("#downloads-msg")).to_contain_text("No downloads yet")

    # Unload frees the model's memory; Load brings it back, both on the server's worker.
    # (Names match exactly: "Load" is also a part of "Unload".)
    demo.get_by_role("button", name="Unload", exact=True).click()
    expect(demo.get_by_role("button", name="Load", exact=True)).to_be_visible()
    assert api(server, "GET", "/health").json()["loaded_models"] == []
    demo.get_by_role("button", name="Load", exact=True).click()
    expect(demo.get_by_role("button", name="Unload", exact=True)).to_be_visible()
    assert api(server, "GET", "/health").json()["loaded_models"] == ["alice-demo"]

    page.fill("#search-query", "tiny")
    page.click("#search-submit")
    expect(page.locator("#search-results .search-item")).to_have_text([re.compile("alice-tests/tiny-sd")])

    page.select_option("#search-source", "civitai")
    page.select_option("#search-type", "LORA")
    page.fill("#search-query", "inky")
    page.click("#search-submit")
    result = page.locator("#search-results .search-item", has_text="Inky Style")
    expect(result).to_be_visible()
    result.get_by_role("button", name="Download").click()
    task = page.locator("#downloads-list .download-item", has_text="inky-style")
    expect(task.locator(".badge").last).to_have_text("completed")
    expect(task.locator(".bar")).to_have_attribute("aria-valuenow", "100")
    lora = page.locator("#models-list .model-item[data-name='inky-style']")
    expect(lora).to_contain_text("LoRA")
    shot(page, "models")

    # "Use" puts the LoRA into the Generate form.
    lora.get_by_role("button", name="Use").click()
    expect(page.locator("#gen-loras select")).to_have_value("inky-style")

    page.click("#nav a[data-page=models]")
    lora.get_by_role("button", name="Delete").click()
    page.click("#confirm-ok")
    expect(lora).to_have_count(0)
    assert "inky-style" not in {m["name"] for m in api(server, "GET", "/v1/store/models").json()["data"]}


def test_a_late_answer_never_undoes_what_a_click_showed(page, server):
    """The Models page polls the store; a poll answered after a click's own reload (it left
    before the click's action finished) must not put the old state back under the pointer."""
    page.goto("/web/#/models")
    demo = page.locator("#models-list .model-item[data-name='alice-demo']")
    expect(demo.get_by_role("button", name="Unload", exact=True)).to_be_visible()
    held, passed = [], []

    def hold_the_next_poll(route) -> None:
        if held:
            passed.append(route.request.url)
            route.continue_()
        else:  # answered now (the model still loaded), handed to the page only later
            held.append((route, route.fetch()))

    def wait_until(condition, what: str) -> None:
        deadline = time.monotonic() + 15
        while not condition() and time.monotonic() < deadline:
            page.wait_for_timeout(50)
        assert condition(), what

    page.route("**/v1/store/models", hold_the_next_poll)
    wait_until(lambda: held, "the page did not poll the store")
    demo.get_by_role("button", name="Unload", exact=True).click()
    expect(demo.get_by_role("button", name="Load", exact=True)).to_be_visible()
    # From now on the model is unloaded: no button may say otherwise.
    page.evaluate("""() => {
        const list = document.getElementById('models-list');
        window.sawUnload = false;
        new MutationObserver(() => {
            const item = list.querySelector("[data-name='alice-demo']");
            if (item && item.textContent.includes('Unload')) window.sawUnload = true;
        }).observe(list, { subtree: true, childList: true, characterData: true });
    }""")
    reloads = len(passed)
    route, stale = held[0]
    route.fulfill(response=stale)
    wait_until(lambda: len(passed) > reloads, "the page stopped polling")  # the held poll is done with
    assert page.evaluate("window.sawUnload") is False, "a late poll showed the model as loaded again"
    expect(demo.get_by_role("button", name="Load", exact=True)).to_be_visible()
    page.unroute("**/v1/store/models")
    demo.get_by_role("button", name="Load", exact=True).click()
    expect(demo.get_by_role("button", name="Unload", exact=True)).to_be_visible()
    assert api(server, "GET", "/health").json()["loaded_models"] == ["alice-demo"]


def test_settings_page_masks_secrets_and_keeps_user_defaults(page, server):
    page.goto("/web/#/settings")
    expect(page.locator(".setting[data-name=api_keys] .value")).to_have_text("**** (1 key)")
    expect(page.locator(".setting[data-name=default_model] .value")).to_have_text("alice-demo")
    expect(page.locator(".setting[data-name=queue_size] .env")).to_have_text("ALICE_QUEUE_SIZE")
    expect(page.locator("#limits-list")).to_contain_text("1048576")
    expect(page.locator("#key-state")).to_contain_text("A key is stored")
    assert API_KEY not in page.content()

    page.fill("#def-steps", "7")
    page.fill("#def-negative", "watermark")
    page.click("#defaults-form button[type=submit]")
    expect(page.locator("#def-msg")).to_contain_text("Saved")
    shot(page, "settings")
    page.click("#nav a[data-page=generate]")
    expect(page.locator("#gen-steps")).to_have_value("7")
    expect(page.locator("#gen-negative")).to_have_value("watermark")


def test_a_user_key_is_not_offered_model_management_and_is_told_why(browser, server):
    """Roles on: a user key's Models page lists the store without Load, Unload, Delete, search or
    downloads, and says which key and role; its Settings page shows no configuration."""
    context = browser.new_context(base_url=server.url)
    context.add_init_script(f"localStorage.setItem('alice.apiKey', {json.dumps(USER_KEY)})")
    page = context.new_page()
    page.goto("/web/#/models")
    expect(page.locator("#models-role")).to_contain_text('("viewer") has the role "user"')
    expect(page.locator(".model-item[data-name=alice-demo] button", has_text="Use")).to_be_visible()
    expect(page.locator(".model-item button", has_text="Delete")).to_have_count(0)
    expect(page.locator(".model-item button", has_text="Load")).to_have_count(0)
    for card in page.locator("#page-models .admin-only").all():
        expect(card).to_be_hidden()
    page.click("#nav a[data-page=settings]")
    expect(page.locator("#settings-role")).to_contain_text("need an admin key")
    expect(page.locator("#settings-list .setting")).to_have_count(0)
    expect(page.locator("#limits-list")).to_contain_text("1048576")  # the form's limits are every key's
    context.close()


def test_the_forms_take_their_limits_from_the_server(page, server):
    """index.html writes no limit of a setting: the inputs take theirs from /v1/settings, which
    serves the schema's (one declaration, alice/engine/spec.py), when the form is shown."""
    html = (WEB_DIR / "index.html").read_text(encoding="utf-8")
    written = re.findall(r'<(?:input|textarea) id="(?:gen|def)-[^"]+"[^>]*\b(?:min|max|maxlength)="', html)
    assert written == [], f"limits written into index.html: {written}"
    served = api(server, "GET", "/v1/settings").json()
    limits = served["setting_limits"]
    page.goto("/web/#/generate")
    guidance = page.locator("#gen-guidance")
    expect(guidance).to_have_attribute("max", str(limits["guidance_scale"]["maximum"]))
    expect(guidance).to_have_attribute("min", str(limits["guidance_scale"]["minimum"]))
    expect(page.locator("#gen-steps")).to_have_attribute("max", str(limits["steps"]["maximum"]))
    width = page.locator("#gen-width")
    expect(width).to_have_attribute("step", str(limits["width"]["multipleOf"]))
    expect(width).to_have_attribute("max", str(limits["width"]["maximum"]))
    expect(page.locator("#gen-prompt")).to_have_attribute("maxlength", str(limits["prompt"]["maxLength"]))
    count = min(limits["num_images"]["maximum"], served["limits"]["max_images_per_request"])
    expect(page.locator("#gen-count")).to_have_attribute("max", str(count))
    expect(page.locator("#gen-strength")).to_have_attribute("min", "0.05")  # over 0: one step above it
    expect(page.locator("#gen-guidance")).to_have_value(str(served["defaults"]["guidance_scale"]))
    page.click("#nav a[data-page=settings]")
    expect(page.locator("#def-guidance")).to_have_attribute("max", str(limits["guidance_scale"]["maximum"]))


def test_every_page_fits_a_phone_screen(browser, server):
    # Something on every page: an image in the gallery, a finished job in the queue.
    assert api(server, "POST", "/generate", json={**QUICK, "steps": 2, "prompt": "a phone-sized test of "
                                                   "a long prompt that must wrap instead of widening the page"}).status_code == 200
    context = keyed_context(browser, server, viewport={"width": 390, "height": 844}, device_scale_factor=2,
                            is_mobile=True, has_touch=True)
    page = context.new_page()
    watch = Watch(page)
    ready = {
        "dashboard": "#dash-jobs dt", "generate": "#gen-scheduler option", "gallery": ".gallery-card",
        "models": "#models-list .model-item", "queue": "#queue-done .job-item", "settings": ".setting",
    }
    for name in PAGES:
        page.goto(f"/web/#/{name}")
        page.locator(ready[name]).first.wait_for(state="attached")
        widths = page.evaluate("() => [document.documentElement.scrollWidth, document.body.scrollWidth, window.innerWidth]")
        assert max(widths[:2]) <= widths[2] == 390, f"{name} scrolls sideways on a phone: {widths}"
        shot(page, f"phone-{name}")
    watch.check()
    context.close()


def test_the_form_follows_the_chosen_models_family(page, server):
    """Choosing a FLUX.1 schnell model offers its schedulers (its default chosen where the user's
    does not apply), its defaults, its size grid, and disables what its family does not take;
    what the user did not set is left to the server, which applies the family's defaults."""
    facts = {m["id"]: m for m in api(server, "GET", "/v1/models").json()["data"]}
    schnell, demo = facts[f"sd/{FLUX}"], facts["sd/alice-demo"]
    assert schnell["family"] == "flux1-schnell" and not schnell["negative_prompt"]

    page.goto("/web/#/models")
    expect(page.locator(f"#models-list .model-item[data-name='{FLUX}'] .badge.family")).to_have_text("flux1-schnell")
    expect(page.locator("#models-list .model-item[data-name='alice-demo'] .badge.family")).to_have_text("sd15")

    page.goto("/web/#/generate")
    expect(page.locator("#gen-model")).to_have_value("alice-demo")
    options = page.locator("#gen-scheduler option")
    expect(page.locator("#gen-scheduler")).to_have_value(demo["default_scheduler"])
    assert options.evaluate_all("os => os.map(o => o.value)") == demo["schedulers"]
    page.select_option("#gen-scheduler", "euler_a")  # an SD sampler: no FLUX scheduler
    page.fill("#gen-negative", "blurry")
    page.fill("#gen-hires-scale", "2")  # typed for the demo: not sent for FLUX, which takes no hires fix

    page.select_option("#gen-model", FLUX)
    expect(page.locator("#gen-scheduler")).to_have_value(schnell["default_scheduler"])
    assert options.evaluate_all("os => os.map(o => o.value)") == schnell["schedulers"]
    expect(page.locator("#gen-negative")).to_be_disabled()
    expect(page.locator("#gen-negative-hint")).to_have_text("flux1-schnell models take no negative prompt.")
    expect(page.locator("#gen-steps")).to_have_value(str(schnell["default_steps"]))
    expect(page.locator("#gen-guidance")).to_have_value("0")
    expect(page.locator("#gen-clip-skip-row")).to_be_hidden()
    assert schnell["hires_fix"] is False and demo["hires_fix"] is True
    expect(page.locator("#gen-hires-scale")).to_be_disabled()  # by its fieldset
    expect(page.locator("#gen-hires-hint")).to_have_text("flux1-schnell models take no hires fix: it is not sent.")
    expect(page.locator("#gen-width")).to_have_attribute("step", str(schnell["size_multiple"]))
    expect(page.locator("#gen-width")).to_have_attribute("placeholder", str(schnell["native_size"]))
    shot(page, "generate-flux")

    # A generation from the page: the settings the user did not set are not sent.
    page.fill("#gen-prompt", "a red circle")
    page.fill("#gen-width", "64")
    page.fill("#gen-height", "64")
    page.fill("#gen-seed", "7")
    with page.expect_request(lambda r: r.url.endswith("/v1/jobs") and r.method == "POST") as sent:
        page.click("#gen-submit")
    body = json.loads(sent.value.post_data)
    assert body["model"] == FLUX and not {"negative_prompt", "steps", "guidance_scale", "scheduler"} & set(body)
    assert not {"hires_scale", "hires_steps", "hires_strength", "hires_upscaler"} & set(body)
    expect(page.locator("#gen-progress-text")).to_contain_text("Done", timeout=120_000)
    page.wait_for_function("() => { const i = document.querySelector('#gen-result img'); return i && i.complete && i.naturalWidth === 64; }")
    params = page.locator("#gen-params")
    for text in (FLUX, "64x64", f"Steps{schnell['default_steps']}", f"Scheduler{schnell['default_scheduler']}"):
        expect(params).to_contain_text(text)
    expect(params).not_to_contain_text("Negative prompt")

    # Back to the demo model: the SD schedulers with its default (euler_a was dropped on FLUX),
    # its defaults, and the negative prompt as it was.
    page.select_option("#gen-model", "alice-demo")
    expect(page.locator("#gen-scheduler")).to_have_value(demo["default_scheduler"])
    assert options.evaluate_all("os => os.map(o => o.value)") == demo["schedulers"]
    expect(page.locator("#gen-negative")).to_be_enabled()
    expect(page.locator("#gen-negative")).to_have_value("blurry")
    expect(page.locator("#gen-steps")).to_have_value(str(demo["default_steps"]))
    expect(page.locator("#gen-clip-skip-row")).to_be_visible()
    expect(page.locator("#gen-hires-scale")).to_be_enabled()
    page.fill("#gen-hires-scale", "")
    expect(page.locator("#gen-width")).to_have_attribute("step", str(demo["size_multiple"]))
    api(server, "POST", f"/v1/models/{FLUX}/unload")


def test_a_dropped_png_fills_the_form_from_its_a1111_text(page, server):
    """A PNG made by Forge, dropped on the form: its settings fill the form (read by the server's
    one reader), what ALICE cannot honour is shown; a hires fix drawn from the form is in its PNG."""
    from PIL.PngImagePlugin import PngInfo

    text = ("a lighthouse at dusk\nNegative prompt: blurry\nSteps: 3, Sampler: Euler a, Schedule type: Automatic, "
            "CFG scale: 5, Seed: 42, Size: 64x64, Model hash: 31e35c80fc, Denoising strength: 0.5, "
            "Hires upscale: 2, Hires steps: 2, Hires upscaler: Lanczos, Version: f2.0.1v1.10.1-previous-313-g8a042934")

    def drop(text: str) -> None:
        info = PngInfo()
        info.add_text("parameters", text)
        buffer = io.BytesIO()
        Image.new("RGB", (8, 8), "gray").save(buffer, format="PNG", pnginfo=info)
        page.evaluate(
            """async (b64) => {
                const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
                const transfer = new DataTransfer();
                transfer.items.add(new File([bytes], "forge.png", { type: "image/png" }));
                document.getElementById("gen-form").dispatchEvent(
                    new DragEvent("drop", { dataTransfer: transfer, bubbles: true, cancelable: true }));
            }""",
            base64.b64encode(buffer.getvalue()).decode(),
        )

    page.goto("/web/#/generate")
    expect(page.locator("#gen-hires-strength")).to_have_value("0.7")  # the declared default, from /v1/settings
    drop(text)
    expect(page.locator("#gen-dropped-notes")).to_contain_text("Model hash: 31e35c80fc")
    expect(page.locator("#gen-prompt")).to_have_value("a lighthouse at dusk")
    expect(page.locator("#gen-negative")).to_have_value("blurry")
    expect(page.locator("#gen-seed")).to_have_value("42")
    expect(page.locator("#gen-hires-scale")).to_have_value("2")
    expect(page.locator("#gen-hires-strength")).to_have_value("0.5")
    expect(page.locator("#gen-hires-upscaler")).to_have_value("lanczos")
    expect(page.locator("#gen-scheduler")).to_have_value("euler_a")
    page.click("#gen-submit")
    page.wait_for_function("() => { const i = document.querySelector('#gen-result img'); return i && i.complete && i.naturalWidth === 128; }", timeout=60_000)
    job = api(server, "GET", "/v1/jobs").json()["data"][0]
    assert job["parameters"]["hires_scale"] == 2 and job["parameters"]["hires_upscaler"] == "lanczos"
    # A target size instead of a scale (A1111's "Hires resize"): the form's hires width and height.
    drop(text.replace("Hires upscale: 2", "Hires resize: 128x96"))
    expect(page.locator("#gen-hires-width")).to_have_value("128")
    expect(page.locator("#gen-hires-height")).to_have_value("96")
    expect(page.locator("#gen-hires-scale")).to_have_value("")
    page.click("#gen-submit")
    page.wait_for_function("() => { const i = document.querySelector('#gen-result img'); "
                           "return i && i.complete && i.naturalWidth === 128 && i.naturalHeight === 96; }", timeout=60_000)
    parameters = api(server, "GET", "/v1/jobs").json()["data"][0]["parameters"]
    assert (parameters["hires_width"], parameters["hires_height"], parameters["hires_scale"]) == (128, 96, 2)
