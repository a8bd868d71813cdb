"""The web page at `/`, driven in Debian's headless Chromium by Playwright, against the live
local service. Screenshots of the main states go to test-artifacts/screenshots/."""

import hashlib
import io
import os
import re
import subprocess
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image
from playwright.sync_api import Browser, Page, expect, sync_playwright
from support.media import png_bytes
from support.service import API_KEYS, ROOT, SLOW

from serve_app.api.page import render, server_values

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"  # Debian's; Playwright's own browser download cannot work offline
SHOTS = ROOT / "test-artifacts" / "screenshots"
# Quiet, offline-safe Chromium: no background connections to Google's hosts.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser, service: str) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    context.grant_permissions(["clipboard-read", "clipboard-write"])
    page = context.new_page()
    page.goto(service)
    yield page
    context.close()


def fill(page: Page, key: str = API_KEYS[0], prompt: str = "A red fox running through fresh snow", **fields: str):
    page.get_by_label("API key").fill(key)
    page.get_by_label("Prompt", exact=True).fill(prompt)
    page.get_by_label(re.compile("^Size")).select_option(fields.pop("size", "64x64"))
    page.get_by_label(re.compile("^Frames")).select_option(fields.pop("num_frames", "25"))
    page.get_by_label(re.compile("^Steps")).fill(fields.pop("steps", "4"))
    for label, value in fields.items():
        page.get_by_label(re.compile(f"^{label}")).fill(value)


def video_metadata(page: Page) -> dict:
    page.wait_for_function("() => document.getElementById('video').readyState >= 1", timeout=60_000)
    return page.evaluate(
        "() => { const v = document.getElementById('video');"
        " return {duration: v.duration, width: v.videoWidth, height: v.videoHeight}; }"
    )


def test_generate_a_video_play_it_and_open_it_again(page, tmp_path):
    page.screenshot(path=SHOTS / "1-empty.png", full_page=True)
    fill(page, Seed="7")
    page.screenshot(path=SHOTS / "2-filled.png", full_page=True)
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#status")).to_have_text(re.compile("^Done: 64x64, 1.04 s, seed 7"), timeout=60_000)
    video = video_metadata(page)
    assert (video["width"], video["height"]) == (64, 64)
    assert video["duration"] == pytest.approx(25 / 24, abs=0.05)
    expect(page.locator("#download")).to_have_attribute("download", re.compile(r"^video_\w+\.mp4$"))
    page.screenshot(path=SHOTS / "3-done.png", full_page=True)

    # The copied curl command makes the same video again.
    page.get_by_role("button", name="Copy curl command").click()
    command = page.evaluate("navigator.clipboard.readText()")
    shown = page.evaluate(
        "fetch(document.getElementById('video').src).then((r) => r.arrayBuffer())"
        ".then((b) => crypto.subtle.digest('SHA-256', b))"
        ".then((d) => [...new Uint8Array(d)].map((x) => x.toString(16).padStart(2, '0')).join(''))"
    )
    run = subprocess.run(["bash", "-c", command], cwd=tmp_path, env={**os.environ, "WAN_API_KEY": API_KEYS[0]})
    assert run.returncode == 0
    assert hashlib.sha256((tmp_path / "output.mp4").read_bytes()).hexdigest() == shown
    page.get_by_role("button", name="Copy seed").click()
    assert page.evaluate("navigator.clipboard.readText()") == "7"

    # The job is listed for this browser, and opens again after a reload.
    page.reload()
    page.get_by_label("API key").fill(API_KEYS[0])
    page.get_by_role("button", name=re.compile("^Open job: A red fox")).first.click()
    expect(page.locator("#status")).to_have_text(re.compile("^Done: 64x64"), timeout=30_000)
    assert video_metadata(page)["width"] == 64


def test_the_model_picker_shows_each_models_defaults_and_makes_its_video(page):
    fill(page, steps="")
    page.get_by_label(re.compile("^Model")).select_option("tiny-turbo")
    expect(page.locator("#model-hint")).to_have_text("(default 3 steps, guidance 1, shift 5 at 1280x704)")
    expect(page.locator("#num_inference_steps-hint")).to_have_text("(3-3, default 3)")
    expect(page.locator("#guidance_scale-hint")).to_have_text("(none: distilled without)")
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#status")).to_have_text(re.compile("^Done: 64x64"), timeout=60_000)
    expect(page.locator("#details")).to_contain_text('"model": "tiny-turbo"')
    page.get_by_label(re.compile("^Model")).select_option("tiny")
    expect(page.locator("#num_inference_steps-hint")).to_have_text("(1-100, default 50)")


def test_lora_adapters_typed_in_the_page_apply_and_the_details_name_them(page):
    fill(page, **{"LoRA adapters": "tiny-style:0.8"})
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#status")).to_have_text(re.compile("^Done: 64x64"), timeout=60_000)
    expect(page.locator("#details")).to_contain_text('"path": "tiny-style"')
    expect(page.locator("#details")).to_contain_text('"scale": 0.8')
    fill(page, **{"LoRA adapters": "no-such-style"})
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#message")).to_contain_text("loras[0].path")


def test_cancel_a_slow_job(page, client):
    fill(page, size=f"{SLOW['width']}x{SLOW['height']}", num_frames=str(SLOW["num_frames"]), steps="100")
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#status")).to_have_text(re.compile(r"^Generating: [1-9]\d?%"), timeout=60_000)
    page.screenshot(path=SHOTS / "4-generating.png", full_page=True)
    page.get_by_role("button", name="Cancel").click()
    expect(page.locator("#status")).to_have_text("Cancelled.", timeout=10_000)
    newest = client.get("/v1/videos", params={"limit": 1}).json()["data"][0]
    assert newest["status"] == "cancelled" and newest["details"]["num_inference_steps"] == 100


def test_a_wrong_key_shows_the_401_message(page):
    fill(page, key="not-my-key")
    page.get_by_role("button", name="Generate").click()
    expect(page.get_by_role("alert")).to_have_text(
        "The API key was refused: Invalid API key. Check the key your operator gave you."
    )
    page.screenshot(path=SHOTS / "5-wrong-key.png", full_page=True)


def test_an_image_over_the_size_cap_shows_the_413_message(page):
    fill(page)
    page.get_by_label("Text + image to video").check()
    noise = Image.frombytes("RGB", (1200, 1200), os.urandom(1200 * 1200 * 3))
    big = io.BytesIO()
    noise.save(big, format="PNG")
    page.locator("#image-file").set_input_files(
        files=[{"name": "big.png", "mimeType": "image/png", "buffer": big.getvalue()}]
    )
    page.wait_for_function("() => document.getElementById('crop').width > 0")
    page.get_by_role("button", name="Generate").click()
    expect(page.get_by_role("alert")).to_have_text(re.compile("^Too large: The request body is over the .* byte limit"))


def test_text_and_image_with_an_uploaded_file(page):
    fill(page)
    page.get_by_label("Text + image to video").check()
    page.locator("#image-file").set_input_files(
        files=[{"name": "red.png", "mimeType": "image/png", "buffer": png_bytes((160, 90))}]
    )
    page.wait_for_function("() => document.getElementById('crop').width > 0")
    page.screenshot(path=SHOTS / "6-image.png", full_page=True)
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#status")).to_have_text(re.compile("^Done:"), timeout=60_000)
    expect(page.locator("#details")).to_contain_text('"mode": "ti2v"')


@pytest.mark.parametrize(
    ("field", "value", "param"),
    [("Steps", "101", "num_inference_steps"), ("Guidance", "0.5", "guidance_scale"), ("Seed", "-3", "seed")],
)
def test_the_page_refuses_what_the_server_refuses_with_its_message(page, client, field, value, param):
    fill(page, **{field: value})
    page.get_by_role("button", name="Generate").click()
    number = int(value) if field != "Guidance" else float(value)
    server = client.post("/v1/videos", json={"prompt": "x", param: number}).json()["error"]["message"]
    expect(page.get_by_role("alert")).to_have_text(server)


def test_the_page_shows_the_bounds_and_defaults_the_server_writes_in(browser):
    """With other values written in, the page offers and checks those: it hard-codes none."""
    values = server_values()
    values["fields"]["num_inference_steps"].update(maximum=77, default=33)
    values["fields"]["num_frames"].update(minimum=41, maximum=61, default=49)
    values["fields"]["width"]["default"], values["fields"]["height"]["default"] = 512, 512
    values["max_text_chars"] = 500
    page = browser.new_page()
    page.route("http://page.test/", lambda route: route.fulfill(content_type="text/html", body=render(values)))
    page.goto("http://page.test/")
    expect(page.locator("#num_inference_steps-hint")).to_have_text("(1-77, default 33)")
    expect(page.locator("#num_inference_steps")).to_have_attribute("max", "77")
    frames = page.locator("#num_frames option").evaluate_all("(options) => options.map((o) => Number(o.value))")
    assert frames == [41, 45, 49, 53, 57, 61] and page.locator("#num_frames").input_value() == "49"
    assert page.locator("#size").input_value() == "512x512"
    expect(page.locator("#prompt")).to_have_attribute("maxlength", "500")
    page.get_by_label("Prompt", exact=True).fill("a fox")
    page.get_by_label(re.compile("^Steps")).fill("78")
    page.get_by_role("button", name="Generate").click()
    expect(page.get_by_role("alert")).to_have_text("num_inference_steps: Input should be less than or equal to 77")
    page.close()


def test_every_control_is_labelled_and_a_phone_screen_fits(page):
    unlabelled = page.evaluate(
        "() => [...document.querySelectorAll('input, select, textarea')]"
        ".filter((el) => !el.labels.length && !el.getAttribute('aria-label')).map((el) => el.id || el.name)"
    )
    assert unlabelled == []
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.screenshot(path=SHOTS / "7-phone.png", full_page=True)


def test_the_form_works_from_the_keyboard_alone(page):
    page.get_by_label("API key").focus()
    page.keyboard.type(API_KEYS[0])
    for _ in range(40):  # Tab through the controls until Generate has the focus
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "generate":
            break
    else:
        pytest.fail("Tab never reached the Generate button")
    page.keyboard.press("Enter")
    expect(page.get_by_role("alert")).to_have_text("prompt: String should have at least 1 character")


def test_cors_allows_only_the_configured_origins(service):
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    allowed = httpx.options(f"{service}/v1/videos", headers={"Origin": "http://studio.example", **preflight})
    assert allowed.headers["access-control-allow-origin"] == "http://studio.example"
    other = httpx.options(f"{service}/v1/videos", headers={"Origin": "http://evil.example", **preflight})
    assert "access-control-allow-origin" not in other.headers


def test_the_docs_javascript_example_plays_a_video(page, service):
    clients = (ROOT / "docs" / "clients.md").read_text()
    html = clients.split("## JavaScript in the browser")[1].split("```html")[1].split("```")[0]
    # The docs' snippet as the whole document of a page on the service's origin (as the page at / is,
    # but without that page's CSP, which allows its own script only).
    snippet = html.replace('"http://127.0.0.1:8000"', f'"{service}"')
    page.route(f"{service}/example.html", lambda route: route.fulfill(body=snippet, content_type="text/html"))
    page.goto(f"{service}/example.html")
    details = page.evaluate("(key) => generateVideo('a paper plane', key)", API_KEYS[0])
    assert details["num_frames"] == 25
    assert video_metadata(page)["width"] == 256


def test_the_page_and_the_docs_run_under_their_csp_with_nothing_from_elsewhere(page, service):
    # /docs loaded Swagger UI from a CDN: a blank page on an offline cluster.
    violations, elsewhere = [], []
    page.on("console", lambda message: "Content Security Policy" in message.text and violations.append(message.text))
    page.on("request", lambda request: request.url.startswith(service) or elsewhere.append(request.url))
    page.goto(f"{service}/docs")
    page.locator(".swagger-ui .info .title").wait_for(timeout=30_000)
    assert "Wan2.2" in page.locator(".swagger-ui .info .title").inner_text()
    page.goto(service)
    page.get_by_label("API key").wait_for()
    assert violations == [] and elsewhere == []
