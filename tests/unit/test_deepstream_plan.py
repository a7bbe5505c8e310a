"""The DeepStream graph plan (pure data from the config) and the bus policy."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from core.config import ZsadConfig
from pipeline.deepstream.graph import (
    BusPolicy,
    DeepStreamGraphError,
    GraphPlan,
    element_provider,
    is_live,
    plan_graph,
    tiler_grid,
)
from pipeline.deepstream.render import render_all
from pipeline.reconnect import ReconnectBackoff
from tests.fixtures.deepstream_fixtures import site_config

FRAME = (192, 128)


def plan_for(tmp_path: Path, n: int, *, jetson: bool = False, **deepstream: object) -> GraphPlan:
    cfg = site_config(n, deepstream=dict(deepstream))
    rendered = render_all(cfg, tmp_path / "ds")
    return plan_graph(cfg, rendered, FRAME, jetson=jetson)


def test_sources_mux_and_trunk(tmp_path: Path) -> None:
    plan = plan_for(tmp_path, 4, batched_push_timeout_us=33_000, gpu_id=1)
    assert [s.camera for s in plan.sources] == ["cam-00", "cam-01", "cam-02", "cam-03"]
    rtsp, file_, loop = plan.sources[0], plan.sources[1], plan.sources[2]
    assert rtsp.element.factory == "nvurisrcbin"
    assert rtsp.element.props["uri"] == "rtsp://user:secret@10.0.0.10:554/stream1"
    assert rtsp.element.props["select-rtp-protocol"] == 4  # TCP
    assert rtsp.element.props["rtsp-reconnect-interval"] == 10
    assert rtsp.element.props["rtsp-reconnect-attempts"] == -1
    assert rtsp.element.props["latency"] == 200
    assert rtsp.reconnects
    assert file_.element.props == {"uri": "file:///data/videos/lobby.mp4"}
    assert not file_.reconnects
    # A looping file as NVIDIA's deepstream_test_3.py (v1.2.0) loops one: file-loop, decoder in CUDA device
    # memory, and the mux's memory type (below).
    assert loop.element.props["file-loop"] is True
    assert loop.element.props["cudadec-memtype"] == 0
    assert "cudadec-memtype" not in file_.element.props
    # No nvdspreprocess, no nvinfer: the mux feeds the score branch (and the display branch through a tee).
    assert [e.factory for e in plan.trunk] == ["nvstreammux", "tee"]
    mux = plan.element("mux")
    assert mux.props["batch-size"] == 4
    assert mux.props["live-source"] is True  # an RTSP camera makes the batch live
    assert mux.props["batched-push-timeout"] == 33_000
    assert (mux.props["width"], mux.props["height"]) == (1280, 720)
    assert mux.optional["gpu-id"] == 1
    assert mux.props["nvbuf-memory-type"] == 2  # dGPU with a looping file: CUDA device memory
    jetson = plan_for(tmp_path / "j", 4, jetson=True).element("mux")
    assert jetson.props["nvbuf-memory-type"] == 4  # Jetson: surface arrays


def test_mux_memory_type_only_with_a_looping_file(tmp_path: Path) -> None:
    plan = plan_for(tmp_path, 2)  # two RTSP cameras
    assert "nvbuf-memory-type" not in plan.element("mux").props
    new = plan_for(tmp_path / "new", 4, mux="new").element("mux")
    # The new mux allocates no frames: the memory type is set only if it has the property.
    assert new.optional["nvbuf-memory-type"] == 2
    assert "nvbuf-memory-type" not in new.props


def test_score_branch_gives_rgba_frames_at_model_size(tmp_path: Path) -> None:
    plan = plan_for(tmp_path, 1)
    assert [e.factory for e in plan.score_branch] == ["queue", "nvvideoconvert", "capsfilter", "fakesink"]
    assert (
        plan.element("score-caps").props["caps"]
        == "video/x-raw(memory:NVMM),format=RGBA,width=192,height=128"
    )
    # get_nvds_buf_surface reads CUDA unified memory on dGPU and maps surface arrays on Jetson.
    assert plan.element("score-convert").props["nvbuf-memory-type"] == 3
    jetson = plan_for(tmp_path / "j", 1, jetson=True)
    assert jetson.element("score-convert").props["nvbuf-memory-type"] == 4


def test_new_mux_takes_the_config_file(tmp_path: Path) -> None:
    plan = plan_for(tmp_path, 2, mux="new")
    mux = plan.element("mux")
    assert set(mux.props) == {"batch-size", "config-file-path"}  # no width/height/batched-push-timeout
    assert mux.props["config-file-path"].endswith("config_mux.txt")


def test_display_branch_variants(tmp_path: Path) -> None:
    headless = plan_for(tmp_path / "a", 2, osd=False)
    assert headless.display_branch == ()
    assert [e.factory for e in headless.trunk] == ["nvstreammux"]  # no tee without a second branch
    osd = plan_for(tmp_path / "b", 5)
    assert [e.factory for e in osd.display_branch] == [
        "queue",
        "nvmultistreamtiler",
        "nvvideoconvert",
        "nvdsosd",
        "fakesink",
    ]
    tiler = osd.element("tiler")
    assert (tiler.props["rows"], tiler.props["columns"]) == (2, 3)
    mp4 = plan_for(tmp_path / "c", 2, output={"kind": "file", "path": "out.mp4"})
    assert [e.factory for e in mp4.display_branch][-6:] == [
        "nvvideoconvert",
        "capsfilter",
        "nvv4l2h264enc",
        "h264parse",
        "mp4mux",
        "filesink",
    ]
    assert mp4.element("file-sink").props["location"] == "/var/lib/zsad/run/out.mp4"
    assert mp4.element("encoder").props["bitrate"] == 4_000_000
    soft = plan_for(tmp_path / "d", 2, output={"kind": "rtsp", "encoder": "software", "udp_port": 5600})
    assert [e.factory for e in soft.display_branch][-5:] == [
        "capsfilter",
        "x264enc",
        "h264parse",
        "rtph264pay",
        "udpsink",
    ]
    assert soft.element("encode-caps").props["caps"] == "video/x-raw,format=I420"
    assert soft.element("rtsp-udp-sink").props["port"] == 5600
    assert soft.rtsp is not None
    assert (soft.rtsp.port, soft.rtsp.path, soft.rtsp.udp_port) == (8554, "/zsad", 5600)


def test_element_names_are_unique(tmp_path: Path) -> None:
    plan = plan_for(tmp_path, 16, output={"kind": "file"})
    names = [e.name for e in plan.elements()] + [s.element.name for s in plan.sources]
    assert len(names) == len(set(names))


def test_live_source_override(tmp_path: Path) -> None:
    plan = plan_for(tmp_path, 4, live_source=False)
    assert plan.element("mux").props["live-source"] is False
    assert not plan.live


def test_files_alone_are_not_live() -> None:
    cfg = site_config(1)
    files = cfg.model_copy(
        update={"cameras": [cfg.cameras[0].model_copy(update={"uri": "file:///data/a.mp4"})]}
    )
    assert is_live(cfg)  # an RTSP camera
    assert not is_live(files)  # the clip path may hold a file back instead of dropping clips


def test_rendered_for_other_camera_count_is_refused(tmp_path: Path) -> None:
    cfg = site_config(2)
    rendered = render_all(cfg, tmp_path)
    with pytest.raises(DeepStreamGraphError, match="rendered for 2 cameras"):
        plan_graph(site_config(3), rendered, FRAME)


def test_tiler_grid() -> None:
    assert [tiler_grid(n) for n in (1, 2, 4, 5, 9, 16)] == [(1, 1), (1, 2), (2, 2), (2, 3), (3, 3), (4, 4)]
    with pytest.raises(ValueError, match="at least one tile"):
        tiler_grid(0)


def test_element_provider_names_the_package() -> None:
    assert "DeepStream 7.1" in element_provider("nvstreammux")
    assert element_provider("h264parse") == "gstreamer1.0-plugins-bad"
    assert "software" in element_provider("nvv4l2h264enc")


def test_bus_policy(tmp_path: Path) -> None:
    plan = plan_for(tmp_path, 4)
    policy = BusPolicy(plan.sources)
    assert policy.exit_code == 0
    # An RTSP camera's error: nvurisrcbin reconnects, the others go on.
    action, index = policy.on_error(
        "/GstPipeline:zsad/GstBin:source-bin-00/GstURIDecodeBin:uri-00", "timeout"
    )
    assert (action, index) == ("continue", 0)
    # A file camera's error: its mux pad gets EOS so the batch stops waiting for it.
    assert policy.on_error("/GstPipeline:zsad/GstBin:source-bin-01/x", "corrupt") == ("eos-source", 1)
    assert policy.failed == {"cam-00", "cam-01"}
    assert policy.exit_code == 1
    # Anything else stops the pipeline.
    assert policy.on_error("/GstPipeline:zsad/GstNvStreamMux:mux", "batch") == ("stop", None)
    assert policy.on_error("/GstPipeline:zsad/GstBin:source-bin-42/x", "?") == ("stop", None)
    assert policy.on_stream_eos(3) == "cam-03"
    assert policy.on_stream_eos(9) is None
    assert policy.on_eos() == "stop"


def test_http_and_v4l2_cameras_are_restarted_by_the_graph(tmp_path: Path) -> None:
    """nvurisrcbin reconnects RTSP only: an HTTP or v4l2 camera's error restarts its source bin (the graph's
    own backoff, from the camera's rtsp block), and is not a failure of the run."""
    cfg = site_config(3)
    data = cfg.model_dump(mode="json", exclude_unset=True)
    data["cameras"] = [
        {"id": "web", "uri": "http://10.0.0.5/video.mjpg", "rtsp": {"reconnect_initial_s": 0.5}},
        {"id": "usb", "uri": "v4l2:///dev/video0"},
        {"id": "gate", "uri": "rtsp://10.0.0.6/live"},
    ]
    cfg = ZsadConfig.model_validate(data)
    plan = plan_graph(cfg, render_all(cfg, tmp_path / "ds"), FRAME, jetson=False)
    assert [(s.camera, s.restarted, s.backoff_s) for s in plan.sources] == [
        ("web", True, (0.5, 30.0)),
        ("usb", True, (1.0, 30.0)),
        ("gate", False, (1.0, 30.0)),
    ]
    policy = BusPolicy(plan.sources)
    assert policy.on_error("/GstPipeline:zsad/GstBin:source-bin-00/src", "Not Found") == ("restart-source", 0)
    assert policy.on_error("/GstPipeline:zsad/GstBin:source-bin-01/v4l2src", "gone") == ("restart-source", 1)
    assert policy.exit_code == 0
    assert policy.failed == set()
    assert policy.on_error("/GstPipeline:zsad/GstBin:source-bin-02/src", "timeout") == ("continue", 2)
    assert policy.exit_code == 1


def test_reconnect_backoff_doubles_to_its_cap_and_starts_afresh_after_a_long_run() -> None:
    backoff = ReconnectBackoff(0.5, 3.0)
    assert [backoff.next_delay(now=10.0) for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    backoff.live(now=20.0)  # connected, then lost again before it stayed up for the cap
    assert backoff.next_delay(now=22.0) == 3.0
    backoff.live(now=30.0)  # up for the cap: a new outage
    assert backoff.next_delay(now=33.0) == 0.5
    assert backoff.next_delay(now=33.5) == 1.0


def test_bus_policy_takes_a_sources_reconnect_warning_for_a_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    policy = BusPolicy(plan_for(tmp_path, 4).sources)  # cam-00 RTSP, cam-01 a file
    notice = (
        "No data from source rtsp://user:secret@10.0.0.10:554/stream1 since last 10 sec. Trying reconnection"
    )
    with caplog.at_level(logging.WARNING):
        assert (
            policy.on_warning("/GstPipeline:zsad/GstBin:source-bin-00/GstDsNvUriSrcBin:uri-00", notice) == 0
        )
    assert "camera cam-00: source reconnecting" in caplog.text
    assert "secret" not in caplog.text
    # Not a reconnect notice, not a camera that reconnects, not from a source bin: nothing restarts.
    assert (
        policy.on_warning("/GstPipeline:zsad/GstBin:source-bin-00/x", "Can't record audio fast enough")
        is None
    )
    assert policy.on_warning("/GstPipeline:zsad/GstBin:source-bin-01/x", notice) is None
    assert policy.on_warning("/GstPipeline:zsad/GstNvStreamMux:mux", notice) is None
    assert policy.exit_code == 0  # a warning is not an error


def test_error_messages_are_redacted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    policy = BusPolicy(plan_for(tmp_path, 1).sources)
    policy.on_error("/GstBin:source-bin-00/src", "cannot open rtsp://admin:hunter2@10.0.0.1/live")
    assert "hunter2" not in caplog.text
    assert "10.0.0.1" in caplog.text
