"""The DeepStream graph with real GStreamer on a machine without DeepStream.

* The real element factory reports the missing DeepStream elements by name and package.
* The plan is built with a substitution map (``nvstreammux`` -> ``funnel``, ``nvinfer`` -> ``identity``,
  ``nvurisrcbin`` -> ``uridecodebin``, ...: stand-ins made of stock GStreamer elements, not DeepStream), so
  the building, linking, dynamic source pads, probes, bus policy and shutdown run for real.
* ``zsad run --graph deepstream`` exits 2 with a clear message.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gi.repository import GLib

from core.gst import ElementMissingError, init_gstreamer
from pipeline.deepstream.graph import (
    DeepStreamGraph,
    ElementSpec,
    GraphPlan,
    PropertyError,
    checked_make,
    plan_graph,
)
from pipeline.deepstream.probe import ClipScoringProbe
from pipeline.deepstream.render import render_all
from tests.conftest import REPO
from tests.fixtures.deepstream_fixtures import backbone_manifest, site_config
from tests.fixtures.pyds_test_double import FrameSpec, PydsTestDouble, build_batch, queue, rgba

Gst = init_gstreamer()
pytestmark = pytest.mark.skipif(
    Gst.ElementFactory.find("nvstreammux") is not None, reason="DeepStream is installed: stand-ins not needed"
)

STAND_INS = {
    "nvstreammux": "funnel",
    "nvdspreprocess": "identity",
    "nvinfer": "identity",
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
    """Small H.264 MP4s: 'short' (20 frames) and 'long' (400 frames), 64x48."""
    root = tmp_path_factory.mktemp("videos")
    out = {}
    for name, frames in (("short", 20), ("long", 400)):
        path = root / f"{name}.mp4"
        pipeline = Gst.parse_launch(
            f"videotestsrc num-buffers={frames} ! video/x-raw,width=64,height=48,framerate=25/1 ! "
            f"x264enc speed-preset=ultrafast ! mp4mux ! filesink location={path}"
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
    rendered = render_all(cfg, backbone_manifest(cfg), tmp_path / "ds")
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
    plan = plan_graph(cfg, render_all(cfg, backbone_manifest(cfg), tmp_path), (48, 32), jetson=False)
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


@pytest.mark.skip(
    reason="with pyds 1.2.0 the current probe drops every batch (no nvdspreprocess batch meta binding), so "
    "the good batch cannot be told from the bad one: pending the DeepStream probe redesign (issue 15)"
)
def test_probe_exception_boundary_in_a_real_pipeline(tmp_path: Path, videos: dict[str, Path]) -> None:
    """The score probe on a real pad: a batch that fails is dropped, the probe returns OK, the run ends."""
    plan = stand_in_plan(tmp_path, [f"file://{videos['short']}"], osd=False)
    pyds = PydsTestDouble()
    frame = rgba(np.zeros((32, 48, 3), np.uint8))
    queue(pyds, build_batch([FrameSpec(0, 0, 0, frame)]))
    queue(pyds, build_batch([FrameSpec(7, 1, 0, frame)]))  # unknown source: raises inside the probe
    probe = ClipScoringProbe(
        pyds,
        scorer=None,  # type: ignore[arg-type]  # never reached: no clip completes
        cameras=["cam-00"],
        clip_len=2,
        frame_stride=1,
        normalise=lambda x: x,
        on_scores=lambda *a: None,
    )
    graph = DeepStreamGraph(plan, score_probe=probe)
    assert graph.run(duration_s=30) == 0
    assert probe.batches == 2  # the two queued batches; later buffers carry no batch meta
    assert probe.dropped_batches == 1


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
        assert "cannot run the DeepStream graph" in result.stdout
        assert "pyds 1.2.0" in result.stdout
        assert "Traceback" not in result.stdout + result.stderr


def test_missing_required_property_is_named(tmp_path: Path, videos: dict[str, Path]) -> None:
    plan = stand_in_plan(tmp_path, [f"file://{videos['short']}"], osd=False)
    infer = plan.trunk[2]
    assert infer.name == "backbone"
    # An element without the property the plan needs (as an older or newer DeepStream might be).
    wrong = dataclasses.replace(infer, props={"input-tensor-meta": True})
    plan = dataclasses.replace(plan, trunk=(*plan.trunk[:2], wrong, *plan.trunk[3:]))
    with pytest.raises(PropertyError, match=r"identity \(backbone\) has no property 'input-tensor-meta'"):
        DeepStreamGraph(plan)
