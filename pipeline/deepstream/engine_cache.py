"""Are this device's TensorRT engines built? Used by ``deploy/jetson/entrypoint.sh`` at every start.

Engines only load on the TensorRT version and GPU they were built with, so the engine folder (a volume)
is checked against this device (the config's ``deepstream.gpu_id``): every component's manifest must have a
TensorRT block for this TensorRT version, GPU name, compute capability and SM count (which tells one Jetson
Orin module from another; a manifest written before it was recorded is not current) whose batch profile
reaches ``scheduler.max_batch``, fit the config's model section, and its files must be intact;
and the folder must pass what ``load_engines`` checks besides (``pipeline.inference.check_engine_folder``).
The appearance engine is one of them while ``appearance.enabled`` (``load_engines`` refuses to start
without it), checked against the config's encoder and frame size.
Any backbone input layout will do: the DeepStream graph runs the backbone through the same clip inference as
the CPU graph, which feeds the layout the manifest records.

Its command line is :mod:`pipeline.cli.engine_cache`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from core.config import ZsadConfig
from engines.backends.tensorrt import cuda_device_info
from engines.encoders import APPEARANCE_COMPONENT
from engines.manifest import (
    Expectation,
    Manifest,
    ManifestError,
    check_manifest,
    load_manifest,
    manifest_path,
)
from engines.tensorrt_build import GpuIdentity, import_tensorrt
from pipeline.inference import EngineError, check_engine_folder

__all__ = ["DeviceIdentity", "build_args", "engines_current", "this_device"]

log = logging.getLogger(__name__)

COMPONENTS = ("backbone", "dpc_head")
OPTIONAL_COMPONENTS = ("semantic_head",)


@dataclass(frozen=True)
class DeviceIdentity:
    """What a TensorRT engine is tied to."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    multiprocessor_count: int

    @property
    def gpu(self) -> GpuIdentity:
        return GpuIdentity(self.gpu_name, self.compute_capability, self.multiprocessor_count)

    def __str__(self) -> str:
        return f"TensorRT {self.tensorrt_version} on {self.gpu}"


def this_device(device_id: int = 0) -> DeviceIdentity:
    """This machine's TensorRT version and CUDA device ``device_id``; ``BackendUnavailable``/``BackendError``
    without them."""
    trt = import_tensorrt()
    gpu = cuda_device_info(device_id)
    return DeviceIdentity(str(trt.__version__), gpu.name, gpu.compute_capability, gpu.multiprocessor_count)


def engines_current(cfg: ZsadConfig, device: DeviceIdentity) -> str | None:
    """None when every engine of ``cfg.engines.dir`` fits ``cfg`` and ``device``, else the first reason."""
    directory = Path(cfg.engines.dir)
    required = (*COMPONENTS, APPEARANCE_COMPONENT) if cfg.appearance.enabled else COMPONENTS
    manifests: dict[str, Manifest] = {}
    for component in (*required, *OPTIONAL_COMPONENTS):
        path = manifest_path(directory, component)
        if not path.is_file():
            if component in OPTIONAL_COMPONENTS:
                continue
            return f"{path} is missing"
        expected = Expectation(
            model_spec=cfg.model,
            backend="tensorrt",
            tensorrt_version=device.tensorrt_version,
            gpu_name=device.gpu_name,
            compute_capability=device.compute_capability,
            multiprocessor_count=device.multiprocessor_count,
            appearance_encoder=cfg.appearance.encoder,
            # Built for fewer clips than the scheduler batches, both graphs would batch less than the config
            # asks: a build with this config's --max-batch (build_args) makes it current.
            max_batch=cfg.scheduler.max_batch,
        )
        try:
            manifest = load_manifest(path)
            check_manifest(manifest, expected)
        except ManifestError as exc:
            return str(exc)
        manifests[component] = manifest
    # What load_engines checks besides each manifest (engines of engines.checkpoint and of one build, prompt
    # files unchanged, the stream gate): a folder that passed here and failed there would make the device
    # skip the build and refuse to start at every restart.
    try:
        check_engine_folder(cfg, directory, manifests)
    except (ManifestError, EngineError) as exc:
        return str(exc)
    return None


def build_args(cfg: ZsadConfig) -> list[str]:
    """``zsad build-engines`` flags that make engines this config's DeepStream graph can use: TensorRT, and a
    batch profile from 1 (a partial batch) to the scheduler's largest batch (``scheduler.max_batch``), with
    the camera count as the batch TensorRT tunes for."""
    largest = cfg.scheduler.max_batch
    cameras = min(max(1, len(cfg.enabled_cameras())), largest)
    return [
        "--backend", "tensorrt",
        "--min-batch", "1", "--opt-batch", str(cameras), "--max-batch", str(largest),
    ]  # fmt: skip
