"""The DeepStream graph with real GStreamer on a machine without DeepStream.

* The real element factory reports the missing DeepStream elements by name and package.
* The plan is built with a substitution map (``nvstreammux`` -> ``funnel``, ``nvvideoconvert`` ->
  ``videoconvertscale``, ``nvurisrcbin`` -> ``uridecodebin``, ...: stand-ins made of stock GStreamer
  elements, not DeepStream), so the building, linking, dynamic source pads, probes, bus policy and shutdown
  run for real.
* With the pyds TEST DOUBLE fed by :class:`StandInMux` (the batch meta nvstreammux would attach, and the real
  pixels of each RGBA buffer as the mapped surface), the whole chain scores clips with ONNX Runtime engines
  and ends in alerts, with the same scores as the CPU graph's code on the same frames.
* ``zsad run --graph deepstream`` exits 2 with a clear message.
"""

from __future__ import annotations

import dataclasses
import http.server
import logging
import subprocess
import sys
import threading
from collections import defaultdict, deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gi.repository import GLib

from core.config import ZsadConfig
from core.gst import ElementMissingError, init_gstreamer
from pipeline.deepstream.app import DeepStreamApp
from pipeline.deepstream.graph import (
    MUX,
    SCORE_CAPS,
    DeepStreamGraph,
    ElementSpec,
    GraphPlan,
    PropertyError,
    checked_make,
    plan_graph,
)
from pipeline.deepstream.probe import ClipScoringProbe
from pipeline.deepstream.render import render_all
from pipeline.inference import load_engines
from pipeline.run import Application
from tests.conftest import REPO
from tests.fixtures.deepstream_fixtures import site_config
from tests.fixtures.http_serving import serving
from tests.fixtures.pyds_test_double import (
    BatchFixture,
    FrameSpec,
    PydsTestDouble,
    attach,
    build_batch,
    display_metas,
    pitched,
    pointee,
    queue,
    rgba,
)
from tests.fixtures.run_world import ALWAYS_ON, build_world, read_jsonl

Gst = init_gstreamer()
pytestmark = pytest.mark.skipif(
    Gst.ElementFactory.find("nvstreammux") is not None, reason="DeepStream is installed: stand-ins not needed"
)

STAND_INS = {
    "nvstreammux": "funnel",
    "nvmultistreamtiler": "identity",
    "nvdsosd": "identity",
    "nvvideoconvert": "videoconvertscale",
    "nvurisrcbin": "uridecodebin",
    "nvv4l2h264enc": "x264enc",
}


def stand_in(spec: ElementSpec) -> ElementSpec:
    """A stock-GStreamer stand-in for a DeepStream element (system-memory caps, no DeepStream props)."""
    if spec.factory == "capsfilter":
        return dataclasses.replace(spec, props={"caps": spec.props["caps"].replace("(memory:NVMM)", "")})
    if spec.factory in STAND_INS:
        props = {"uri": spec.props["uri"]} if spec.factory == "nvurisrcbin" else {}
        return ElementSpec(STAND_INS[spec.factory], spec.name, props)
    return spec


def with_stand_ins(plan: GraphPlan) -> GraphPlan:
    return dataclasses.replace(
        plan,
        sources=tuple(dataclasses.replace(s, element=stand_in(s.element)) for s in plan.sources),
        trunk=tuple(stand_in(e) for e in plan.trunk),
        score_branch=tuple(stand_in(e) for e in plan.score_branch),
        display_branch=tuple(stand_in(e) for e in plan.display_branch),
    )


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small H.264 MP4s, 64x48: 'short' (20 frames), 'long' (400 frames), and 'web' (20 frames, its index
    first, as a file served over HTTP without range requests must have it)."""
    root = tmp_path_factory.mktemp("videos")
    out = {}
    for name, frames, faststart in (("short", 20, False), ("long", 400, False), ("web", 20, True)):
        path = root / f"{name}.mp4"
        pipeline = Gst.parse_launch(
            f"videotestsrc num-buffers={frames} ! video/x-raw,width=64,height=48,framerate=25/1 ! "
            f"x264enc speed-preset=ultrafast ! mp4mux faststart={str(faststart).lower()} ! "
            f"filesink location={path}"
        )
        pipeline.set_state(Gst.State.PLAYING)
        message = pipeline.get_bus().timed_pop_filtered(
            30 * Gst.SECOND, Gst.MessageType.EOS | Gst.MessageType.ERROR
        )
        pipeline.set_state(Gst.State.NULL)
        assert message is not None
        assert message.type == Gst.MessageType.EOS
        out[name] = path
    return out


def stand_in_plan(tmp_path: Path, uris: list[str], **deepstream: Any) -> GraphPlan:
    cfg = site_config(len(uris), deepstream=deepstream, output_dir=str(tmp_path / "run"))
    cfg = cfg.model_copy(
        update={"cameras": [c.model_copy(update={"uri": u}) for c, u in zip(cfg.cameras, uris, strict=True)]}
    )
    rendered = render_all(cfg, tmp_path / "ds")
    return with_stand_ins(plan_graph(cfg, rendered, (48, 32), jetson=False))


def realtime(plan: GraphPlan) -> GraphPlan:
    """Pace the run at the files' frame rate (sync score sink), so a test can act while it runs."""
    branch = tuple(
        dataclasses.replace(e, props={**e.props, "sync": True}) if e.name == "score-sink" else e
        for e in plan.score_branch
    )
    return dataclasses.replace(plan, score_branch=branch)


def count_buffers(pad: Any) -> list[int]:
    count = [0]

    def probe(_pad: Any, _info: Any) -> Any:
        count[0] += 1
        return Gst.PadProbeReturn.OK

    pad.add_probe(Gst.PadProbeType.BUFFER, probe)
    return count


class CountingProbe:
    def __init__(self) -> None:
        self.buffers = 0
        self.caps: list[tuple[str, str, int, int]] = []

    def __call__(self, pad: Any, info: Any) -> Any:
        self.buffers += 1
        if not self.caps:
            st = pad.get_current_caps().get_structure(0)
            self.caps.append(
                (st.get_name(), st.get_string("format"), st.get_int("width")[1], st.get_int("height")[1])
            )
        return Gst.PadProbeReturn.OK


def test_missing_deepstream_element_is_named() -> None:
    with pytest.raises(
        ElementMissingError, match=r"'nvstreammux' is missing: it is provided by DeepStream 7\.1"
    ):
        checked_make("nvstreammux", "mux")


def test_building_the_real_plan_stops_at_the_first_missing_element(tmp_path: Path) -> None:
    cfg = site_config(2)
    plan = plan_graph(cfg, render_all(cfg, tmp_path), (48, 32), jetson=False)
    with pytest.raises(ElementMissingError) as info:
        DeepStreamGraph(plan)
    assert info.value.element == "nvstreammux"


def test_stand_in_graph_runs_both_branches_to_eos(tmp_path: Path, videos: dict[str, Path]) -> None:
    plan = stand_in_plan(tmp_path, [f"file://{videos['short']}", f"file://{videos['short']}"])
    assert plan.display_branch  # osd on: tee, tiler, osd, fakesink
    score, osd = CountingProbe(), CountingProbe()
    states: list[tuple[str, str, str]] = []
    graph = DeepStreamGraph(plan, score_probe=score, osd_probe=osd, on_state=lambda *a: states.append(a))
    assert graph.run(duration_s=30) == 0
    assert score.buffers == 40  # every frame of both cameras reached the score branch...
    assert osd.buffers == 40  # ...and the display branch
    assert score.caps == [("video/x-raw", "RGBA", 48, 32)]  # the backbone's W x H, RGBA
    assert graph.policy.failed == set()


def test_probe_exception_boundary_in_a_real_pipeline(tmp_path: Path, videos: dict[str, Path]) -> None:
    """The score probe on a real pad: a batch that fails is dropped, the probe returns OK, the run ends."""
    plan = stand_in_plan(tmp_path, [f"file://{videos['short']}"], osd=False)
    pyds = PydsTestDouble()
    frame = rgba(np.zeros((32, 48, 3), np.uint8))
    queue(pyds, build_batch([FrameSpec(0, 0, 0, frame)]))
    queue(pyds, build_batch([FrameSpec(0, 1, 100_000_000, frame)]))
    handed: list[str] = []

    def on_frame(camera: str, t: float, rgb: np.ndarray) -> None:
        handed.append(camera)
        if len(handed) == 2:  # not one frame's error: raises through the probe's batch boundary
            raise LookupError("a fault beyond the frame path")

    probe = ClipScoringProbe(pyds, ["cam-00"], on_frame=on_frame)
    graph = DeepStreamGraph(plan, score_probe=probe)
    assert graph.run(duration_s=30) == 0
    assert probe.batches == 2  # the two queued batches; later buffers carry no batch meta
    assert probe.dropped_batches == 1
    assert handed == ["cam-00", "cam-00"]


def test_source_error_does_not_stop_the_other_cameras(tmp_path: Path, videos: dict[str, Path]) -> None:
    plan = stand_in_plan(tmp_path, [f"file://{videos['short']}", f"file://{videos['long']}"], osd=False)
    states: list[tuple[str, str, str]] = []
    graph = DeepStreamGraph(realtime(plan), on_state=lambda *a: states.append(a))
    per_camera = [count_buffers(graph.mux_pads[i]) for i in (0, 1)]
    injected = threading.Event()

    def inject(_pad: Any, _info: Any) -> Any:
        # Camera 1's decoder fails mid-stream: post a real ERROR from inside its source bin.
        if not injected.is_set() and per_camera[1][0] >= 10:
            injected.set()
            source = graph.pipeline.get_by_name("source-bin-01").get_by_name("uri-01")
            error = GLib.Error.new_literal(
                Gst.StreamError.quark(), "injected decode error", Gst.StreamError.DECODE
            )
            source.post_message(Gst.Message.new_error(source, error, "test"))
        return Gst.PadProbeReturn.OK

    graph.elements["score-sink"].get_static_pad("sink").add_probe(Gst.PadProbeType.BUFFER, inject)
    code = graph.run(duration_s=30)
    assert injected.is_set()
    assert code == 1  # an ERROR was seen...
    assert graph.policy.failed == {"cam-01"}
    assert ("cam-01", "failed", "injected decode error") in states
    assert per_camera[0][0] == 20  # ...camera 0 delivered every frame...
    assert 10 <= per_camera[1][0] < 100  # ...camera 1 was cut off, and the run still reached EOS


def refusing_first(
    file: Path, requests: list[int], before_serving: Callable[[], None] = lambda: None
) -> type[http.server.BaseHTTPRequestHandler]:
    """A handler that answers the first request 503 and serves ``file``'s folder to the later ones, each
    counted in ``requests``, after ``before_serving()``."""

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(file.parent), **kwargs)

        def do_GET(self) -> None:
            requests.append(1)
            if len(requests) == 1:
                self.send_error(503, "camera busy")
                return
            before_serving()
            super().do_GET()

        def log_message(self, *_args: Any) -> None:  # quiet: the test's own output is what matters
            pass

    return Handler


def camera_plan(tmp_path: Path, cameras: list[dict[str, Any]]) -> GraphPlan:
    """The stand-in plan of a site config with these ``cameras`` (each a config entry)."""
    data = site_config(len(cameras), output_dir=str(tmp_path / "run")).model_dump(
        mode="json", exclude_unset=True
    )
    data["cameras"] = cameras
    cfg = ZsadConfig.model_validate(data)
    return with_stand_ins(plan_graph(cfg, render_all(cfg, tmp_path / "ds"), (48, 32), jetson=False))


def test_an_http_camera_is_restarted_after_an_error_and_at_its_end_and_the_others_go_on(
    tmp_path: Path, videos: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    """nvurisrcbin reconnects RTSP only: an HTTP camera's source bin is restarted by the graph after its
    backoff, once after a refused connection (an ERROR) and again each time its stream ends (an EOS, held
    back from the mux so that the run does not end with it). A real HTTP server on 127.0.0.1 refuses the
    first request and then serves a 20-frame file; a file camera plays beside it to its end. The run then
    stops on its own EOS, not on the EOS timeout, wherever the HTTP camera's backoff is."""
    requests: list[int] = []
    with serving(refusing_first(videos["web"], requests)) as base:
        backoff = {"reconnect_initial_s": 0.05, "reconnect_max_s": 0.2}
        plan = camera_plan(
            tmp_path,
            [
                {"id": "cam-00", "uri": f"{base}/{videos['web'].name}", "rtsp": backoff},
                {"id": "cam-01", "uri": f"file://{videos['short']}"},
            ],
        )
        assert [(s.restarted, s.backoff_s) for s in plan.sources] == [
            (True, (0.05, 0.2)),
            (False, (1.0, 30.0)),
        ]
        states: list[tuple[str, str, str]] = []
        graph = DeepStreamGraph(plan, on_state=lambda *a: states.append(a))
        per_camera = [count_buffers(graph.mux_pads[i]) for i in (0, 1)]  # kept over the restarts
        ends: list[int] = []  # the cameras whose EOS reached the mux before the run was stopped
        enough = threading.Event()

        def watch(_pad: Any, info: Any, index: int) -> Any:
            if info.get_event().type == Gst.EventType.EOS and not enough.is_set():
                ends.append(index)
            return Gst.PadProbeReturn.OK

        for index in (0, 1):
            graph.mux_pads[index].add_probe(Gst.PadProbeType.EVENT_DOWNSTREAM, watch, index)

        def on_tick() -> None:
            # Two plays of the served file, each after a restart (the first request was refused).
            if per_camera[0][0] >= 40:
                enough.set()
                graph.request_stop()

        with caplog.at_level(logging.WARNING):
            code = graph.run(duration_s=60, on_tick=on_tick, eos_timeout_s=20)
    assert enough.is_set()
    assert "no EOS after" not in caplog.text
    web = [detail for camera, state, detail in states if camera == "cam-00"]
    assert web[0].startswith("source error: ")
    assert "; retry in " in web[0]
    assert any(detail.startswith("end of stream; retry in ") for detail in web[1:])
    assert all(state == "reconnecting" for camera, state, _ in states if camera == "cam-00")
    assert graph.restarts[0] >= 2
    assert len(requests) >= 3
    assert per_camera[1][0] == 20  # the file camera played to its end beside it and ended...
    assert ends == [1]  # ...while the HTTP camera's ends never reached the mux
    assert code == 0  # a restarted camera's errors are recovered, not failures
    assert graph.policy.failed == set()


def test_a_run_stopped_while_an_http_camera_reconnects_ends_on_its_own_eos(
    tmp_path: Path, videos: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    """Stopped while a restarted camera is connecting again (its bin started, no decoded pad linked yet):
    the run's EOS cannot pass through it, so the graph sends one into its mux pad, and the run ends on EOS
    rather than on the EOS timeout. The server holds the second request until the run has stopped."""
    requests: list[int] = []
    connecting, release = threading.Event(), threading.Event()

    def hold() -> None:
        connecting.set()
        release.wait(30)

    with serving(refusing_first(videos["web"], requests, hold)) as base:
        try:
            plan = camera_plan(
                tmp_path,
                [
                    {
                        "id": "cam-00",
                        "uri": f"{base}/{videos['web'].name}",
                        "rtsp": {"reconnect_initial_s": 0.05},
                    },
                    {"id": "cam-01", "uri": f"file://{videos['long']}"},
                ],
            )
            graph = DeepStreamGraph(realtime(plan))

            def on_tick() -> None:
                if connecting.is_set():
                    graph.request_stop()

            with caplog.at_level(logging.WARNING):
                code = graph.run(duration_s=60, on_tick=on_tick, eos_timeout_s=20)
        finally:
            release.set()
    assert connecting.is_set()
    assert graph.restarts[0] == 1
    assert "no EOS after" not in caplog.text
    assert code == 0


def test_an_http_camera_that_stalls_is_restarted(tmp_path: Path, videos: dict[str, Path]) -> None:
    """A server that sends half a file and then nothing, the connection left open: no error, no end of
    stream, so only the stall watchdog sees it: the camera is restarted after its rtsp.stall_timeout_s
    without a frame, as the CPU graph reconnects it."""
    release = threading.Event()
    data = videos["web"].read_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "video/mp4")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            release.wait(30)  # and then nothing

        def log_message(self, *_args: Any) -> None:
            pass

    with serving(Handler) as base:
        try:
            plan = camera_plan(
                tmp_path, [{"id": "cam-00", "uri": f"{base}/web.mp4", "rtsp": {"stall_timeout_s": 0.5}}]
            )
            assert plan.sources[0].stall_s == 0.5
            states: list[tuple[str, str, str]] = []
            graph = DeepStreamGraph(plan, on_state=lambda *a: states.append(a))
            frames = count_buffers(graph.mux_pads[0])

            def on_tick() -> None:
                if any("(stalled)" in detail for _camera, _state, detail in states):
                    graph.request_stop()

            code = graph.run(duration_s=60, on_tick=on_tick, eos_timeout_s=20)
        finally:
            release.set()
    stalled = [detail for _camera, state, detail in states if "(stalled)" in detail]
    assert stalled, states
    assert stalled[0].startswith("no frame for ")
    assert 0 < frames[0] < 20  # half the file played, then nothing
    assert code == 0


def test_a_sources_reconnect_warning_reports_the_camera_reconnecting(
    tmp_path: Path, videos: dict[str, Path]
) -> None:
    """nvurisrcbin's watchdog posts only a WARNING when it reconnects: the bus handler routes it to the
    camera whose source bin posted it (a real message from the element inside that bin)."""
    plan = stand_in_plan(tmp_path, ["rtsp://10.0.0.1:554/live", f"file://{videos['short']}"], osd=False)
    states: list[tuple[str, str, str]] = []
    graph = DeepStreamGraph(plan, on_state=lambda *a: states.append(a))
    notice = "No data from source since last 10 sec. Trying reconnection"
    try:
        for index in (0, 1):
            source = graph.pipeline.get_by_name(f"source-bin-{index:02d}").get_by_name(f"uri-{index:02d}")
            warning = GLib.Error.new_literal(Gst.StreamError.quark(), notice, Gst.StreamError.FAILED)
            assert graph._on_message(None, Gst.Message.new_warning(source, warning, "test"))
    finally:
        graph.pipeline.set_state(Gst.State.NULL)
    assert states == [("cam-00", "reconnecting", notice)]  # the file camera does not reconnect
    assert graph.policy.exit_code == 0


def test_pipeline_error_stops_with_exit_code_1(tmp_path: Path, videos: dict[str, Path]) -> None:
    plan = stand_in_plan(
        tmp_path,
        [f"file://{videos['short']}"],
        output={"kind": "file", "path": str(tmp_path / "missing-dir" / "out.mp4"), "encoder": "software"},
    )
    graph = DeepStreamGraph(plan)
    assert graph.run(duration_s=30) == 1
    assert graph.policy.failed == set()  # not a camera's fault


def test_file_output_is_a_playable_mp4(tmp_path: Path, videos: dict[str, Path]) -> None:
    out = tmp_path / "annotated.mp4"
    plan = stand_in_plan(
        tmp_path,
        [f"file://{videos['short']}"],
        output={"kind": "file", "path": str(out), "encoder": "software"},
    )
    assert DeepStreamGraph(plan).run(duration_s=30) == 0
    check = Gst.parse_launch(f"filesrc location={out} ! qtdemux ! h264parse ! fakesink")
    check.set_state(Gst.State.PLAYING)
    message = check.get_bus().timed_pop_filtered(10 * Gst.SECOND, Gst.MessageType.EOS | Gst.MessageType.ERROR)
    check.set_state(Gst.State.NULL)
    assert message is not None
    assert message.type == Gst.MessageType.EOS


def test_request_stop_sends_eos(tmp_path: Path, videos: dict[str, Path]) -> None:
    plan = stand_in_plan(tmp_path, [f"file://{videos['long']}"], osd=False)
    graph = DeepStreamGraph(realtime(plan))
    frames = count_buffers(graph.elements["score-sink"].get_static_pad("sink"))

    def stop_soon(_pad: Any, _info: Any) -> Any:
        if frames[0] == 5:
            graph.request_stop()
        return Gst.PadProbeReturn.OK

    graph.elements["score-sink"].get_static_pad("sink").add_probe(Gst.PadProbeType.BUFFER, stop_soon)
    assert graph.run(duration_s=30) == 0
    assert 5 <= frames[0] < 100  # EOS came from the stop request, not the end of the 400-frame file


def test_cli_deepstream_without_deepstream_exits_2(tmp_path: Path) -> None:
    cameras = "cameras:\n  - {id: cam-1, uri: 'rtsp://10.0.0.1/live'}\n"
    by_config, by_flag = tmp_path / "ds.yaml", tmp_path / "cpu.yaml"
    by_config.write_text("graph: deepstream\n" + cameras)
    by_flag.write_text("graph: cpu\n" + cameras)
    for args in (["run", str(by_config)], ["run", str(by_flag), "--graph", "deepstream"]):
        result = subprocess.run(
            [sys.executable, "-m", "pipeline.cli.main", *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2, result.stdout + result.stderr
        assert "cannot run the DeepStream graph" in result.stderr
        assert "pyds 1.2.0" in result.stderr
        assert "Traceback" not in result.stdout + result.stderr


def test_missing_required_property_is_named(tmp_path: Path, videos: dict[str, Path]) -> None:
    plan = stand_in_plan(tmp_path, [f"file://{videos['short']}"], osd=False)
    convert = plan.score_branch[1]
    assert convert.name == "score-convert"
    # An element without the property the plan needs (as an older or newer DeepStream might be).
    wrong = dataclasses.replace(convert, props={"nvbuf-memory-type": 3})
    plan = dataclasses.replace(plan, score_branch=(plan.score_branch[0], wrong, *plan.score_branch[2:]))
    with pytest.raises(
        PropertyError, match=r"videoconvertscale \(score-convert\) has no property 'nvbuf-memory-type'"
    ):
        DeepStreamGraph(plan)


# --------------------------------------------------------------------------------------------------
# The whole chain: frames -> score probe -> clips -> ONNX Runtime engines -> fusion -> alerts
# --------------------------------------------------------------------------------------------------


class StandInMux:
    """Plays nvstreammux's metadata part on the stand-in graph, through the pyds TEST DOUBLE.

    ``funnel`` batches nothing and attaches no meta, so for each buffer it passes, this records what
    nvstreammux would put in the frame meta: the source (the funnel sink pad the buffer came in on, seen on
    the same streaming thread), a per-source frame number and the PTS. The buffer leaving the score branch's
    capsfilter (the same buffers in the same order, converted to RGBA) gets that batch meta with the
    buffer's real pixels as its surface, rows padded to a pitch as pyds maps them; the buffer going to the
    display branch gets one without pixels (the OSD probe only attaches text to it).
    """

    def __init__(self, graph: DeepStreamGraph, pyds: PydsTestDouble) -> None:
        self.pyds = pyds
        # Keyed by thread id: a foreign (GStreamer) thread gets a new Python thread state for each callback,
        # so threading.local would forget the source between the two probes.
        self._source: dict[int, int] = {}
        self._pending: deque[tuple[int, int, int]] = deque()
        self._lock = threading.Lock()
        self._frame_num: dict[int, int] = defaultdict(int)
        self.display_batches: list[BatchFixture] = []
        self.score_frames = 0
        for index, pad in graph.mux_pads.items():
            pad.add_probe(Gst.PadProbeType.BUFFER, self._on_mux_sink, index)
        graph.elements[MUX].get_static_pad("src").add_probe(Gst.PadProbeType.BUFFER, self._on_mux_src)
        graph.elements[SCORE_CAPS].get_static_pad("src").add_probe(Gst.PadProbeType.BUFFER, self._on_score)

    def _on_mux_sink(self, _pad: Any, _info: Any, index: int) -> Any:
        self._source[threading.get_ident()] = index
        return Gst.PadProbeReturn.OK

    def _on_mux_src(self, _pad: Any, info: Any) -> Any:
        buffer = info.get_buffer()
        source = self._source[threading.get_ident()]
        with self._lock:
            frame_num = self._frame_num[source]
            self._frame_num[source] += 1
            self._pending.append((source, frame_num, buffer.pts))
            batch = build_batch([FrameSpec(source, frame_num, buffer.pts, np.zeros((1, 1, 4), np.uint8))])
            self.display_batches.append(batch)
        attach(self.pyds, buffer, batch)
        return Gst.PadProbeReturn.OK

    def _on_score(self, pad: Any, info: Any) -> Any:
        buffer = info.get_buffer()
        st = pad.get_current_caps().get_structure(0)
        width, height = st.get_int("width")[1], st.get_int("height")[1]
        ok, mapped = buffer.map(Gst.MapFlags.READ)
        assert ok
        try:  # RGBA rows are width * 4 bytes: GStreamer's default layout has no padding for them
            pixels = np.frombuffer(mapped.data, np.uint8, count=height * width * 4).reshape(height, width, 4)
            surface = pitched(pixels.copy())
        finally:
            buffer.unmap(mapped)
        with self._lock:
            source, frame_num, pts = self._pending.popleft()
        attach(self.pyds, buffer, build_batch([FrameSpec(source, frame_num, pts, surface)]))
        self.score_frames += 1
        return Gst.PadProbeReturn.OK


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Synthetic scenes (160x120, 10 fps, 40 frames), a tiny checkpoint and its ONNX Runtime engines."""
    return build_world(tmp_path_factory.mktemp("ds-world"), frames=40)


def decode_rgb(path: Path, width: int, height: int) -> list[np.ndarray]:
    """Every frame of a file through the stand-in score branch's elements, as ``(H, W, 3)`` RGB."""
    pipeline = Gst.parse_launch(
        f"uridecodebin uri={path.as_uri()} ! videoconvertscale ! "
        f"video/x-raw,format=RGBA,width={width},height={height} ! appsink name=out sync=false"
    )
    sink = pipeline.get_by_name("out")
    pipeline.set_state(Gst.State.PLAYING)
    frames = []
    while True:
        sample = sink.emit("try-pull-sample", 10 * Gst.SECOND)
        if sample is None:
            break
        buffer = sample.get_buffer()
        ok, mapped = buffer.map(Gst.MapFlags.READ)
        assert ok
        try:
            rgba = np.frombuffer(mapped.data, np.uint8, count=height * width * 4).reshape(height, width, 4)
            frames.append(rgba[:, :, :3].copy())
        finally:
            buffer.unmap(mapped)
    pipeline.set_state(Gst.State.NULL)
    return frames


def world_config(world: dict[str, Path], out: Path, graph: str) -> ZsadConfig:
    from tests.fixtures.run_world import site_config as world_site

    videos = world["videos"]
    cameras = [
        {"id": "campus", "uri": f"file://{videos / 'campus_000.mp4'}", "context": "campus"},
        {"id": "parking", "uri": f"file://{videos / 'parking_000.mp4'}", "context": "parking"},
    ]
    data = world_site(world, out, cameras, ALWAYS_ON, graph=graph, metrics={"enabled": False})
    data["ui"] = {"enabled": False}
    return ZsadConfig.model_validate(data)


def test_stand_in_graph_scores_clips_like_the_cpu_graph(world: dict[str, Path], tmp_path: Path) -> None:
    """Real GStreamer (stand-in elements), the pyds test double, ONNX Runtime engines: frames mapped from the
    graph's buffers become clips, scores and alerts, and the CPU graph's code gives the same scores for the
    same frames."""
    cfg = world_config(world, tmp_path / "ds", "deepstream")
    pyds = PydsTestDouble()
    engines = load_engines(cfg)
    app = DeepStreamApp(cfg, engines, pyds, jetson=False)
    # Files only: the score branch waits for the clip path, no clip is dropped.
    assert all(app.clips.blocks(c.id) for c in cfg.cameras)
    plan = with_stand_ins(
        plan_graph(cfg, render_all(cfg, tmp_path / "ds" / "deepstream"), engines.frame_size)
    )
    graph = DeepStreamGraph(plan, score_probe=app.probe, osd_probe=app.board, on_state=app.on_state)
    mux = StandInMux(graph, pyds)
    frames: list[tuple[str, float, np.ndarray]] = []
    hand_on = app.probe.on_frame

    def record(camera: str, t: float, rgb: np.ndarray) -> None:
        frames.append((camera, t, rgb.copy()))
        hand_on(camera, t, rgb)

    app.probe.on_frame = record
    assert app.run(graph, duration_s=120) == 0

    # Every frame of both 40-frame files went through the probe, at the backbone's size.
    assert mux.score_frames == 80
    assert (app.probe.frames, app.probe.dropped_batches, app.probe.restarts) == (80, 0, 0)
    # Each camera's frames are its own file's pixels, in order (the mux stand-in kept the sources apart).
    for camera in ("campus", "parking"):
        mine = [rgb for c, _, rgb in frames if c == camera]
        decoded = decode_rgb(world["videos"] / f"{camera}_000.mp4", 64, 48)
        assert len(mine) == len(decoded) == 40
        for got, want in zip(mine, decoded, strict=True):
            np.testing.assert_array_equal(got, want)
    stats = app.clips.stats()
    assert {c: (q.processed, q.dropped, q.failed) for c, q in stats.cameras.items()} == {
        "campus": (10, 0, 0),
        "parking": (10, 0, 0),
    }  # clips end at frames 2, 6, ..., 38 of each camera
    ds_scores = read_jsonl(tmp_path / "ds" / "scores.jsonl")
    assert {(r["camera"], r["clip"]) for r in ds_scores} == {
        (c, i) for c in ("campus", "parking") for i in range(2, 10)
    }
    alerts = read_jsonl(tmp_path / "ds" / "alerts.jsonl")
    assert {(a["camera"], a["status"]) for a in alerts} == {
        (c, s) for c in ("campus", "parking") for s in ("open", "closed")
    }
    # The OSD probe drew each camera's fused score on the display branch.
    texts = [
        dm.text_params[0].display_text
        for batch in mux.display_batches
        for fm in [pointee(batch.meta.frame_meta_list.data)]
        for dm in display_metas(fm)
    ]
    assert len(texts) == 80
    assert all(t.startswith(("campus  ", "parking  ")) for t in texts)
    # Scores reach the board from the scheduler's thread while the display branch draws on its own, so
    # which frames carry a score depends on timing; after the run, each camera's line holds its last one.
    for camera in ("campus", "parking"):
        assert "--" not in app.board.text(camera), app.board.text(camera)

    # The CPU graph's code on the same frames: its frame callback (what CameraGraph calls), scheduler,
    # ClipInference and outputs.
    cpu_cfg = world_config(world, tmp_path / "cpu", "cpu")
    cpu = Application(cpu_cfg, load_engines(cpu_cfg), realtime=False)
    cpu.outputs.start()
    cpu.scheduler.start()
    for camera, t, rgb in frames:
        cpu._on_frame(camera, t, rgb)
    cpu.scheduler.stop(drain=True)
    cpu.outputs.shutdown()
    cpu.engines.close()
    cpu_scores = {(r["camera"], r["clip"]): r for r in read_jsonl(tmp_path / "cpu" / "scores.jsonl")}
    assert {(r["camera"], r["clip"]) for r in ds_scores} == set(cpu_scores)
    for row in ds_scores:
        expected = cpu_scores[row["camera"], row["clip"]]
        assert row["t"] == expected["t"]
        assert row["streams"].keys() == expected["streams"].keys()
        for stream, value in row["streams"].items():
            assert value == pytest.approx(expected["streams"][stream], abs=2e-5), (row["camera"], stream)
        assert row["score"] == pytest.approx(expected["score"], abs=2e-4)
