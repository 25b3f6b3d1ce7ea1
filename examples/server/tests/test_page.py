"""The page at `/` in a real headless Chromium (Debian's `chromium` and `chromium-driver`, which `make test-server`
installs; selenium from PyPI drives it, with no browser download): a job submitted through the form, its
progress rising over the WebSocket, the `<video>` loading and playing, a job cancelled, and a screenshot.

Run by `make test-server`; `VGEN_SERVER` names the binary (default: target/debug/vgen-server). `VGEN_SCREENSHOT`
names where the screenshot goes (default: the test's temporary folder).
"""

import os
import pathlib
import shutil
import time

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from server_process import running

TOKEN = "page-token-0123456789abcdef"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running(tmp_path_factory.mktemp("page"), {TOKEN: "page"}) as url:
        yield url


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.fail("Debian's chromium and chromium-driver are missing (make test-server installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--autoplay-policy=no-user-gesture-required", "--window-size=1000,900",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(flag)
    b = webdriver.Chrome(service=Service(executable_path=driver), options=options)
    yield b
    b.quit()


def wait(browser, what, timeout=60):
    return WebDriverWait(browser, timeout, poll_frequency=0.05).until(lambda _: what())


def open_page(browser, server):
    browser.get(server + "/")
    token = browser.find_element(By.ID, "token")
    token.clear()
    token.send_keys(TOKEN)
    browser.execute_script("arguments[0].dispatchEvent(new Event('change'))", token)
    wait(browser, lambda: "testcard" in [o.get_attribute("value") for o in Select(browser.find_element(By.ID, "model")).options])


def submit(browser, prompt, model, steps, size="64x64", seconds="2"):
    browser.find_element(By.ID, "prompt").clear()
    browser.find_element(By.ID, "prompt").send_keys(prompt)
    Select(browser.find_element(By.ID, "model")).select_by_value(model)
    for field, value in (("size", size), ("seconds", seconds), ("steps", str(steps))):
        element = browser.find_element(By.ID, field)
        element.clear()
        element.send_keys(value)
    before = len(browser.find_elements(By.CSS_SELECTOR, ".job"))
    browser.find_element(By.ID, "submit").click()
    wait(browser, lambda: len(browser.find_elements(By.CSS_SELECTOR, ".job")) == before + 1)
    return browser.find_elements(By.CSS_SELECTOR, ".job")[0]


def bar_percent(card) -> float:
    width = card.find_element(By.CSS_SELECTOR, ".bar > div").value_of_css_property("width")
    total = card.find_element(By.CSS_SELECTOR, ".bar").value_of_css_property("width")
    return 100 * float(width.rstrip("px") or 0) / float(total.rstrip("px"))


def test_a_job_runs_with_live_progress_and_its_video_plays(browser, server, tmp_path):
    open_page(browser, server)
    # `faulty` with !slow=120: each of 12 steps takes 120 ms, so the progress is watched rising.
    card = submit(browser, "!slow=120 a red circle moving right", "faulty", steps=12)
    seen = set()
    deadline = time.time() + 60
    while time.time() < deadline and card.find_element(By.CSS_SELECTOR, ".state").text != "completed":
        seen.add(round(bar_percent(card)))
        time.sleep(0.05)
    assert card.find_element(By.CSS_SELECTOR, ".state").text == "completed"
    rising = sorted(p for p in seen if 0 < p < 100)
    assert len(rising) >= 3, f"the bar rose through {rising}"
    # The latent previews arrived as the job ran (the page asks for one every step).
    preview = card.find_element(By.CSS_SELECTOR, "img.preview")
    assert preview.is_displayed() and preview.get_attribute("src").startswith("blob:")
    assert browser.execute_script("return arguments[0].naturalWidth", preview) > 0, "a latent-sized image"
    video = wait(browser, lambda: card.find_elements(By.CSS_SELECTOR, "video") or None)[0]
    state = wait(browser, lambda: (lambda s: s if s["readyState"] >= 2 else None)(browser.execute_script(
        "const v = arguments[0]; return {readyState: v.readyState, duration: v.duration, error: v.error && v.error.code}",
        video)))
    # 2 s at faulty's 8 fps: 17 frames (1 + 4k), about 2.1 s.
    assert state["error"] is None and 1.5 < state["duration"] < 2.5, state
    wait(browser, lambda: browser.execute_script("return arguments[0].currentTime > 0", video), timeout=10)
    assert card.find_element(By.LINK_TEXT, "Download").get_attribute("download").endswith(".mp4")
    shot = pathlib.Path(os.environ.get("VGEN_SCREENSHOT", tmp_path / "page.png"))
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000


def test_a_running_job_is_cancelled_and_errors_read_as_the_api_wrote_them(browser, server):
    open_page(browser, server)
    card = submit(browser, "!slow=300 a slow blue square", "faulty", steps=100)
    wait(browser, lambda: card.find_element(By.CSS_SELECTOR, ".state").text == "running")
    card.find_element(By.CSS_SELECTOR, "button.cancel").click()
    wait(browser, lambda: card.find_element(By.CSS_SELECTOR, ".state").text == "cancelled", timeout=30)
    # A size the model cannot make: the API's own message, naming the field.
    submit_button = browser.find_element(By.ID, "submit")
    size = browser.find_element(By.ID, "size")
    size.clear()
    size.send_keys("100x64")
    submit_button.click()
    wait(browser, lambda: "resolution" in browser.find_element(By.ID, "error").text)
    # Delete removes the card (and the job).
    card_id = card.get_attribute("id")
    card.find_element(By.CSS_SELECTOR, "button.delete").click()
    wait(browser, lambda: not browser.find_elements(By.ID, card_id))
