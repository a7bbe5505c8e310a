"""The demo path with the shipped model: 4 synthetic cameras in 3 contexts through the full CPU graph
(real GStreamer decode, ONNX Runtime engines built from models/demo, per-camera calibration on normal
footage) raise alerts that overlap the injected anomalies. The scenes, engines and calibrations are the
session's (``demo_artefacts``, made by the demo's own functions); ``zsad demo`` finds them up to date."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.conftest import REPO
from tests.fixtures.demo_world import DemoArtefacts, demo_config


def test_demo_detects_injected_anomalies(tmp_path: Path, demo_artefacts: DemoArtefacts) -> None:
    import yaml

    out = tmp_path / "demo"
    demo_artefacts.copy_into(out)
    cfg = demo_config(out, demo_artefacts.engines)
    site = tmp_path / "demo.yaml"
    site.write_text(yaml.safe_dump(cfg))
    calibrated = {p.name: p.stat().st_mtime_ns for p in (out / "calibration").glob("*.json")}
    assert len(calibrated) == len(cfg["cameras"])
    # The two campus cameras play the same footage with the same settings: one collection, fitted for each.
    campus = [json.loads((out / "calibration" / f"campus-{i}.json").read_text()) for i in (1, 2)]
    assert [c.pop("camera") for c in campus] == ["campus-1", "campus-2"]
    assert campus[0] == campus[1]
    for suffix in (".appearance.npz", ".stationary.npz", ".objects.npz"):
        metas = []
        for i in (1, 2):
            with np.load(out / "calibration" / f"campus-{i}{suffix}") as f:
                metas.append(json.loads(str(f["meta"])))
        assert [m["camera"] for m in metas] == ["campus-1", "campus-2"], suffix
        # Fitted once (to the second): two collections would be the other cameras' calibrations apart.
        assert metas[0]["fitted"] == metas[1]["fitted"], suffix
    r = subprocess.run(
        [sys.executable, "-m", "pipeline.cli.main", "demo", "--config", str(site), "--fast"],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
        timeout=900,
    )
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    assert f"outputs: {out.resolve()}" in r.stdout
    # The session's calibrations were taken as they are (a mismatch would have calibrated again).
    assert {p.name: p.stat().st_mtime_ns for p in (out / "calibration").glob("*.json")} == calibrated
    summary = json.loads((out / "summary.json").read_text())
    assert summary["injected"] >= 4
    # The fast, large anomalies (a cyclist, a vehicle on the walkway) overlap an alert; every missed
    # anomaly is named in the output (the demo model's limits are in models/demo/MODEL_CARD.md).
    events = [ev for cam in summary["cameras"].values() for ev in cam["events"]]
    fast = [ev for ev in events if ev["kind"] in {"cyclist", "vehicle"}]
    assert fast
    assert all(ev["detected"] for ev in fast), fast
    assert summary["detected"] == sum(ev["detected"] for ev in events) >= len(fast)
    for missed in summary["missed"]:
        assert missed in r.stdout
    assert summary["false_alarms"] <= summary["injected"]
    records = [json.loads(x) for x in (out / "alerts.jsonl").read_text().splitlines()]
    closed = [x for x in records if x["status"] == "closed"]
    assert closed
    assert all((out / x["snapshot"]).is_file() for x in closed if x["snapshot"])
    assert any(x["clip"] and (out / x["clip"]).is_file() for x in closed)
    for cam in cfg["cameras"]:
        assert (out / "timelines" / f"{cam['id']}.png").stat().st_size > 5000
