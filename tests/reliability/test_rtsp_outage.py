"""An RTSP camera among several, through the whole application, against a real gst-rtsp-server child
process: the server stops and restarts, then freezes (SIGSTOP, a network stall). The other cameras keep
their frame rate throughout; the RTSP camera goes live again and its scores resume each time."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.rtsp_server import RtspServer, rtsp_server_available, wait_for
from tests.fixtures.run_world import make_app, site_config

pytest.importorskip("gi")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not rtsp_server_available(), reason="gst-rtsp-server gir not installed"),
]

OTHERS = ("loop-a", "loop-b", "loop-c")


def test_rtsp_outage_and_stall_leave_the_others_at_full_rate(
    world: dict[str, Path], tmp_path: Path, record_property: Any, request: pytest.FixtureRequest
) -> None:
    server = RtspServer.in_folder(tmp_path)
    request.addfinalizer(server.close)  # whatever fails below, the server and any hold on its port end
    server.start()
    videos = world["videos"]
    cameras = [
        {
            "id": "rtsp",
            "uri": f"rtsp://viewer:pw@127.0.0.1:{server.port}/cam",
            "rtsp": {"reconnect_initial_s": 0.5, "reconnect_max_s": 2.0, "latency_ms": 100},
        },
        *({"id": cid, "uri": f"loop://{videos / 'campus_000.mp4'}"} for cid in OTHERS),
    ]
    app = make_app(site_config(world, tmp_path / "out", cameras, ui={"enabled": False}))

    def frames(cid: str) -> int:
        return app.graph.stats()[cid].frames_delivered

    def rate(seconds: float) -> dict[str, float]:
        """Frames per second of each other camera over the next ``seconds``."""
        before = {cid: frames(cid) for cid in OTHERS}
        t0 = time.monotonic()
        time.sleep(seconds)
        dt = time.monotonic() - t0
        return {cid: (frames(cid) - before[cid]) / dt for cid in OTHERS}

    def scores() -> int:
        return len(app.run_state.scores("rtsp"))

    app.start()
    try:
        wait_for(lambda: set(app.graph.states().values()) == {"live"}, timeout=20)
        wait_for(lambda: scores() >= 3, timeout=20)
        baseline = rate(3.0)
        calm = {cid: app.graph.stats()[cid] for cid in OTHERS}
        assert min(baseline.values()) >= 7.0, baseline  # ~10 fps each

        # 1. The server dies (connection closed): reconnecting with backoff; the others keep their rate.
        server.kill()
        wait_for(lambda: app.graph.states()["rtsp"] == "reconnecting", timeout=10)
        during = rate(4.0)
        record_property("fps_before", baseline)
        record_property("fps_during_outage", during)
        assert app.graph.states()["rtsp"] == "reconnecting"
        for cid in OTHERS:
            assert during[cid] >= 0.7 * baseline[cid], (during, baseline)
        # 2. Back on the same port: live again, and its scores resume (the DPC history refills).
        before = scores()
        server.start()
        record_property(
            "live_again_after_restart_s",
            round(wait_for(lambda: app.graph.states()["rtsp"] == "live", timeout=15), 2),
        )
        wait_for(lambda: scores() > before + 2, timeout=20)
        assert app.graph.stats()["rtsp"].reconnects >= 1

        # 3. The server freezes with the TCP connection open: the stall watchdog notices.
        server.signal(signal.SIGSTOP)
        wait_for(lambda: app.graph.states()["rtsp"] == "reconnecting", timeout=12)
        assert "stalled" in app.graph.stats()["rtsp"].detail
        during = rate(3.0)
        record_property("fps_during_stall", during)
        for cid in OTHERS:
            assert during[cid] >= 0.7 * baseline[cid], (during, baseline)
        before = scores()
        server.signal(signal.SIGCONT)
        record_property(
            "live_again_after_stall_s",
            round(wait_for(lambda: app.graph.states()["rtsp"] == "live", timeout=20), 2),
        )
        wait_for(lambda: scores() > before + 2, timeout=20)
        states = app.graph.states()
        after = {cid: app.graph.stats()[cid] for cid in OTHERS}
    finally:
        app.shutdown()
    assert states == {"rtsp": "live", **dict.fromkeys(OTHERS, "live")}
    # The other cameras never changed state (no reconnect, no rebuild) through both faults.
    assert {cid: (st.since_s, st.reconnects) for cid, st in after.items()} == {
        cid: (st.since_s, 0) for cid, st in calm.items()
    }
