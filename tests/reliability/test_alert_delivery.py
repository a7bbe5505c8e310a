"""Alert delivery through the whole application under sink faults, against a real mosquitto:

* the broker stops in the middle of a burst of alerts and comes back: zero loss, order kept, duplicates
  marked ``redelivered``;
* SIGTERM while an alert is open and the broker is down: the alert is closed (reason "shutdown") into the
  spool, and a new run on the same output folder delivers it once the broker is back.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO
from tests.fixtures.mosquitto import MOSQUITTO, Broker, Subscriber, wait_until
from tests.fixtures.ports import PortHold
from tests.fixtures.run_world import ALWAYS_ON, CYCLING, make_app, read_jsonl, site_config, write_site

pytest.importorskip("gi")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not MOSQUITTO.exists(), reason="mosquitto is not installed"),
]

TOPIC = "zsad/alerts"


def _key(record: dict[str, Any]) -> tuple[str, str]:
    return record["alert_id"], record["status"]


def _check_complete_in_order(expected: list[dict[str, Any]], received: list[dict[str, Any]]) -> int:
    """Every expected record arrived, first copies in the expected order, any repeat marked; returns the
    number of repeats."""
    first: list[tuple[str, str]] = []
    repeats = 0
    for m in received:
        if _key(m) in first:
            assert m["redelivered"] is True, f"unmarked duplicate {m}"
            repeats += 1
        else:
            first.append(_key(m))
    assert first == [_key(r) for r in expected]
    return repeats


def test_broker_outage_during_an_alert_burst_loses_nothing(
    world: dict[str, Path], tmp_path: Path, record_property: Any
) -> None:
    broker = Broker(tmp_path / "broker")
    broker.start()
    sub = Subscriber(broker.port, TOPIC)
    videos = world["videos"]
    cameras = [
        {"id": f"cam{i}", "uri": f"loop://{videos / name}", "alerts": CYCLING[Path(name).stem]}
        for i, name in enumerate(["campus_000.mp4", "parking_000.mp4"] * 2)
    ]
    sinks = [{"kind": "jsonl"}, {"kind": "mqtt", "host": "127.0.0.1", "port": broker.port, "topic": TOPIC}]
    out = tmp_path / "out"
    app = make_app(site_config(world, out, cameras, ui={"enabled": False}, sinks=sinks))
    mqtt = next(s for s in app.sinks.sinks if s.kind == "mqtt")
    app.start()
    try:
        wait_until(lambda: len(sub.received()) >= 4, timeout=30, what="alerts before the outage")
        broker.stop(hold=True)
        published_before = len(read_jsonl(out / "alerts.jsonl"))
        wait_until(lambda: mqtt.pending >= 4, timeout=30, what="alerts spooled during the outage")
        record_property("spooled_during_outage", mqtt.pending)
        broker.start()  # same port, same persistence
        wait_until(lambda: mqtt.pending == 0, timeout=60, what="the spool to drain")
        time.sleep(3.0)  # a few more alerts after the recovery
    finally:
        left = app.shutdown()
    assert left == dict.fromkeys(left, 0)
    expected = read_jsonl(out / "alerts.jsonl")  # the JSONL sink: every record published, in order
    assert len(expected) >= published_before + 4
    wait_until(lambda: len({_key(m) for m in sub.received()}) >= len(expected), timeout=20, what="subscriber")
    sub.close()
    broker.stop()
    repeats = _check_complete_in_order(expected, sub.received())
    record_property("records", len(expected))
    record_property("marked_repeats", repeats)
    assert {r["status"] for r in expected} == {"open", "closed"}


def test_sigterm_mid_alert_with_the_broker_down_delivers_on_the_next_run(
    world: dict[str, Path], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    down = PortHold()  # the broker is down: nothing listens here, and no other test's server can
    request.addfinalizer(down.release)  # released below before the broker starts; harmless twice
    port = down.port
    out = tmp_path / "out"
    sink = {"kind": "mqtt", "host": "127.0.0.1", "port": port, "topic": TOPIC}
    cam = {"id": "door", "uri": f"loop://{world['videos'] / 'campus_000.mp4'}"}
    site = write_site(world, out, [cam], ALWAYS_ON, sinks=[sink])
    # The log goes to a file, not a pipe read at the end: a verbose run retrying a broker that is down can
    # write more than a pipe holds, and would then block on its own log.
    log_path = tmp_path / "run1.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli.main", "-v", "run", str(site)],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
    spool = out / "spool"

    def spooled() -> list[dict[str, Any]]:
        return [json.loads(p.read_text()) for p in sorted(spool.glob("mqtt-*/*.json"))]

    try:
        wait_until(lambda: len(spooled()) >= 1, timeout=60, what="the open record in the spool")
        # SIGHUP re-reads the (unchanged) config: the process goes on.
        proc.send_signal(signal.SIGHUP)
        time.sleep(1.5)
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = log_path.read_text()
    assert code == 0, stderr[-3000:]
    assert "re-reading the config" in stderr
    assert "alerts still spooled" in stderr
    left = spooled()
    assert [(r["status"], r["reason"]) for r in left] == [("open", None), ("closed", "shutdown")]
    alert_id = left[0]["alert_id"]

    # The broker is back; a new run on the same output folder (no cameras) delivers the spool, marked.
    broker = Broker(tmp_path / "broker", port=down.release())
    broker.start()
    sub = Subscriber(port, TOPIC)
    try:
        site2 = write_site(world, out, [], sinks=[sink])
        r = subprocess.run(
            [sys.executable, "-m", "pipeline.cli.main", "run", str(site2), "--duration", "6"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert r.returncode == 0, r.stderr[-3000:]
        wait_until(lambda: len(sub.received()) >= 2, timeout=10, what="the spooled alert")
        got = sub.received()
    finally:
        sub.close()
        broker.stop()
    assert [(m["alert_id"], m["status"], m["reason"], m["redelivered"]) for m in got] == [
        (alert_id, "open", None, True),
        (alert_id, "closed", "shutdown", True),
    ]
    assert spooled() == []
