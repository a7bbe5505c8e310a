"""``run_deepstream`` and its app on a CPU machine: real engines (a tiny untrained model, ONNX Runtime), real
sinks, alerts and run state; only pyds is a TEST DOUBLE and the DeepStream elements are absent (so the run
stops, cleanly, where the graph would be built). The whole graph with stand-in elements is in
test_deepstream_graph.py."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import pipeline.deepstream.availability as deepstream
from core.config import ZsadConfig
from pipeline.cli.run import run_deepstream_graph
from pipeline.deepstream.app import DeepStreamApp, run_deepstream
from pipeline.deepstream.availability import DeepStreamUnavailable
from pipeline.deepstream.graph import DeepStreamGraphError
from pipeline.inference import EngineError, load_engines
from tests.fixtures.pyds_test_double import (
    FrameSpec,
    PydsTestDouble,
    attach,
    build_batch,
    pitched,
    rgba,
    unmapped,
)
from tests.fixtures.tiny_models import world_model_dict

pytest.importorskip("torch")
MODEL = world_model_dict()
H, W = MODEL["backbone"]["image_height"], MODEL["backbone"]["image_width"]
# Opens an alert at the first score and keeps it open until shutdown.
ALWAYS_ON = {"on_threshold": -50.0, "off_threshold": -60.0, "min_duration_s": 0.0, "cooldown_s": 0.0}


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def engines_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny checkpoint's engines (the backbone in NCTHW, to show any layout works: ClipInference feeds the
    layout the manifest records)."""
    import torch

    from engines.build import BuildOptions, build_from_config
    from engines.model import ZsadModel, save_checkpoint

    root = tmp_path_factory.mktemp("ds-world")
    cfg = ZsadConfig.model_validate({"model": MODEL})
    torch.manual_seed(0)
    ckpt = save_checkpoint(ZsadModel(cfg.model), root / "model.safetensors")
    options = BuildOptions(backend="onnxruntime", input_layout="NCTHW")
    build_from_config(cfg, checkpoint=ckpt, out_dir=root / "engines", options=options)
    return root / "engines"


def config(engines: Path, out: Path, **extra: Any) -> ZsadConfig:
    return ZsadConfig.model_validate(
        {
            "model": MODEL,
            "graph": "deepstream",
            "engines": {"dir": str(engines), "threads": 1},
            "defaults": {"alerts": ALWAYS_ON},
            "cameras": [
                {"id": "gate", "uri": "rtsp://user:pw@10.0.0.5/live"},
                {"id": "lobby", "uri": "file:///data/lobby.mp4"},
            ],
            "metrics": {"enabled": False},
            "ui": {"enabled": False},
            "output_dir": str(out),
            **extra,
        }
    )


def test_run_deepstream_checks_renders_and_stops_at_the_missing_elements(
    engines_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(deepstream, "deepstream_unavailable_reason", lambda: None)
    monkeypatch.setitem(sys.modules, "pyds", PydsTestDouble())
    monkeypatch.setenv("USE_NEW_NVSTREAMMUX", "yes")
    cfg = config(engines_dir, tmp_path / "run")
    with pytest.raises(DeepStreamGraphError, match="GStreamer element 'nvstreammux' is missing"):
        run_deepstream(cfg)
    # The command line says so and exits 1.
    assert run_deepstream_graph(cfg) == 1
    out = capsys.readouterr().err
    assert "cannot build the DeepStream graph: GStreamer element 'nvstreammux' is missing" in out
    # Only the new mux reads a config file; nvdspreprocess and nvinfer are not in the graph any more.
    assert list((tmp_path / "run" / "deepstream").iterdir()) == []
    assert os.environ["USE_NEW_NVSTREAMMUX"] == "no"  # deepstream.mux: legacy wins


def test_run_deepstream_refuses_engines_that_do_not_fit(
    engines_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(deepstream, "deepstream_unavailable_reason", lambda: None)
    cfg = config(engines_dir, tmp_path / "run", model=world_model_dict(preprocess={"clip_hop": 2}))
    with pytest.raises(EngineError):
        run_deepstream(cfg)
    assert run_deepstream_graph(cfg) == 2
    assert "refusing to start" in capsys.readouterr().err
    cfg = config(tmp_path / "no-engines", tmp_path / "run")
    with pytest.raises(EngineError, match="build the engines first"):
        run_deepstream(cfg)
    assert run_deepstream_graph(cfg) == 2
    assert "build the engines first" in capsys.readouterr().err


def test_run_deepstream_checks_availability_once_and_the_cli_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[None] = []

    def unavailable() -> str:
        calls.append(None)
        return "no pyds here"

    monkeypatch.setattr(deepstream, "deepstream_unavailable_reason", unavailable)
    cfg = config(tmp_path / "no-engines", tmp_path / "run")
    with pytest.raises(DeepStreamUnavailable, match="no pyds here"):
        run_deepstream(cfg)
    assert run_deepstream_graph(cfg) == 2
    assert "cannot run the DeepStream graph: no pyds here" in capsys.readouterr().err
    assert len(calls) == 2  # once per run, not once more by the command line


def test_app_turns_probe_batches_into_scores_and_alerts(engines_dir: Path, tmp_path: Path) -> None:
    # A queue longer than the test's clips: a live graph drops its oldest clip only when the queue is full.
    cfg = config(engines_dir, tmp_path / "run", scheduler={"queue_size": 64})
    pyds = PydsTestDouble()
    app = DeepStreamApp(cfg, load_engines(cfg), pyds, jetson=True)
    # An RTSP camera: the graph is live, a full queue drops its oldest clip.
    assert app.clips.blocks(cfg.cameras[0].id) is False
    app.start()
    rng = np.random.default_rng(0)
    for n in range(40):
        frames = [
            FrameSpec(s, n, n * 100_000_000, pitched(rgba(rng.integers(0, 255, (H, W, 3), np.uint8))))
            for s in (0, 1)
        ]
        buffer = attach(pyds, object(), build_batch(frames))
        assert app.probe.process(buffer) == 2
    assert len(unmapped(pyds)) == 80  # Jetson: every surface unmapped after its copy
    left = app.shutdown()  # scores the queued clips first
    assert not any(left.values())
    board = app.board
    assert board is not None
    assert board.text("gate").startswith("gate  ")
    assert "--" not in board.text("gate")  # a fused score arrived
    scores = read_jsonl(tmp_path / "run" / "scores.jsonl")
    assert {r["camera"] for r in scores} == {"gate", "lobby"}
    assert all(set(r["streams"]) >= {"predictive", "pixel", "motion"} for r in scores)
    alerts = read_jsonl(tmp_path / "run" / "alerts.jsonl")
    events = {(a["camera"], a["status"]) for a in alerts}
    assert ("gate", "open") in events
    assert ("gate", "closed") in events  # closed at shutdown
    assert app.outputs.metrics.frames_in.value(camera="gate") == 40
    assert app.outputs.metrics.frames_dropped.value(camera="gate") == 0


def test_app_reports_a_camera_live_from_its_frames_and_again_after_a_failure(
    engines_dir: Path, tmp_path: Path
) -> None:
    cfg = config(engines_dir, tmp_path / "run")
    pyds = PydsTestDouble()
    app = DeepStreamApp(cfg, load_engines(cfg), pyds, jetson=False)

    def states() -> dict[str, str]:
        return {c["id"]: c["state"] for c in app.outputs.run_state.cameras()}

    def frames(n: int, *sources: int) -> None:
        specs = [
            FrameSpec(s, n, n * 100_000_000, pitched(rgba(np.zeros((H, W, 3), np.uint8)))) for s in sources
        ]
        app.probe.process(attach(pyds, object(), build_batch(specs)))

    app.start()
    try:
        assert states() == {"gate": "starting", "lobby": "starting"}
        frames(0, 0)
        assert states() == {"gate": "live", "lobby": "starting"}
        assert app.outputs.metrics.camera_state.value(camera="gate", state="live") == 1.0
        app.on_state("gate", "failed", "connection lost")  # a source ERROR on the bus
        frames(1, 1)
        assert states() == {"gate": "failed", "lobby": "live"}
        frames(2, 0)  # nvurisrcbin reconnected: its frames resume
        assert states()["gate"] == "live"
        app.on_state("gate", "reconnecting", "No data from source. Trying reconnection")
        assert states()["gate"] == "reconnecting"
        frames(3, 0)
        assert states()["gate"] == "live"
        assert app.probe.restarts == 2  # the failure and the reconnect each started a new stream
    finally:
        app.shutdown()


@pytest.mark.parametrize("spin", [False, True])
def test_load_engines_gives_onnx_runtime_the_configured_spin(
    engines_dir: Path, tmp_path: Path, spin: bool
) -> None:
    cfg = config(engines_dir, tmp_path / "run")
    cfg = cfg.model_copy(update={"engines": cfg.engines.model_copy(update={"spin": spin, "threads": 2})})
    engines = load_engines(cfg)
    try:
        sessions = [engines.backbone._session, engines.dpc._session]
        entries = {
            s.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")
            for s in sessions
        }
        assert entries == {"1" if spin else "0"}
        # engines.parallel's default: each batch cut into one part per thread, single-threaded sessions.
        assert [engines.backbone.parts, engines.dpc.parts] == [2, 2]
        assert {s.get_session_options().intra_op_num_threads for s in sessions} == {1}
    finally:
        engines.close()
