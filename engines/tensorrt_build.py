"""TensorRT 10 engine builds from ONNX, plus the pure logic around them (precision plan, profile shapes,
engine names), which is unit-tested without TensorRT.

``tensorrt`` is imported only inside :func:`build_engine` (or passed in, e.g. a test double), so this
module imports on any machine. The API follows TensorRT 10.3 (DeepStream 7.1 / JetPack 6.1): explicit
batch networks, ``build_serialized_network``, memory-pool limits, a timing cache.

FP16 and LayerNorm: a FP16 TimeSformer engine drifts badly from block 6 on unless LayerNorm runs in
FP32 (github.com/zmy1116/timesfromer_trtfp16_error; NVIDIA/TensorRT#2781, #3692). Exported at opset
>= 17, LayerNorm arrives as one normalisation layer; :func:`plan_precision` pins it, softmax and
reductions to FP32 and the build obeys those constraints.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from engines.backends.base import BackendUnavailable, tensorrt_hint
from engines.manifest import TensorSpec

log = logging.getLogger(__name__)

__all__ = [
    "FP32_LAYER_KINDS",
    "BatchProfile",
    "EngineBuild",
    "GpuIdentity",
    "LayerInfo",
    "ProfileError",
    "TensorRTBuildError",
    "build_engine",
    "engine_filename",
    "gpu_slug",
    "import_tensorrt",
    "plan_precision",
    "profile_shapes",
    "short_version",
    "tensorrt_available",
    "timing_cache_filename",
]

# TensorRT layer types kept in FP32 in a FP16 engine.
FP32_LAYER_KINDS = frozenset({"NORMALIZATION", "SOFTMAX", "REDUCE"})
# Layer names that betray a LayerNorm or softmax decomposed into primitives (older opsets or exporters).
_FP32_NAME = re.compile(r"layer_?norm|layernormalization|softmax", re.IGNORECASE)


class TensorRTBuildError(RuntimeError):
    """The ONNX parser, builder or device refused the build; the message says which step."""


class ProfileError(ValueError):
    """An optimisation profile that TensorRT would refuse (min <= opt <= max, all >= 1)."""


@dataclass(frozen=True)
class BatchProfile:
    """Dynamic-batch optimisation profile: the engine accepts ``min <= N <= max`` and is tuned for ``opt``."""

    min: int = 1
    opt: int = 8
    max: int = 32

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise ProfileError(
                f"batch profile must satisfy 1 <= min <= opt <= max, got {self.min}/{self.opt}/{self.max}"
            )


def profile_shapes(
    inputs: Sequence[TensorSpec], profile: BatchProfile
) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """``{input name: (min shape, opt shape, max shape)}``: only the batch dim varies."""
    return {
        s.name: (s.with_batch(profile.min), s.with_batch(profile.opt), s.with_batch(profile.max))
        for s in inputs
    }


@dataclass(frozen=True)
class LayerInfo:
    """What the precision plan needs to know of a network layer."""

    name: str
    kind: str  # the TensorRT LayerType name, e.g. "NORMALIZATION"
    float_output: bool = True  # False for shape/index tensors, which must keep their integer type


def plan_precision(layers: Iterable[LayerInfo]) -> list[str]:
    """Names of the layers to pin to FP32 in a FP16 build: normalisation, softmax and reduction layers,
    and layers named like a decomposed LayerNorm or softmax. Layers with non-float outputs are left alone."""
    return [
        layer.name
        for layer in layers
        if layer.float_output and (layer.kind.upper() in FP32_LAYER_KINDS or _FP32_NAME.search(layer.name))
    ]


def short_version(version: str) -> str:
    """``10.3.0.30`` -> ``10.3.0`` (the part engine names carry; the manifest keeps the full version)."""
    return ".".join(version.split(".")[:3])


@dataclass(frozen=True)
class GpuIdentity:
    """The GPU a TensorRT plan (and its timing cache) belongs to: ``cudaDeviceProp``'s name, compute
    capability and multiprocessor count. Name and compute capability alone cannot tell Jetson modules apart
    (every T234 reports ``Orin``, sm 8.7), while their SM counts differ (AGX Orin 64GB 16, 32GB 14, Orin NX
    and Orin Nano 8GB 8, Orin Nano 4GB 4); a plan is tuned for, and tied to, the exact GPU it was built on."""

    name: str
    compute_capability: str
    multiprocessor_count: int

    def __str__(self) -> str:
        return f"{self.name} (sm {self.compute_capability}, {self.multiprocessor_count} SMs)"


def gpu_slug(gpu: GpuIdentity) -> str:
    """``Orin``, 8.7, 16 SMs -> ``sm87-orin-16sm``; ``NVIDIA H200``, 9.0, 132 SMs -> ``sm90-h200-132sm``."""
    name = re.sub(r"^nvidia\s+", "", gpu.name.strip(), flags=re.IGNORECASE)
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "gpu"
    return f"sm{gpu.compute_capability.replace('.', '')}-{slug}-{gpu.multiprocessor_count}sm"


def engine_filename(component: str, precision: str, gpu: GpuIdentity, trt_version: str) -> str:
    """E.g. ``backbone.fp16.sm87-orin-16sm.trt10.3.0.engine``: component, precision, GPU and TensorRT
    version, because a plan only loads on the GPU and TensorRT build it was made with."""
    return f"{component}.{precision}.{gpu_slug(gpu)}.trt{short_version(trt_version)}.engine"


def timing_cache_filename(gpu: GpuIdentity, trt_version: str) -> str:
    """E.g. ``timing.sm87-orin-16sm.trt10.3.0.cache``: one cache a GPU and TensorRT version, so that two
    Orin modules sharing an engine folder never tune with each other's timings."""
    return f"timing.{gpu_slug(gpu)}.trt{short_version(trt_version)}.cache"


def import_tensorrt() -> ModuleType:
    """``import tensorrt``, or :class:`~engines.backends.base.BackendUnavailable` saying where to get it."""
    try:
        import tensorrt
    except ImportError as exc:
        raise BackendUnavailable(f"tensorrt: {tensorrt_hint()} ({exc})") from exc
    except OSError as exc:  # the bindings wheel without libnvinfer.so.10
        raise BackendUnavailable(
            f"tensorrt: the Python bindings load but the library does not: {exc}"
        ) from exc
    return tensorrt


def tensorrt_available() -> bool:
    try:
        import_tensorrt()
    except BackendUnavailable:
        return False
    return True


@dataclass
class EngineBuild:
    path: Path
    seconds: float
    size: int
    num_layers: int
    fp32_layers: list[str] = field(default_factory=list)


def _layers(network: Any, trt: Any) -> list[tuple[Any, LayerInfo]]:
    floats = {trt.float32, trt.float16}
    out = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        float_output = layer.num_outputs > 0 and all(
            layer.get_output(j).dtype in floats for j in range(layer.num_outputs)
        )
        kind = getattr(layer.type, "name", str(layer.type)).rsplit(".", 1)[-1]
        out.append((layer, LayerInfo(name=layer.name, kind=kind, float_output=float_output)))
    return out


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path,
    *,
    inputs: Sequence[TensorSpec],
    profile: BatchProfile,
    workspace_mb: int = 2048,
    fp16: bool = True,
    timing_cache: str | Path | None = None,
    trt: ModuleType | Any | None = None,
) -> EngineBuild:
    """Parse ``onnx_path``, build a (FP16, LayerNorm/softmax/reductions in FP32) engine with a dynamic-batch
    profile and serialise it to ``engine_path``. Loads/saves ``timing_cache`` when given.

    ``trt`` is the ``tensorrt`` module (imported here when ``None``; tests pass a double).
    """
    trt = trt if trt is not None else import_tensorrt()
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    started = time.monotonic()
    logger = trt.Logger(trt.Logger.WARNING)
    try:
        builder = trt.Builder(logger)
    except (TypeError, RuntimeError) as exc:  # no GPU: "CUDA initialization failure" then TypeError
        raise TensorRTBuildError(
            f"TensorRT builder could not start (is a CUDA device visible?): {exc}"
        ) from exc
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise TensorRTBuildError(f"ONNX parser rejected {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    pinned: list[str] = []
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
        layers = _layers(network, trt)
        pinned = plan_precision(info for _, info in layers)
        wanted = set(pinned)
        for layer, info in layers:
            if info.name in wanted:
                layer.precision = trt.float32
                for j in range(layer.num_outputs):
                    layer.set_output_type(j, trt.float32)
        if pinned:
            config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        log.info("%s: %d of %d layers pinned to FP32", onnx_path.name, len(pinned), len(layers))
    opt_profile = builder.create_optimization_profile()
    for name, (lo, mid, hi) in profile_shapes(inputs, profile).items():
        opt_profile.set_shape(name, lo, mid, hi)
    if config.add_optimization_profile(opt_profile) < 0:
        raise TensorRTBuildError(f"{onnx_path.name}: optimisation profile {profile} was refused")
    cache_path = Path(timing_cache) if timing_cache is not None else None
    if cache_path is not None:
        blob = cache_path.read_bytes() if cache_path.is_file() else b""
        cache = config.create_timing_cache(blob)
        if cache is None and blob:
            # TensorRT logs "The timing cache will not be used!" for a damaged blob: a cache only saves
            # time, so the build starts an empty one (and replaces the file) instead of failing.
            log.warning("%s: the timing cache cannot be read; starting an empty one", cache_path)
            cache = config.create_timing_cache(b"")
        if cache is None:
            raise TensorRTBuildError(f"TensorRT could not create a timing cache ({cache_path})")
        config.set_timing_cache(cache, ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise TensorRTBuildError(f"TensorRT could not build {engine_path.name} (see the TensorRT log above)")
    data = bytes(memoryview(plan))
    if not data:
        raise TensorRTBuildError(f"TensorRT built an empty plan for {engine_path.name}")
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = engine_path.with_name(engine_path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(engine_path)
    if cache_path is not None:
        # Whole or not at all: a torn cache would be the next build's damaged blob.
        tmp = cache_path.with_name(cache_path.name + ".tmp")
        tmp.write_bytes(bytes(memoryview(config.get_timing_cache().serialize())))
        tmp.replace(cache_path)
    return EngineBuild(
        path=engine_path,
        seconds=time.monotonic() - started,
        size=len(data),
        num_layers=network.num_layers,
        fp32_layers=pinned,
    )
