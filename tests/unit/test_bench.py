"""Smoke tests of the benchmark code (bench/) at minimal sizes, so that the scripts cannot rot.

One tiny model, its ONNX Runtime engines and one 40-frame synthetic video are built once for the module;
every measured path then runs for a fraction of a second: the inference comparison, pure clip inference,
the naive OpenCV + PyTorch loop, the decode-only graph, the whole Application as fast as possible and in
real time, the summaries, the goals and the plot. The numbers themselves are not checked (this machine's
speed is not a test); what they count is.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import math
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from bench.bench_all import evaluate_goals, goals_table, plot_cameras, summary_markdown
from bench.bench_inference import count_flops, inference_table, run_inference_bench
from bench.bench_pipeline import (
    CALIBRATION_MIN_FRAMES,
    CaseSpec,
    _search_capacity,
    build_parser,
    calibrate_videos,
    camera_calibrations,
    memory_from_one_camera,
    memory_per_camera,
    pipeline_tables,
    pure_at,
    run_case,
    run_case_in_child,
    summarise,
)
from bench.bench_soak import fit_rss_slope
from bench.bench_start import StartSpec, run_start_bench, start_table, summary_line
from bench.common import (
    REPO,
    Assets,
    BenchError,
    format_table,
    latency_stats,
    machine_info,
    module_command,
    parse_int_list,
    prepare_assets,
    write_result,
)
from tests.fixtures.tiny_models import world_model_dict

FRAMES = 40
# Every runnable script of bench/: each runs as ``python -m bench.<name>`` from the repository root.
SCRIPTS = sorted(p.stem for p in (REPO / "bench").glob("*.py") if p.stem not in ("__init__", "common"))


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Assets:
    root = tmp_path_factory.mktemp("bench")
    config = root / "tiny.yaml"
    # An always-on alert policy, so that the alert-record timing path runs too: one alert per camera opens
    # on the first scored clip and stays open.
    alerts = {"on_threshold": -100.0, "off_threshold": -100.0, "min_duration_s": 0.0, "cooldown_s": 0.0}
    # A short stationary window: each repeat of the short video is its own footage and gives the window only
    # about 4 frames 0.4 s apart, so the default 8 would leave the calibration without stationary statistics.
    cfg = {
        "model": world_model_dict(),
        "engines": {"threads": 1},
        "defaults": {"alerts": alerts},
        "stationary": {"window": 3},
    }
    config.write_text(json.dumps(cfg))  # JSON is YAML
    return prepare_assets(root / "work", config, videos=1, frames=FRAMES)


def test_helpers_parse_and_summarise() -> None:
    assert parse_int_list("1, 2,16") == [1, 2, 16]
    for bad in ("", "0,1", "a"):
        with pytest.raises(BenchError):
            parse_int_list(bad)
    stats = latency_stats([0.001, 0.002, 0.003, 0.004])
    assert stats["n"] == 4
    assert stats["max_ms"] == 4.0
    assert 2.0 < stats["p50_ms"] < 3.0
    assert math.isnan(latency_stats([])["p50_ms"])
    md = format_table(["a", "b"], [[1, 2.5], [None, math.nan]], markdown=True).splitlines()
    assert md[0] == "| a | b |"
    assert md[2] == "| 1 | 2.5 |"
    assert md[3] == "| - | - |"
    fit = memory_per_camera([(1, 110.0), (2, 120.0), (4, 140.0)])
    assert fit == {"per_camera_mb": 10.0, "base_mb": 100.0}
    assert memory_per_camera([(4, 1.0), (4, 2.0)]) is None
    # Medians per N; the largest N against one camera.
    one = memory_from_one_camera([(1, 100.0), (1, 104.0), (4, 140.0), (2, 130.0)])
    assert one == {"cameras": 4, "per_camera_mb": 12.67, "one_camera_mb": 102.0}
    assert memory_from_one_camera([(2, 1.0), (4, 2.0)]) is None
    assert memory_from_one_camera([(1, 1.0)]) is None
    assert build_parser().parse_args([]).appearance is True
    assert build_parser().parse_args(["--no-appearance"]).appearance is False
    samples = [
        {"t_s": t, "rss_mb": 500.0 + (50.0 if t < 30 else 0.0) + 0.5 * t / 60} for t in range(0, 300, 5)
    ]
    assert fit_rss_slope(samples, warmup_s=30)["rss_slope_mb_per_min"] == pytest.approx(0.5)
    with pytest.raises(BenchError):
        fit_rss_slope(samples[:2], warmup_s=0)
    pure = [{"threads": 1, "batches": [{"batch": 1, "clips_per_s": 10.0}, {"batch": 8, "clips_per_s": 40.0}]}]
    assert pure_at(pure, 1, 7.4) == 40.0
    assert pure_at(pure, 1, 2.0) == 10.0
    assert pure_at(pure, 2, 8) is None


def test_capacity_search_bisects_between_pass_and_fail() -> None:
    keeps = {1: True, 2: True, 4: True, 6: True, 7: False, 8: False, 16: False}
    runs = [{"case": {"cameras": n}, "keeps_up": keeps[n]} for n in (1, 2, 4, 8, 16)]
    tried: list[int] = []

    def run(n: int) -> dict[str, Any]:
        tried.append(n)
        return {"case": {"cameras": n}, "keeps_up": keeps[n]}

    extra = _search_capacity(runs, run)
    assert tried == [6, 7]
    assert [r["keeps_up"] for r in extra] == [True, False]


def test_results_carry_command_and_machine(tmp_path: Path) -> None:
    info = machine_info(gstreamer=False)
    assert info["nproc"] >= 1
    assert info["ram_gib"] > 0
    assert len(info["load_average"]) == 3
    path = write_result("unit", {"value": 1}, tmp_path)
    doc = json.loads(path.read_text())
    assert doc["value"] == 1
    assert doc["command"]
    assert doc["machine"]["cpu_model"]
    assert doc["date_utc"]


def test_each_camera_gets_a_copy_of_its_calibration_with_its_files_linked_beside(tmp_path: Path) -> None:
    # What zsad calibrate wrote for two videos: the second without an appearance memory or objects model.
    made = tmp_path / "made"
    made.mkdir()
    beside = (".appearance.npz", ".stationary.npz", ".objects.npz")
    for video, suffixes in (("video0", beside), ("video1", beside[1:2])):
        (made / f"{video}.json").write_text(video)
        for suffix in suffixes:
            (made / f"{video}{suffix}").write_text(f"{video}{suffix}")
    calibrations = [made / "video0.json", made / "video1.json"]
    paths = camera_calibrations(calibrations, 2, 3, tmp_path / "case")
    assert [p.name for p in paths] == ["cam00.json", "cam01.json", "cam02.json"]
    # Camera i plays video i % 2, and gets that video's calibration and the files beside it.
    for path, video in zip(paths, ("video0", "video1", "video0"), strict=True):
        assert path.read_text() == video
        for suffix in beside:
            linked = path.with_name(path.stem + suffix)
            made_file = made / f"{video}{suffix}"
            assert linked.is_file() == made_file.is_file()
            if made_file.is_file():
                assert linked.is_symlink()
                assert linked.read_text() == f"{video}{suffix}"


def test_no_bench_script_edits_sys_path() -> None:
    # Scripts run as modules from the repository root, so a sys.path edit would only hide a wrong invocation.
    offenders = []
    for path in sorted((REPO / "bench").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and node.attr == "path"
                and isinstance(node.value, ast.Name)
                and node.value.id == "sys"
            ):
                offenders.append(f"{path.name}:{node.lineno}")
    assert offenders == []


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_runs_as_a_module(script: str) -> None:
    # Without PYTHONPATH: the repository root as working directory is all ``-m`` needs.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        module_command(f"bench.{script}", "--help"),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: python -m bench.{script}")


@pytest.fixture(scope="module")
def inference(assets: Assets) -> dict[str, Any]:
    return run_inference_bench(
        assets, [1], [1, 2], repeats=2, min_time_s=0.0, min_calls=1, peak_sizes=(128,), peak_time_s=0.0
    )


def test_inference_bench_compares_both_runtimes(assets: Assets, inference: dict[str, Any]) -> None:
    from engines.manifest import load_manifest, manifest_path
    from engines.model import load_checkpoint

    model, _ = load_checkpoint(assets.checkpoint)
    manifest = load_manifest(manifest_path(assets.engines_dir, "backbone"))
    flops = count_flops(model.eval(), "backbone", manifest)
    assert flops["flops"] > 0
    assert any("mm" in op for op in flops["by_op"])
    result = inference
    cells = result["cells"]
    assert {(c["component"], c["batch"], c["runtime"]) for c in cells} == {
        (comp, b, rt) for comp in ("backbone", "dpc_head") for b in (1, 2) for rt in ("onnxruntime", "torch")
    }
    assert all(c["clips_per_s"] > 0 and len(c["clips_per_s_repeats"]) == 2 for c in cells)
    assert all(c["latency"]["n"] >= 2 and c["fraction_of_peak"] > 0 for c in cells)
    assert len(result["speedups"]) == 4
    assert result["matmul_peak"]["1"]["gflops"] > 0
    assert "ORT/torch" in inference_table(result)


@pytest.fixture(scope="module")
def pipeline_doc(assets: Assets) -> dict[str, Any]:
    """One short case of each kind, in this process, assembled like run_pipeline_bench does."""
    base = {"threads": 1, "max_batch": 4, "sample_interval_s": 0.2}
    pure = run_case(
        CaseSpec(mode="pure", batches=[1, 4], min_time_s=0.0, duration_s=1.0, warmup_s=0.0, **base), assets
    )
    decode = run_case(CaseSpec(mode="decode", duration_s=1.2, warmup_s=0.4, **base), assets)
    # OpenCV comes with the dev requirements; without it only the naive baseline is left out.
    naive = (
        run_case(CaseSpec(mode="naive", duration_s=5.0, warmup_s=0.0, **base), assets)
        if importlib.util.find_spec("cv2")
        else None
    )
    fast = run_case(CaseSpec(mode="fast", duration_s=2.0, warmup_s=0.5, **base), assets)
    realtime = run_case(CaseSpec(mode="realtime", duration_s=2.5, warmup_s=0.5, **base), assets)
    return {
        "settings": {"cameras": [1], "threads": [1], "rt_threads": 1, "max_batch": 4, "fps": 25.0},
        "pure": [pure],
        "decode": [decode],
        "fast": [fast],
        "naive": [naive] if naive else [],
        "realtime": [realtime],
    }


def test_a_case_runs_in_a_child_process(assets: Assets) -> None:
    # The sweep's path: ``python -m bench.bench_pipeline --case`` in a fresh process, its result read back.
    spec = CaseSpec(mode="pure", batches=[1], min_time_s=0.0, duration_s=0.5, warmup_s=0.0, threads=1)
    result = run_case_in_child(spec, assets, timeout_s=300.0)
    assert result["case"]["mode"] == "pure"
    assert [b["batch"] for b in result["batches"]] == [1]
    assert result["child_seconds"] > 0


def test_start_bench_times_every_camera_of_each_fresh_start(assets: Assets) -> None:
    # Two starts of two cameras, each in a child process, as ``python -m bench.bench_start`` runs them.
    spec = StartSpec(cameras=2, threads=1, deadline_s=60.0, hold_s=0.5, limit_s=60.0)
    lines: list[str] = []
    doc = run_start_bench(assets, spec, runs=2, progress=lines.append)
    assert [r["run"] for r in doc["runs"]] == [1, 2]
    for run in doc["runs"]:
        assert run["all_live"], run
        assert run["ok"], run
        assert set(run["first_frame_s"]) == set(run["live_s"]) == {"cam00", "cam01"}
        assert run["not_live"] == {}
        assert all(n > 0 for n in run["frames_during_hold"].values())
        assert run["error_records"] == 0
        assert run["watchdog_rebuilds"] == 0
    summary = doc["summary"]
    assert (summary["runs"], summary["runs_ok"], summary["cameras_never_live"]) == (2, 2, 0)
    assert 0 < summary["first_frame"]["p50_s"] <= summary["first_frame"]["max_s"]
    assert len(lines) == 2
    assert all(line.endswith(": ok") for line in lines)
    assert start_table(doc, markdown=True).splitlines()[0].startswith("| run | live |")
    assert summary_line(doc).startswith("2/2 runs with every one of 2 cameras live within 60 s")


def test_pure_inference_runs_the_whole_clip_path(pipeline_doc: dict[str, Any]) -> None:
    (pure,) = pipeline_doc["pure"]
    assert [b["batch"] for b in pure["batches"]] == [1, 4]
    # The DPC history is filled before timing, so every timed clip is scored.
    assert all(b["scored_fraction"] == 1.0 and b["clips_per_s"] > 0 for b in pure["batches"])


def test_naive_scores_the_same_clip_grid(pipeline_doc: dict[str, Any]) -> None:
    if not pipeline_doc["naive"]:
        pytest.skip("opencv-python-headless is not installed (requirements/dev.txt)")
    (naive,) = pipeline_doc["naive"]
    (cam,) = naive["per_camera"]
    span, hop, ring = 3, 4, 2  # (T - 1) * stride + 1; clip_hop; context_clips * history_step
    assert cam["frames"] == FRAMES
    assert cam["clips"] == (FRAMES - span) // hop + 1
    assert cam["scored"] == cam["clips"] - ring
    assert naive["frames_per_s"] > 0


def test_a_case_starts_its_clock_when_every_camera_is_live_and_says_after_how_long() -> None:
    from bench.bench_pipeline import BenchError, _clock_after_live

    states = iter([{}, {"a": "starting", "b": "live"}, {"a": "live", "b": "eos"}])
    _clock, waited = _clock_after_live(lambda: next(states), deadline_s=60.0)
    assert waited >= 0.04  # two looks at cameras not yet all live, 20 ms apart
    with pytest.raises(BenchError, match=r"cameras not live within 0.1 s: a$"):
        _clock_after_live(lambda: {"a": "starting", "b": "live"}, deadline_s=0.1)


def test_graph_cases_count_frames_and_clips(pipeline_doc: dict[str, Any]) -> None:
    (decode,) = pipeline_doc["decode"]
    assert all(c[0]["live_after_s"] >= 0 for c in (pipeline_doc["decode"], pipeline_doc["fast"]))
    assert decode["frames_delivered"] > 0
    assert decode["display_frames"] > 0
    (fast,) = pipeline_doc["fast"]
    assert fast["clips_processed"] > 0
    # Uncalibrated cameras (no calibrations in the spec): no memory, so no appearance stream.
    assert fast["cameras_with_memory"] == 0
    assert fast["cameras_with_stationary_model"] == 0
    assert fast["cameras_with_objects_model"] == 0
    assert fast["clips_with_appearance_total"] == 0
    assert fast["clips_dropped"] == 0
    assert fast["camera_frames_per_s"] == pytest.approx(fast["clips_per_s"] * 4, rel=1e-3)
    assert fast["camera_states"] == {"cam00": "live"}
    (rt,) = pipeline_doc["realtime"]
    # 25 fps for ~2 s: about 50 frames and a clip every 4 frames, each timed from its last frame
    # (bounds leave room for a loaded CI machine).
    assert 0.6 < rt["delivered_ratio"] < 1.2
    assert rt["clips_processed"] >= 6
    assert rt["latency"]["n"] >= 6
    assert 0 < rt["latency"]["p50_ms"] < 2000
    assert rt["rss_median_mb"] > 0
    # The 40-frame video (1.6 s) loops inside the window: a loop restarts the camera's stream, whose next
    # clips go unscored, so such a case measures less work than a live camera and cannot keep up.
    assert rt["video_s"] == 1.6
    assert rt["looped_in_window"] is True
    assert rt["keeps_up"] is False
    assert rt["alerts"]["opened"] == 1
    assert rt["alerts"]["latency"]["n"] == 1
    assert 0 < rt["alerts"]["latency"]["p50_ms"] < 2000


def test_appearance_option_calibrates_and_every_camera_scores_the_stream(
    assets: Assets, tmp_path: Path
) -> None:
    # What --appearance does before the cases: calibrate each video with the product's own code (one video
    # here, played over until CALIBRATION_MIN_FRAMES: 40 frames are too few clips for zsad calibrate and
    # for the stationary model), memory saved beside it.
    (cal,) = calibrate_videos(assets, 2, tmp_path / "calibration")
    assert cal["footage_repeats"] == math.ceil(CALIBRATION_MIN_FRAMES / assets.video_frames)
    assert Path(cal["calibration"]).is_file()
    assert Path(cal["memory_file"]).is_file()
    assert cal["memory_file_mb"] > 0
    assert cal["memory_in_memory_mb"] > 0
    base = {"threads": 1, "max_batch": 4, "sample_interval_s": 0.2, "calibrations": [cal["calibration"]]}
    # Two cameras play the one video: each gets its own copy of the calibration and loads its own memory,
    # and every clip scored carries the appearance stream.
    fast = run_case(CaseSpec(mode="fast", cameras=2, duration_s=2.0, warmup_s=0.5, **base), assets)
    assert fast["cameras_with_memory"] == 2
    # ... and its stationary model, linked beside its copy: the stationary stream runs on both.
    assert fast["cameras_with_stationary_model"] == 2
    assert fast["clips_scored_total"] > 0
    assert fast["clips_with_appearance_total"] == fast["clips_scored_total"]
    pure = run_case(
        CaseSpec(mode="pure", batches=[1, 2], min_time_s=0.0, duration_s=1.0, warmup_s=0.0, **base), assets
    )
    assert pure["appearance"] is True
    assert all(b["scored_fraction"] == 1.0 for b in pure["batches"])


def test_summary_goals_markdown_and_plot(
    pipeline_doc: dict[str, Any], inference: dict[str, Any], tmp_path: Path
) -> None:
    pipeline_doc["summary"] = summarise(pipeline_doc)
    s = pipeline_doc["summary"]
    (row,) = s["fast_rows"]
    assert row["pipeline_over_pure"] is not None
    assert (row["pipeline_over_naive_same_threads"] is not None) == bool(pipeline_doc["naive"])
    assert s["realtime_tested"] == [1]
    assert "Real time" in pipeline_tables(pipeline_doc)
    soak = {
        "minutes": 0.1,
        "cameras": 1,
        "rss_slope_mb_per_min": 0.2,
        "rss_after_warmup_mb": 100.0,
        "rss_end_mb": 100.1,
        "flat": True,
    }
    goals = evaluate_goals(inference, pipeline_doc, soak)
    assert [g["goal"].split(" (")[0] for g in goals] == [
        "ONNX Runtime >= 2x PyTorch eager",
        "pipeline >= 0.9x pure inference, same batch",
        ">= 3x the naive baseline",
        "real time on as many 25 fps cameras as possible",
        "memory flat over a 10-minute run",
    ]
    assert "not 10" in goals[-1]["value"]
    assert goals[-1]["met"] is True
    assert "verdict" in goals_table(goals)
    doc = {
        "command": "python -m bench.bench_all",
        "date_utc": "2026-01-01T00:00:00+00:00",
        "machine": machine_info(gstreamer=False),
        "uptime_before": "load average: 1.0",
        "uptime_after": "load average: 1.0",
        "seconds": 60.0,
        "goals": goals,
        "soak": None,
    }
    md = summary_markdown(doc, inference, pipeline_doc)
    assert "### Goals" in md
    assert "| goal | measured | verdict |" in md
    plot = plot_cameras(pipeline_doc, tmp_path / "cameras.png")
    assert plot is not None
    assert plot.stat().st_size > 1000


def test_real_time_videos_outlast_the_case() -> None:
    """The sweep's videos play through a real-time case's warm-up, window and the cameras' staggered start."""
    from bench.bench_pipeline import REALTIME_VIDEO_MARGIN_S, realtime_video_frames

    assert realtime_video_frames(30.0) == (3.0 + 30.0 + REALTIME_VIDEO_MARGIN_S) * 25  # 53 s of video
    assert realtime_video_frames(3.0) == (1.0 + 3.0 + REALTIME_VIDEO_MARGIN_S) * 25
