"""The review page in a real headless Chromium (Selenium + Debian's chromedriver) against a real server.

Checks what an operator sees: the camera cards and their sparklines moving as scores arrive, alerts with a
loaded snapshot and a playable clip, a label that survives a reload, and an XSS prompt shown as text.
Screenshots go to a temporary folder, or to docs/screenshots/ with ``ZSAD_UPDATE_SCREENSHOTS=1``.
Skips when chromium, chromedriver or selenium are missing (``make setup`` installs all three).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.outputs.state import RunState
from pipeline.outputs.web import ReviewServer
from tests.conftest import REPO
from tests.integration.test_web_api import XSS_PROMPT, DemoRun, build_demo_run, encode_mp4, score_at

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# Without the background-networking flags Chromium dials out at start-up, which the closed network refuses.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--mute-audio",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
]
WAIT_S = 15.0

selenium = pytest.importorskip("selenium", reason="selenium is not installed (make setup installs dev deps)")

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import (  # noqa: E402
    NoAlertPresentException,
    NoSuchElementException,
    StaleElementReferenceException,
    TimeoutException,
)
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def screenshot_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.environ.get("ZSAD_UPDATE_SCREENSHOTS") == "1":
        path = REPO / "docs" / "screenshots"
        path.mkdir(parents=True, exist_ok=True)
        return path
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    media = tmp_path_factory.mktemp("media") / "clip.mp4"
    encode_mp4(media, frames=40)
    return build_demo_run(tmp_path_factory.mktemp("run") / "out", media)


@pytest.fixture(scope="module")
def base_url(run: DemoRun) -> Iterator[str]:
    server = ReviewServer(run.state, run.out).start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)} (apt-get install chromium chromium-driver)")
    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.add_argument("--window-size=1440,1000")
    # An explicit driver path: Selenium Manager (which would try to download a driver) never runs.
    log_path = tmp_path_factory.mktemp("chromedriver") / "chromedriver.log"
    service = Service(executable_path=str(CHROMEDRIVER), log_output=str(log_path))
    browser = webdriver.Chrome(service=service, options=options)
    browser.set_page_load_timeout(30)
    try:
        yield browser
    finally:
        browser.quit()


def wait_for(driver: Any, condition: Callable[[Any], Any], what: str, timeout: float = WAIT_S) -> Any:
    # The pages re-render their live lists: an element found a moment ago can be gone when the condition
    # reads it. That is "not yet" (asked again at the next poll), as an element not there yet is.
    ignored = (NoSuchElementException, StaleElementReferenceException)
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1, ignored_exceptions=ignored).until(condition)
    except TimeoutException:
        raise AssertionError(f"timed out after {timeout} s waiting for {what}") from None


def wait_for_text(driver: Any, selector: str, text: str, what: str) -> None:
    """Wait until the first element matching ``selector`` exists and shows ``text`` (any case)."""

    def shown(d: Any) -> bool:
        found = d.find_elements(By.CSS_SELECTOR, selector)
        return bool(found) and found[0].text.lower() == text

    wait_for(driver, shown, what)


def no_js_dialog(driver: Any) -> bool:
    try:
        driver.switch_to.alert  # noqa: B018 - raises when there is none
    except NoAlertPresentException:
        return True
    return False


def test_cameras_view_shows_cameras_and_live_sparklines(
    driver: Any, base_url: str, run: DemoRun, screenshot_dir: Path
) -> None:
    driver.set_window_size(1440, 530)
    driver.get(base_url + "#cameras")
    wait_for(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".card")) == 4, "four camera cards")
    cards = {c.get_attribute("data-camera"): c for c in driver.find_elements(By.CSS_SELECTOR, ".card")}
    assert list(cards) == ["gate-east", "parking-north", "lobby", "dock-2"]
    badges = {
        cam: card.find_element(By.CSS_SELECTOR, ".badge.state").text.lower() for cam, card in cards.items()
    }
    assert badges == {
        "gate-east": "live",
        "parking-north": "live",
        "lobby": "reconnecting",
        "dock-2": "failed",
    }
    assert "connection refused" in cards["lobby"].find_element(By.CSS_SELECTOR, ".detail").text
    # Which streams the camera trusts: one line on the card, each stream's reason on hover.
    trust = cards["gate-east"].find_element(By.CSS_SELECTOR, ".trust")
    # ... and the max rule's agreement term, over the streams it was fitted on.
    assert trust.text == "fusion max · weighed down: pixel, predictive · agreement of 3 streams"
    assert "pixel: weight 0." in (trust.get_attribute("title") or "")
    assert "tail heavier than Gaussian" in (trust.get_attribute("title") or "")
    assert cards["lobby"].find_element(By.CSS_SELECTOR, ".trust").text == ""
    assert cards["parking-north"].find_element(By.CSS_SELECTOR, ".chip.alarm").is_displayed()

    score_line = "[data-camera='gate-east'] .spark-score"
    points = wait_for(
        driver,
        lambda d: d.execute_script(
            f"const l = document.querySelector(\"{score_line}\"); return l && l.getAttribute('points');"
        ),
        "the gate-east sparkline",
    )
    assert len(points.split()) > 100
    streams = driver.execute_script(
        "return [...document.querySelectorAll(\"[data-camera='gate-east'] .spark-contrib\")]"
        ".map(e => e.dataset.stream);"
    )
    assert sorted(streams) == ["motion", "pixel", "predictive", "semantic"]
    assert driver.find_elements(By.CSS_SELECTOR, "[data-camera='gate-east'] .spark-threshold")
    driver.save_screenshot(str(screenshot_dir / "cameras.png"))

    # New scores while the page is open: the line must move without a reload.
    last_t = run.state.scores("gate-east")[-1]["t"]
    for i in range(170, 180):
        score, contributions = score_at(i, 3)
        run.state.add_score("gate-east", last_t + (i - 169) * 1.6, score + 2.5, contributions, {})
    wait_for(
        driver,
        lambda d: (
            d.execute_script(f"return document.querySelector(\"{score_line}\").getAttribute('points');")
            != points
        ),
        "the sparkline to change after new scores",
    )
    # The page fetches the camera list and the scores separately: the number may follow a poll later.
    expected = f"{run.state.cameras()[0]['score']:.2f}"
    wait_for(
        driver,
        lambda d: d.find_element(By.CSS_SELECTOR, "[data-camera='gate-east'] .score-value").text == expected,
        "the score value to show the newest score",
    )


def test_alerts_view_media_labels_and_escaping(
    driver: Any, base_url: str, run: DemoRun, screenshot_dir: Path
) -> None:
    driver.set_window_size(1440, 1420)
    driver.get(base_url + "#alerts")
    wait_for(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".alert")) == 4, "four alerts")
    ids = [e.get_attribute("data-alert-id") for e in driver.find_elements(By.CSS_SELECTOR, ".alert")]
    assert ids == [run.alerts[n]["alert_id"] for n in ("open", "closed", "xss", "old")]

    closed_id = run.alerts["closed"]["alert_id"]
    card = f"[data-alert-id='{closed_id}']"
    wait_for(
        driver,
        lambda d: d.execute_script(f'return document.querySelector("{card} img.snapshot").naturalWidth;') > 0,
        "the snapshot to load",
    )
    video = wait_for(
        driver,
        lambda d: d.execute_script(
            f'const v = document.querySelector("{card} video.clip");'
            "return v.readyState >= 1 ? {ready: v.readyState, duration: v.duration,"
            " error: v.error && v.error.code, controls: v.controls, preload: v.preload} : null;"
        ),
        "the clip's metadata",
    )
    assert video["error"] is None
    assert video["duration"] > 0
    assert (video["controls"], video["preload"]) == (True, "metadata")
    info = driver.find_element(By.CSS_SELECTOR, card).text
    assert "peak 7.30" in info
    assert "driven by semantic" in info
    assert "a person climbing over a fence" in info
    assert "12.0 s" in info
    open_card = driver.find_element(By.CSS_SELECTOR, f"[data-alert-id='{run.alerts['open']['alert_id']}']")
    assert "clip pending" in open_card.text

    # The XSS prompt is text: no element was created from it and no script ran.
    xss_id = run.alerts["xss"]["alert_id"]
    prompt = driver.execute_script(
        f"return document.querySelector(\"[data-alert-id='{xss_id}'] .prompt\").textContent;"
    )
    assert prompt == XSS_PROMPT
    assert driver.execute_script("return document.querySelectorAll('img[src=\"x\"]').length;") == 0
    assert no_js_dialog(driver)

    # Acknowledge persists: in the store, on disk, and in the page after a reload.
    label = f"{card} .review-label"
    assert driver.find_element(By.CSS_SELECTOR, label).text.lower() == "unreviewed"
    driver.find_element(By.CSS_SELECTOR, f"{card} .note").send_keys("gardener on the lawn")
    driver.find_element(By.CSS_SELECTOR, f"{card} button.ack").click()
    wait_for_text(driver, label, "acknowledged", "the ack label")
    assert RunState(run.out).labels()[closed_id]["note"] == "gardener on the lawn"
    driver.refresh()
    wait_for_text(driver, label, "acknowledged", "the ack label after a reload")
    assert (
        driver.find_element(By.CSS_SELECTOR, f"{card} .note").get_attribute("value") == "gardener on the lawn"
    )
    assert driver.find_element(By.CSS_SELECTOR, f"{card} button.ack").get_attribute("aria-pressed") == "true"
    driver.save_screenshot(str(screenshot_dir / "alerts.png"))

    # Filters: one camera only.
    driver.execute_script(
        "const s = document.getElementById('f-camera'); s.value = 'lobby';"
        "s.dispatchEvent(new Event('change'));"
    )
    wait_for(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".alert")) == 1, "the camera filter")
    assert driver.find_element(By.CSS_SELECTOR, ".alert").get_attribute("data-alert-id") == xss_id


def test_alert_shows_its_heatmap_and_toggles_to_the_plain_snapshot(
    driver: Any, base_url: str, run: DemoRun
) -> None:
    driver.set_window_size(1440, 1420)
    driver.get(base_url + "#alerts")
    driver.refresh()  # a fresh page: no filter left from an earlier test
    wait_for(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".alert")) == 4, "four alerts")
    closed = run.alerts["closed"]
    card = f"[data-alert-id='{closed['alert_id']}']"

    def shown(d: Any) -> dict[str, Any]:
        return d.execute_script(
            f'const img = document.querySelector("{card} img.snapshot");'
            f'const wrap = document.querySelector("{card} .snap-wrap");'
            f'const button = document.querySelector("{card} button.view-toggle");'
            "return {src: img.getAttribute('src'), loaded: img.complete && img.naturalWidth,"
            " view: wrap.dataset.view, pressed: button.getAttribute('aria-pressed'),"
            " toggle: !button.hidden && button.offsetParent !== null, alt: img.alt};"
        )

    # The heatmap by default, loaded, with the peak box drawn over it and a pressed "Heatmap" button.
    state = wait_for(driver, lambda d: (s := shown(d))["loaded"] and s, "the heatmap to load")
    assert state["src"].split("?v=")[0] == "/media/" + closed["heatmap"]
    assert (state["view"], state["pressed"], state["toggle"]) == ("heatmap", "true", True)
    assert state["alt"].startswith("evidence heatmap of parking-north")
    assert "heatmap" in driver.find_element(By.CSS_SELECTOR, f"{card} .snap-caption").text.lower()
    rect = driver.find_element(By.CSS_SELECTOR, f"{card} .peak-overlay rect.peak-box")
    box = closed["peak_box"]
    assert [float(rect.get_attribute(k)) for k in ("x", "y")] == [box["x0"], box["y0"]]

    # The button switches to the plain snapshot and back.
    driver.find_element(By.CSS_SELECTOR, f"{card} button.view-toggle").click()
    state = wait_for(
        driver, lambda d: (s := shown(d))["view"] == "snapshot" and s["loaded"] and s, "the plain snapshot"
    )
    assert state["src"].split("?v=")[0] == "/media/" + closed["snapshot"]
    assert state["pressed"] == "false"
    assert driver.find_elements(By.CSS_SELECTOR, f"{card} .peak-overlay rect.peak-box")
    driver.find_element(By.CSS_SELECTOR, f"{card} button.view-toggle").click()
    state = wait_for(driver, lambda d: (s := shown(d))["view"] == "heatmap" and s, "the heatmap again")
    assert state["src"].split("?v=")[0] == "/media/" + closed["heatmap"]

    # The choice holds when the next poll redraws the alert (a label set elsewhere shows it redrew).
    driver.find_element(By.CSS_SELECTOR, f"{card} button.view-toggle").click()
    wait_for(driver, lambda d: shown(d)["view"] == "snapshot", "the snapshot view")
    run.state.set_label(closed["alert_id"], "false_alarm", None)
    wait_for_text(driver, f"{card} .review-label", "false alarm", "the poll's redraw")
    assert shown(driver)["view"] == "snapshot"

    # An alert without a heatmap shows its snapshot and no button.
    old = f"[data-alert-id='{run.alerts['old']['alert_id']}']"
    src = driver.execute_script(f'return document.querySelector("{old} img.snapshot").getAttribute("src");')
    assert src.split("?v=")[0] == "/media/" + run.alerts["old"]["snapshot"]
    assert not driver.find_element(By.CSS_SELECTOR, f"{old} button.view-toggle").is_displayed()
