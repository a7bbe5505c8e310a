"""RTSP camera against a real gst-rtsp-server in a subprocess: disconnect, reconnect, stall.

The server runs as a child process (the most realistic outage: killing it closes the TCP connection, and
SIGSTOP freezes it with the connection open, which only the stall watchdog can detect). A loop:// camera
runs next to it in real time and must keep its frame rate throughout.
"""

from __future__ import annotations

import re
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

gi = pytest.importorskip("gi")

from core.config import CameraConfig, CameraDefaults, CameraSettings, ZsadConfig  # noqa: E402
from pipeline.cpu.graph import CameraGraph  # noqa: E402
from tests.fixtures.rtsp_server import (  # noqa: E402
    RtspServer,
    make_loop_video,
    rtsp_server_available,
    wait_for,
)

pytestmark = pytest.mark.skipif(not rtsp_server_available(), reason="gst-rtsp-server gir not installed")


def camera(cid: str, uri: str) -> CameraSettings:
    defaults = CameraDefaults.model_validate(
        {
            "sampling": {"fps": 10},
            "rtsp": {
                "reconnect_initial_s": 0.5,
                "reconnect_max_s": 2.0,
                "latency_ms": 100,
                "stall_timeout_s": 2.0,  # the camera's own, shorter than the graph's 5 s default
            },
        }
    )
    return ZsadConfig(defaults=defaults, cameras=[CameraConfig(id=cid, uri=uri)]).camera_settings(cid)


class Recorder:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.times: dict[str, list[float]] = {}
        self.shapes: set[tuple[int, ...]] = set()
        self.states: list[tuple[float, str, str, str]] = []

    def on_frame(self, cid: str, pts: float, frame: np.ndarray) -> None:
        with self.lock:
            self.times.setdefault(cid, []).append(time.monotonic())
            self.shapes.add(frame.shape)

    def on_state(self, cid: str, state: str, detail: str) -> None:
        with self.lock:
            self.states.append((time.monotonic(), cid, state, detail))

    def frames_between(self, cid: str, t0: float, t1: float) -> int:
        with self.lock:
            return sum(1 for t in self.times.get(cid, []) if t0 <= t < t1)

    def count(self, cid: str) -> int:
        with self.lock:
            return len(self.times.get(cid, []))

    def states_of(self, cid: str) -> list[tuple[float, str, str]]:
        with self.lock:
            return [(t, s, d) for t, c, s, d in self.states if c == cid]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RtspServer]:
    srv = RtspServer.in_folder(tmp_path)
    srv.start()
    yield srv
    srv.close()


def test_the_test_server_moves_off_a_port_taken_before_its_first_start_and_holds_it_through_an_outage(
    tmp_path: Path,
) -> None:
    """Another test process may bind the free port picked for the server before the server does; the
    server takes another then. Once started, its port is the cameras' URL: killed, it stays held (nothing
    else can bind it) and the restart comes back on it."""
    srv = RtspServer.in_folder(tmp_path)
    with socket.socket() as taken:  # another test's server, listening on the port picked
        taken.bind(("127.0.0.1", srv.port))
        taken.listen()
        picked = srv.port
        srv.start()
    try:
        port = srv.port
        assert port != picked
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        srv.kill()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        with pytest.raises(OSError), socket.socket() as other:
            other.bind(("127.0.0.1", port))
        srv.start()
        assert srv.port == port
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    finally:
        srv.close()


def test_rtsp_camera_reconnects_after_an_outage_and_a_stall(
    server: RtspServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO")
    rec = Recorder()
    loop_file = make_loop_video(tmp_path / "loop.mp4")
    g = CameraGraph(
        (160, 120),
        rec.on_frame,
        rec.on_state,
        cameras=[
            camera("rtsp", f"rtsp://viewer:s3cret@127.0.0.1:{server.port}/cam"),
            camera("file", f"loop://{loop_file}"),
        ],
        realtime=True,
    )
    g.start()
    try:
        wait_for(lambda: g.states() == {"rtsp": "live", "file": "live"}, timeout=30)
        wait_for(lambda: rec.count("rtsp") >= 10, timeout=30)

        # 1. The server dies: the RTSP camera reconnects with backoff, the file camera keeps 10 fps.
        server.kill()
        wait_for(lambda: g.states()["rtsp"] == "reconnecting", timeout=30)
        t0 = time.monotonic()
        time.sleep(3.0)
        t1 = time.monotonic()
        assert g.states()["rtsp"] == "reconnecting"
        assert g.states()["file"] == "live"
        # The file camera goes on (a rate would measure the CI machine's load, not the graph).
        assert rec.frames_between("file", t0, t1) >= 5
        assert rec.frames_between("rtsp", t0 + 0.5, t1) == 0

        # 2. The server comes back on the same port: live again and delivering.
        before = rec.count("rtsp")
        server.start()
        wait_for(lambda: g.states()["rtsp"] == "live" and rec.count("rtsp") > before + 5, timeout=30)
        assert g.stats()["rtsp"].reconnects >= 1

        # 3. The server freezes with the TCP connection open: only the stall watchdog can tell.
        # The graph's state changes before its on_state callback returns, so wait on what the callback
        # recorded, counting only states recorded after the freeze.
        seen = len(rec.states_of("rtsp"))
        server.signal(signal.SIGSTOP)
        wait_for(lambda: any(s == "reconnecting" for _, s, _ in rec.states_of("rtsp")[seen:]), timeout=15)
        stall_detail = next(d for _, s, d in rec.states_of("rtsp")[seen:] if s == "reconnecting")
        assert "stalled" in stall_detail
        # The camera's 2 s timeout fired, not the graph's 5 s (read from the detail, not the wall clock,
        # which a loaded machine stretches).
        silent = re.search(r"no frame for ([0-9.]+) s", stall_detail)
        assert silent is not None, stall_detail
        assert 2.0 <= float(silent.group(1)) < 5.0, stall_detail
        t0 = time.monotonic()
        time.sleep(3.0)
        assert rec.frames_between("file", t0, time.monotonic()) >= 5  # the file camera goes on
        before = rec.count("rtsp")
        server.signal(signal.SIGCONT)
        wait_for(lambda: g.states()["rtsp"] == "live" and rec.count("rtsp") > before + 5, timeout=30)
    finally:
        g.stop()
    assert rec.shapes == {(120, 160, 3)}
    assert "s3cret" not in caplog.text
    assert "viewer" not in caplog.text
    assert "rtsp://***@127.0.0.1" in caplog.text
    assert all(detail.find("s3cret") == -1 for _, _, _, detail in rec.states)


def test_decoder_threads_reach_the_decoder_behind_rtspsrc(server: RtspServer) -> None:
    """rtspsrc's pad is linked to a decodebin, which picks the decoder once the stream's caps are known: the
    count is set there too (for a live source libav uses slice threads only, so this bounds those)."""
    from core.gst import init_gstreamer
    from pipeline.cpu.sources import CameraPipeline, FrameSize, parse_source_uri
    from tests.integration.test_sources import decoders_of

    Gst = init_gstreamer()
    frames = threading.Semaphore(0)
    cp = CameraPipeline(
        "r", parse_source_uri(server.url), 10.0, FrameSize(32, 24), lambda pts, frame: frames.release(),
        decoder_threads=1,
    )  # fmt: skip
    cp.pipeline.set_state(Gst.State.PLAYING)
    try:
        assert all(frames.acquire(timeout=60) for _ in range(3)), "no frames from the RTSP server"
        decoders = decoders_of(cp.pipeline)
        assert [d.get_factory().get_name() for d in decoders] == ["avdec_h264"]
        assert decoders[0].get_property("max-threads") == 1
    finally:
        cp.pipeline.set_state(Gst.State.NULL)
        cp.close()
