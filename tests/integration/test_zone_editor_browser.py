"""The review page's zone editor and feedback in a real headless Chromium against a real run.

The run is ``tests/fixtures/zones_world.py``'s traffic view (vans on a road at the top, an injected cyclist
on the right), on the CPU GStreamer graph with ONNX Runtime engines, a JSONL sink and a real mosquitto
broker. The test draws a mask over the road by clicking on the live frame in the editor, saves it, and
checks that the vans stop alerting while the cyclist still alerts with its zone, in the page and over
MQTT; then that a "false alarm" verdict says the camera will learn from it. Screenshots go to a temporary
folder, or to docs/screenshots/ with ``ZSAD_UPDATE_SCREENSHOTS=1`` (``zone_editor.png``, ``zone_alert.png``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fixtures.mosquitto import Broker, Subscriber, wait_until
from tests.fixtures.zones_world import VIDEO_S
from tests.integration.test_web_browser import (  # noqa: F401 - driver and screenshot_dir are fixtures
    driver,
    screenshot_dir,
    wait_for,
    wait_for_text,
)
from tests.integration.test_zones import (  # noqa: F401 - world and broker are fixtures
    CAMERA,
    MARGIN_S,
    Http,
    _alerts_after,
    _camera,
    _stream_time,
    _until_alert,
    _wait_stream,
    _zones_of,
    broker,
    traffic_site,
    world,
)

selenium = pytest.importorskip("selenium", reason="selenium is not installed (make setup installs dev deps)")

from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402

ALERT_WAIT_S = 120.0  # stream events on a loaded 2-core machine
#: The mask the test draws over the road band (y 0.02..0.22), as fractions of the frame: a little inside
#: the frame's edges, as a hand would click, and below the road's edge.
CLICKS = [(0.01, 0.01), (0.99, 0.01), (0.99, 0.26), (0.01, 0.26)]


@pytest.fixture
def run(world: dict[str, Path], tmp_path: Path, broker: Broker) -> Iterator[tuple[Any, Subscriber, Path]]:  # noqa: F811
    """The traffic camera, looped as fast as it decodes, with its alerts to JSONL and MQTT."""
    from tests.fixtures.run_world import make_app

    sub = Subscriber(broker.port, "zsad/+/+/alert")
    out = tmp_path / "out"
    cfg = traffic_site(world, tmp_path, out, broker)
    app = make_app(cfg, realtime=False)
    app.start()
    try:
        yield app, sub, out
    finally:
        app.shutdown()
        sub.close()


def click_at(driver: Any, selector: str, fx: float, fy: float, double: bool = False) -> None:  # noqa: F811
    """Click (or double-click) the element at fractions ``fx``, ``fy`` of its box, as a mouse would."""
    target = driver.find_element(By.CSS_SELECTOR, selector)
    rect = driver.execute_script(
        "const r = arguments[0].getBoundingClientRect(); return [r.width, r.height];", target
    )
    # Selenium 4 offsets are from the element's centre.
    dx, dy = round(fx * rect[0] - rect[0] / 2), round(fy * rect[1] - rect[1] / 2)
    chain = ActionChains(driver).move_to_element_with_offset(target, dx, dy)
    (chain.double_click() if double else chain.click()).perform()


def set_select(driver: Any, select_id: str, value: str) -> None:  # noqa: F811
    driver.execute_script(
        "const s = document.getElementById(arguments[0]); s.value = arguments[1];"
        "s.dispatchEvent(new Event('change'));",
        select_id,
        value,
    )


def set_viewport(driver: Any, width: int, height: int) -> None:  # noqa: F811
    """Size the window so that the page itself gets ``width`` x ``height`` pixels."""
    driver.set_window_size(width, height)
    inner = driver.execute_script("return [window.innerWidth, window.innerHeight];")
    driver.set_window_size(2 * width - inner[0], 2 * height - inner[1])


def alert_card(alert_id: str) -> str:
    return f".alert[data-alert-id='{alert_id}']"


def test_mask_drawn_in_the_editor_stops_the_road_alerts_and_the_zone_shows_on_the_alert(
    driver: Any,  # noqa: F811
    run: tuple[Any, Subscriber, Path],
    screenshot_dir: Path,  # noqa: F811
) -> None:
    app, sub, out = run
    base = app.review_server.url
    api = Http(base)
    set_viewport(driver, 1280, 800)

    # Before the mask, a van on the road alerts (zone "road"); the camera card says it learned nothing yet.
    van = _until_alert(app, lambda a: a["zone"] == "road" and a["status"] == "closed", "a van's alert")
    driver.get(base + "#cameras")
    wait_for_text(
        driver, f".card[data-camera='{CAMERA}'] .learned", "learned from no false alarms yet", "the card"
    )

    # The editor shows the live frame with the site config's zones.
    driver.get(base + f"#zones/{CAMERA}")
    wait_for(
        driver,
        lambda d: d.execute_script("return document.getElementById('z-frame').naturalWidth;") == 320,
        "the camera's live frame in the editor",
    )
    wait_for(
        driver,
        lambda d: (
            [e.text for e in d.find_elements(By.CSS_SELECTOR, "#z-list .zone-name")]
            == ["zone road", "zone flagpole", "zone east"]
        ),
        "the config's zones listed",
    )
    assert len(driver.find_elements(By.CSS_SELECTOR, "#z-overlay polygon.z-zone")) == 3

    # A zone the API refuses: the problem is shown next to the form, naming the field; nothing is written.
    driver.find_element(By.ID, "z-kind-zone").click()
    driver.find_element(By.ID, "z-name").send_keys("gate 2")
    for fx, fy in [(0.4, 0.5), (0.5, 0.5), (0.45, 0.6)]:
        click_at(driver, "#z-overlay", fx, fy)
    driver.find_element(By.ID, "z-close").click()
    assert (
        driver.find_elements(By.CSS_SELECTOR, "#z-overlay polygon.z-zone")[-1].get_attribute("data-index")
        == "3"
    )
    driver.find_element(By.ID, "z-save").click()
    wait_for(
        driver,
        lambda d: (
            [e.get_attribute("data-field") for e in d.find_elements(By.CSS_SELECTOR, "#z-problems li")]
            == ["zones[3].name"]
        ),
        "the refused zone name shown by its field",
    )
    assert "Not saved" in driver.find_element(By.ID, "z-status").text
    assert not (out / "overrides" / f"{CAMERA}.yaml").exists()
    # Delete it from the keyboard.
    delete = driver.find_element(
        By.CSS_SELECTOR, "#z-list li[data-kind='zone'][data-index='3'] button.delete"
    )
    assert delete.get_attribute("aria-label") == "delete zone gate 2"
    delete.send_keys(Keys.ENTER)
    wait_for(
        driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#z-overlay polygon.z-zone")) == 3, "deletion"
    )

    # Draw the mask over the road: three clicks, then a double-click on the fourth corner closes it.
    driver.find_element(By.ID, "z-kind-mask").click()
    for fx, fy in CLICKS[:3]:
        click_at(driver, "#z-overlay", fx, fy)
    click_at(driver, "#z-overlay", *CLICKS[3], double=True)
    wait_for(
        driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#z-overlay polygon.z-mask")) == 1, "the mask"
    )
    driver.find_element(By.ID, "z-save").click()
    wait_for(
        driver,
        lambda d: d.find_element(By.ID, "z-status").text.startswith(f"Saved to overrides/{CAMERA}.yaml"),
        "the save",
    )
    changed = _stream_time(app)  # the API applied the mask before the page showed "Saved"
    status, zones = api.request("GET", f"/api/cameras/{CAMERA}/zones")
    assert status == 200
    assert zones["overrides"]["keys"] == ["mask"]  # only what the operator changed is overridden
    (mask,) = zones["mask"]
    assert len(mask) == 4
    for (x, y), (fx, fy) in zip(mask, CLICKS, strict=True):
        assert (x, y) == (pytest.approx(fx, abs=0.01), pytest.approx(fy, abs=0.01)), mask
    assert zones["grid"]["mask"][0] == [1] * 8  # the road's cells are removed from every stream's map
    assert zones["grid"]["mask"][3] == [0] * 8
    assert yaml.safe_load((out / "overrides" / f"{CAMERA}.yaml").read_text()) == {"mask": zones["mask"]}
    assert not driver.find_elements(By.CSS_SELECTOR, "#z-problems li")
    driver.save_screenshot(str(screenshot_dir / "zone_editor.png"))

    # A full pass after the mask: the vans pass three more times and raise nothing; the cyclist alerts. A
    # pass that starts during the cyclist's ride holds only the next ride's onset, so its close is waited
    # for (the second pass at most) rather than expected within the first.
    _wait_stream(app, changed + VIDEO_S, "a pass after the mask")
    cyclist = _until_alert(
        app,
        lambda a: a["zone"] == "east" and a["status"] == "closed" and a["start_pts"] > changed + MARGIN_S,
        "the cyclist's alert after the mask",
    )
    after = _alerts_after(app, changed + MARGIN_S)
    assert "road" not in _zones_of(after)

    # The page: the zone filter, the zone on the alert and the peak box on its snapshot.
    driver.get(base + "#alerts")
    wait_for(
        driver, lambda d: d.find_elements(By.CSS_SELECTOR, alert_card(cyclist["alert_id"])), "the cyclist"
    )
    wait_for(
        driver,
        lambda d: (
            "road" in [o.get_attribute("value") for o in d.find_elements(By.CSS_SELECTOR, "#f-zone option")]
        ),
        "the zone filter's options",
    )
    set_select(driver, "f-zone", "road")
    wait_for(
        driver,
        lambda d: (
            not d.find_elements(By.CSS_SELECTOR, alert_card(cyclist["alert_id"]))
            and d.find_elements(By.CSS_SELECTOR, alert_card(van["alert_id"]))
        ),
        "only road alerts",
    )
    road_ids = [e.get_attribute("data-alert-id") for e in driver.find_elements(By.CSS_SELECTOR, ".alert")]
    starts = {a["alert_id"]: a["start_pts"] for a in app.run_state.alerts(camera=CAMERA, limit=1000)}
    assert all(starts[i] < changed + MARGIN_S for i in road_ids), "a road alert after the mask"
    assert {e.text.lower() for e in driver.find_elements(By.CSS_SELECTOR, ".alert .chip.zone")} == {
        "zone road"
    }

    # "False alarm" on the newest van: the page says the camera will learn from it, and the card counts it.
    card = alert_card(road_ids[0])
    driver.find_element(By.CSS_SELECTOR, f"{card} button.false-alarm").click()
    wait_for(
        driver,
        lambda d: d.find_element(By.CSS_SELECTOR, f"{card} .learning").text.startswith(
            f"{CAMERA} will learn from this: the same scene there stops alarming · learned from 1 false alarm"
        ),
        "the learning note",
    )
    assert app.run_state.alert(road_ids[0])["review"]["label"] == "false_alarm"
    wait_for(
        driver,
        lambda d: (
            d.execute_script(f'return document.querySelector("{card} img.snapshot").naturalWidth;') == 320
        ),
        "the van's snapshot",
    )
    assert driver.find_elements(By.CSS_SELECTOR, f"{card} .peak-overlay rect.peak-box")
    driver.save_screenshot(str(screenshot_dir / "zone_alert.png"))

    set_select(driver, "f-zone", "east")
    cyc = alert_card(cyclist["alert_id"])
    wait_for(driver, lambda d: not d.find_elements(By.CSS_SELECTOR, card), "only east alerts")
    wait_for_text(driver, f"{cyc} .chip.zone", "zone east", "the cyclist's zone on the page")
    wait_for(
        driver,
        lambda d: (
            d.execute_script(f'return document.querySelector("{cyc} img.snapshot").naturalWidth;') == 320
        ),
        "the cyclist's snapshot",
    )
    box = cyclist["peak_box"]
    rect = driver.find_element(By.CSS_SELECTOR, f"{cyc} .peak-overlay rect.peak-box")
    assert [float(rect.get_attribute(k)) for k in ("x", "y")] == [box["x0"], box["y0"]]
    assert float(rect.get_attribute("width")) == box["x1"] - box["x0"]
    assert (
        driver.find_element(By.CSS_SELECTOR, f"{cyc} .peak-overlay").get_dom_attribute("viewBox")
        == "0 0 320 240"
    )

    # The camera card shows what it learned and when.
    driver.get(base + "#cameras")
    wait_for(
        driver,
        lambda d: d.find_element(By.CSS_SELECTOR, f".card[data-camera='{CAMERA}'] .learned").text.startswith(
            "learned from 1 false alarm (last: "
        ),
        "the card's learned count",
    )

    # The MQTT record of the cyclist's alert carries the zone, in its topic and its body.
    wait_until(
        lambda: any(m["alert_id"] == cyclist["alert_id"] for m in sub.received()),
        timeout=30,
        what="the cyclist's record over MQTT",
    )
    mqtt = [(t, m) for t, m in sub.received_with_topics() if m["alert_id"] == cyclist["alert_id"]]
    assert {t for t, _ in mqtt} == {f"zsad/{CAMERA}/east/alert"}
    assert {m["zone"] for _, m in mqtt} == {"east"}


def test_the_editor_lists_the_running_cameras_only(
    driver: Any,  # noqa: F811
    run: tuple[Any, Subscriber, Path],
    world: dict[str, Path],  # noqa: F811
) -> None:
    """A camera added while the page is open appears in the editor's list; once removed it goes (its zones
    can no longer be edited), while the alert filter keeps it (its alerts stay)."""
    import json

    from core.config import parse_config

    app = run[0]
    driver.get(app.review_server.url + f"#zones/{CAMERA}")

    def options(d: Any, select: str) -> list[str]:
        # Read in the page, at once: the live lists re-render, so an option found by one call can be gone
        # (stale) when the next reads it.
        return list(
            d.execute_script(f"return [...document.querySelectorAll('{select} option')].map(o => o.value)")
        )

    def listed(d: Any) -> list[str]:
        return options(d, "#z-camera")

    wait_for(driver, lambda d: listed(d) == [CAMERA], "the running camera listed")
    lobby = {"id": "lobby", "uri": f"loop://{world['flag']}", "context": "campus"}
    site = {**json.loads(json.dumps(app.cfg.model_dump(mode="json"))), "cameras": [lobby]}
    app.add_camera(parse_config(json.dumps(site), "<test>").camera_settings("lobby"))
    wait_for(driver, lambda d: listed(d) == [CAMERA, "lobby"], "the added camera listed")
    app.remove_camera("lobby")
    wait_for(driver, lambda d: listed(d) == [CAMERA], "the removed camera gone")
    assert "lobby" in options(driver, "#f-camera")
