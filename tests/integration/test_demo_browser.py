"""The review page in headless Chromium against a live run of the demo: the shipped model, 4 synthetic
cameras in real time, the real review server of ``zsad run``.

Checks what an operator sees: the demo cameras listed and their sparklines moving; an alert with its
snapshot and a playable clip; an acknowledgement that survives a reload. With
``ZSAD_UPDATE_SCREENSHOTS=1`` the screenshots in docs/screenshots/ are rewritten from this run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO
from tests.fixtures.demo_world import DemoArtefacts, demo_config

pytest.importorskip("selenium", reason="selenium is not installed (make setup installs dev deps)")
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.by import By

from tests.integration.test_web_browser import (
    driver,  # noqa: F401
    wait_for,
    wait_for_text,
)


@pytest.fixture(scope="module")
def demo_run(
    tmp_path_factory: pytest.TempPathFactory, demo_artefacts: DemoArtefacts
) -> Iterator[tuple[str, Path, list[str]]]:
    """The session's demo scenes, engines and calibrations (``demo_artefacts``), then ``zsad run`` in real
    time."""
    import yaml

    from core.config import load_config
    from pipeline.cli.demo import prepare_calibration

    tmp = tmp_path_factory.mktemp("demo-ui")
    out = tmp / "demo"
    demo_artefacts.copy_into(out)
    cfg_data = demo_config(out, demo_artefacts.engines)
    # Port 0: the server takes a free port itself (one chosen here could be taken before the run binds it),
    # and the run prints the page's address.
    cfg_data["ui"] = {"port": 0}
    for cam in cfg_data["cameras"]:
        # loop://: the run (and its review server) must outlast the test, however slow the machine.
        cam["uri"] = cam["uri"].replace("file://", "loop://", 1)
    site = tmp / "site.yaml"
    site.write_text(yaml.safe_dump(cfg_data))
    # The calibrations are up to date: this only points each camera at its file.
    cfg = prepare_calibration(load_config(site), out / "scenes", out / "calibration")
    site.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli.main", "run", str(site)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    url: list[str] = []
    announced = threading.Event()

    def read_stdout() -> None:  # to its end: a pipe nobody reads would block the run once full
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("review page: ") and not url:
                url.append(line.split(": ", 1)[1].strip())
                announced.set()

    threading.Thread(target=read_stdout, daemon=True).start()
    try:
        assert announced.wait(180), "the run never printed its review page's address"
        yield url[0].rstrip("/") + "/", out, [c["id"] for c in cfg_data["cameras"]]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _shots() -> Path | None:
    return REPO / "docs" / "screenshots" if os.environ.get("ZSAD_UPDATE_SCREENSHOTS") == "1" else None


def test_review_page_on_the_live_demo(driver: Any, demo_run: tuple[str, Path, list[str]]) -> None:  # noqa: F811
    url, out, cameras = demo_run
    driver.set_window_size(1440, 530)
    deadline = time.monotonic() + 60
    while True:  # the server starts a few seconds after the process
        try:
            driver.get(url + "#cameras")
            break
        except WebDriverException:  # connection refused until the server listens
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    wait_for(
        driver,
        lambda d: len(d.find_elements(By.CSS_SELECTOR, ".card")) == len(cameras),
        "the demo cameras",
        timeout=30,
    )
    shown = [c.get_attribute("data-camera") for c in driver.find_elements(By.CSS_SELECTOR, ".card")]
    assert sorted(shown) == sorted(cameras)
    line = f"[data-camera='{cameras[0]}'] .spark-score"
    get_points = f"const l = document.querySelector(\"{line}\"); return l && l.getAttribute('points');"
    first = wait_for(driver, lambda d: d.execute_script(get_points), "a sparkline", timeout=30)
    wait_for(driver, lambda d: d.execute_script(get_points) != first, "the sparkline to move", timeout=20)
    if _shots():
        time.sleep(8)
        driver.save_screenshot(str(_shots() / "cameras.png"))

    # The vehicle on campus-2 (from about 17 s) and the cyclist on campus-1 (about 20 s) raise alerts;
    # wait for a closed one whose clip has been written.
    driver.set_window_size(1440, 1300)
    driver.get(url + "#alerts")
    script = (
        "const v = [...document.querySelectorAll('.alert video.clip')].find(v => v.readyState >= 1);"
        "return v ? v.closest('.alert').dataset.alertId : null;"
    )
    alert_id = wait_for(
        driver, lambda d: d.execute_script(script), "an alert with a playable clip", timeout=90
    )
    card = f"[data-alert-id='{alert_id}']"
    assert driver.execute_script(f'return document.querySelector("{card} img.snapshot").naturalWidth;') > 0
    assert driver.execute_script(f'return document.querySelector("{card} video.clip").duration;') > 0
    assert (out / "events").is_dir()
    driver.find_element(By.CSS_SELECTOR, f"{card} button.ack").click()
    label = f"{card} .review-label"
    wait_for_text(driver, label, "acknowledged", "the ack")
    driver.refresh()
    wait_for_text(driver, label, "acknowledged", "the ack after a reload")
    if _shots():
        driver.save_screenshot(str(_shots() / "alerts.png"))
