"""Shared fixtures and automatic skipping of device-only markers."""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os
from pathlib import Path
from typing import Any

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
    for item in items:
        _check_worker_group(item)
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # The shared fixtures' groups are the longest units of work (the demo's: about 3 minutes): started
        # first, so that the other process is not left idle while one of them runs at the end. Stable, so
        # each file stays whole and in order.
        items.sort(key=lambda item: not worker_group(item.nodeid).startswith("fixture:"))


#: Session fixtures that take 10 s to 2 minutes to make, and the test files that use them. Under ``make test``
#: (pytest-xdist, ``--dist loadfile``) the tests of one file run in one process, and the files of one entry
#: here too (:func:`pytest_xdist_make_scheduler`), so that each fixture is made once.
SHARED_SESSION_FIXTURES: dict[str, tuple[str, ...]] = {
    "demo_artefacts": ("tests/integration/test_demo.py", "tests/integration/test_demo_browser.py"),
    "zones_world": ("tests/integration/test_zones.py", "tests/integration/test_zone_editor_browser.py"),
    "world": ("tests/reliability/",),  # tests/reliability/conftest.py's (integration's is per module)
}


def worker_group(test: str) -> str:
    """The group of a test id or of a test file's path (relative to the repository): the shared session
    fixture its file uses, else the file itself."""
    path = test.split("::", 1)[0]
    for fixture, files in SHARED_SESSION_FIXTURES.items():
        if any(path == f or (f.endswith("/") and path.startswith(f)) for f in files):
            return f"fixture:{fixture}"
    return path


def _check_worker_group(item: pytest.Item) -> None:
    """Refuse a test that uses a shared session fixture from a file not listed with it: under pytest-xdist it
    could make the fixture a second time, in another process."""
    info = getattr(item, "_fixtureinfo", None)
    defs = info.name2fixturedefs if info is not None else {}
    path = item.nodeid.split("::", 1)[0]
    for fixture in SHARED_SESSION_FIXTURES:
        if (
            fixture in defs
            and defs[fixture][-1].scope == "session"
            and worker_group(path) != f"fixture:{fixture}"
        ):
            raise pytest.UsageError(
                f"{path} uses the session fixture {fixture}: "
                "list it with the fixture in tests/conftest.py SHARED_SESSION_FIXTURES"
            )


# tryfirst: before pytest-xdist's own, which groups by file only; optionalhook: a run without xdist (not
# installed, or -p no:xdist) has no such hook to check this against.
@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadfile``, with the files of one shared session fixture as one group."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    # Hand out the groups in the order collected (pytest_collection_modifyitems puts the longest first), not
    # by their number of tests, which would start the demo's two tests last.
    config.option.loadscopereorder = False

    class _SharedFixtureScheduling(LoadFileScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return worker_group(nodeid)

    return _SharedFixtureScheduling(config, log)


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
