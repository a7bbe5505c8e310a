"""Are this device's TensorRT engines built? Used by ``deploy/jetson/entrypoint.sh`` at every start.

Engines only load on the TensorRT version and GPU they were built with, so the engine folder (a volume)
is checked against this device: every component's manifest must have a TensorRT block for this TensorRT
version, GPU name and compute capability, fit the config's model section, take the layout the
DeepStream graph feeds (NCTHW with the stock preprocess library), and its files must be intact.

Its command line is :mod:`pipeline.cli.engine_cache`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from core.config import ZsadConfig
from engines.backends.tensorrt import cuda_device_info
from engines.manifest import Expectation, ManifestError, check_manifest, load_manifest, manifest_path
from engines.tensorrt_build import import_tensorrt
from pipeline.deepstream.render import STOCK_LIB_LAYOUT

__all__ = ["DeviceIdentity", "build_args", "engines_current", "required_layout", "this_device"]

log = logging.getLogger(__name__)

COMPONENTS = ("backbone", "dpc_head")
OPTIONAL_COMPONENTS = ("semantic_head",)


@dataclass(frozen=True)
class DeviceIdentity:
    """What a TensorRT engine is tied to."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str


def this_device(device_id: int = 0) -> DeviceIdentity:
    """This machine's TensorRT version and GPU; ``BackendUnavailable``/``BackendError`` without them."""
    trt = import_tensorrt()
    gpu, cc = cuda_device_info(device_id)
    return DeviceIdentity(str(trt.__version__), gpu, cc)


def required_layout(cfg: ZsadConfig) -> str | None:
    """The backbone input layout the DeepStream graph needs (None: whatever the custom library writes)."""
    return STOCK_LIB_LAYOUT if cfg.deepstream.preprocess_lib is None else None


def engines_current(cfg: ZsadConfig, device: DeviceIdentity) -> str | None:
    """None when every engine of ``cfg.engines.dir`` fits ``cfg`` and ``device``, else the first reason."""
    directory = Path(cfg.engines.dir)
    for component in (*COMPONENTS, *OPTIONAL_COMPONENTS):
        path = manifest_path(directory, component)
        if not path.is_file():
            if component in OPTIONAL_COMPONENTS:
                continue
            return f"{path} is missing"
        expected = Expectation(
            model_spec=cfg.model,
            input_layout=required_layout(cfg) if component == "backbone" else None,
            backend="tensorrt",
            tensorrt_version=device.tensorrt_version,
            gpu_name=device.gpu_name,
            compute_capability=device.compute_capability,
        )
        try:
            check_manifest(load_manifest(path), expected)
        except ManifestError as exc:
            return str(exc)
    return None


def build_args(cfg: ZsadConfig) -> list[str]:
    """``zsad build-engines`` flags that make engines this config's DeepStream graph can use: TensorRT, the
    graph's input layout, and a batch profile from 1 (partial batches) to at least the camera count."""
    cameras = max(1, len(cfg.enabled_cameras()))
    args = ["--backend", "tensorrt", "--input-layout", required_layout(cfg) or "NTCHW"]
    args += ["--min-batch", "1", "--opt-batch", str(cameras), "--max-batch", str(max(cameras, 8))]
    return args
