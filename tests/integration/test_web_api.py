"""ReviewServer over real HTTP on 127.0.0.1: every endpoint, filters, labels, media Range, traversal, auth.

The media are real: a JPEG written with Pillow and an H.264 MP4 encoded by GStreamer. The helpers here
(``build_demo_run``) also feed the browser test.
"""

from __future__ import annotations

import base64
import http.client
import json
import math
import os
import re
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest
from PIL import Image

from pipeline.outputs.alert_schema import example_record, iso_utc, validate_alert
from pipeline.outputs.heatmap import PeakEvidence, heatmap_jpeg
from pipeline.outputs.state import RunState
from pipeline.outputs.web import ReviewServer, ReviewServerError
from plugins.fusion import Calibration, describe_trust, fit_calibration, time_folds
from plugins.zones import locate_peak

XSS_PROMPT = "<img src=x onerror=alert(1)>"

# --------------------------------------------------------------------------------------------------
# Fixture data: a small run with four cameras, score history and alerts with real media
# --------------------------------------------------------------------------------------------------


def figure_x(seed: int, width: int = 320) -> int:
    """The left edge of :func:`make_jpeg`'s figure."""
    return 60 + (seed * 53) % (width - 120)


def make_jpeg(path: Path, seed: int = 0, size: tuple[int, int] = (320, 240)) -> None:
    """A scene-like JPEG: sky, ground, a path, and a highlighted figure (the 'anomaly')."""
    from PIL import Image, ImageDraw

    w, h = size
    img = Image.new("RGB", size, (40, 48, 58))
    draw = ImageDraw.Draw(img)
    for y in range(h // 2):
        shade = 70 + y // 3
        draw.line([(0, y), (w, y)], fill=(shade - 20, shade, shade + 25))
    draw.rectangle([0, h // 2, w, h], fill=(58, 66, 52))
    draw.polygon([(w * 0.42, h), (w * 0.58, h), (w * 0.52, h // 2), (w * 0.48, h // 2)], fill=(96, 92, 86))
    for i in range(5):
        x = 20 + i * 62
        draw.rectangle([x, h // 2 - 40, x + 36, h // 2], fill=(30 + 8 * i, 34, 40))
    fx = figure_x(seed, w)
    draw.ellipse([fx + 8, h // 2 + 6, fx + 22, h // 2 + 20], fill=(220, 190, 160))
    draw.rectangle([fx + 6, h // 2 + 20, fx + 24, h // 2 + 52], fill=(200, 60, 50))
    draw.rectangle([fx - 4, h // 2 + 2, fx + 34, h // 2 + 58], outline=(255, 80, 80), width=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="JPEG", quality=85)


def encode_mp4(path: Path, frames: int = 30, size: tuple[int, int] = (320, 240), fps: int = 10) -> None:
    """A real H.264 MP4 (yuv420p, moov first) from GStreamer's videotestsrc."""
    from core.gst import init_gstreamer

    gst = init_gstreamer()
    path.parent.mkdir(parents=True, exist_ok=True)
    pipeline = gst.parse_launch(
        f"videotestsrc pattern=ball num-buffers={frames} ! "
        f"video/x-raw,width={size[0]},height={size[1]},framerate={fps}/1 ! videoconvert ! "
        "video/x-raw,format=I420 ! x264enc speed-preset=ultrafast key-int-max=10 ! h264parse ! "
        f"mp4mux faststart=true ! filesink location={path}"
    )
    pipeline.set_state(gst.State.PLAYING)
    msg = pipeline.get_bus().timed_pop_filtered(30 * gst.SECOND, gst.MessageType.EOS | gst.MessageType.ERROR)
    pipeline.set_state(gst.State.NULL)
    assert msg is not None, "MP4 encoding timed out"
    assert msg.type == gst.MessageType.EOS, msg.parse_error()
    assert path.stat().st_size > 1000


def make_heatmap(snapshot: Path, seed: int) -> dict[str, int]:
    """The heatmap of :func:`make_jpeg`'s figure beside ``snapshot`` (``<stem>.heatmap.jpg``), rendered as
    an alert's is, from a 15 x 20 evidence map peaking on the figure; returns its peak box for the record."""
    with Image.open(snapshot) as img:
        frame = np.asarray(img.convert("RGB"))
    h, w = frame.shape[:2]
    rows, cols = np.mgrid[0:15, 0:20]
    cy, cx = 150 / 16 - 0.5, (figure_x(seed, w) + 15) / 16 - 0.5  # the figure's centre, in cells
    evidence = 5.0 * np.exp(-((rows - cy) ** 2 + ((cols - cx) / 0.8) ** 2) / 5.0)
    location = locate_peak(evidence)
    assert location is not None
    heatmap = snapshot.with_name(snapshot.stem + ".heatmap.jpg")
    heatmap.write_bytes(heatmap_jpeg(frame, PeakEvidence(0.0, evidence, location)))
    x0, y0, x1, y1 = location.pixel_box(w, h)
    return {"x0": x0, "y0": y0, "x1": x1, "y1": y1, "width": w, "height": h}


@dataclass
class DemoRun:
    out: Path
    state: RunState
    alerts: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> record
    now: float = 0.0


def alert_record(
    camera: str,
    context: str,
    seq: int,
    start_epoch: float,
    duration_s: float | None,
    peak: float,
    contributions: dict[str, float],
    prompt: str | None,
) -> dict[str, Any]:
    rec = example_record()
    alert_id = str(uuid.uuid4())
    start_pts = 1000.0 + start_epoch % 1000
    rec.update(
        alert_id=alert_id,
        camera=camera,
        context=context,
        seq=seq,
        start=iso_utc(start_epoch),
        start_pts=start_pts,
        peak_score=peak,
        peak_time=start_pts + (duration_s or 1.0) / 2,
        threshold=3.0,
        contributions=contributions,
        prompt=prompt,
        snapshot=f"events/{camera}/{alert_id}.jpg",
        heatmap=f"events/{camera}/{alert_id}.heatmap.jpg",
        clip=f"events/{camera}/{alert_id}.mp4",
    )
    if duration_s is None:
        rec.update(status="open", end=None, end_pts=None, reason=None)
    else:
        rec.update(end=iso_utc(start_epoch + duration_s), end_pts=start_pts + duration_s)
    validate_alert(rec)
    return rec


def score_at(i: int, camera_index: int) -> tuple[float, dict[str, float]]:
    """A plausible fused score and its contributions for clip ``i`` of a camera (one spike near the end)."""
    base = 0.6 + 0.5 * math.sin(i / 6.0 + camera_index) + 0.2 * math.sin(i / 1.7)
    spike = 4.5 * math.exp(-(((i - 150) / 6.0) ** 2)) if camera_index == 1 else 0.0
    contributions = {
        "predictive": round(0.35 * base + 0.3 * spike, 4),
        "pixel": round(0.25 * base + 0.1 * spike, 4),
        "motion": round(0.15 * base + 0.1 * spike, 4),
        "semantic": round(0.25 * base + 0.5 * spike, 4),
    }
    return round(sum(contributions.values()), 4), contributions


CAMERAS = [
    ("gate-east", "campus", "rtsp://***@192.0.2.10/stream1", "live", ""),
    ("parking-north", "parking", "rtsp://***@192.0.2.11/stream1", "live", ""),
    ("lobby", "indoor", "rtsp://***@192.0.2.12/h264", "reconnecting", "connection refused; retry in 4 s"),
    ("dock-2", "loading_dock", "file:///srv/video/dock2.mp4", "failed", "no video stream in file"),
]


def demo_calibration(camera: str, seed: int = 0) -> Calibration:
    """A camera calibrated on two time folds of normal scores: motion Gaussian (trusted), pixel with a heavy
    tail (weighed down), predictive whose level moved between the folds (weighed down)."""
    rng = np.random.default_rng(seed)
    n = 300
    samples = {
        "motion": rng.normal(0.2, 0.02, n),
        "pixel": 0.1 + 0.01 * rng.standard_t(1.5, n),
        "predictive": np.concatenate([rng.normal(1.0, 0.1, n // 2), rng.normal(1.4, 0.1, n // 2)]),
    }
    return fit_calibration(samples, time_folds(n), camera=camera)


def build_demo_run(out: Path, mp4_source: Path, *, points: int = 170) -> DemoRun:
    """A RunState on ``out`` with 4 cameras, ``points`` scores each, 4 alerts (one open, one with an
    XSS prompt) whose snapshot and clip files exist under ``out/events``."""
    state = RunState(out, history_s=300.0)
    now = time.time()
    run = DemoRun(out=out, state=state, now=now)
    mono = time.monotonic()
    for ci, (cam, context, uri, cam_state, detail) in enumerate(CAMERAS):
        state.add_camera(cam, context, uri, threshold=3.0)
        state.set_camera_state(cam, cam_state, detail)
        if cam_state == "live":
            cal = demo_calibration(cam, seed=ci)
            term = cal.agreement.to_dict() if cal.agreement is not None else None
            state.set_camera_trust(cam, cal.rule, [row.to_dict() for row in describe_trust(cal)], term)
        if cam_state == "live":
            for k in range(20):
                state.frame_in(cam, mono - 2.0 + k * 0.1)
        n = points if cam_state == "live" else points // 2
        for i in range(n):
            score, contributions = score_at(i, ci)
            streams = {k: round(v * 3.1 + 0.2, 5) for k, v in contributions.items()}
            state.add_score(cam, 1000.0 + i * 1.6, score, contributions, streams)
    specs = [
        ("old", "gate-east", "campus", 1, now - 3 * 3600, 6.2, 3.6, None),
        ("xss", "lobby", "indoor", 1, now - 1800, 9.4, 4.1, XSS_PROMPT),
        ("closed", "parking-north", "parking", 2, now - 240, 12.0, 7.3, "a person climbing over a fence"),
        ("open", "parking-north", "parking", 3, now - 20, None, 5.1, "a car driving on the sidewalk"),
    ]
    for i, (name, cam, context, seq, start, duration, peak, prompt) in enumerate(specs):
        contributions = {
            "predictive": 1.1 + 0.3 * i,
            "pixel": 0.6,
            "motion": 0.4,
            "semantic": peak - 2.1 - 0.3 * i,
        }
        if name == "old":
            contributions = {"predictive": 2.4, "pixel": 1.2, "motion": 0.6}
        rec = alert_record(cam, context, seq, start, duration, peak, contributions, prompt)
        if name == "xss":  # raised by the fusion's agreement term: no stream crossed alone
            rec["agreement"] = max(contributions.values()) + 1.0
        make_jpeg(out / rec["snapshot"], seed=i)
        if name in ("closed", "open"):
            rec["peak_box"] = make_heatmap(out / rec["snapshot"], seed=i)
        else:  # alerts whose peak had no evidence map: a snapshot only
            rec["heatmap"] = None
        validate_alert(rec)
        if name != "open":  # an open alert's clip is still being recorded
            shutil.copyfile(mp4_source, out / rec["clip"])
        state.add_alert(rec)
        run.alerts[name] = rec
    (out / "alerts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in run.alerts.values()))
    return run


# --------------------------------------------------------------------------------------------------
# HTTP helpers
# --------------------------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    base: str, method: str, path: str, *, headers: dict[str, str] | None = None, body: bytes | None = None
) -> Reply:
    """Send ``path`` exactly as given (no client-side normalisation of ``..`` or percent escapes)."""
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True, skip_host="Host" in (headers or {}))
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        res = conn.getresponse()
        return Reply(res.status, res.headers, res.read())
    finally:
        conn.close()


def get_json(base: str, path: str) -> Any:
    reply = request(base, "GET", path)
    assert reply.status == 200, (path, reply.status, reply.body[:200])
    assert reply.headers["Content-Type"] == "application/json"
    return reply.json()


def post_label(base: str, alert_id: str, payload: Any, headers: dict[str, str] | None = None) -> Reply:
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    return request(
        base, "POST", f"/api/alerts/{alert_id}/label", headers=hdrs, body=json.dumps(payload).encode()
    )


# --------------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mp4_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("media") / "clip.mp4"
    encode_mp4(path)
    return path


@pytest.fixture
def demo(tmp_path: Path, mp4_file: Path) -> DemoRun:
    return build_demo_run(tmp_path / "out", mp4_file)


@pytest.fixture
def server(demo: DemoRun) -> Iterator[str]:
    srv = ReviewServer(demo.state, demo.out).start()
    try:
        yield srv.url
    finally:
        srv.stop()


# --------------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------------


def test_healthz_and_page(server: str, demo: DemoRun) -> None:
    health = get_json(server, "/healthz")
    assert health["status"] == "ok"
    assert health["cameras"] == 4
    page = request(server, "GET", "/")
    assert page.status == 200
    assert page.headers["Content-Type"] == "text/html; charset=utf-8"
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    html = page.body.decode()
    assert '<script src="/static/app.js"' in html
    assert not re.search(r"(src|href)=\"(https?:)?//", html)  # nothing from the network
    # The server-rendered summary escapes the alert prompt instead of emitting markup.
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "<img src=x" not in html
    for name, ctype in [
        ("app.js", "text/javascript"),
        ("style.css", "text/css"),
        ("favicon.svg", "image/svg+xml"),
    ]:
        reply = request(server, "GET", f"/static/{name}")
        assert reply.status == 200
        assert reply.headers["Content-Type"].startswith(ctype)
    script = request(server, "GET", "/static/app.js").body.decode()
    assert not re.search(r"\.(inner|outer)HTML\s*=|insertAdjacentHTML|document\.write", script)
    for bad in ("/static/../server.py", "/static/%2e%2e/server.py", "/static/nope.js", "/static/", "/nope"):
        assert request(server, "GET", bad).status == 404, bad
    assert request(server, "HEAD", "/").body == b""


def test_cameras_endpoint(server: str) -> None:
    cams = {c["id"]: c for c in get_json(server, "/api/cameras")["cameras"]}
    assert list(cams) == [c[0] for c in CAMERAS]
    gate = cams["gate-east"]
    assert (gate["state"], gate["context"], gate["threshold"]) == ("live", "campus", 3.0)
    assert gate["fps"] == pytest.approx(10.0, rel=0.05)
    assert gate["score"] == pytest.approx(score_at(169, 0)[0])
    assert set(gate["contributions"]) == {"predictive", "pixel", "motion", "semantic"}
    assert cams["lobby"]["state"] == "reconnecting"
    assert cams["lobby"]["detail"] == "connection refused; retry in 4 s"
    assert cams["dock-2"]["fps"] == 0.0
    assert cams["parking-north"]["open_alert"] is not None
    # Which streams the camera trusts and why, from its calibration's held-out normal footage.
    trust = gate["trust"]
    assert trust["rule"] == "max"
    rows = {r["stream"]: r for r in trust["streams"]}
    assert set(rows["motion"]) == {
        "stream",
        "weight",
        "heldout_q",
        "drift",
        "verdict",
        "reason",
        "sensitivity",
        "probe_recall",
    }
    assert rows["motion"]["sensitivity"] is None  # this calibration had no pasted events to judge by
    assert rows["motion"]["verdict"] == "trusted"
    assert rows["motion"]["weight"] > 0.9
    assert rows["pixel"]["verdict"] == "weighed down"
    assert rows["pixel"]["weight"] < 0.8
    assert "tail heavier than Gaussian" in rows["pixel"]["reason"]
    assert "level drifts between folds" in rows["predictive"]["reason"]
    assert trust["agreement"]["streams"]  # the max rule's agreement term, over the weighted streams
    assert cams["lobby"]["trust"] is None  # nothing told about it


def test_scores_endpoint(server: str) -> None:
    data = get_json(server, "/api/scores?camera=gate-east")
    assert (data["camera"], data["threshold"], data["history_s"]) == ("gate-east", 3.0, 300.0)
    ts = [p["t"] for p in data["points"]]
    assert ts == sorted(ts)
    assert ts[-1] - ts[0] <= 300.0  # bounded to history_s of stream time
    assert set(data["points"][0]) == {"t", "wall", "score", "contributions", "streams"}
    since = ts[-5]
    later = get_json(server, f"/api/scores?camera=gate-east&since={since}")
    assert [p["t"] for p in later["points"]] == ts[-4:]
    assert request(server, "GET", "/api/scores").status == 400
    assert request(server, "GET", "/api/scores?camera=nope").status == 404
    assert request(server, "GET", "/api/scores?camera=gate-east&since=abc").status == 400


def test_alerts_endpoint_and_filters(server: str, demo: DemoRun) -> None:
    ids = {name: rec["alert_id"] for name, rec in demo.alerts.items()}
    data = get_json(server, "/api/alerts")
    assert [a["alert_id"] for a in data["alerts"]] == [ids["open"], ids["closed"], ids["xss"], ids["old"]]
    assert data["count"] == 4
    by_camera = get_json(server, "/api/alerts?camera=parking-north")
    assert [a["alert_id"] for a in by_camera["alerts"]] == [ids["open"], ids["closed"]]
    since = iso_utc(demo.now - 2 * 3600)
    until = iso_utc(demo.now - 60)
    window = get_json(server, f"/api/alerts?since={since}&until={until}")
    assert [a["alert_id"] for a in window["alerts"]] == [ids["closed"], ids["xss"]]
    epoch = get_json(server, f"/api/alerts?since={demo.now - 2 * 3600:.3f}&until={demo.now - 60:.3f}")
    assert epoch["alerts"] == window["alerts"]
    assert [a["alert_id"] for a in get_json(server, "/api/alerts?limit=1")["alerts"]] == [ids["open"]]
    for bad in ("limit=0", "limit=x", "since=yesterday", f"since={until}&until={since}", "label=maybe"):
        reply = request(server, "GET", f"/api/alerts?{bad}")
        assert reply.status == 400, bad
        assert "error" in reply.json()

    one = get_json(server, f"/api/alerts/{ids['closed']}")["alert"]
    assert one["status"] == "closed"
    assert one["driver"] == "semantic"
    assert one["duration_s"] == pytest.approx(12.0, abs=0.01)
    # Each URL names its file's version: a snapshot rewritten as the peak rises gets a new URL, which the
    # page loads (the same URL would keep the onset frame under the final peak box).
    assert one["media"] == {
        kind: f"/media/{one[kind]}?v={(demo.out / one[kind]).stat().st_mtime_ns}"
        for kind in ("snapshot", "heatmap", "clip")
    }
    before = one["media"]["snapshot"]
    snapshot = demo.out / one["snapshot"]
    os.utime(snapshot, ns=(snapshot.stat().st_atime_ns, snapshot.stat().st_mtime_ns + 1_000_000))
    after = get_json(server, f"/api/alerts/{ids['closed']}")["alert"]["media"]["snapshot"]
    assert after != before
    assert after.split("?")[0] == before.split("?")[0]
    assert request(server, "GET", after).status == 200
    assert one["review"] is None
    open_alert = get_json(server, f"/api/alerts/{ids['open']}")["alert"]
    assert open_alert["media"]["clip"] is None  # still recording: the file does not exist yet
    assert open_alert["media"]["snapshot"] is not None
    assert open_alert["media"]["heatmap"] is not None
    old = get_json(server, f"/api/alerts/{ids['old']}")["alert"]
    assert old["driver"] == "predictive"
    assert get_json(server, f"/api/alerts/{ids['xss']}")["alert"]["driver"] == "agreement"
    assert old["heatmap"] is None
    assert old["media"]["heatmap"] is None
    assert request(server, "GET", f"/api/alerts/{uuid.uuid4()}").status == 404
    assert request(server, "GET", f"/api/alerts/{ids['closed']}%0A").status == 404  # $ took a final newline
    assert request(server, "GET", "/api/nothing").status == 404


def test_labels_persist_and_are_validated(server: str, demo: DemoRun) -> None:
    alert_id = demo.alerts["closed"]["alert_id"]
    reply = post_label(server, alert_id, {"label": "ack", "note": "gardener, expected"})
    assert reply.status == 200, reply.body
    assert reply.json()["review"]["label"] == "ack"
    assert get_json(server, f"/api/alerts/{alert_id}")["alert"]["review"]["note"] == "gardener, expected"
    assert [a["alert_id"] for a in get_json(server, "/api/alerts?label=ack")["alerts"]] == [alert_id]
    # A new store on the same folder (a restarted run) sees the label.
    again = RunState(demo.out)
    assert again.load_existing() == 4
    assert again.alert(alert_id)["review"]["label"] == "ack"

    other = demo.alerts["xss"]["alert_id"]
    assert post_label(server, other, {"label": "false_alarm"}).json()["review"]["label"] == "false_alarm"
    assert post_label(server, other, {"label": None}).json()["review"] is None
    assert other not in RunState(demo.out).labels()

    assert post_label(server, alert_id, {"label": "maybe"}).status == 400
    assert post_label(server, alert_id, {"note": "no label key"}).status == 400
    assert post_label(server, alert_id, {"label": "ack", "extra": 1}).status == 400
    assert post_label(server, alert_id, ["ack"]).status == 400
    assert post_label(server, str(uuid.uuid4()), {"label": "ack"}).status == 404
    wrong_type = request(
        server, "POST", f"/api/alerts/{alert_id}/label", headers={"Content-Type": "text/plain"}, body=b"{}"
    )
    assert wrong_type.status == 415
    cross = post_label(server, alert_id, {"label": None}, headers={"Origin": "http://evil.example"})
    assert cross.status == 403
    assert RunState(demo.out).labels()[alert_id]["label"] == "ack"  # the refused requests changed nothing
    # Only the headers, for the reason given in the zones test below.
    huge = request(
        server,
        "POST",
        f"/api/alerts/{alert_id}/label",
        headers={"Content-Type": "application/json", "Content-Length": "20002"},
    )
    assert huge.status == 413


def test_zone_filter_and_camera_writes_without_running_cameras(server: str, demo: DemoRun) -> None:
    # The demo's records carry example_record()'s zone "fence".
    assert get_json(server, "/api/alerts?zone=fence")["count"] == 4
    assert get_json(server, "/api/alerts?zone=none")["count"] == 0
    assert request(server, "GET", "/api/alerts?zone=../x").status == 400
    assert request(server, "GET", "/api/alerts?zone=fence%0A").status == 400  # $ took a final newline
    # A server without running cameras (the store alone) has no zones to read or change.
    assert request(server, "GET", "/api/cameras/gate-east/zones").status == 404
    assert request(server, "GET", "/api/cameras/gate-east/frame.jpg").status == 404
    json_type = {"Content-Type": "application/json"}
    put = request(server, "PUT", "/api/cameras/gate-east/zones", headers=json_type, body=b"{}")
    assert put.status == 404
    assert "no running cameras" in put.json()["error"]
    assert request(server, "DELETE", "/api/cameras/gate-east/zones").status == 404
    # The same guards as for labels: JSON only, same origin, bounded bodies.
    assert request(server, "PUT", "/api/cameras/gate-east/zones", body=b"{}").status == 415
    cross = request(
        server,
        "PUT",
        "/api/cameras/gate-east/zones",
        headers={**json_type, "Origin": "http://evil"},
        body=b"{}",
    )
    assert cross.status == 403
    # Only the headers: the server answers 413 from Content-Length and closes without reading a body, so
    # a client still writing 600 kB could meet a closed socket (a broken pipe) instead of the answer.
    huge = request(
        server, "PUT", "/api/cameras/gate-east/zones", headers={**json_type, "Content-Length": "600000"}
    )
    assert huge.status == 413
    assert request(server, "PUT", "/api/alerts", headers=json_type, body=b"{}").status == 404


def test_kept_alive_connection_survives_refused_requests(server: str, demo: DemoRun) -> None:
    """Keep-alive: a refused POST's body is consumed, so the next request on the socket parses."""
    parts = urlsplit(server)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        alert_id = demo.alerts["closed"]["alert_id"]
        conn.request(
            "POST",
            f"/api/alerts/{alert_id}/label",
            body=b'{"label": "ack"}',
            headers={"Content-Type": "text/plain"},
        )
        refused = conn.getresponse()
        refused.read()
        assert refused.status == 415
        conn.request("GET", "/api/cameras")
        again = conn.getresponse()
        assert again.status == 200
        assert len(json.loads(again.read())["cameras"]) == 4
    finally:
        conn.close()


def test_loopback_server_refuses_foreign_host_names(server: str, demo: DemoRun) -> None:
    port = urlsplit(server).port
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost"):
        assert request(server, "GET", "/api/cameras", headers={"Host": host}).status == 200, host
    # DNS rebinding: a page on attacker.example whose name now resolves to 127.0.0.1.
    for host in (f"attacker.example:{port}", "attacker.example", ""):
        reply = request(server, "GET", "/api/cameras", headers={"Host": host})
        assert reply.status == 421, host
        assert b"Host" in reply.body
    reply = post_label(
        server, demo.alerts["open"]["alert_id"], {"label": "ack"}, headers={"Host": "attacker.example"}
    )
    assert reply.status == 421
    assert get_json(server, f"/api/alerts/{demo.alerts['open']['alert_id']}")["alert"].get("review") is None


def test_media_types_and_range_requests(server: str, demo: DemoRun, mp4_file: Path) -> None:
    rec = demo.alerts["closed"]
    jpeg = request(server, "GET", "/media/" + rec["snapshot"])
    assert jpeg.status == 200
    assert jpeg.headers["Content-Type"] == "image/jpeg"
    assert jpeg.body == (demo.out / rec["snapshot"]).read_bytes()
    assert jpeg.body[:2] == b"\xff\xd8"

    data = mp4_file.read_bytes()
    size = len(data)
    clip_path = "/media/" + rec["clip"]
    full = request(server, "GET", clip_path)
    assert (full.status, full.headers["Content-Type"], full.headers["Accept-Ranges"]) == (
        200,
        "video/mp4",
        "bytes",
    )
    assert full.body == data
    first = request(server, "GET", clip_path, headers={"Range": "bytes=0-99"})
    assert first.status == 206
    assert first.headers["Content-Range"] == f"bytes 0-99/{size}"
    assert first.body == data[:100]
    assert first.body[4:8] == b"ftyp"
    tail = request(server, "GET", clip_path, headers={"Range": "bytes=-50"})
    assert (tail.status, tail.headers["Content-Range"], tail.body) == (
        206,
        f"bytes {size - 50}-{size - 1}/{size}",
        data[-50:],
    )
    rest = request(server, "GET", clip_path, headers={"Range": f"bytes={size - 10}-"})
    assert (rest.status, rest.body) == (206, data[-10:])
    past_end = request(server, "GET", clip_path, headers={"Range": f"bytes=100-{size + 1000}"})
    assert (past_end.status, past_end.headers["Content-Range"]) == (206, f"bytes 100-{size - 1}/{size}")
    unsatisfiable = request(server, "GET", clip_path, headers={"Range": f"bytes={size}-"})
    assert (unsatisfiable.status, unsatisfiable.headers["Content-Range"]) == (416, f"bytes */{size}")
    ignored = request(server, "GET", clip_path, headers={"Range": "bytes=0-1,5-9"})  # multi-range: whole file
    assert (ignored.status, len(ignored.body)) == (200, size)
    head = request(server, "HEAD", clip_path, headers={"Range": "bytes=0-9"})
    assert (head.status, head.headers["Content-Length"], head.body) == (206, "10", b"")
    assert request(server, "GET", "/media/events/gate-east/missing.mp4").status == 404


def test_media_paths_cannot_escape_the_events_folder(server: str, demo: DemoRun, tmp_path: Path) -> None:
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(b"\xff\xd8 top secret")
    (demo.out / "alerts.jsonl").write_text("private alert log\n")
    cam_dir = demo.out / "events" / "gate-east"
    (cam_dir / "link-out.jpg").symlink_to(secret)
    (cam_dir / ".hidden.mp4.part").write_bytes(b"partial")
    (cam_dir / "notes.txt").write_text("not media")
    attempts = [
        "/media/../alerts.jsonl",
        "/media/events/../alerts.jsonl",
        "/media/events/../../secret.jpg",
        "/media/%2e%2e/alerts.jsonl",
        "/media/events/%2e%2e/%2e%2e/secret.jpg",
        "/media/events/gate-east/..%2f..%2f..%2fsecret.jpg",
        "/media/%2fetc%2fpasswd",
        "//media/events/../../secret.jpg",
        "/media//etc/passwd",
        "/media/events%5c..%5c..%5csecret.jpg",
        "/media/events/gate-east/x%00.jpg",
        "/media/alerts.jsonl",
        "/media/events/gate-east/link-out.jpg",
        "/media/events/gate-east/.hidden.mp4.part",
        "/media/events/gate-east/notes.txt",
        "/media/events/%252e%252e/alerts.jsonl",
        "/media/events/gate-east",
        "/media/events",
        "/media/%ff%fe.jpg",
    ]
    for path in attempts:
        reply = request(server, "GET", path)
        assert reply.status in (400, 403, 404), (path, reply.status)
        assert b"secret" not in reply.body, path
        assert b"private" not in reply.body, path
    assert request(server, "GET", "/media/../alerts.jsonl").status == 403
    assert request(server, "GET", "/media/events/gate-east/link-out.jpg").status == 403


def test_basic_auth(demo: DemoRun) -> None:
    srv = ReviewServer(demo.state, demo.out, username="operator", password="s3cret pass").start()
    try:
        url = srv.url
        alert_id = demo.alerts["closed"]["alert_id"]
        snapshot = "/media/" + demo.alerts["closed"]["snapshot"]
        good = "Basic " + base64.b64encode(b"operator:s3cret pass").decode()
        wrong = "Basic " + base64.b64encode(b"operator:nope").decode()
        for path in ("/", "/api/cameras", "/api/alerts", snapshot, "/static/app.js"):
            denied = request(url, "GET", path)
            assert denied.status == 401, path
            assert denied.headers["WWW-Authenticate"].startswith('Basic realm="zsad review"')
            assert request(url, "GET", path, headers={"Authorization": wrong}).status == 401
            assert request(url, "GET", path, headers={"Authorization": "Basic !!!"}).status == 401
            assert request(url, "GET", path, headers={"Authorization": good}).status == 200, path
        assert post_label(url, alert_id, {"label": "ack"}).status == 401
        assert post_label(url, alert_id, {"label": "ack"}, headers={"Authorization": good}).status == 200
        assert request(url, "GET", "/healthz").status == 200  # probes need no credentials
    finally:
        srv.stop()


def test_server_configuration_errors(demo: DemoRun) -> None:
    with pytest.raises(ReviewServerError, match="both a username and a password"):
        ReviewServer(demo.state, demo.out, username="operator")
    with pytest.raises(ReviewServerError, match="':'"):
        ReviewServer(demo.state, demo.out, username="a:b", password="x")
    with pytest.raises(ReviewServerError, match="outside"):
        ReviewServer(demo.state, demo.out, port=70000)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        with pytest.raises(ReviewServerError, match=f"127.0.0.1:{port}"):
            ReviewServer(demo.state, demo.out, port=port).start()
    srv = ReviewServer(demo.state, demo.out).start()
    srv.stop()
    srv.stop()  # twice is fine
    with pytest.raises(ReviewServerError, match="not started"):
        _ = srv.url


def test_ui_config_section() -> None:
    from core.config import ConfigError, parse_config

    cfg = parse_config("version: 1\n")
    assert (cfg.ui.enabled, cfg.ui.host, cfg.ui.port, cfg.ui.username) == (True, "127.0.0.1", 8080, None)
    cfg = parse_config("ui:\n  port: 0\n  username: operator\n  password: pw\n")
    assert (cfg.ui.port, cfg.ui.username, cfg.ui.password) == (0, "operator", "pw")
    for bad in (
        "ui: {port: 70000}",
        "ui: {username: operator}",
        "ui: {username: 'a:b', password: x}",
        "ui: {x: 1}",
    ):
        with pytest.raises(ConfigError):
            parse_config(bad)


def test_hostile_requests_get_answers_not_tracebacks(server: str, demo: DemoRun) -> None:
    """A Range too long for int() and JSON nested past the decoder's depth: a plain answer each (the whole
    file, a 400), where the handler used to die without one."""
    rec = demo.alerts["closed"]
    full = request(server, "GET", "/media/" + rec["snapshot"])
    huge = request(server, "GET", "/media/" + rec["snapshot"], headers={"Range": "bytes=" + "9" * 5000 + "-"})
    assert huge.status == 200
    assert huge.body == full.body
    deep = post_label(server, rec["alert_id"], None)  # a valid request first: the route works
    assert deep.status == 400
    nested = request(
        server,
        "POST",
        f"/api/alerts/{rec['alert_id']}/label",
        headers={"Content-Type": "application/json"},
        body=b"[" * 15000,
    )
    assert nested.status == 400
    assert "nested too deeply" in nested.json()["error"]


def test_silent_connections_are_dropped_and_cannot_hold_every_slot(
    demo: DemoRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host that opens connections and sends nothing held a thread and a file descriptor each, for ever:
    now a connection is dropped after the socket timeout, and past MAX_CONNECTIONS a new one is closed at
    once (the accept thread never waits, so stopping the server never hangs on it); the page is reachable
    again once the silent ones time out."""
    from pipeline.outputs.web import server as web_server

    monkeypatch.setattr(web_server, "SOCKET_TIMEOUT_S", 0.5)
    monkeypatch.setattr(web_server, "MAX_CONNECTIONS", 2)
    srv = ReviewServer(demo.state, demo.out).start()
    try:
        parts = urlsplit(srv.url)
        silent = [socket.create_connection((parts.hostname, parts.port)) for _ in range(2)]
        for s in silent:
            s.sendall(b"GET / HTTP/1.1\r\n")  # and nothing more
        started = time.monotonic()

        def healthz() -> bool:
            try:
                return request(srv.url, "GET", "/healthz").status == 200
            except (ConnectionError, http.client.HTTPException):
                return False  # closed at once while both slots are held

        while not healthz():
            assert time.monotonic() - started < 8, "the page stayed unreachable"
            time.sleep(0.05)
        for s in silent:
            s.settimeout(5)
            assert s.recv(1024) == b""  # closed by the server, without an answer to the half request
            s.close()
    finally:
        srv.stop()


def test_a_client_trickling_its_request_cannot_hold_a_slot_past_the_deadline(
    demo: DemoRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The socket timeout bounds each read only: clients that send a header byte every half second held
    every slot for as long as they kept it up. Now a request's line and headers must arrive within the
    request deadline, and the page is reachable again once it has passed."""
    from pipeline.outputs.web import server as web_server

    monkeypatch.setattr(web_server, "SOCKET_TIMEOUT_S", 1.0)
    monkeypatch.setattr(web_server, "REQUEST_DEADLINE_S", 1.5)
    monkeypatch.setattr(web_server, "MAX_CONNECTIONS", 2)
    srv = ReviewServer(demo.state, demo.out).start()
    stop = threading.Event()
    cut: list[bool] = []

    def trickle() -> None:
        parts = urlsplit(srv.url)
        with socket.create_connection((parts.hostname, parts.port)) as s:
            s.sendall(b"GET / HTTP/1.1\r\nX-Slow: ")
            try:
                while not stop.wait(0.3):  # each byte well inside the socket timeout
                    s.sendall(b"a")
            except OSError:  # the server shut the connection
                cut.append(True)

    threads = [threading.Thread(target=trickle, daemon=True) for _ in range(2)]
    try:
        for t in threads:
            t.start()
        started = time.monotonic()

        def healthz() -> bool:
            try:
                return request(srv.url, "GET", "/healthz").status == 200
            except (ConnectionError, http.client.HTTPException):
                return False

        while not healthz():
            assert time.monotonic() - started < 15, "trickling clients kept the page unreachable"
            time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)
        srv.stop()


def test_a_request_cut_at_the_deadline_is_not_carried_out(
    demo: DemoRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cut at the deadline, the header parser took the headers that had come for all of them, and the
    request ran: a DELETE whose Origin never arrived reached the API. Now a cut request is dropped."""
    from pipeline.outputs.web import server as web_server

    monkeypatch.setattr(web_server, "REQUEST_DEADLINE_S", 0.5)
    srv = ReviewServer(demo.state, demo.out).start()
    calls: list[str] = []
    srv.api.delete = lambda path: calls.append(path) or {}  # type: ignore[method-assign]
    try:
        parts = urlsplit(srv.url)
        with socket.create_connection((parts.hostname, parts.port), timeout=10) as s:
            s.sendall(
                f"DELETE /api/cameras/cam-1/zones HTTP/1.1\r\nHost: {parts.netloc}\r\nX-Slow: ".encode()
            )
            try:
                while s.recv(1024):  # until the server shuts the connection at the deadline
                    pass
            except OSError:
                pass
        assert request(srv.url, "GET", "/healthz").status == 200  # the server goes on
        assert calls == []
    finally:
        srv.stop()


def test_faults_get_answers_and_another_loopback_bind_is_reachable(demo: DemoRun) -> None:
    """A Host or Origin header that cannot be parsed, a Content-Length int() would read leniently, an alert
    fault of ours: each a plain answer (421, 403, 411, 500), where the connection used to close
    without one. A server bound to 127.0.0.2 answers at its own address."""
    srv = ReviewServer(demo.state, demo.out, host="127.0.0.2").start()
    try:
        assert srv.url.startswith("http://127.0.0.2:")
        assert request(srv.url, "GET", "/healthz").status == 200
        assert request(srv.url, "GET", "/api/cameras", headers={"Host": "[::1"}).status == 421
        alert_id = demo.alerts["open"]["alert_id"]
        reply = post_label(srv.url, alert_id, {"label": "ack"}, headers={"Origin": "http://["})
        assert reply.status == 403
        for length in ("1_0", "+5", "١٠"):
            raw = f"POST /api/alerts/{alert_id}/label HTTP/1.1\r\nHost: 127.0.0.2\r\n"
            raw += f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
            parts = urlsplit(srv.url)
            with socket.create_connection((parts.hostname, parts.port), timeout=10) as s:
                s.sendall(raw.encode("utf-8") + b'{"label":"ack"}')
                assert s.recv(4096).startswith(b"HTTP/1.1 411 "), length

        # A fault of ours (injected into the API): a 500 with a JSON body, logged, the server serving on.
        def broken(*_args: object) -> None:
            raise RuntimeError("injected fault")

        srv.api.get = broken  # type: ignore[method-assign]
        reply = request(srv.url, "GET", "/api/alerts")
        assert reply.status == 500
        assert "internal error" in reply.json()["error"]
        assert request(srv.url, "GET", "/healthz").status == 200
    finally:
        srv.stop()


def test_stopping_the_server_never_waits_for_a_connection_past_the_cap(
    demo: DemoRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.outputs.web import server as web_server

    monkeypatch.setattr(web_server, "MAX_CONNECTIONS", 1)
    srv = ReviewServer(demo.state, demo.out).start()
    parts = urlsplit(srv.url)
    held = [
        socket.create_connection((parts.hostname, parts.port)) for _ in range(3)
    ]  # 1 served, 2 past the cap
    started = time.monotonic()
    srv.stop()
    assert time.monotonic() - started < 5
    for s in held:
        s.close()
