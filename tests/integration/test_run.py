"""`zsad run` end to end with real GStreamer, real ONNX Runtime engines and a JSONL sink.

The model is tiny and untrained: these tests check the plumbing (cameras, engines, scheduler, fusion,
alerts, media, shutdown), not detection quality (tests/integration/test_demo.py does that).
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from core.config import load_config
from engines.build import BUILD_LOCK, BuildOptions, BuildReport, build_from_config, build_lock
from pipeline.inference import build_missing_engines
from tests.conftest import REPO
from tests.fixtures.run_world import read_jsonl, write_site


def _zsad(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli.main", *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
        timeout=180,
    )


def test_a_run_in_which_every_camera_failed_exits_1(world: dict[str, Path], tmp_path: Path) -> None:
    """Nothing was watched: a service manager or a script must see it in the exit code (one failed camera
    beside cameras that ran is the test above, exit 0)."""
    site = write_site(
        world,
        tmp_path / "out",
        [
            {"id": "missing", "uri": f"file://{tmp_path / 'nope.mp4'}"},
            {"id": "corrupt", "uri": f"file://{world['corrupt']}"},
        ],
    )
    r = _zsad("run", str(site), "--fast", "--duration", "60")
    assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-3000:]
    assert "every camera failed: {" in r.stderr
    assert "Traceback" not in r.stderr


def test_bad_cameras_are_reported_and_the_others_go_on(world: dict[str, Path], tmp_path: Path) -> None:
    from pipeline.outputs.alert_schema import validate_alert

    videos = world["scenes"] / "testing" / "videos"
    out = tmp_path / "out"
    site = write_site(
        world,
        out,
        [
            {"id": "campus", "uri": f"file://{videos / 'campus_000.mp4'}", "context": "campus"},
            {"id": "parking", "uri": f"file://{videos / 'parking_000.mp4'}", "context": "parking"},
            {"id": "missing", "uri": f"file://{tmp_path / 'nope.mp4'}"},
            {"id": "corrupt", "uri": f"file://{world['corrupt']}"},
        ],
        alerts={"on_threshold": -50.0, "off_threshold": -60.0, "min_duration_s": 0.0, "cooldown_s": 0.0},
    )
    r = _zsad("-v", "run", str(site), "--fast", "--duration", "60")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "camera missing" in r.stderr
    assert "failed" in r.stderr
    assert "camera corrupt" in r.stderr
    scores = read_jsonl(out / "scores.jsonl")
    per_camera = {s["camera"] for s in scores}
    assert per_camera == {"campus", "parking"}
    # 80 frames at 10 fps, a clip every 4 frames, 2 clips of history: ~18 scored clips per camera.
    assert sum(s["camera"] == "campus" for s in scores) >= 15
    assert set(scores[0]["streams"]) >= {"predictive", "pixel", "motion"}
    # An always-on threshold opens one alert per good camera; the end of the run closes it (reason shutdown)
    # and the JSONL sink has both the open and the closed record, each valid against the schema.
    records = read_jsonl(out / "alerts.jsonl")
    for rec in records:
        validate_alert(rec)
    closed = {rec["camera"]: rec for rec in records if rec["status"] == "closed"}
    assert set(closed) == {"campus", "parking"}
    assert all(rec["reason"] == "shutdown" for rec in closed.values())
    snap = out / closed["campus"]["snapshot"]
    assert snap.is_file()
    assert snap.stat().st_size > 0
    # The heatmap of the peak's evidence, beside the snapshot and the same size.
    heatmap = out / closed["campus"]["heatmap"]
    assert heatmap.name == f"{closed['campus']['alert_id']}.heatmap.jpg"
    assert heatmap.parent == snap.parent
    with Image.open(heatmap) as img, Image.open(snap) as plain:
        assert img.size == plain.size


def test_missing_engines_refuse_to_start(world: dict[str, Path], tmp_path: Path) -> None:
    site = write_site(world, tmp_path / "out", [{"id": "a", "uri": "file:///x.mp4"}])
    cfg = json.loads(site.read_text())
    cfg["engines"]["dir"] = str(tmp_path / "no-engines")
    site.write_text(json.dumps(cfg))
    r = _zsad("run", str(site))
    assert r.returncode == 2
    assert "backbone.manifest.json is missing" in r.stderr
    # A config whose model differs from what the engines were built for is refused, naming the field.
    cfg["engines"]["dir"] = str(world["engines"])
    cfg["model"]["backbone"]["hidden_size"] = 64
    site.write_text(json.dumps(cfg))
    r = _zsad("run", str(site))
    assert r.returncode == 2
    assert "backbone.manifest.json: outputs[0].shape" in r.stderr


def test_engines_from_two_builds_refuse_to_start(world: dict[str, Path], tmp_path: Path) -> None:
    """A build that failed after the backbone (a parity failure in the DPC head) leaves a new backbone beside
    the old head: the run must refuse, not score with a mismatched pair."""
    import shutil

    from core.config import parse_config
    from engines.manifest import load_manifest, save_manifest
    from pipeline.inference import EngineError, load_engines
    from tests.fixtures.run_world import site_config

    engines = tmp_path / "engines"
    shutil.copytree(world["engines"], engines)
    site = site_config(world, tmp_path / "out", [{"id": "a", "uri": "file:///x.mp4"}])
    site["engines"]["dir"] = str(engines)
    cfg = parse_config(json.dumps(site), "<test site>")
    load_engines(cfg).close()  # one build: fine
    backbone = load_manifest(engines / "backbone.manifest.json")
    save_manifest(backbone.model_copy(update={"weights_sha256": "e" * 64}), engines)
    with pytest.raises(EngineError, match=r"built from different weights \(backbone eeeeeeeeeeee, dpc_head "):
        load_engines(cfg)


def test_sigterm_closes_the_open_alert_and_exits_cleanly(world: dict[str, Path], tmp_path: Path) -> None:
    videos = world["scenes"] / "testing" / "videos"
    out = tmp_path / "out"
    site = write_site(
        world,
        out,
        [{"id": "loop", "uri": f"loop://{videos / 'campus_000.mp4'}"}],
        alerts={"on_threshold": -50.0, "off_threshold": -60.0, "min_duration_s": 0.0, "cooldown_s": 0.0},
    )
    # The log goes to a file, not a pipe read at the end: a run that logs more than a pipe holds before its
    # alert opens would block on its own log.
    log_path = tmp_path / "run.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli.main", "run", str(site)],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(
            r["status"] == "open" for r in read_jsonl(out / "alerts.jsonl")
        ):
            time.sleep(0.5)
        assert any(r["status"] == "open" for r in read_jsonl(out / "alerts.jsonl")), "no alert opened"
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0, log_path.read_text()[-2000:]
    closed = [r for r in read_jsonl(out / "alerts.jsonl") if r["status"] == "closed"]
    assert len(closed) == 1
    assert closed[0]["reason"] == "shutdown"


def test_scheduler_decode_nice_and_threads_reach_the_camera_graph(
    world: dict[str, Path], tmp_path: Path
) -> None:
    from tests.fixtures.run_world import make_app, site_config

    cams = [{"id": "c", "uri": f"file://{world['videos'] / 'campus_000.mp4'}"}]
    default = make_app(site_config(world, tmp_path / "a", cams), realtime=False)
    assert (default.graph.decode_nice, default.graph.decode_threads) == (10, 1)
    off = make_app(
        site_config(world, tmp_path / "b", cams, scheduler={"decode_nice": 0, "decode_threads": 0}),
        realtime=False,
    )
    assert (off.graph.decode_nice, off.graph.decode_threads) == (0, 0)
    for app in (default, off):
        left = app.shutdown()  # never started: nothing spooled; sinks and files closed
        assert set(left.values()) <= {0}


def test_each_camera_encodes_appearance_at_its_own_rate_in_seconds(
    world: dict[str, Path], tmp_path: Path
) -> None:
    """appearance.spacing_s is seconds of video: a camera sampled faster encodes every more clips, and a
    camera added or removed while running gets or loses its own count."""
    from core.config import CameraSettings, parse_config
    from tests.fixtures.run_world import make_app, site_config

    video = f"file://{world['videos'] / 'campus_000.mp4'}"
    cams = [
        {"id": "ten", "uri": video, "sampling": {"fps": 10}},
        {"id": "five", "uri": video, "sampling": {"fps": 5}},
    ]
    site = site_config(world, tmp_path / "out", cams, appearance={"spacing_s": 1.6})
    app = make_app(site, realtime=False)
    try:
        assert app.cfg.model.preprocess.clip_hop == 4  # the world model's: clips 0.4 s apart at 10 fps
        assert app.inference.appearance_every == {"ten": 4, "five": 2}
        fast = app.cameras["ten"].model_copy(update={"id": "fast"})
        fast = CameraSettings.model_validate(
            {**fast.model_dump(), "sampling": fast.sampling.model_copy(update={"fps": 25.0})}
        )
        app.add_camera(fast)
        assert app.inference.appearance_every["fast"] == 10
        app.remove_camera("fast")
        assert app.inference.appearance_every == {"ten": 4, "five": 2}
        # A re-read config that samples "five" at 25 fps restarts it with its new count.
        site["cameras"] = [cams[0], {**cams[1], "sampling": {"fps": 25}}]
        result = app.reload(parse_config(json.dumps(site), "<test site>"))
        assert result.restarted == ["five"]
        assert app.inference.appearance_every == {"ten": 4, "five": 10}
    finally:
        app.shutdown()


def test_the_cpu_graph_batches_no_more_clips_than_its_tensorrt_engines_take(
    world: dict[str, Path], tmp_path: Path
) -> None:
    """Engines built for 2 clips a batch (a TensorRT profile's max_batch) under scheduler.max_batch 8: the
    CPU graph's batches stop at 2, as the DeepStream graph's do, instead of failing every larger batch."""
    from core.config import parse_config
    from pipeline.inference import load_engines
    from pipeline.run import Application
    from tests.fixtures.batch_limit import limit_batches
    from tests.fixtures.run_world import run_through, site_config

    out = tmp_path / "out"
    cams = [{"id": f"c{i}", "uri": f"file://{world['videos'] / 'campus_000.mp4'}"} for i in range(3)]
    cfg = site_config(world, out, cams, scheduler={"max_batch": 8, "max_wait_ms": 500})
    parsed = parse_config(json.dumps(cfg), "<test site>")
    engines = load_engines(parsed)
    doubles = limit_batches(engines, 2)
    app = Application(parsed, engines, realtime=False)
    assert (app.clips.max_batch, app.scheduler.max_batch) == (2, 2)
    rows = run_through(app, out)
    assert {r["camera"] for r in rows} == {"c0", "c1", "c2"}
    for double in doubles:
        assert double.refused == []
        assert double.batches
        assert max(double.batches) <= 2


class _GraphFault(RuntimeError):
    """Stands for any failure past the outputs (the camera graph's own start, a camera it refuses)."""


def _fail(*_args: Any, **_kwargs: Any) -> None:
    raise _GraphFault("injected")


def _free_to_bind(port: int) -> bool:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.mark.parametrize("cleanup_fails", [False, True])
def test_a_start_that_fails_past_the_outputs_leaves_nothing_running(
    world: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cleanup_fails: bool
) -> None:
    """The outputs started (review page bound, sinks running, spool locked) and then the camera graph
    failed: the run stops what started and releases the output_dir, so the same process can try again;
    also when stopping the graph fails too, and then the start's own error is the one raised."""
    from pipeline.cpu.graph import CameraGraph
    from tests.fixtures.run_world import make_app, site_config

    cams = [{"id": "c", "uri": f"file://{world['videos'] / 'campus_000.mp4'}"}]
    cfg = site_config(world, tmp_path / "out", cams)
    app = make_app(cfg, realtime=False)
    ports: list[int] = []

    def fail_after_the_outputs(_graph: Any) -> None:
        ports.extend(server.port for server in (app.review_server, app.metrics_server))
        assert not _free_to_bind(ports[0])  # the review page is serving
        raise _GraphFault("injected")

    def stop_fails_too(_graph: Any, timeout_s: float = 10.0) -> None:
        raise RuntimeError("the GLib loop thread did not stop")

    monkeypatch.setattr(CameraGraph, "start", fail_after_the_outputs)
    if cleanup_fails:
        monkeypatch.setattr(CameraGraph, "stop", stop_fails_too)
    with pytest.raises(_GraphFault):
        app.start()
    assert len(ports) == 2
    assert all(_free_to_bind(port) for port in ports)
    assert not app.scheduler.running
    assert not [t for t in threading.enumerate() if t.name.startswith(("zsad-scheduler", "zsad-sink"))]
    monkeypatch.undo()
    again = make_app(cfg, realtime=False)  # the spool lock and the score log were released
    assert set(again.shutdown().values()) <= {0}


def test_a_graph_that_fails_to_stop_still_lets_the_run_shut_down(
    world: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The camera graph's stop raises (its loop did not answer in time): the scheduler is still drained and
    stopped, the outputs still shut down (ports, sink threads, the spool lock), and then the graph's error
    goes on to the caller. Before, the shutdown stopped at that first step."""
    from pipeline.cpu.graph import CameraGraph, GraphStateError
    from tests.fixtures.run_world import make_app, site_config

    cams = [{"id": "c", "uri": f"file://{world['videos'] / 'campus_000.mp4'}"}]
    cfg = site_config(world, tmp_path / "out", cams)
    app = make_app(cfg, realtime=False)
    real_stop = CameraGraph.stop

    def stop_then_fail(graph: Any, timeout_s: float = 10.0) -> None:
        real_stop(graph, timeout_s)  # its pipelines do stop: only the error is injected
        raise GraphStateError("the GLib main loop did not answer within 30 s")

    monkeypatch.setattr(CameraGraph, "stop", stop_then_fail)
    app.start()
    ports = [server.port for server in (app.review_server, app.metrics_server)]
    assert not _free_to_bind(ports[0])
    with pytest.raises(GraphStateError, match="did not answer"):
        app.shutdown()
    assert not app.scheduler.running
    assert all(_free_to_bind(port) for port in ports)
    assert not [t for t in threading.enumerate() if t.name.startswith(("zsad-scheduler", "zsad-sink"))]
    monkeypatch.undo()
    again = make_app(cfg, realtime=False)  # the spool lock and the score log were released
    assert set(again.shutdown().values()) <= {0}


def test_an_application_that_cannot_build_its_graph_releases_its_outputs(
    world: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.cpu.graph import CameraGraph
    from tests.fixtures.run_world import make_app, site_config

    cams = [{"id": "c", "uri": f"file://{world['videos'] / 'campus_000.mp4'}"}]
    cfg = site_config(world, tmp_path / "out", cams)
    monkeypatch.setattr(CameraGraph, "__init__", _fail)
    with pytest.raises(_GraphFault) as failed:
        make_app(cfg, realtime=False)
    monkeypatch.undo()
    # The caller still holds the error (its traceback holds the half-built application): the outputs must
    # have been released by then, not when the garbage collector gets to them.
    assert failed.traceback
    again = make_app(cfg, realtime=False)  # refused ("another run has this output_dir") before the fix
    assert set(again.shutdown().values()) <= {0}


def test_a_callback_that_raises_mid_run_still_shuts_the_run_down(
    world: dict[str, Path], tmp_path: Path
) -> None:
    """An error past the start (a progress callback, a reload) goes on to the caller only after the run is
    shut down as at its end: the open alert closed and delivered, the ports released."""
    from core.config import parse_config
    from pipeline.run import run_config
    from tests.fixtures.run_world import site_config

    out = tmp_path / "out"
    cams = [{"id": "c", "uri": f"file://{world['videos'] / 'campus_000.mp4'}"}]
    always = {"on_threshold": -50.0, "off_threshold": -60.0, "min_duration_s": 0.0, "cooldown_s": 0.0}
    cfg = parse_config(json.dumps(site_config(world, out, cams, alerts=always)), "<test site>")
    ports: list[int] = []

    def on_start(outputs: Any) -> None:
        ports.extend(server.port for server in (outputs.review_server, outputs.metrics_server))

    def progress(_states: Any, _stats: Any) -> None:
        if any(r["status"] == "open" for r in read_jsonl(out / "alerts.jsonl")):
            raise _GraphFault("the progress display broke")

    with pytest.raises(_GraphFault):
        run_config(cfg, duration_s=120, realtime=False, progress=progress, on_start=on_start)
    records = read_jsonl(out / "alerts.jsonl")
    assert [r["reason"] for r in records if r["status"] == "closed"] == ["shutdown"]
    assert len(ports) == 2
    assert all(_free_to_bind(port) for port in ports)
    assert not [t for t in threading.enumerate() if t.name.startswith(("zsad-scheduler", "zsad-sink"))]


class _OrderWatch:
    """Wraps the run's real clip inference and records, in order, each clip it scores and each camera
    history it resets, and the threads that asked."""

    def __init__(self, inference: Any) -> None:
        self.inference = inference
        self.events: list[tuple[str, Any]] = []
        self.threads: set[str] = set()

    def __call__(self, clips: Any) -> Any:
        self.threads.add(threading.current_thread().name)
        self.events += [("clip", (c.camera_id, c.index)) for c in clips]
        return self.inference(clips)

    def reset(self, camera: str) -> None:
        self.threads.add(threading.current_thread().name)
        self.events.append(("reset", camera))
        self.inference.reset(camera)

    def of(self, camera: str) -> list[tuple[str, Any]]:
        """The events of ``camera``, in order."""
        return [e for e in self.events if (e[1] if e[0] == "reset" else e[1][0]) == camera]


def test_a_reconnect_and_a_removal_reset_the_history_on_the_scheduler_thread_in_clip_order(
    world: dict[str, Path], tmp_path: Path
) -> None:
    from tests.fixtures.run_world import make_app, site_config

    cams = [{"id": c, "uri": f"file://{world['videos'] / 'campus_000.mp4'}"} for c in ("a", "b")]
    app = make_app(site_config(world, tmp_path / "out", cams), realtime=False)
    watch = _OrderWatch(app.clips.inference)
    app.clips.inference = watch
    w, h = app.engines.frame_size  # (width, height)
    frames = np.random.default_rng(0).integers(0, 256, (40, h, w, 3), dtype=np.uint8)
    app.clips.start()
    try:
        for n in range(20):  # the old stream of camera a, frames 0.1 s apart, and camera b
            app._on_frame("a", n * 0.1, frames[n])
            app._on_frame("b", n * 0.1, frames[n])
        # The graph's loop thread reports a lost stream of a (the test thread stands in for it here).
        app._on_state("a", "reconnecting", "connection lost; retry in 1.0 s")
        for n in range(20, 40):  # the new stream of a
            app._on_frame("a", 100.0 + n * 0.1, frames[n])
        app.remove_camera("b")  # the main thread: b is removed while the scheduler runs
        for n in range(20):  # frames of b again, as of a camera added again under the same id
            app._on_frame("b", 200.0 + n * 0.1, frames[n])
    finally:
        app.clips.stop(drain=True)
        app.shutdown()
    assert watch.threads == {"zsad-scheduler"}
    a = watch.of("a")
    first_new = next(i for i, e in enumerate(a) if e[0] == "reset")
    old, new = a[:first_new], a[first_new + 1 :]
    assert old
    assert new
    assert all(kind == "clip" for kind, _ in new)
    # Every clip of the old stream is scored before the reset, every clip of the new one after it.
    assert [i for _, (_, i) in old] == list(range(len(old)))
    assert [i for _, (_, i) in new] == list(range(len(old), len(old) + len(new)))
    b = watch.of("b")
    # The camera added again under b's id: its clips count from 0 again, and b's history is reset right
    # before its first one is scored, after every clip of the removed camera that was scored at all.
    new_b = max(i for i, e in enumerate(b) if e == ("clip", ("b", 0)))
    assert b[new_b - 1] == ("reset", "b")
    again = [e[1][1] for e in b[new_b:] if e[0] == "clip"]
    assert again == list(range(len(again)))
    old_b = [e[1][1] for e in b[:new_b] if e[0] == "clip"]
    assert old_b == list(range(len(old_b)))


def test_a_clip_the_stopping_scheduler_refuses_adds_its_frames_to_the_dropped_frames(
    world: dict[str, Path], tmp_path: Path
) -> None:
    """zsad_frames_dropped_total counts frames: a clip refused while the run stops adds its clip_len frames,
    as a clip dropped from a full queue does, on both graphs (the CPU graph added 1)."""
    from tests.fixtures.run_world import make_app, site_config

    cams = [{"id": "a", "uri": f"file://{world['videos'] / 'campus_000.mp4'}"}]
    app = make_app(site_config(world, tmp_path / "out", cams), realtime=False)
    w, h = app.engines.frame_size  # (width, height)
    frame = np.zeros((h, w, 3), np.uint8)
    app.clips.start()
    app.clips.stop(drain=True)  # the run is stopping: the scheduler takes no more clips
    try:
        for n in range(20):
            app._on_frame("a", n * 0.1, frame)
    finally:
        app.shutdown()
    clip_len = app.cfg.model.preprocess.clip_len
    assert clip_len > 1  # else a clip's frames and the clip itself are one count
    assert app.clips.refused >= 2
    assert app.metrics.frames_dropped.value(camera="a") == app.clips.refused * clip_len


def test_first_run_builds_missing_engines_and_never_rebuilds_damaged_ones(
    world: dict[str, Path], tmp_path: Path
) -> None:
    """engines.checkpoint set, engines.dir empty: `zsad run` builds the CPU engines, then runs. A damaged
    engine afterwards, or a half-built folder, is refused with what to run, and left as it is."""
    videos = world["videos"]
    engines = tmp_path / "engines"
    site = write_site(
        world,
        tmp_path / "out",
        [{"id": "campus", "uri": f"file://{videos / 'campus_000.mp4'}"}],
        engines={"dir": str(engines), "checkpoint": str(world["checkpoint"]), "threads": 1},
    )
    r = _zsad("run", str(site), "--fast", "--duration", "60")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert f"engines: built in {engines}" in r.stdout
    assert "[1/4] backbone" in r.stderr  # the logged progress when stderr is not a terminal
    assert "[4/4] appearance" in r.stderr  # appearance.enabled (the default): its engine is built too
    assert (engines / "appearance.manifest.json").is_file()
    assert (engines / "backbone.manifest.json").is_file()
    assert read_jsonl(tmp_path / "out" / "scores.jsonl")

    manifest = json.loads((engines / "backbone.manifest.json").read_text())
    onnx = engines / manifest["onnx"]["path"]
    damaged = onnx.read_bytes()[:1000]
    onnx.write_bytes(damaged)
    r = _zsad("run", str(site), "--fast", "--duration", "60")
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-3000:]
    assert "refusing to start" in r.stderr
    assert f"zsad build-engines --config CONFIG --out {engines}" in r.stderr
    assert onnx.read_bytes() == damaged, "a damaged engine was rebuilt without being asked"

    (engines / "dpc_head.manifest.json").unlink()
    r = _zsad("run", str(site), "--fast", "--duration", "60")
    assert r.returncode == 2
    assert "dpc_head.manifest.json is missing but" in r.stderr
    assert "Traceback" not in r.stdout + r.stderr


def test_a_first_run_waits_for_another_runs_build_and_uses_its_engines(
    world: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two first runs on one engines.dir (a service restart and a manual run): the one that finds the build
    lock held waits, then finds the engines the other built and builds nothing itself."""
    videos = world["videos"]
    engines = tmp_path / "engines"
    site = write_site(
        world,
        tmp_path / "out",
        [{"id": "campus", "uri": f"file://{videos / 'campus_000.mp4'}"}],
        engines={"dir": str(engines), "checkpoint": str(world["checkpoint"]), "threads": 1},
    )
    cfg = load_config(site)
    engines.mkdir()
    waiting = threading.Event()

    class WaitSeen(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "waiting for it" in record.getMessage():
                waiting.set()

    caplog.set_level(logging.INFO, logger="pipeline.inference")
    seen = WaitSeen()
    logging.getLogger("pipeline.inference").addHandler(seen)
    results: list[BuildReport | None] = []
    try:
        with build_lock(engines):  # the other run holds the lock...
            assert (engines / BUILD_LOCK).is_file()
            waiter = threading.Thread(target=lambda: results.append(build_missing_engines(cfg)))
            waiter.start()
            assert waiting.wait(120), "the second run did not wait for the lock"
            build_from_config(cfg, options=BuildOptions(backend="onnxruntime"))  # ...and builds
        waiter.join(300)  # closing the file released the lock
    finally:
        logging.getLogger("pipeline.inference").removeHandler(seen)
    assert not waiter.is_alive()
    assert results == [None]  # nothing built by the waiting run
    assert "were built by another run while this one waited" in caplog.text


def test_a_camera_whose_calibration_cannot_be_read_starts_uncalibrated(
    world: dict[str, Path], tmp_path: Path
) -> None:
    """A calibration that is a folder, one that is not JSON and one that is missing: each camera starts
    uncalibrated with a warning naming its file and saying what to run, and all three are scored. The run
    also says what it cannot use (a context without the semantic stream), creates alerts.jsonl before the
    first alert, and names its sinks readably."""
    videos = world["videos"]
    not_json = tmp_path / "broken.json"
    not_json.write_text("{not json")
    out = tmp_path / "out"
    site = write_site(
        world,
        out,
        [
            {"id": "folder", "uri": f"file://{videos / 'campus_000.mp4'}", "calibration": str(tmp_path)},
            {"id": "broken", "uri": f"file://{videos / 'parking_000.mp4'}", "calibration": str(not_json)},
            {
                "id": "gone",
                "uri": f"file://{videos / 'campus_000.mp4'}",
                "calibration": str(tmp_path / "x.json"),
                "context": "parking",
            },
        ],
    )
    r = _zsad("run", str(site), "--fast", "--duration", "60")
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-3000:]
    assert "Traceback" not in log
    assert f"camera folder: calibration file {tmp_path} cannot be read" in log
    assert f"camera broken: calibration file {not_json}" in log
    assert f"camera gone: calibration file {tmp_path / 'x.json'} cannot be read: No such file" in log
    assert "camera gone is uncalibrated" in log
    assert "zsad calibrate CONFIG --camera gone" in log
    assert {row["camera"] for row in read_jsonl(out / "scores.jsonl")} == {"folder", "broken", "gone"}
    # Once per camera whose context differs from the default, while the semantic stream is off.
    assert log.count("context 'parking' only picks the semantic stream's prompts") == 1
    assert "camera gone: context 'parking'" in log
    assert (out / "alerts.jsonl").is_file()  # created at start, empty: nothing alerted
    assert "JsonlFileSink('jsonl-" in log
    assert "object at 0x" not in log
