"""The backend interface: one engine, named numpy arrays in and out, validated against its manifest.

Subclasses implement ``_infer`` (and ``close`` when they hold resources); :meth:`Backend.infer` checks
input names, dtypes and shapes against the manifest first, so every runtime refuses bad input the same
way. A backend is a runner in the sense of :mod:`plugins.scorer` (``backend(feeds) -> outputs``).
"""

from __future__ import annotations

import abc
import time
from collections.abc import Mapping
from types import TracebackType

import numpy as np

from engines.manifest import Manifest

__all__ = [
    "Backend",
    "BackendError",
    "BackendUnavailable",
    "InputMismatch",
    "onnxruntime_hint",
    "tensorrt_hint",
]


class BackendError(RuntimeError):
    """A backend could not load or run its engine."""


class BackendUnavailable(BackendError):
    """The runtime package is not installed here; the message names the package and where it comes from."""


class InputMismatch(BackendError, ValueError):
    """Feeds do not match the engine's inputs (name, dtype, shape or batch); the message says which."""


def tensorrt_hint() -> str:
    return (
        "install TensorRT 10.3 from JetPack 6.1 (Jetson) or the tensorrt-cu12==10.3.* wheel (x86 dGPU), "
        "plus cuda-python"
    )


def onnxruntime_hint() -> str:
    return "pip install onnxruntime (CPU) or onnxruntime-gpu (CUDA)"


class Backend(abc.ABC):
    """One loaded engine. Use as a context manager or call :meth:`close`.

    Attributes:
        manifest: the engine's manifest (I/O names, shapes, preprocessing).
        input_names / output_names: in manifest order.
    """

    name: str = "base"

    def __init__(self, manifest: Manifest) -> None:
        if not manifest.inputs:
            raise BackendError(f"{manifest.path}: component {manifest.component} has no runnable engine")
        self.manifest = manifest
        self._specs = {s.name: s for s in manifest.inputs}
        self._closed = False

    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.manifest.inputs]

    @property
    def output_names(self) -> list[str]:
        return [s.name for s in self.manifest.outputs]

    def validate(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Return the feeds as C-contiguous arrays after checking them; raise :class:`InputMismatch`."""
        component = self.manifest.component
        missing = [n for n in self.input_names if n not in feeds]
        unknown = sorted(set(feeds) - set(self._specs))
        if missing or unknown:
            raise InputMismatch(
                f"{component}: inputs must be {self.input_names}; missing {missing}, unknown {unknown}"
            )
        batch: int | None = None
        out: dict[str, np.ndarray] = {}
        for name in self.input_names:
            spec = self._specs[name]
            arr = feeds[name]
            if not isinstance(arr, np.ndarray):
                raise InputMismatch(
                    f"{component}: input {name} must be a numpy array, got {type(arr).__name__}"
                )
            if arr.dtype != np.dtype(spec.dtype):
                raise InputMismatch(f"{component}: input {name} must be {spec.dtype}, got {arr.dtype}")
            if arr.ndim != len(spec.shape) or tuple(arr.shape[1:]) != tuple(spec.shape[1:]):
                raise InputMismatch(
                    f"{component}: input {name} must have shape {list(spec.shape)} ({spec.layout}), "
                    f"got {list(arr.shape)}"
                )
            if arr.shape[0] < 1:
                raise InputMismatch(f"{component}: input {name} has an empty batch")
            if batch is None:
                batch = arr.shape[0]
            elif arr.shape[0] != batch:
                raise InputMismatch(
                    f"{component}: input {name} has batch {arr.shape[0]}, other inputs {batch}"
                )
            out[name] = np.ascontiguousarray(arr)
        return out

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the engine. ``feeds``: name -> float32 array shaped as the manifest says (any batch)."""
        if self._closed:
            raise BackendError(f"{self.manifest.component}: {self.name} backend is closed")
        results = self._infer(self.validate(feeds))
        missing = [n for n in self.output_names if n not in results]
        if missing:
            raise BackendError(f"{self.manifest.component}: {self.name} returned no {missing}")
        return {n: results[n] for n in self.output_names}

    __call__ = infer

    def warm_up(self, batch: int) -> float:
        """Run the engine once on zeros at ``batch``; return the seconds it took.

        Runtimes size their arenas and pick kernels on the first call at a new shape, so calling this at
        start-up with the largest batch the scheduler will form keeps that growth out of the run (memory
        stays flat after start) and out of the first alert's latency.
        """
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        feeds = {s.name: np.zeros(s.with_batch(batch), dtype=np.dtype(s.dtype)) for s in self.manifest.inputs}
        t0 = time.perf_counter()
        self.infer(feeds)
        return time.perf_counter() - t0

    @abc.abstractmethod
    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run validated, contiguous feeds; return at least every output name."""

    def close(self) -> None:
        """Release runtime resources; further calls to :meth:`infer` raise."""
        self._closed = True

    def __enter__(self) -> Backend:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
