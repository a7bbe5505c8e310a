"""The Prometheus registry and its /metrics endpoint, scraped over real HTTP on 127.0.0.1."""

from __future__ import annotations

import re
import socket
import time
import urllib.error
import urllib.request

import pytest

from pipeline.outputs.metrics import (
    Counter,
    Gauge,
    Latency,
    MetricsError,
    MetricsRegistry,
    MetricsServer,
    ZsadMetrics,
    start_metrics_server,
)

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def _parse(text: str) -> tuple[dict[tuple[str, frozenset[tuple[str, str]]], float], dict[str, str]]:
    """Parse the text exposition format strictly enough to catch malformed lines."""
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    types: dict[str, str] = {}
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            types[name] = kind
            continue
        if line.startswith("# HELP "):
            continue
        m = _SAMPLE.match(line)
        assert m, f"malformed line: {line!r}"
        name, labels, value = m.groups()
        pairs = frozenset(
            (k, v.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\"))
            for k, v in _LABEL.findall(labels or "")
        )
        samples[(name, pairs)] = float(value)
    return samples, types


def _scrape(url: str) -> tuple[str, str]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.read().decode("utf-8"), resp.headers["Content-Type"]


def test_scrape_predefined_metrics_over_http() -> None:
    m = ZsadMetrics()
    m.frames_in.inc(camera="cam-a")
    m.frames_in.inc(4, camera="cam-a")
    m.frames_dropped.inc(camera='we"ird\\cam')
    m.queue_depth.set(3, camera="cam-a")
    m.inference_latency.observe(0.25, camera="cam-a")
    m.inference_latency.observe(0.5, camera="cam-a")
    m.score.set(2.75, camera="cam-a")
    m.alerts.inc(camera="cam-a")
    m.set_camera_state("cam-a", "connecting")
    m.set_camera_state("cam-a", "running")
    m.media_errors.inc(camera="cam-a")
    m.sink_spooled.set(7, sink="mqtt-1")
    server = start_metrics_server(m, "127.0.0.1", 0)
    try:
        assert server.port > 0
        body, ctype = _scrape(f"http://127.0.0.1:{server.port}/metrics")
        assert ctype.startswith("text/plain; version=0.0.4")
        samples, types = _parse(body)

        def get(name: str, **labels: str) -> float:
            return samples[(name, frozenset(labels.items()))]

        assert get("zsad_frames_in_total", camera="cam-a") == 5
        assert get("zsad_frames_dropped_total", camera='we"ird\\cam') == 1
        assert get("zsad_queue_depth", camera="cam-a") == 3
        assert get("zsad_inference_latency_seconds", camera="cam-a") == 0.5
        assert get("zsad_inference_latency_seconds_sum", camera="cam-a") == 0.75
        assert get("zsad_inference_latency_seconds_count", camera="cam-a") == 2
        assert get("zsad_score", camera="cam-a") == 2.75
        assert get("zsad_alerts_total", camera="cam-a") == 1
        assert get("zsad_camera_state", camera="cam-a", state="running") == 1
        assert get("zsad_camera_state", camera="cam-a", state="connecting") == 0
        assert get("zsad_media_errors_total", camera="cam-a") == 1
        assert get("zsad_sink_spooled", sink="mqtt-1") == 7
        assert types["zsad_frames_in_total"] == "counter"
        assert types["zsad_queue_depth"] == "gauge"
        for name in ("zsad_frames_processed_total", "zsad_alerts_total", "zsad_sink_spooled"):
            assert name in types
        # Values change between scrapes.
        m.frames_in.inc(camera="cam-a")
        samples2, _ = _parse(_scrape(server.url)[0])
        assert samples2[("zsad_frames_in_total", frozenset({("camera", "cam-a")}))] == 6
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}/other", timeout=5)
        assert err.value.code == 404
    finally:
        server.stop()


def test_server_binds_loopback_by_default_and_reports_busy_port() -> None:
    server = MetricsServer(MetricsRegistry()).start()
    try:
        assert server.url.startswith("http://127.0.0.1:")
        with pytest.raises(OSError, match=f"127.0.0.1:{server.port}"):
            MetricsServer(MetricsRegistry(), port=server.port).start()
    finally:
        server.stop()


def test_registry_rejects_misuse() -> None:
    reg = MetricsRegistry()
    c = reg.counter("x_total", "x", ("camera",))
    with pytest.raises(MetricsError, match="takes labels"):
        c.inc(camera="a", extra="b")
    with pytest.raises(MetricsError, match="only go up"):
        c.inc(-1, camera="a")
    with pytest.raises(MetricsError, match="already registered"):
        reg.gauge("x_total", "again")
    with pytest.raises(MetricsError, match="invalid metric name"):
        reg.gauge("bad-name", "x")
    with pytest.raises(MetricsError, match="invalid metric name"):
        reg.gauge("g_newline\n", "x")  # $ took a final newline, which breaks the exposition format
    g = reg.gauge("g", "gauge", ())
    g.set(float("nan"))
    assert "g NaN" in reg.render()
    g.set(1.5)
    g.dec(0.5)
    assert g.value() == 1.0
    g.remove()
    assert "\ng " not in reg.render()


def test_a_removed_camera_leaves_no_series_behind() -> None:
    """A reload that removed a camera left its ``zsad_camera_state{state="live"} 1`` and its last queue depth
    on /metrics, as if it were still watched. Every metric labelled ``camera`` (each one ZsadMetrics defines,
    so that one added later is covered too) loses the removed camera's series; the others keep theirs."""
    m = ZsadMetrics()
    labelled = [v for v in vars(m).values() if isinstance(v, (Counter, Gauge, Latency))]
    for camera in ("gone", "kept"):
        for metric in labelled:
            names = metric.last.labelnames if isinstance(metric, Latency) else metric.labelnames
            if "camera" not in names:
                continue
            labels = {n: (camera if n == "camera" else "x") for n in names}
            if isinstance(metric, Latency):
                metric.observe(0.5, **labels)
            else:
                metric.inc(**labels)
        m.set_camera_state(camera, "connecting")
        m.set_camera_state(camera, "live")
        m.set_stream_weights(camera, {"pixel": 0.5})
    server = start_metrics_server(m, "127.0.0.1", 0)
    try:
        before, _ = _parse(_scrape(server.url)[0])
        m.remove_camera("gone")
        samples, _ = _parse(_scrape(server.url)[0])
    finally:
        server.stop()
    cameras = {dict(labels).get("camera") for _, labels in samples}
    assert "gone" not in cameras
    had_gone = {name for name, labels in before if ("camera", "gone") in labels}
    assert {"zsad_camera_state", "zsad_queue_depth", "zsad_inference_latency_seconds_count"} <= had_gone
    kept = {key for key in before if ("camera", "kept") in key[1]}
    assert {name for name, _ in kept} == had_gone
    assert {key: samples[key] for key in kept} == {key: before[key] for key in kept}
    # Added again under the same id: only its new state is shown, not the old one's "live" at 0.
    m.set_camera_state("gone", "connecting")
    states = [key for _, key, _ in m.camera_state.samples() if key[0] == "gone"]
    assert states == [("gone", "connecting")]


def test_a_silent_connection_is_closed_after_the_socket_timeout() -> None:
    """A host that connected and sent nothing held a thread and a file descriptor for ever."""
    server = MetricsServer(ZsadMetrics(), socket_timeout_s=0.3).start()
    try:
        with socket.create_connection(("127.0.0.1", server.port)) as silent:
            silent.sendall(b"GET /metrics HTTP/1.1\r\n")  # and nothing more
            silent.settimeout(10)
            started = time.monotonic()
            assert silent.recv(1024) == b""  # closed by the server, without an answer to the half request
            assert time.monotonic() - started < 5
    finally:
        server.stop()


def test_connections_past_the_cap_are_closed_at_once_and_the_held_one_is_still_served() -> None:
    server = MetricsServer(ZsadMetrics(), max_connections=1).start()
    try:
        with socket.create_connection(("127.0.0.1", server.port)) as held:
            held.sendall(b"GET /metrics HTTP/1.0\r\n")  # holds the one slot, its request unfinished
            with socket.create_connection(("127.0.0.1", server.port)) as extra:
                extra.settimeout(10)  # the socket timeout is 30 s: an answer in time is the cap's
                assert extra.recv(1024) == b""
            held.sendall(b"\r\n")
            held.settimeout(10)
            answer = b""
            while chunk := held.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.0 200")
        assert b"# TYPE zsad_frames_in_total counter" in answer
    finally:
        server.stop()


def _ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="this host cannot bind the IPv6 loopback address")
def test_the_server_binds_an_ipv6_address() -> None:
    m = ZsadMetrics()
    m.frames_in.inc(camera="cam-a")
    server = MetricsServer(m, "::1").start()
    try:
        assert server.url == f"http://[::1]:{server.port}/metrics"
        samples, _ = _parse(_scrape(server.url)[0])
        assert samples[("zsad_frames_in_total", frozenset({("camera", "cam-a")}))] == 1
    finally:
        server.stop()
