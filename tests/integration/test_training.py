"""`zsad train` / `zsad eval` end to end on a tiny dataset, resume, and DistributedDataParallel with
two gloo processes on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import REPO
from tests.fixtures.tiny_data import write_ucsd_layout
from tests.fixtures.tiny_models import tiny_model_dict

# One future clip: a 40-frame video holds more training windows.
MODEL = tiny_model_dict(dpc={"pred_steps": 1, "hidden_size": 32})


def _zsad(
    *args: str, env: dict[str, str] | None = None, module: str = "pipeline.cli.main"
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
        timeout=300,
    )


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_ucsd_layout(tmp_path_factory.mktemp("ucsd"), n_train=2, n_test=2, frames=40)


def _config(tmp: Path, dataset: Path, out: Path, epochs: int = 2, warmup: int = 2) -> Path:
    cfg = tmp / "train.yaml"
    train = {
        "dataset": {"kind": "ucsd", "root": str(dataset)},
        "epochs": epochs,
        "batch_size": 2,
        "warmup_steps": warmup,
        "output_dir": str(out),
    }
    cfg.write_text(yaml.safe_dump({"version": 1, "model": MODEL, "train": train}, sort_keys=False))
    return cfg


def test_train_resume_and_eval(tmp_path: Path, dataset: Path) -> None:
    out = tmp_path / "run"
    cfg = _config(tmp_path, dataset, out, epochs=2)
    first = _zsad("train", str(cfg))
    assert first.returncode == 0, first.stderr[-2000:]
    ckpt = out / "model.safetensors"
    meta = json.loads((out / "model.safetensors.json").read_text())
    steps = meta["step"]
    assert steps > 0
    assert meta["config"]["train"]["epochs"] == 2

    cfg4 = _config(tmp_path, dataset, out, epochs=4)
    resumed = _zsad("train", str(cfg4), "--resume", str(ckpt))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads((out / "model.safetensors.json").read_text())["step"] == 2 * steps

    ev = _zsad("eval", str(cfg4), "--checkpoint", str(ckpt), "--out", str(tmp_path / "eval"))
    assert ev.returncode == 0, ev.stderr[-2000:]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    floor = metrics["summary"]["floor: frame difference, native resolution"]["micro_auc"]
    assert 0.0 <= floor <= 1.0
    assert metrics["primary"] in metrics["summary"]
    assert metrics["machine"]["threads"] == 1  # OMP_NUM_THREADS=1 (see _zsad) wins over the core count
    # The product's alerts replayed at the schema's default threshold (no alerts section): every test
    # video's anomaly is an event, each counted detected or missed, and the threshold is the number.
    alerts = metrics["alerts"]
    assert alerts["on_threshold"] == 3.0
    assert set(alerts["thresholds"].values()) == {3.0}
    assert alerts["events"] >= 1
    assert 0 <= alerts["detected"] <= alerts["events"]
    assert alerts["detected"] + len(alerts["missed"]) == alerts["events"]
    assert "alerts of the product (on_threshold 3.0, read every" in ev.stdout
    assert (tmp_path / "eval" / "roc.png").stat().st_size > 1000
    assert (tmp_path / "eval" / "timelines.png").stat().st_size > 1000

    # Training footage too short to refit the stream gate: the checkpoint's gate, said, not a crash.
    short = write_ucsd_layout(tmp_path / "short", n_train=1, n_test=2, frames=16)
    ev = _zsad(
        "eval", str(_config(tmp_path, short, out)), "--checkpoint", str(ckpt), "--out", str(tmp_path / "e2")
    )
    assert ev.returncode == 0, ev.stdout[-2000:] + ev.stderr[-2000:]
    assert "stream gate not refitted on the training videos (the checkpoint's is used)" in ev.stderr
    gate = json.loads((tmp_path / "e2" / "metrics.json").read_text())["stream_gate"]
    assert gate["refitted"] is False


def test_a_resumed_run_ends_where_the_uninterrupted_one_does_and_keeps_its_record(
    tmp_path: Path, dataset: Path
) -> None:
    """Six steps in one go, and three then three more with --resume: the same weights (the random draws
    go on where they stood), and the resumed run's history holds all six steps. Within the warm-up, so that
    both runs have the same learning rates (after it, the schedule follows each run's own step count)."""
    from safetensors.numpy import load_file

    whole, halves = tmp_path / "whole", tmp_path / "halves"
    cfg = _config(tmp_path, dataset, whole, epochs=50, warmup=10)
    r = _zsad("train", str(cfg), "--max-steps", "6", "--output-dir", str(whole))
    assert r.returncode == 0, r.stderr[-2000:]
    r = _zsad("train", str(cfg), "--max-steps", "3", "--output-dir", str(halves))
    assert r.returncode == 0, r.stderr[-2000:]
    first = json.loads((halves / "model.safetensors.json").read_text())["train_seconds"]
    r = _zsad(
        "train", str(cfg), "--max-steps", "6", "--output-dir", str(halves),
        "--resume", str(halves / "model.safetensors"),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(halves / "model.safetensors"))
    assert a.keys() == b.keys()
    for key, value in a.items():
        assert np.array_equal(value, b[key]), key  # before the fix: off by up to 0.075
    rows = [json.loads(line) for line in (halves / "history.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3, 4, 5, 6]  # before the fix: [4, 5, 6]
    whole_rows = [json.loads(line) for line in (whole / "history.jsonl").read_text().splitlines()]
    assert [row["loss"] for row in rows] == [row["loss"] for row in whole_rows]
    assert json.loads((halves / "model.safetensors.json").read_text())["train_seconds"] >= first


def test_max_steps_gives_the_same_weights_twice(tmp_path: Path, dataset: Path) -> None:
    """A step count is a run anyone can repeat: two runs stop at that step with the same weights, whatever
    the machine's speed (a time budget's step count and learning-rate schedule depend on it)."""
    from safetensors.numpy import load_file

    weights = []
    for name in ("a", "b"):
        out = tmp_path / name
        cfg = _config(tmp_path, dataset, out, epochs=50)
        r = _zsad("train", str(cfg), "--max-steps", "3", "--output-dir", str(out))
        assert r.returncode == 0, r.stderr[-2000:]
        meta = json.loads((out / "model.safetensors.json").read_text())
        assert meta["step"] == 3
        assert meta["config"]["train"]["max_steps"] == 3
        weights.append(load_file(str(out / "model.safetensors")))
    assert weights[0].keys() == weights[1].keys()
    for key, value in weights[0].items():
        assert (value == weights[1][key]).all(), key
    # Resuming a run that already has its steps trains nothing and keeps its record.
    out = tmp_path / "b"
    record = (out / "history.jsonl").read_text()
    again = _zsad("train", str(cfg), "--max-steps", "3", "--resume", str(out / "model.safetensors"))
    assert again.returncode == 2  # a flag to change, not a failure
    assert "is at step 3, already at the run's 3 steps" in again.stderr
    assert (out / "history.jsonl").read_text() == record
    bad = _zsad("train", str(cfg), "--max-steps", "0")
    assert bad.returncode == 2
    assert "--max-steps must be >= 1" in bad.stderr


def test_bad_config_and_missing_checkpoint(tmp_path: Path, dataset: Path) -> None:
    cfg = _config(tmp_path, dataset, tmp_path / "run")
    bad = tmp_path / "bad.yaml"
    bad.write_text(cfg.read_text().replace("epochs: 2", "epochs: -1"))
    r = _zsad("train", str(bad))
    assert r.returncode == 2
    assert "train.epochs" in r.stderr
    r = _zsad(
        "eval", str(cfg), "--checkpoint", str(tmp_path / "none.safetensors"), "--out", str(tmp_path / "e")
    )
    assert r.returncode == 2
    assert "does not exist" in r.stderr
    # A config whose model section differs from the checkpoint's is refused, naming the field (the run
    # would otherwise silently evaluate the checkpoint's own model).
    run = tmp_path / "run"
    assert _zsad("train", str(cfg)).returncode == 0
    other = tmp_path / "other.yaml"
    other.write_text(cfg.read_text().replace("hidden_size: 32", "hidden_size: 48", 1))
    r = _zsad(
        "eval", str(other), "--checkpoint", str(run / "model.safetensors"), "--out", str(tmp_path / "e")
    )
    assert r.returncode == 2, r.stdout + r.stderr[-2000:]
    assert "hidden_size: checkpoint 32, config 48" in r.stderr
    assert not (tmp_path / "e").exists()
    # Resuming with another model would train the checkpoint's and record the config's: refused.
    before = (run / "model.safetensors").read_bytes()
    r = _zsad("train", str(other), "--resume", str(run / "model.safetensors"))
    assert r.returncode == 2, r.stdout + r.stderr[-2000:]
    assert "--resume: checkpoint" in r.stderr
    assert "is of another model than the config's" in r.stderr
    assert "hidden_size: checkpoint 32, config 48" in r.stderr
    assert (run / "model.safetensors").read_bytes() == before
    # ... before the dataset is read (here there is none to read).
    nodata = tmp_path / "nodata.yaml"
    nodata.write_text(other.read_text().replace(str(dataset), str(tmp_path / "no-such-dataset")))
    r = _zsad("train", str(nodata), "--resume", str(run / "model.safetensors"))
    assert r.returncode == 2, r.stdout + r.stderr[-2000:]
    assert "is of another model than the config's" in r.stderr
    for missing, said in ((tmp_path / "none.safetensors", "does not exist"), (run, "is a folder")):
        r = _zsad("train", str(cfg), "--resume", str(missing))
        assert r.returncode == 2, r.stdout + r.stderr[-2000:]
        assert f"--resume: checkpoint {missing} {said}" in r.stderr


def test_ddp_two_gloo_processes(tmp_path: Path, dataset: Path) -> None:
    out = tmp_path / "ddp"
    cfg = _config(tmp_path, dataset, out, epochs=1)
    r = _zsad(
        # A single-node rendezvous on a port the store picks itself: a port chosen here could be taken
        # before torchrun bound it.
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "pipeline.cli.main",
        "train",
        str(cfg),
        module="torch.distributed.run",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert (out / "model.safetensors").is_file()
