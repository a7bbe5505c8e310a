"""bench/device_check.sh on this CPU machine: every check before TensorRT runs and says PASS or FAIL, a
missing TensorRT is a FAIL that ends the run (never a skip), and the exit code is non-zero."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import bench.device_check as device_check
from bench.device_check import CheckFailed, check_package, needs, package_version
from tests.conftest import REPO


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_device_check_fails_at_tensorrt_and_stops(tmp_path: Path) -> None:
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    result = subprocess.run(
        ["bash", str(REPO / "bench" / "device_check.sh"), "--spec", "tiny", "--no-measure"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    checks = [line for line in result.stdout.splitlines() if line.startswith(("PASS  ", "FAIL  "))]
    assert not any("SKIP" in line.upper() for line in result.stdout.splitlines()), out
    names = [line[6:].split(":", 1)[0] for line in checks]
    # What runs without TensorRT comes first, in this order, then TensorRT, and nothing after it.
    assert names[names.index("nvidia-smi") :] == [
        "nvidia-smi",
        "cuda-python",
        "cudaGetDeviceProperties(0)",
        "cuda malloc + H2D + D2H",
        "torch.cuda",
        "export + onnxruntime parity",
        "appearance export + onnxruntime parity",
        "tensorrt import",
    ], out
    assert checks[-1].startswith("FAIL  tensorrt import: TensorRT's Python bindings do not import"), out
    assert "PASS  export + onnxruntime parity: tiny size" in result.stdout
    assert "NTCHW" in next(c for c in checks if "export + onnxruntime parity" in c)
    assert "stopped at 'tensorrt import'" in result.stdout
    saved = json.loads((tmp_path / "device_check.json").read_text())["checks"]
    assert saved["tensorrt import"]["status"] == "FAIL"
    assert saved["export + onnxruntime parity"]["status"] == "PASS"
    appearance = saved["appearance export + onnxruntime parity"]
    assert appearance["status"] == "PASS", appearance
    # Both encoders, CLIP's with the semantic stream's image embedding beside its features.
    assert "mobilenet_v2 [features" in appearance["detail"]
    assert "clip [features (-1, 128, 2, 3), embedding (-1, 24)]" in appearance["detail"]
    assert "Traceback" not in out


def test_a_missing_package_is_a_fail_line_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    assert package_version("zsad_no_such_package") is None
    assert package_version("numpy") == importlib.metadata.version("numpy")
    with pytest.raises(CheckFailed, match=r"needs Python package\(s\) zsad_no_such_package \(missing here\)"):
        needs("numpy", "zsad_no_such_package")
    # pydantic as on a GPU box without it: the package check names what needs it.
    monkeypatch.setattr(device_check, "package_version", lambda module: None)
    with pytest.raises(CheckFailed, match=r"missing \(needed by the config and the engine manifests\)"):
        check_package("pydantic")()


def test_nvidia_smi_missing_or_mute_on_a_jetson_is_not_a_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """JetPack 6's nvidia-smi reports most fields N/A and L4T containers may not carry it: on a Jetson the
    CUDA checks that follow ask the GPU, so this one only reports. Elsewhere its absence is a FAIL."""
    monkeypatch.setattr(device_check.shutil, "which", lambda name: None)
    monkeypatch.setattr(device_check, "TEGRA_RELEASE", tmp_path / "nv_tegra_release")
    with pytest.raises(CheckFailed, match="no NVIDIA driver here"):
        device_check.check_nvidia_smi()
    (tmp_path / "nv_tegra_release").write_text("# R36 (release), REVISION: 4.0\n")
    assert "a Jetson" in device_check.check_nvidia_smi()
    # Present but refusing the query (exit 2 on unknown fields): reported, not failed, on the Jetson.
    mute = tmp_path / "nvidia-smi"
    mute.write_text("#!/bin/sh\necho 'Field \"compute_cap\" is not a valid field to query.' >&2\nexit 2\n")
    mute.chmod(0o755)
    monkeypatch.setattr(device_check.shutil, "which", lambda name: str(mute))
    assert "its nvidia-smi answers few queries" in device_check.check_nvidia_smi()
    (tmp_path / "nv_tegra_release").unlink()
    with pytest.raises(CheckFailed, match="exit 2"):
        device_check.check_nvidia_smi()
