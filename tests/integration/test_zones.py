"""Masks, zones and false-alarm feedback on real components: the CPU GStreamer graph, ONNX Runtime engines,
the review server over HTTP, the JSONL sink and a real mosquitto broker.

The camera is ``tests/fixtures/zones_world.py``'s campus, looped as fast as it decodes (``loop://`` without
real time: nothing is dropped, and stream time keeps growing across passes). Checks are on stream time: a
change made through the API applies to every clip scored after it, so the test notes the stream time when
the API answered and looks at what opened after it, over the next two passes of the video.
"""

from __future__ import annotations

import http.client
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.fixtures.mosquitto import MOSQUITTO, Broker, Subscriber, wait_until
from tests.fixtures.run_world import make_app, read_jsonl
from tests.fixtures.zones_world import (
    ALERTS,
    ROAD_MASK,
    VIDEO_S,
    ZONES,
    write_site,
    zones_site,
)

CAMERA = "yard"
PASSES = 2  # passes of the video to watch after a change: each holds every prop event and the cyclist
MARGIN_S = 1.0  # stream seconds after a change in which a clip may still have been in flight


@pytest.fixture
def world(zones_world: dict[str, Path]) -> dict[str, Path]:
    """Engines, videos and calibrations, built once for the session (``zones_world``)."""
    return zones_world


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    if not MOSQUITTO.exists():
        pytest.skip("mosquitto is not installed")
    b = Broker(tmp_path / "broker")
    b.start()
    yield b
    b.stop()


class Http:
    """A small JSON client for the review server."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            headers = {"Content-Type": "application/json"} if body is not None else {}
            data = json.dumps(body).encode() if body is not None else None
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
            ctype = resp.getheader("Content-Type", "")
            return resp.status, json.loads(raw) if ctype.startswith("application/json") else raw
        finally:
            conn.close()


def _camera(world: dict[str, Path], tmp_path: Path, view: str, **extra: Any) -> dict[str, Any]:
    """The looped camera with its own copy of the view's calibration (its learned levels go beside it)."""
    calibration = tmp_path / "calib" / f"{view}.json"
    calibration.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(world[f"{view}-calibration"], calibration)
    return {
        "id": CAMERA,
        "uri": f"loop://{world[view]}",
        "context": "campus",
        "calibration": str(calibration),
        "zones": ZONES,
        **extra,
    }


def _stream_time(app: Any) -> float:
    points = app.run_state.scores(CAMERA)
    return float(points[-1]["t"]) if points else 0.0


def _wait_stream(app: Any, t: float, what: str) -> None:
    wait_until(lambda: _stream_time(app) >= t, timeout=120, what=what)


def _alerts_after(app: Any, t: float) -> list[dict[str, Any]]:
    """Alerts of the camera whose onset is after stream time ``t``, oldest first."""
    alerts = [a for a in app.run_state.alerts(camera=CAMERA, limit=1000) if a["start_pts"] > t]
    return sorted(alerts, key=lambda a: a["start_pts"])


def _zones_of(alerts: list[dict[str, Any]]) -> list[str | None]:
    return [a["zone"] for a in alerts]


def _until_alert(app: Any, test: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = []

    def seen() -> bool:
        found[:] = [a for a in app.run_state.alerts(camera=CAMERA, limit=1000) if test(a)]
        return bool(found)

    wait_until(seen, timeout=120, what=what)
    return sorted(found, key=lambda a: a["start_pts"])[0]


def traffic_site(world: dict[str, Path], tmp_path: Path, out: Path, broker: Broker) -> dict[str, Any]:
    """The traffic camera's site, its alerts to JSONL and to MQTT with the zone in the topic."""
    return zones_site(
        world,
        out,
        _camera(world, tmp_path, "traffic"),
        ALERTS,
        sinks=[
            {"kind": "jsonl", "path": "alerts.jsonl"},
            {"kind": "mqtt", "host": "127.0.0.1", "port": broker.port, "topic": "zsad/{camera}/{zone}/alert"},
        ],
    )


def test_mask_over_the_road_stops_its_alerts_and_the_cyclist_still_alerts_with_its_zone(
    world: dict[str, Path], tmp_path: Path, broker: Broker
) -> None:
    sub = Subscriber(broker.port, "zsad/+/+/alert")
    out = tmp_path / "out"
    cfg = traffic_site(world, tmp_path, out, broker)
    site = write_site(tmp_path / "site.yaml", cfg)
    site_text = site.read_text()
    app = make_app(cfg, realtime=False)
    app.start()
    try:
        api = Http(app.review_server.url)
        # Before the mask: the vans on the road alert, tagged "road"; the cyclist alerts, tagged "east".
        _until_alert(app, lambda a: a["zone"] == "road" and a["status"] == "closed", "a van's alert")
        _until_alert(app, lambda a: a["zone"] == "east" and a["status"] == "closed", "the cyclist's alert")
        before = app.run_state.alerts(camera=CAMERA, limit=1000)
        assert set(_zones_of(before)) <= {"road", "east"}, "something else alerted: the thresholds drifted"
        since = app.run_state.cameras()[0]["state_since"]

        # Draw the mask over the road on the review page: PUT the camera's zones.
        status, body = api.request("PUT", f"/api/cameras/{CAMERA}/zones", {"mask": ROAD_MASK})
        assert status == 200, body
        changed = _stream_time(app)
        assert body["mask"] == ROAD_MASK
        assert body["overrides"] == {"path": f"overrides/{CAMERA}.yaml", "exists": True, "keys": ["mask"]}
        assert body["grid"]["mask"][0] == [1] * 8  # the top row of the 6 x 8 grid is ignored now
        assert body["grid"]["mask"][3] == [0] * 8
        overrides = out / "overrides" / f"{CAMERA}.yaml"
        assert "mask:" in overrides.read_text()
        assert site.read_text() == site_text  # the operator's YAML, comments and all, is never rewritten

        # Two more passes: the vans pass twice more and raise nothing; the cyclist alerts each pass.
        _wait_stream(app, changed + PASSES * VIDEO_S, f"{PASSES} passes after the mask")
        after = _alerts_after(app, changed + MARGIN_S)
        assert "road" not in _zones_of(after)
        assert _zones_of(after).count("east") >= PASSES
        assert set(_zones_of(after)) == {"east"}
        # The camera kept running: its pipeline was never restarted for the new mask.
        assert app.run_state.cameras()[0]["state_since"] == since
        assert app.run_state.cameras()[0]["zones"]["masks"] == 1

        # The zone is in the JSONL record and in the MQTT record and topic.
        cyclist = next(a for a in after if a["status"] == "closed")
        box = cyclist["peak_box"]
        assert (box["width"], box["height"]) == (320, 240)  # the snapshot's frame
        assert box["x0"] >= 160, box  # the cyclist rides on the right half of the view
        wait_until(
            lambda: any(r["alert_id"] == cyclist["alert_id"] for r in read_jsonl(out / "alerts.jsonl")),
            timeout=30,
            what="the cyclist's record in alerts.jsonl",
        )
        jsonl = [r for r in read_jsonl(out / "alerts.jsonl") if r["alert_id"] == cyclist["alert_id"]]
        assert {r["zone"] for r in jsonl} == {"east"}
        wait_until(
            lambda: any(m["alert_id"] == cyclist["alert_id"] for m in sub.received()),
            timeout=30,
            what="the cyclist's record over MQTT",
        )
        mqtt = [(t, m) for t, m in sub.received_with_topics() if m["alert_id"] == cyclist["alert_id"]]
        assert {t for t, _ in mqtt} == {f"zsad/{CAMERA}/east/alert"}
        assert {m["zone"] for _, m in mqtt} == {"east"}
        # The MQTT payload names the heatmap as it names the snapshot, and the file exists.
        assert {m["heatmap"] for _, m in mqtt} == {cyclist["heatmap"]}
        assert (out / cyclist["heatmap"]).is_file()
        assert any(t == f"zsad/{CAMERA}/road/alert" for t, _ in sub.received_with_topics())  # before
        # The review page's API filters by zone.
        status, listed = api.request("GET", f"/api/alerts?camera={CAMERA}&zone=road&limit=1000")
        assert status == 200
        assert {a["zone"] for a in listed["alerts"]} == {"road"}
        assert all(a["start_pts"] < changed + MARGIN_S for a in listed["alerts"])
    finally:
        app.shutdown()
        sub.close()


def test_false_alarm_teaches_the_camera_and_unmarking_restores_the_alarms(
    world: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    cfg = zones_site(world, out, _camera(world, tmp_path, "flag"), ALERTS)
    app = make_app(cfg, realtime=False)
    app.start()
    try:
        api = Http(app.review_server.url)
        # The flag alarms; its first alarm is marked "false alarm" on the review page.
        first = _until_alert(
            app, lambda a: a["zone"] == "flagpole" and a["status"] == "closed", "a flag alarm"
        )
        assert first["seq"] == 1
        assert set(_zones_of(app.run_state.alerts(camera=CAMERA, limit=1000))) <= {"flagpole", "east"}
        status, body = api.request("POST", f"/api/alerts/{first['alert_id']}/label", {"label": "false_alarm"})
        assert status == 200, body
        marked = _stream_time(app)
        learning = body["learning"]
        assert learning["labels"] == 1
        assert learning["alerts"] == [first["alert_id"]]
        assert [v["action"] for v in learning["versions"]] == ["learn"]
        learned_dir = tmp_path / "calib" / "flag.learned"
        assert (learned_dir / "index.json").is_file()
        assert (learned_dir / "v0001.npz").is_file()
        status, cams = api.request("GET", "/api/cameras")
        assert cams["cameras"][0]["learned"]["labels"] == 1
        assert cams["cameras"][0]["learned"]["updated"] == learning["updated"]

        # The next occurrences of the flag do not alarm; the cyclist, elsewhere, still does.
        _wait_stream(app, marked + PASSES * VIDEO_S, f"{PASSES} passes after the false alarm")
        after = _alerts_after(app, marked + MARGIN_S)
        assert "flagpole" not in _zones_of(after)
        assert _zones_of(after).count("east") >= PASSES
        assert app.metrics.feedback_labels.value(camera=CAMERA, action="learn") == 1
        assert app.metrics.learned_labels.value(camera=CAMERA) == 1
        status, metrics_text = Http(app.metrics_server.url).request("GET", "/metrics")
        assert f'zsad_feedback_labels_total{{camera="{CAMERA}",action="learn"}} 1' in metrics_text.decode()

        # Un-marking restores the previous state, as a new version: the flag alarms again.
        status, body = api.request("POST", f"/api/alerts/{first['alert_id']}/label", {"label": None})
        assert status == 200, body
        unmarked = _stream_time(app)
        assert body["learning"]["labels"] == 0
        assert [v["action"] for v in body["learning"]["versions"]] == ["learn", "forget"]
        _wait_stream(app, unmarked + VIDEO_S, "a pass after un-marking")
        again = _alerts_after(app, unmarked + MARGIN_S)
        assert "flagpole" in _zones_of(again)
        assert app.metrics.feedback_labels.value(camera=CAMERA, action="forget") == 1
        assert app.metrics.learned_labels.value(camera=CAMERA) == 0
    finally:
        app.shutdown()


def test_zones_api_validates_and_overrides_reload_without_restart(
    world: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "out"
    overrides = out / "overrides" / f"{CAMERA}.yaml"
    overrides.parent.mkdir(parents=True)
    overrides.write_text("mask:\n  - [[0, 0], [2, 0], [1, 1]]\n")  # invalid: x = 2 is outside the frame
    camera = {"id": CAMERA, "uri": f"file://{world['traffic']}", "context": "campus", "zones": ZONES}
    cfg = zones_site(world, out, camera, ALERTS)
    site = write_site(tmp_path / "site.yaml", cfg)
    app = make_app(cfg, realtime=False)
    app.start()
    try:
        # An invalid overrides file: the camera starts with its site-config zones, and the log says why.
        assert f"{overrides}:2: mask[0][1][0]" in caplog.text
        api = Http(app.review_server.url)
        status, zones = api.request("GET", f"/api/cameras/{CAMERA}/zones")
        assert status == 200
        assert [z["name"] for z in zones["zones"]] == ["road", "flagpole", "east"]
        assert zones["mask"] == []
        assert zones["overrides"]["keys"] == []
        wait_until(lambda: app.graph.states().get(CAMERA) == "eos", timeout=60, what="the video's end")

        # A bad body is refused with every problem named, and nothing is written.
        bad = {"zones": [{"name": "gate", "points": [[0, 0], [1, 1]]}], "alert_zones": ["road"], "colour": 1}
        status, body = api.request("PUT", f"/api/cameras/{CAMERA}/zones", bad)
        assert status == 400
        fields = {p["field"] for p in body["problems"]}
        assert fields == {"zones[0].points", "colour"}, body
        assert body["error"].startswith("invalid zones: ")
        assert overrides.read_text().startswith("mask:\n  - [[0, 0], [2, 0]")
        status, body = api.request("PUT", f"/api/cameras/{CAMERA}/zones", {"alert_zones": ["gate"]})
        assert status == 400
        assert "unknown zone 'gate'" in body["error"]
        assert api.request("PUT", "/api/cameras/nobody/zones", {"mask": []})[0] == 404
        assert api.request("GET", "/api/cameras/nobody/learned")[0] == 404

        # A good body: written as the overrides file and in force at once. It names the version it was
        # edited from (what GET gave), so that a second editor's older view cannot overwrite it.
        version = app.outputs.filters.get(CAMERA).version
        edit = {"alert_zones": ["east"], "version": zones["version"]}
        status, body = api.request("PUT", f"/api/cameras/{CAMERA}/zones", edit)
        assert status == 200, body
        assert body["version"] != zones["version"]
        stale = {"mask": [], "version": zones["version"]}  # the other editor, who loaded the zones before
        status, refused = api.request("PUT", f"/api/cameras/{CAMERA}/zones", stale)
        assert status == 409, refused
        assert "zones changed since this edit began" in refused["error"]
        assert api.request("PUT", f"/api/cameras/{CAMERA}/zones", {"mask": [], "version": 3})[0] == 400
        assert body["alert_zones"] == ["east"]
        assert body["overrides"]["keys"] == ["alert_zones"]
        assert app.outputs.filters.get(CAMERA).version > version
        assert app.outputs.alerts[CAMERA].zones.alert_zones == ("east",)
        assert yaml.safe_load(overrides.read_text()) == {"alert_zones": ["east"]}

        # The live frame the page draws zones on.
        status, jpeg = api.request("GET", f"/api/cameras/{CAMERA}/frame.jpg")
        assert status == 200
        assert jpeg[:2] == b"\xff\xd8"

        # A hand edit of the overrides file and a zones-only change of the site config apply on reload
        # (SIGHUP) without restarting the camera.
        overrides.write_text("mask:\n  - [[0, 0], [1, 0], [1, 0.25], [0, 0.25]]\n")
        result = app.reload_file(site)
        assert result is not None
        assert (result.rezoned, result.restarted) == ([CAMERA], [])
        assert app.outputs.alerts[CAMERA].zones.has_mask
        assert app.outputs.alerts[CAMERA].zones.alert_zones is None  # the file no longer sets it
        cfg["cameras"][0]["zones"] = [
            *ZONES,
            {"name": "bench", "points": [[0.4, 0.4], [0.5, 0.4], [0.5, 0.5]]},
        ]
        write_site(site, cfg)
        result = app.reload_file(site)
        assert result is not None
        assert (result.rezoned, result.restarted) == ([CAMERA], [])
        assert [z.name for z in app.outputs.alerts[CAMERA].zones.zones][-1] == "bench"
        status, cams = api.request("GET", "/api/cameras")
        assert cams["cameras"][0]["zones"]["names"] == ["road", "flagpole", "east", "bench"]

        # The memory streams' sections are read when the run starts (the scorer's schedule, the feeds'
        # spacing): a change is reported as needing a restart, not applied, and no camera restarts for it.
        write_site(site, {**cfg, "appearance": {"spacing_s": 2.4}, "objects": {"spacing_s": 0.4}})
        result = app.reload_file(site)
        assert result is not None
        assert (result.needs_restart, result.restarted) == (["appearance", "objects"], [])
        write_site(site, cfg)

        # DELETE goes back to the site config's zones.
        status, body = api.request("DELETE", f"/api/cameras/{CAMERA}/zones")
        assert status == 200, body
        assert not overrides.exists()
        assert body["mask"] == []
        assert body["overrides"] == {"path": f"overrides/{CAMERA}.yaml", "exists": False, "keys": []}
    finally:
        app.shutdown()


def test_zsad_calibrate_prints_which_streams_the_camera_trusts(
    world: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`zsad calibrate` on the flag view's normal footage writes a version 2 calibration with a reliability
    weight and a reason per stream, and prints the same as a table."""
    from pipeline.cli.main import main
    from plugins.fusion import load_calibration

    footage = f"file://{world['root'] / 'flag-normal.mp4'}"
    camera = {"id": "flagpole", "uri": footage}
    site = write_site(tmp_path / "site.yaml", zones_site(world, tmp_path / "run", camera, {}))
    out = tmp_path / "calib" / "flagpole.json"
    code = main(["calibrate", str(site), "--camera", "flagpole", "--footage", footage, "--out", str(out)])
    captured = capsys.readouterr()
    printed = captured.out
    assert code == 0, printed + captured.err
    cal = load_calibration(out)
    assert cal.rule == "max"
    lines = printed.splitlines()
    assert lines[0].startswith(
        f"camera flagpole: {cal.n_samples} clips, fusion rule max, calibrated threshold "
    )
    assert cal.agreement is not None  # the max rule's term, placed on the camera's normal footage
    assert lines[1].startswith(f"agreement term: {cal.agreement.offset:.3f} + {cal.agreement.slope:.3f} x ")
    assert lines[2].split()[:2] == ["stream", "weight"]
    for name, stats in cal.streams.items():
        row = next(line for line in lines if line.startswith(name + " "))
        assert f"{stats.weight:.2f}" in row
        assert stats.reason in row
        # Enough clips for two folds of 10: every stream was assessed on held-out footage.
        assert stats.heldout_q is not None
        assert stats.reason.startswith("held-out 99th pct z ")
    assert lines[-1] == f"calibration: {out}"


def test_zsad_calibrate_with_the_whole_view_masked_says_so(
    world: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No cell is left to score: a clear refusal that names the stream and the likely cause (it was an
    'unexpected CalibrationError ... this is a bug' before)."""
    from pipeline.cli.main import main

    footage = f"file://{world['root'] / 'flag-normal.mp4'}"
    everything = [[[0, 0], [1, 0], [1, 1], [0, 1]]]
    camera = {"id": "flagpole", "uri": footage, "mask": everything}
    site = write_site(tmp_path / "site.yaml", zones_site(world, tmp_path / "run", camera, {}))
    out = tmp_path / "calib" / "flagpole.json"
    code = main(["calibrate", str(site), "--camera", "flagpole", "--footage", footage, "--out", str(out)])
    printed = capsys.readouterr().err
    assert code == 1, printed
    assert "calibration failed: stream '" in printed
    assert "ignore zone cover the whole view" in printed
    assert "this is a bug" not in printed
    assert not out.exists()
