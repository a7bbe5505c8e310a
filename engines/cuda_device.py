"""What CUDA says about this machine's GPU, through cuda-python, without TensorRT.

:func:`device_is_integrated` is how NVIDIA's DeepStream Python apps tell a Jetson from a dGPU box
(``apps/common/platform_info.py``: ``cudaGetDeviceProperties(0).integrated``): an integrated GPU shares
memory with the CPU (Jetson: surface arrays that must be unmapped after reading, VIC for scaling), and
an ARM server with a discrete GPU (SBSA) is not a Jetson although its CPU is aarch64.

``cuda`` (cuda-python) is imported only when a function here runs. Its runtime module moved:
``cuda.bindings.runtime`` (cuda-python 12.8+ and 13) and ``cuda.cudart`` (up to 12.x, removed in 13) are
both accepted. On a machine without the NVIDIA driver cuda-python imports, but its calls raise
``RuntimeError: Failed to dlopen libcuda.so.1``; that, a missing cuda-python and a CUDA error all become
:class:`CudaUnavailable`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

__all__ = [
    "TEGRA_RELEASE",
    "CudaUnavailable",
    "DeviceProperties",
    "cuda_runtime",
    "device_is_integrated",
    "device_properties",
]

# Present on every L4T (Jetson) root file system; the fallback when CUDA cannot be asked.
TEGRA_RELEASE = Path("/etc/nv_tegra_release")


class CudaUnavailable(RuntimeError):
    """cuda-python is missing, the NVIDIA driver cannot be loaded, or a CUDA call failed (the message says
    which)."""


@dataclass(frozen=True)
class DeviceProperties:
    """The fields of ``cudaDeviceProp`` zsad uses."""

    device: int
    name: str
    integrated: bool
    compute_capability: str
    total_memory: int


def cuda_runtime() -> Any:
    """The cuda-python runtime module, whichever way this cuda-python version spells it."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        try:
            from cuda import cudart as runtime
        except ImportError as exc:
            raise CudaUnavailable(
                f"cuda-python is not installed (pip install cuda-python; 12.6.x on JetPack 6.1): {exc}"
            ) from exc
    return runtime


def _checked(runtime: Any, fn: str, *args: Any) -> Any:
    try:
        result = getattr(runtime, fn)(*args)
    except RuntimeError as exc:  # "Failed to dlopen libcuda.so.1" where there is no driver
        raise CudaUnavailable(f"CUDA {fn} failed: {exc}") from exc
    err, values = result[0], result[1:]
    if int(err) != 0:
        raise CudaUnavailable(f"CUDA {fn} failed: {err}")
    return values[0] if len(values) == 1 else values


def device_properties(device: int = 0, runtime: Any | None = None) -> DeviceProperties:
    """``cudaGetDeviceProperties(device)``; raises :class:`CudaUnavailable`."""
    rt = runtime if runtime is not None else cuda_runtime()
    props = _checked(rt, "cudaGetDeviceProperties", device)
    name = props.name
    if isinstance(name, bytes | bytearray):
        name = name.split(b"\0", 1)[0].decode(errors="replace")
    return DeviceProperties(
        device=device,
        name=str(name).strip(),
        integrated=bool(props.integrated),
        compute_capability=f"{props.major}.{props.minor}",
        total_memory=int(props.totalGlobalMem),
    )


def device_is_integrated(device: int = 0, runtime: Any | None = None) -> bool:
    """True when CUDA device ``device`` is an integrated GPU (a Jetson), as NVIDIA's apps decide it.

    Where CUDA cannot be asked (no cuda-python, no driver), an L4T root file system
    (``/etc/nv_tegra_release``) decides; the reason is logged.
    """
    try:
        return device_properties(device, runtime).integrated
    except CudaUnavailable as exc:
        fallback = TEGRA_RELEASE.is_file()
        log.warning(
            "cannot ask CUDA whether the GPU is integrated (%s); %s exists: %s", exc, TEGRA_RELEASE, fallback
        )
        return fallback
