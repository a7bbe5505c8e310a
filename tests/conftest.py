"""Shared fixtures and automatic skipping of device-only markers."""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os
from pathlib import Path

import pytest

# libgstreamer links libunwind: once any test has run Gst.init(), a C++ exception in a module loaded later
# (matplotlib's ft2font on import) aborts the whole run unless libgcc_s's unwinder was loaded globally first.
with contextlib.suppress(OSError):
    ctypes.CDLL("libgcc_s.so.1", mode=ctypes.RTLD_GLOBAL)

REPO = Path(__file__).resolve().parents[1]

# Property tests check what is generated, not how fast: on a loaded CI machine neither a per-example
# deadline nor the "generation too slow" health check may fail a run. Loaded before the test modules, so
# their own @settings inherit it.
if importlib.util.find_spec("hypothesis") is not None:
    from hypothesis import HealthCheck, settings

    settings.register_profile("zsad", deadline=None, suppress_health_check=[HealthCheck.too_slow])
    settings.load_profile("zsad")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _cuda() -> bool:
    if not _has("torch"):
        return False
    import torch

    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reasons = {
        "gpu": None if _cuda() else "needs a CUDA GPU",
        "tensorrt": None if _has("tensorrt") else "needs TensorRT (tensorrt module)",
        "deepstream": None if _has("pyds") and _has("gi") else "needs DeepStream (pyds)",
        "slow": None if config.getoption("--runslow") else "slow: run with --runslow",
    }
    for item in items:
        for marker, reason in reasons.items():
            if reason and marker in item.keywords:
                item.add_marker(pytest.mark.skip(reason=reason))


def data_root() -> Path | None:
    root = os.environ.get("ZSAD_DATA_ROOT")
    return Path(root) if root else None


@pytest.fixture(scope="session")
def ped2_root() -> Path:
    """The real UCSD Ped2 folder; skips cleanly when it is absent."""
    root = data_root()
    if root is None or not (root / "ucsd_ped2" / "testing" / "labels" / "ped2_frame_labels.json").is_file():
        pytest.skip("UCSD Ped2 not found under $ZSAD_DATA_ROOT/ucsd_ped2")
    return root / "ucsd_ped2"
