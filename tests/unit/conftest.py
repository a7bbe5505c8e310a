"""Fixtures of the unit tests."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from core.config import parse_config
from pipeline.outputs.hub import RunOutputs
from plugins.appearance import MemoryExpectation
from plugins.fusion import fit_calibration, save_calibration

HubOutputs = Callable[..., RunOutputs]


def write_calibration(path: Path, streams: tuple[str, ...]) -> np.random.Generator:
    """Write at ``path`` a calibration of camera ``path.stem`` with statistics of ``streams`` (seeded random
    samples); return the seeded generator, to draw what goes beside it."""
    rng = np.random.default_rng(0)
    save_calibration(fit_calibration({s: rng.random(50) for s in streams}, camera=path.stem), path)
    return rng


@pytest.fixture
def calib(tmp_path: Path) -> Path:
    """An empty folder for calibration files and what ``zsad calibrate`` writes beside them."""
    folder = tmp_path / "calib"
    folder.mkdir()
    return folder


@pytest.fixture
def hub_outputs(tmp_path: Path) -> HubOutputs:
    """Make :class:`RunOutputs` without a camera graph: ``hub_outputs(cameras, expect=None, **sections)``
    with ``cameras`` mapping each camera id to its calibration file (None: uncalibrated), ``expect`` the
    appearance engine's :class:`MemoryExpectation` (None: no engine), and ``sections`` top-level config
    sections; no metrics or review server, outputs under ``tmp_path/out``. The test shuts it down."""

    def make(
        cameras: dict[str, Path | None], expect: MemoryExpectation | None = None, **sections: object
    ) -> RunOutputs:
        cfg = {
            "cameras": [
                {"id": cam, "uri": f"file:///{cam}.mp4", **({"calibration": str(cal)} if cal else {})}
                for cam, cal in cameras.items()
            ],
            **sections,
            "metrics": {"enabled": False},
            "ui": {"enabled": False},
            "output_dir": str(tmp_path / "out"),
        }
        return RunOutputs(parse_config(json.dumps(cfg)), model_id="m", gate_path=None, appearance=expect)

    return make
