"""engines/cuda_device: is this GPU integrated (a Jetson)? Where CUDA cannot be asked, an L4T root file system
decides. CUDA itself cannot run here, so the no-driver case uses a strict stand-in for cuda-python's
runtime module; the no-cuda-python case is this machine as it is."""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path
from typing import Any

import pytest

import engines.cuda_device as cuda_device
from engines.cuda_device import CudaUnavailable, cuda_runtime, device_is_integrated, device_properties


class NoDriverRuntimeDouble:
    """cuda-python 12.6's runtime on a machine without the NVIDIA driver: the call exists with its real
    signature (``cudaGetDeviceProperties(int device)``) and raises what cuda-python raises there; any other
    name is an AttributeError, as on a module that does not bind it."""

    def cudaGetDeviceProperties(self, device: int) -> tuple[Any, Any]:
        if not isinstance(device, int):
            raise TypeError(f"cudaGetDeviceProperties takes an int, got {type(device).__name__}")
        raise RuntimeError("Failed to dlopen libcuda.so.1")

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(f"the cuda-python runtime double has no {name}")


@pytest.fixture
def tegra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "nv_tegra_release"
    monkeypatch.setattr(cuda_device, "TEGRA_RELEASE", path)
    return path


def test_no_driver_is_a_named_error() -> None:
    with pytest.raises(
        CudaUnavailable, match=r"cudaGetDeviceProperties failed: Failed to dlopen libcuda\.so\.1"
    ):
        device_properties(0, NoDriverRuntimeDouble())
    assert list(inspect.signature(NoDriverRuntimeDouble.cudaGetDeviceProperties).parameters) == [
        "self",
        "device",
    ]


def test_without_cuda_an_l4t_file_system_decides(tegra: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert device_is_integrated(0, NoDriverRuntimeDouble()) is False
    assert "Failed to dlopen" in caplog.text
    tegra.write_text("# R36 (release), REVISION: 4.0, GCID: 1, BOARD: generic, EABI: aarch64\n")
    assert device_is_integrated(0, NoDriverRuntimeDouble()) is True


@pytest.mark.skipif(importlib.util.find_spec("cuda") is not None, reason="cuda-python is installed here")
def test_without_cuda_python(tegra: Path) -> None:
    """This machine as it is: no cuda-python at all."""
    with pytest.raises(CudaUnavailable, match="cuda-python is not installed"):
        cuda_runtime()
    assert device_is_integrated() is False
    tegra.write_text("# R36 (release)\n")
    assert device_is_integrated() is True
