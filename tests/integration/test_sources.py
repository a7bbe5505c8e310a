"""The CPU camera graph on real GStreamer: file, loop, http cameras, failures, sampling, runtime changes."""

from __future__ import annotations

import functools
import http.server
import itertools
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from pydantic import ValidationError

gi = pytest.importorskip("gi")

import pipeline.cpu.graph as graph_module  # noqa: E402
from core.config import CameraConfig, CameraDefaults, CameraSettings, ZsadConfig  # noqa: E402
from core.gst import ElementMissingError, elements_of, init_gstreamer, make  # noqa: E402
from core.gst.frames import yuv_matrix  # noqa: E402
from pipeline.clips import Clip, ClipAssembler  # noqa: E402
from pipeline.cpu.graph import CameraGraph, DuplicateCameraError, GraphStateError  # noqa: E402
from pipeline.cpu.sources import (  # noqa: E402
    CameraPipeline,
    FrameSize,
    SampleFrame,
    UnsupportedUriError,
    frame_from_sample,
    parse_source_uri,
)
from tests.fixtures.http_serving import serving  # noqa: E402


def make_video(
    path: Path,
    frames: int,
    *,
    pattern: str = "ball",
    width: int = 160,
    height: int = 120,
    faststart: bool = False,
) -> Path:
    """Encode a small H.264 MP4 with videotestsrc (25 fps)."""
    Gst = init_gstreamer()
    mux = "mp4mux faststart=true" if faststart else "mp4mux"
    pipe = Gst.parse_launch(
        f"videotestsrc num-buffers={frames} pattern={pattern} ! "
        f"video/x-raw,width={width},height={height},framerate=25/1 ! x264enc ! {mux} ! "
        f"filesink location={path}"
    )
    pipe.set_state(Gst.State.PLAYING)
    msg = pipe.get_bus().timed_pop_filtered(20 * Gst.SECOND, Gst.MessageType.EOS | Gst.MessageType.ERROR)
    pipe.set_state(Gst.State.NULL)
    assert msg is not None, "test video encoding timed out"
    assert msg.type == Gst.MessageType.EOS, "test video encoding failed"
    return path


def run_launch(launch: str) -> None:
    """Run a gst-launch style pipeline to EOS."""
    Gst = init_gstreamer()
    pipe = Gst.parse_launch(launch)
    pipe.set_state(Gst.State.PLAYING)
    msg = pipe.get_bus().timed_pop_filtered(20 * Gst.SECOND, Gst.MessageType.EOS | Gst.MessageType.ERROR)
    pipe.set_state(Gst.State.NULL)
    assert msg is not None, "test media encoding timed out"
    assert msg.type == Gst.MessageType.EOS, "test media encoding failed"


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("videos")
    corrupt = d / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    out = {
        "v50": make_video(d / "v50.mp4", 50),
        "v25": make_video(d / "v25.mp4", 25),
        "smpte": make_video(d / "smpte.mp4", 10, pattern="smpte"),
        "fast": make_video(d / "fast.mp4", 50, faststart=True),
        "corrupt": corrupt,
    }
    run_launch(f"audiotestsrc num-buffers=20 ! audioconvert ! wavenc ! filesink location={d / 'audio.wav'}")
    run_launch(
        f"matroskamux name=m ! filesink location={d / 'av.mkv'} "
        "videotestsrc num-buffers=50 ! video/x-raw,width=160,height=120,framerate=25/1 ! x264enc ! m. "
        "audiotestsrc num-buffers=50 ! audioconvert ! audio/x-raw,format=S16LE,rate=44100,channels=1 ! m."
    )
    out["audio"] = d / "audio.wav"
    out["av"] = d / "av.mkv"
    return out


def camera(cid: str, uri: str, fps: float = 25.0, **extra: Any) -> CameraSettings:
    cfg = ZsadConfig(
        defaults=CameraDefaults.model_validate({"sampling": {"fps": fps}, **extra}),
        cameras=[CameraConfig(id=cid, uri=uri)],
    )
    return cfg.camera_settings(cid)


class Collector:
    """Thread-safe record of frames and state changes."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.frames: dict[str, list[tuple[float, tuple[int, ...]]]] = {}
        self.last: dict[str, np.ndarray] = {}
        self.states: list[tuple[str, str, str]] = []

    def on_frame(self, cid: str, pts: float, frame: np.ndarray) -> None:
        with self.lock:
            self.frames.setdefault(cid, []).append((pts, frame.shape))
            self.last[cid] = frame

    def on_state(self, cid: str, state: str, detail: str) -> None:
        with self.lock:
            self.states.append((cid, state, detail))

    def count(self, cid: str) -> int:
        with self.lock:
            return len(self.frames.get(cid, []))

    def reported(self, expected: dict[str, str]) -> bool:
        """Whether each camera's last state change delivered to ``on_state`` is ``expected``'s. The graph
        sets a camera's state before it calls ``on_state``, so ``CameraGraph.states()`` can show a state whose
        callback (and detail) has not arrived yet: a test that reads the details waits for this too."""
        with self.lock:
            last = {cid: state for cid, state, _ in self.states}
        return all(last.get(cid) == state for cid, state in expected.items())


def wait_for(cond: Callable[[], bool], timeout: float = 60.0) -> None:
    # An upper bound on an event, generous for a loaded 2-core CI machine: it costs nothing when it passes.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError("condition not reached in time")


@pytest.fixture
def collector() -> Collector:
    return Collector()


@pytest.fixture
def graphs() -> Iterator[list[CameraGraph]]:
    made: list[CameraGraph] = []
    yield made
    for g in made:
        g.stop()


def test_three_file_cameras_deliver_every_frame_at_the_model_size(
    videos: dict[str, Path], collector: Collector, graphs: list[CameraGraph]
) -> None:
    cams = [camera(f"cam{i}", f"file://{videos['v50']}") for i in range(3)]
    g = CameraGraph((96, 64), collector.on_frame, collector.on_state, cameras=cams)
    graphs.append(g)
    g.start()
    wait_for(lambda: all(s == "eos" for s in g.states().values()))
    stats = g.stats()
    for i in range(3):
        cid = f"cam{i}"
        frames = collector.frames[cid]
        assert len(frames) == 50
        assert {shape for _, shape in frames} == {(64, 96, 3)}
        pts = [p for p, _ in frames]
        assert pts == sorted(pts)
        assert pts[-1] - pts[0] == pytest.approx(49 / 25, abs=1e-3)
        assert stats[cid].frames_delivered == 50
        assert stats[cid].frames_in == 50
        assert (cid, "live", "") in collector.states


def _posting_when(ready: Callable[[CameraGraph], bool]) -> Callable[[CameraGraph, Callable[[], Any]], None]:
    """A ``CameraGraph._post`` that holds each task posted to the graph's loop until ``ready(graph)`` (looked
    at every 20 ms on the loop): fault injection on our own graph, a loop thread held up by the machine."""
    from core.gst import load_typelib

    GLib = load_typelib("GLib")

    def post(self: CameraGraph, fn: Callable[[], Any]) -> None:
        def run(*_: Any) -> bool:
            if not ready(self):
                return True  # not yet: look again in 20 ms
            fn()
            return False

        src = GLib.timeout_source_new(20)
        src.set_callback(run)
        src.attach(self._ctx)

    return post


def test_a_camera_whose_end_is_handled_before_its_live_task_was_still_live(
    videos: dict[str, Path], collector: Collector, graphs: list[CameraGraph], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first frame's "live" is posted to the graph's loop as an idle task, which GLib runs after the bus
    watch: on a loaded box a short file's end of stream was handled first, and the camera went from starting
    to eos without ever being live. Here every task posted to the loop waits until the camera's pipeline is
    gone (fault injection on our own graph: a loop thread held up by the machine), so the end of the file is
    always handled first, however long the machine takes to get there."""
    late: list[str] = []

    def ended(g: CameraGraph) -> bool:
        cam = g._cams.get("c")
        if cam is not None and cam.pipeline is not None:
            return False
        late.append(g.states().get("c", ""))  # what the camera was when a held task finally ran
        return True

    monkeypatch.setattr(CameraGraph, "_post", _posting_when(ended))
    cams = [camera("c", f"file://{videos['v50']}")]
    g = CameraGraph((96, 64), collector.on_frame, collector.on_state, cameras=cams, realtime=False)
    graphs.append(g)
    g.start()
    # Until a posted task (the first frame's live task among them) has run after the end was handled.
    wait_for(lambda: "eos" in late)
    states = [s for cid, s, _ in collector.states if cid == "c"]
    assert states[-2:] == ["live", "eos"], states


def test_an_on_state_that_stops_the_graph_at_live_is_obeyed_when_the_end_came_first(
    videos: dict[str, Path], graphs: list[CameraGraph], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bus watch marks the camera live (calling on_state) before it handles the end of a loop:// file;
    an on_state that stops the graph there must leave nothing running (the end's handling once went on and
    built the next pass's pipeline after the stop)."""

    def first_pass_ended(g: CameraGraph) -> bool:
        cam = g._cams.get("lp")
        return cam is None or cam.pipeline is None or cam.loops > 0

    monkeypatch.setattr(CameraGraph, "_post", _posting_when(first_pass_ended))
    frames: list[float] = []
    stopped = threading.Event()
    holder: list[CameraGraph] = []

    def on_state(cid: str, state: str, _detail: str) -> None:
        if state == "live" and not stopped.is_set():
            stopped.set()
            holder[0].stop()

    g = CameraGraph(
        (96, 64),
        lambda _c, pts, _f: frames.append(pts),
        on_state,
        cameras=[camera("lp", f"loop://{videos['v25']}")],
    )
    holder.append(g)
    graphs.append(g)
    g.start()
    wait_for(stopped.is_set)
    wait_for(lambda: not g._thread.is_alive())  # the loop ended with the stop
    seen = len(frames)
    time.sleep(0.5)  # a pipeline left playing would go on delivering
    assert len(frames) == seen
    assert g._cams["lp"].pipeline is None


def test_frames_no_clip_holds_are_counted_but_never_read_and_the_clips_are_the_same(
    videos: dict[str, Path], graphs: list[CameraGraph]
) -> None:
    """With the run's clip assembly asking (clips of 4 frames 2 apart, one every 8), every second frame is
    dropped before the model branch scales it: on_frame gets None for it, its pts and count go on, and the
    clips are those of a graph that reads every frame."""
    runs: dict[str, tuple[list[tuple[float, bool]], list[Clip], CameraGraph]] = {}
    for name, sparse in (("every", False), ("sparse", True)):
        assembler = ClipAssembler(4, 2, 8)
        seen: list[tuple[float, bool]] = []
        clips: list[Clip] = []

        def on_frame(
            cid: str,
            pts: float,
            frame: np.ndarray | None,
            seen: Any = seen,
            clips: Any = clips,
            a: Any = assembler,
        ) -> None:
            seen.append((pts, frame is None))
            clip = a.push(cid, pts, frame)
            if clip is not None:
                clips.append(clip)

        g = CameraGraph(
            (96, 64),
            on_frame,
            cameras=[camera("cam", f"file://{videos['v50']}")],
            wants_frame=assembler.wants_next if sparse else None,
        )
        graphs.append(g)
        g.start()
        wait_for(lambda g=g: g.states()["cam"] == "eos")
        runs[name] = (seen, clips, g)
    every, sparse_run = runs["every"], runs["sparse"]
    assert [skipped for _, skipped in every[0]] == [False] * 50
    assert [skipped for _, skipped in sparse_run[0]] == [n % 2 == 1 for n in range(50)]
    assert [p for p, _ in sparse_run[0]] == [p for p, _ in every[0]]  # every frame's pts, read or not
    assert sparse_run[2].stats()["cam"].frames_delivered == 50
    assert len(every[1]) == 6  # starts 0, 8, ..., 40 (each 7 frames long)
    assert [c.start_frame for c in sparse_run[1]] == [c.start_frame for c in every[1]]
    for a, b in zip(every[1], sparse_run[1], strict=True):
        np.testing.assert_array_equal(a.frames, b.frames)
        np.testing.assert_array_equal(a.pts, b.pts)


def test_missing_and_corrupt_files_fail_while_good_cameras_deliver(
    videos: dict[str, Path], collector: Collector, graphs: list[CameraGraph], caplog: pytest.LogCaptureFixture
) -> None:
    cams = [
        camera("good1", f"file://{videos['v50']}"),
        camera("missing", f"file://{videos['v50'].parent}/does-not-exist.mp4"),
        camera("corrupt", f"file://{videos['corrupt']}"),
        camera("good2", f"file://{videos['v50']}"),
    ]
    g = CameraGraph((160, 120), collector.on_frame, collector.on_state, cameras=cams)
    graphs.append(g)
    g.start()
    expected = {"good1": "eos", "good2": "eos", "missing": "failed", "corrupt": "failed"}
    wait_for(lambda: g.states() == expected and collector.reported(expected))
    assert collector.count("good1") == 50
    assert collector.count("good2") == 50
    assert collector.count("missing") == 0
    assert collector.count("corrupt") == 0
    details = {cid: detail for cid, state, detail in collector.states if state == "failed"}
    assert "file not found" in details["missing"]
    assert "does-not-exist.mp4" in details["missing"]
    assert "type of stream" in details["corrupt"]
    assert "corrupt" in caplog.text
    assert "failed" in caplog.text


class StuckDecoderPipeline(CameraPipeline):
    """A real camera pipeline whose decoded output (buffers and EOS) a pad probe swallows, for the first
    ``stuck[camera_id]`` builds of a camera: it never prerolls and never errors, as a demuxer looks from
    outside when it pauses silently before its first frame."""

    stuck: ClassVar[dict[str, int]] = {}

    def __init__(self, camera_id: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(camera_id, *args, **kwargs)
        left = self.stuck.get(camera_id, 0)
        if left > 0:
            self.stuck[camera_id] = left - 1
            Gst = init_gstreamer()

            def swallow(_pad: Any, info: Any) -> Any:
                is_event = info.type & Gst.PadProbeType.EVENT_DOWNSTREAM
                if is_event and info.get_event().type != Gst.EventType.EOS:
                    return Gst.PadProbeReturn.OK
                return Gst.PadProbeReturn.DROP

            kinds = Gst.PadProbeType.BUFFER | Gst.PadProbeType.BUFFER_LIST | Gst.PadProbeType.EVENT_DOWNSTREAM
            self._decode_sink.add_probe(kinds, swallow)


def test_a_file_that_starts_silently_stuck_is_rebuilt_and_then_plays_in_full(
    videos: dict[str, Path],
    collector: Collector,
    graphs: list[CameraGraph],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(graph_module, "CameraPipeline", StuckDecoderPipeline)
    monkeypatch.setattr(StuckDecoderPipeline, "stuck", {"once": 1, "always": 99})
    cams = [camera(cid, f"file://{videos['v50']}") for cid in ("once", "always", "good")]
    # 3 s: a healthy file's first frame comes in tens of milliseconds, and a loaded CI machine must not make
    # the good camera look stuck (the test would then count a rebuild it did not mean).
    g = CameraGraph((160, 120), collector.on_frame, collector.on_state, cameras=cams, start_timeout_s=3.0)
    graphs.append(g)
    t0 = time.monotonic()
    g.start()
    expected = {"once": "eos", "always": "failed", "good": "eos"}
    wait_for(lambda: g.states() == expected and collector.reported(expected))
    # One rebuild, then every frame of the file, once: the stuck first pipeline delivered nothing.
    assert collector.count("once") == 50
    assert collector.count("good") == 50
    assert collector.count("always") == 0
    assert g.stats()["once"].frames_delivered == 50
    details = {cid: detail for cid, state, detail in collector.states if state == "failed"}
    assert set(details) == {"always"}
    assert "no frame and no error within 3.0 s of starting (3 tries)" in details["always"]
    # Built three times, each given the full timeout before the next.
    assert time.monotonic() - t0 >= 9.0
    retries = [r.getMessage() for r in caplog.records if "rebuilding its pipeline" in r.getMessage()]
    assert sum("camera once:" in m for m in retries) == 1
    assert sum("camera always:" in m for m in retries) == 2
    assert not any("camera good:" in m for m in retries)


def test_a_slow_file_is_never_timed_out_once_it_has_started(
    videos: dict[str, Path], graphs: list[CameraGraph]
) -> None:
    # Back-pressure from the consumer holds the file still far longer than the start timeout.
    seen: list[float] = []

    def slow(cid: str, pts: float, frame: np.ndarray) -> None:
        seen.append(pts)
        if len(seen) == 5:
            time.sleep(6.0)

    cams = [camera("slow", f"file://{videos['v25']}")]
    g = CameraGraph((160, 120), slow, cameras=cams, start_timeout_s=2.0)
    graphs.append(g)
    g.start()
    wait_for(lambda: g.states() == {"slow": "eos"})
    assert len(seen) == 25


def test_loop_keeps_delivering_past_the_end_with_increasing_pts(
    videos: dict[str, Path], collector: Collector, graphs: list[CameraGraph]
) -> None:
    g = CameraGraph(
        (160, 120), collector.on_frame, collector.on_state, cameras=[camera("lp", f"loop://{videos['v25']}")]
    )
    graphs.append(g)
    g.start()
    wait_for(lambda: collector.count("lp") >= 90)
    assert g.states()["lp"] == "live"
    stats = g.stats()["lp"]
    assert stats.loops >= 3
    assert stats.frames_in >= 75  # counted across restarts
    with collector.lock:
        pts = [p for p, _ in collector.frames["lp"]]
    assert all(b > a for a, b in itertools.pairwise(pts))
    assert pts[-1] > 3 * 24 / 25  # media time runs on past the file's one second


def test_sampling_fps_keeps_about_one_frame_in_five(
    videos: dict[str, Path], collector: Collector, graphs: list[CameraGraph]
) -> None:
    g = CameraGraph(
        (160, 120),
        collector.on_frame,
        cameras=[camera("s5", f"file://{videos['v50']}", fps=5), camera("s25", f"file://{videos['v50']}")],
    )
    graphs.append(g)
    g.start()
    wait_for(lambda: set(g.states().values()) == {"eos"})
    assert collector.count("s25") == 50
    assert 9 <= collector.count("s5") <= 11
    pts = [p for p, _ in collector.frames["s5"]]
    assert np.median(np.diff(pts)) == pytest.approx(0.2, abs=0.01)
    stats = g.stats()["s5"]
    assert stats.frames_in == 50
    assert stats.frames_sampled == collector.count("s5")


def test_add_and_remove_cameras_at_runtime(
    videos: dict[str, Path], collector: Collector, graphs: list[CameraGraph]
) -> None:
    g = CameraGraph(
        (160, 120), collector.on_frame, collector.on_state, cameras=[camera("a", f"loop://{videos['v25']}")]
    )
    graphs.append(g)
    g.start()
    wait_for(lambda: collector.count("a") > 10)
    g.add_camera(camera("b", f"loop://{videos['v25']}"))
    with pytest.raises(DuplicateCameraError):
        g.add_camera(camera("b", f"loop://{videos['v25']}"))
    wait_for(lambda: collector.count("b") > 10)
    g.remove_camera("a")
    stopped_at = collector.count("a")
    b_then = collector.count("b")
    wait_for(lambda: collector.count("b") > b_then + 50)
    assert collector.count("a") == stopped_at  # no frame after remove_camera returned
    assert set(g.states()) == {"b"}
    assert g.states()["b"] == "live"
    with pytest.raises(KeyError):
        g.remove_camera("a")


def test_a_pipeline_that_does_not_reach_null_bounds_remove_camera_and_the_camera_is_gone(
    videos: dict[str, Path], collector: Collector, graphs: list[CameraGraph], caplog: pytest.LogCaptureFixture
) -> None:
    """A reload that restarts a camera whose RTSP server never answers TEARDOWN waited in remove_camera for
    ever (and the run never heard SIGTERM). Here the camera's frame callback holds its streaming thread, so
    its pipeline cannot reach NULL until the test lets go, as a hung teardown cannot: remove_camera returns
    after its timeout with an error logged, the camera is gone from the graph (its id may be added again,
    as a restart does), the other camera runs on, and the old pipeline still reaches NULL once released."""
    held = threading.Event()
    release = threading.Event()

    def on_frame(cid: str, pts: float, frame: np.ndarray) -> None:
        if cid == "stuck" and not held.is_set():
            held.set()
            release.wait(60)  # bounded: a failing test must not hang the suite
        collector.on_frame(cid, pts, frame)

    cams = [camera("stuck", f"loop://{videos['v25']}"), camera("ok", f"loop://{videos['v25']}")]
    g = CameraGraph((64, 48), on_frame, collector.on_state, cameras=cams)
    graphs.append(g)
    try:
        g.start()
        assert held.wait(60), "the camera never delivered a frame"
        removed = threading.Event()

        def remove() -> None:
            g.remove_camera("stuck", timeout_s=0.5)
            removed.set()

        threading.Thread(target=remove, name="test-remove", daemon=True).start()
        assert removed.wait(30), "remove_camera waited on a pipeline that cannot reach NULL"
        assert "camera stuck: its pipeline did not reach NULL within 0.5 s" in caplog.text
        (teardown,) = [t for t in threading.enumerate() if t.name == "zsad-teardown-stuck"]
        assert teardown.is_alive()  # still held: removed without waiting for it
        assert set(g.states()) == {"ok"}
        ok_then = collector.count("ok")
        wait_for(lambda: collector.count("ok") > ok_then + 25)
        g.add_camera(camera("stuck", f"loop://{videos['v25']}"))  # the restart's second half
        wait_for(lambda: collector.count("stuck") > 10)
    finally:
        release.set()
    teardown.join(30)
    assert not teardown.is_alive(), "the released pipeline never reached NULL"
    assert g.states() == {"ok": "live", "stuck": "live"}


def test_odd_width_frames_have_their_row_padding_removed(
    videos: dict[str, Path], collector: Collector, graphs: list[CameraGraph]
) -> None:
    # 162*3 = 486 bytes is not a multiple of 4: GStreamer pads each row to 488.
    g = CameraGraph((162, 90), collector.on_frame, cameras=[camera("odd", f"file://{videos['smpte']}")])
    graphs.append(g)
    g.start()
    wait_for(lambda: g.states()["odd"] == "eos")
    frame = collector.last["odd"]
    assert frame.shape == (90, 162, 3)
    assert frame.flags.c_contiguous
    # SMPTE bars are vertical in the top 2/3: a column barely changes down the rows unless rows are sheared.
    top = frame[5:50].astype(np.int16)
    assert float(np.abs(top - top[0]).mean()) < 4.0
    assert float(top[0].std()) > 30  # and the bars are really there


def test_frame_from_sample_strips_stride_padding() -> None:
    Gst = init_gstreamer()
    caps = Gst.Caps.from_string("video/x-raw,format=RGB,width=5,height=2,framerate=25/1")
    data = bytes(range(32))  # 2 rows of stride 16: 15 pixel bytes + 1 padding byte each
    buf = Gst.Buffer.new_wrapped(data)
    buf.pts = 3 * Gst.SECOND // 2
    pts, frame = frame_from_sample(Gst.Sample.new(buf, caps, None, None))
    assert pts == pytest.approx(1.5)
    assert frame.shape == (2, 5, 3)
    assert frame[0].ravel().tolist() == list(range(15))
    assert frame[1].ravel().tolist() == list(range(16, 31))
    assert frame.flags.writeable


@pytest.mark.parametrize(
    ("colorimetry", "height", "full", "matrix"),
    [
        ("bt601", 240, False, (0.299, 0.114)),
        ("bt709", 240, False, (0.2126, 0.0722)),
        ("bt2020", 240, False, (0.2627, 0.0593)),
        ("2:4:5:4", 1080, False, (0.299, 0.114)),  # codes win over the height
        ("1:4:0:0", 240, True, (0.299, 0.114)),  # full-range BT.601, as JPEG uses
        ("1:3:5:1", 240, True, (0.2126, 0.0722)),
        ("sRGB", 240, True, (0.2126, 0.0722)),
        (None, 576, False, (0.299, 0.114)),  # unset: GStreamer's default by height
        (None, 720, False, (0.2126, 0.0722)),
        (None, 2160, False, (0.2627, 0.0593)),
    ],
)
def test_yuv_matrix_follows_the_caps_colorimetry(
    colorimetry: str | None, height: int, full: bool, matrix: tuple[float, float]
) -> None:
    assert yuv_matrix(colorimetry, height) == (full, matrix)


def test_a_full_range_i420_frame_reads_back_as_its_rgb() -> None:
    Gst = init_gstreamer()
    h, w = 48, 64
    image = np.zeros((h, w, 3), np.uint8)
    image[:, : w // 2] = (250, 10, 10)  # near the ends of the range, where limited vs full range shows
    image[:, w // 2 :] = (5, 240, 200)
    pipeline = Gst.parse_launch(
        f"appsrc name=src format=time caps=video/x-raw,format=RGB,width={w},height={h},framerate=10/1,"
        "colorimetry=sRGB ! videoconvert ! video/x-raw,format=I420,colorimetry=1:4:0:0 ! appsink name=sink"
    )
    pipeline.set_state(Gst.State.PLAYING)
    try:
        pipeline.get_by_name("src").emit("push-buffer", Gst.Buffer.new_wrapped(image.tobytes()))
        sample = pipeline.get_by_name("sink").emit("try-pull-sample", 5 * Gst.SECOND)
        assert sample is not None
        frame = SampleFrame.from_sample(sample)
    finally:
        pipeline.set_state(Gst.State.NULL)
    assert frame.colorimetry == "1:4:0:0"
    # Away from the colour edge (4:2:0 chroma blurs it), every pixel is within a few levels.
    error = np.abs(frame.rgb().astype(int) - image.astype(int))
    assert error[:, 4 : w // 2 - 4].max() <= 4
    assert error[:, w // 2 + 4 : -4].max() <= 4


def test_display_branch_gives_a_larger_frame_with_the_same_pts(
    videos: dict[str, Path], collector: Collector, graphs: list[CameraGraph]
) -> None:
    display: list[tuple[float, SampleFrame, str]] = []
    g = CameraGraph(
        (64, 48),
        collector.on_frame,
        cameras=[camera("d", f"file://{videos['v25']}", fps=10)],
        display_size=(320, 240),
        on_display_frame=lambda _cid, pts, frame: display.append(
            (pts, frame, threading.current_thread().name)
        ),
    )
    graphs.append(g)
    g.start()
    wait_for(lambda: g.states()["d"] == "eos")
    model = collector.frames["d"]
    assert {s for _, s in model} == {(48, 64, 3)}
    assert {f.shape for _, f, _ in display} == {(240, 320, 3)}
    assert [p for p, _, _ in display] == pytest.approx([p for p, _ in model])
    assert g.stats()["d"].display_frames == len(display) == len(model)
    # Display frames come from the one poller thread, still in GStreamer buffers until read.
    assert {name for _, _, name in display} == {"zsad-display"}
    assert all(isinstance(f, SampleFrame) for _, f, _ in display)
    big = display[-1][1].rgb()
    assert big.shape == (240, 320, 3)
    assert big.dtype == np.uint8
    assert big.flags.c_contiguous
    small = collector.last["d"]  # the same last picture at the model size: the colours agree
    assert np.abs(big.reshape(-1, 3).mean(0) - small.reshape(-1, 3).mean(0)).max() < 8


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux")
def test_decode_nice_lowers_every_streaming_thread_but_not_the_caller(
    videos: dict[str, Path], collector: Collector, graphs: list[CameraGraph]
) -> None:
    seen: dict[str, set[int]] = {"model": set(), "display": set()}

    def nice_of_this_thread() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    def on_frame(branch: str) -> Callable[[str, float, np.ndarray], None]:
        def record(cid: str, pts: float, frame: np.ndarray) -> None:
            seen[branch].add(nice_of_this_thread())
            if branch == "model":
                collector.on_frame(cid, pts, frame)

        return record

    before = nice_of_this_thread()
    g = CameraGraph(
        (64, 48),
        on_frame("model"),
        cameras=[camera("n", f"file://{videos['v50']}")],
        display_size=(160, 120),
        on_display_frame=on_frame("display"),
        decode_nice=before + 7,
    )
    graphs.append(g)
    g.start()
    wait_for(lambda: g.states()["n"] == "eos")
    assert collector.count("n") == 50
    # The frame callbacks run on the streaming threads of both branches: all lowered. (GStreamer reuses
    # pooled threads, and a thread lowered further by an earlier graph in this process stays lower.)
    assert seen["model"]
    assert seen["display"]
    assert min(seen["model"] | seen["display"]) >= before + 7
    assert nice_of_this_thread() == before  # the thread that built and started the graph is untouched
    with pytest.raises(ValueError, match="decode_nice"):
        CameraGraph((64, 48), collector.on_frame, decode_nice=20)


def decoders_of(pipeline: Any) -> list[Any]:
    """The elements at any depth of ``pipeline`` with libav's ``max-threads`` property."""
    return [e for e in elements_of(pipeline) if e.find_property("max-threads") is not None]


@pytest.fixture
def http_videos(videos: dict[str, Path]) -> Iterator[str]:
    """The test videos' folder served on 127.0.0.1: its base URL."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(videos["fast"].parent))
    with serving(handler) as base:
        yield base


@pytest.mark.parametrize(("kind", "length"), [("file", 25), ("http", 50)])
def test_decoder_threads_reach_the_decoder_that_decodebin_picks(
    kind: str, length: int, videos: dict[str, Path], http_videos: str
) -> None:
    """decodebin picks the decoder while the stream starts, inside the bin (uridecodebin: a decodebin inside
    it): the count is set as the decoder is added, and 0 leaves libav's own (0, one thread per core)."""
    Gst = init_gstreamer()
    uri = f"file://{videos['v25']}" if kind == "file" else f"{http_videos}/{videos['fast'].name}"
    counts = {}
    for threads in (1, 3, 0):
        frames: list[float | None] = []
        cp = CameraPipeline(
            f"t{threads}",
            parse_source_uri(uri),
            25.0,
            FrameSize(32, 24),
            lambda pts, frame, frames=frames: frames.append(pts),
            decoder_threads=threads,
        )
        cp.pipeline.set_state(Gst.State.PLAYING)
        msg = cp.pipeline.get_bus().timed_pop_filtered(
            60 * Gst.SECOND, Gst.MessageType.EOS | Gst.MessageType.ERROR
        )
        decoders = decoders_of(cp.pipeline)
        cp.pipeline.set_state(Gst.State.NULL)
        cp.close()
        assert msg is not None
        assert msg.type == Gst.MessageType.EOS, msg.type
        assert len(frames) == length
        assert [d.get_factory().get_name() for d in decoders] == ["avdec_h264"]
        counts[threads] = decoders[0].get_property("max-threads")
    assert counts == {1: 1, 3: 3, 0: 0}
    with pytest.raises(ValueError, match="decoder_threads"):
        CameraPipeline(
            "x", parse_source_uri(uri), 25.0, FrameSize(32, 24), lambda pts, frame: None, decoder_threads=-1
        )
    with pytest.raises(ValueError, match="decode_threads"):
        CameraGraph((64, 48), lambda c, p, f: None, decode_threads=-1)


def test_a_source_that_drops_every_connection_after_its_first_frames_keeps_backing_off(
    videos: dict[str, Path], collector: Collector, graphs: list[CameraGraph]
) -> None:
    """A server that serves a few frames and ends each connection (a session limit, a decoder error after
    the first keyframe): the camera goes live each time, and used to reset its backoff on every first
    frame, so it was reconnected every second for ever. The backoff now resets only after the camera stayed
    up for reconnect_max_s, so here the waits double up to the cap."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(videos["fast"].parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{videos['fast'].name}"
        rtsp = {"reconnect_initial_s": 0.1, "reconnect_max_s": 30.0}
        g = CameraGraph(
            (160, 120), collector.on_frame, collector.on_state, cameras=[camera("web", url, rtsp=rtsp)]
        )
        graphs.append(g)
        g.start()

        def waits() -> list[float]:
            details = [d for c, st, d in list(collector.states) if c == "web" and st == "reconnecting"]
            return [float(d.rsplit("retry in ", 1)[1].split(" ")[0]) for d in details]

        wait_for(lambda: len(waits()) >= 4, timeout=30)
        g.stop()
        assert waits()[:4] == [0.1, 0.2, 0.4, 0.8]  # live in between each time, and still backing off
        assert collector.count("web") >= 4 * 10
    finally:
        server.shutdown()
        server.server_close()


def test_realtime_plays_a_file_at_its_native_rate(
    videos: dict[str, Path], collector: Collector, graphs: list[CameraGraph]
) -> None:
    g = CameraGraph(
        (80, 60), collector.on_frame, cameras=[camera("rt", f"file://{videos['v25']}")], realtime=True
    )
    graphs.append(g)
    t0 = time.monotonic()
    g.start()
    wait_for(lambda: g.states()["rt"] == "eos")
    assert time.monotonic() - t0 >= 0.8  # 25 frames at 25 fps; as-fast-as-possible takes ~0.05 s
    assert collector.count("rt") == 25


def test_http_camera_delivers_frames(
    videos: dict[str, Path], collector: Collector, graphs: list[CameraGraph]
) -> None:
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(videos["fast"].parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{videos['fast'].name}"
        g = CameraGraph((160, 120), collector.on_frame, collector.on_state, cameras=[camera("web", url)])
        graphs.append(g)
        g.start()
        wait_for(lambda: collector.count("web") >= 50)
        assert {s for _, s in collector.frames["web"]} == {(120, 160, 3)}
        # A network source that ends is reconnected, not failed.
        wait_for(lambda: any(s == "reconnecting" for c, s, _ in collector.states if c == "web"))
        assert "failed" not in [s for c, s, _ in collector.states if c == "web"]
        g.stop()
    finally:
        server.shutdown()
        server.server_close()


def test_graph_lifecycle_errors(videos: dict[str, Path], collector: Collector) -> None:
    g = CameraGraph((32, 32), collector.on_frame, cameras=[camera("x", f"file://{videos['v25']}")])
    with pytest.raises(ValidationError, match="has no path"):  # the config refuses it first...
        camera("y", "file://")
    with pytest.raises(UnsupportedUriError, match="has no path"):  # ...and the graph, given one unchecked
        g.add_camera(camera("y", f"file://{videos['v25']}").model_copy(update={"uri": "file://"}))
    g.start()
    with pytest.raises(GraphStateError):
        g.start()
    g.stop()
    g.stop()  # idempotent
    with pytest.raises(GraphStateError):
        g.add_camera(camera("z", f"file://{videos['v25']}"))
    with pytest.raises(ValueError, match="display_size"):
        CameraGraph((32, 32), collector.on_frame, display_size=(64, 64))
    with pytest.raises(ValueError, match="width"):
        FrameSize(0, 10)


def test_parse_source_uri(tmp_path: Path) -> None:
    assert parse_source_uri("file:///abs/x.mp4").location == "/abs/x.mp4"
    rel = parse_source_uri("file://out/demo/x.mp4", cwd=tmp_path)
    assert (rel.kind, rel.location) == ("file", str(tmp_path / "out/demo/x.mp4"))
    lp = parse_source_uri("loop://clips/a%20b.mp4", cwd=tmp_path)
    assert (lp.kind, lp.location) == ("loop", str(tmp_path / "clips/a b.mp4"))
    rtsp = parse_source_uri("rtsps://admin:hunter2@10.0.0.5:322/stream")
    assert rtsp.kind == "rtsp"
    assert rtsp.reconnects
    assert rtsp.network
    assert "hunter2" not in rtsp.safe_uri
    assert "10.0.0.5" in rtsp.safe_uri
    assert parse_source_uri("https://cam.example/live.mp4").kind == "http"
    v4l2 = parse_source_uri("v4l2:///dev/video2")
    assert (v4l2.kind, v4l2.location) == ("v4l2", "/dev/video2")
    for bad in ("ftp://x/y", "v4l2://video0", "rtsp://", "nothing"):
        with pytest.raises(UnsupportedUriError):
            parse_source_uri(bad)


def test_missing_element_names_the_debian_package() -> None:
    with pytest.raises(ElementMissingError, match="no-such-element"):
        make("no-such-element")
    err = ElementMissingError("rtspsrc")
    assert err.package == "gstreamer1.0-plugins-good"
    assert "apt-get install gstreamer1.0-plugins-good" in str(err)


def test_absent_v4l2_device_keeps_retrying_without_disturbing_others(
    videos: dict[str, Path], collector: Collector, graphs: list[CameraGraph]
) -> None:
    if init_gstreamer().ElementFactory.find("v4l2src") is None:
        pytest.skip("v4l2src not installed")
    cams = [
        camera(
            "usb", "v4l2:///dev/video-zsad-absent", rtsp={"reconnect_initial_s": 0.2, "reconnect_max_s": 0.4}
        ),
        camera("file", f"file://{videos['v50']}"),
    ]
    g = CameraGraph((160, 120), collector.on_frame, collector.on_state, cameras=cams)
    graphs.append(g)
    g.start()
    wait_for(lambda: g.states()["file"] == "eos" and g.stats()["usb"].reconnects >= 2)
    assert collector.count("file") == 50
    assert g.states()["usb"] in ("reconnecting", "starting")
    assert "failed" not in [s for c, s, _ in collector.states if c == "usb"]
    # Backoff doubles up to reconnect_max_s: retry delays 0.2 then 0.4, 0.4, ...
    delays = [d for c, s, d in collector.states if c == "usb" and s == "reconnecting"]
    assert "retry in 0.2 s" in delays[0]
    assert all("retry in 0.4 s" in d for d in delays[1:])


def test_audio_only_file_fails_and_audio_next_to_video_is_ignored(
    videos: dict[str, Path], collector: Collector, graphs: list[CameraGraph]
) -> None:
    cams = [camera("wav", f"file://{videos['audio']}"), camera("av", f"file://{videos['av']}")]
    g = CameraGraph((160, 120), collector.on_frame, collector.on_state, cameras=cams)
    graphs.append(g)
    g.start()
    expected = {"wav": "failed", "av": "eos"}
    wait_for(lambda: g.states() == expected and collector.reported(expected))
    assert collector.count("av") == 50
    assert collector.count("wav") == 0
    assert ("wav", "failed", "no video stream in the source") in collector.states


def test_a_failing_frame_callback_is_logged_and_streaming_goes_on(
    videos: dict[str, Path], graphs: list[CameraGraph], caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[str] = []

    def on_frame(cid: str, pts: float, frame: np.ndarray) -> None:
        seen.append(cid)
        if cid == "bad":
            raise RuntimeError("consumer bug")

    cams = [camera("bad", f"file://{videos['v25']}"), camera("ok", f"file://{videos['v25']}")]
    g = CameraGraph((64, 48), on_frame, cameras=cams)
    graphs.append(g)
    g.start()
    wait_for(lambda: set(g.states().values()) == {"eos"})
    assert seen.count("bad") == 25
    assert seen.count("ok") == 25
    assert "frame callback failed" in caplog.text


def test_a_pipeline_set_to_null_and_closed_is_freed_with_its_file_descriptors(
    videos: dict[str, Path], capfd: pytest.CaptureFixture[str]
) -> None:
    """Every rebuild (a reconnect, a stall, a reload) replaces a camera's pipeline. Its signal handlers and
    probe hold bound methods from C, a cycle Python's collector cannot see: without close() each rebuild
    leaked the pipeline and about 4 file descriptors (a camera retrying every 30 s for a day: thousands)."""
    import gc
    import weakref

    Gst = init_gstreamer()
    spec = parse_source_uri(f"file://{videos['v25']}")

    def build_and_drop() -> weakref.ref[CameraPipeline]:
        cp = CameraPipeline(
            "c", spec, 5.0, FrameSize(32, 24), lambda pts, frame: None,
            display_size=FrameSize(64, 48), keep_frame=lambda: True, thread_nice=5, decoder_threads=1,
        )  # fmt: skip
        cp.pipeline.set_state(Gst.State.PLAYING)
        cp.pipeline.get_bus().timed_pop_filtered(Gst.SECOND, Gst.MessageType.EOS | Gst.MessageType.ERROR)
        cp.pipeline.set_state(Gst.State.NULL)
        cp.close()
        cp.close()  # idempotent
        return weakref.ref(cp)

    def fds() -> int:
        return sum(1 for _ in Path("/proc/self/fd").iterdir())

    build_and_drop()  # GStreamer's own one-time setup
    gc.collect()
    before = fds()
    refs = [build_and_drop() for _ in range(10)]
    gc.collect()
    assert [r() for r in refs] == [None] * 10
    assert fds() <= before + 2  # without close(): about 40 more, and every pipeline still alive
    # A second close() does nothing: the bus counts sync-emission enables, and disabling it twice was a
    # GStreamer CRITICAL.
    assert "CRITICAL" not in capfd.readouterr().err


def test_a_failing_message_handler_fails_its_camera_loudly_and_the_watchdog_survives_a_bug(
    videos: dict[str, Path], collector: Collector, graphs: list[CameraGraph], caplog: pytest.LogCaptureFixture
) -> None:
    """GLib removes a watch whose callback raises, without a word: a bug in one camera's message handling
    left it deaf to its errors and EOS, and one in the stall watchdog stopped it for every camera. Fault
    injected into the graph's own handlers (a bug, not a GStreamer double)."""
    g = CameraGraph(
        (32, 32),
        collector.on_frame,
        collector.on_state,
        cameras=[camera("bad", f"file://{videos['v25']}"), camera("good", f"file://{videos['v25']}")],
    )
    graphs.append(g)
    handle = g._handle_bus

    def buggy(msg: Any, cam: Any, gen: int) -> bool:
        if cam.id == "bad":
            raise RuntimeError("a bug")
        return handle(msg, cam, gen)

    g._handle_bus = buggy  # type: ignore[method-assign]
    stalls = g._check_stalls_once
    calls = {"n": 0}

    def flaky_watchdog() -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("a watchdog bug")
        stalls()

    g._check_stalls_once = flaky_watchdog  # type: ignore[method-assign]
    g.start()
    wait_for(lambda: g.states() == {"bad": "failed", "good": "eos"}, timeout=20)
    assert any(
        c == "bad" and "handling a pipeline message failed: a bug" in d for c, s, d in collector.states
    )
    wait_for(lambda: calls["n"] >= 2, timeout=20)  # the watchdog ran again after its first call raised
    assert "the stall watchdog failed; it keeps running" in caplog.text
    g.stop()


def test_a_slowly_sampled_camera_is_not_called_stalled_between_two_frames(
    collector: Collector, graphs: list[CameraGraph]
) -> None:
    """A camera sampled at 0.2 fps delivers a frame every 5 s: a 1 s stall timeout would reconnect it
    between every two frames, so the timeout is at least two frames' spacing."""
    slow = camera("slow", "rtsp://127.0.0.1:9/none", fps=0.2, rtsp={"stall_timeout_s": 1.0})
    quick = camera("quick", "rtsp://127.0.0.1:9/none", fps=10.0, rtsp={"stall_timeout_s": 1.0})
    g = CameraGraph((32, 32), collector.on_frame, cameras=[slow, quick])
    graphs.append(g)
    assert g._stall_timeout(g._cams["slow"]) == pytest.approx(10.0)
    assert g._stall_timeout(g._cams["quick"]) == pytest.approx(1.0)


def test_a_looping_file_says_when_it_starts_again(
    videos: dict[str, Path], collector: Collector, graphs: list[CameraGraph]
) -> None:
    """At each loop the run restarts the camera's clips (ClipPath.restart), so no clip spans the cut
    from the file's end to its start: the graph says when, before the new pass's first frame."""
    loops: list[tuple[str, int]] = []
    g = CameraGraph(
        (32, 32),
        collector.on_frame,
        cameras=[camera("lp", f"loop://{videos['v25']}")],
        on_loop=lambda cid: loops.append((cid, collector.count("lp"))),
    )
    graphs.append(g)
    g.start()
    wait_for(lambda: len(loops) >= 2, timeout=30)
    g.stop()
    assert [cid for cid, _ in loops[:2]] == ["lp", "lp"]
    assert 0 < loops[0][1] < loops[1][1]  # after a pass's frames, before the next pass's
