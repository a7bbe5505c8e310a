"""TensorRT 10 backend (Jetson / dGPU): deserialised plan, pinned host buffers, one non-blocking CUDA stream,
and an optional CUDA graph of copy-in, enqueue and copy-out.

``tensorrt`` and ``cuda`` (cuda-python) are imported only when a backend is created: TensorRT through
:func:`engines.tensorrt_build.import_tensorrt`, cuda-python's runtime module through
:func:`engines.cuda_device.cuda_runtime` (which accepts both of its spellings, ``cuda.bindings.runtime`` and
the older ``cuda.cudart``).
Runtime calls follow TensorRT 10's API (``set_input_shape``, ``set_tensor_address``,
``execute_async_v3``) as in NVIDIA's ``samples/python/common_runtime.py``.
"""

from __future__ import annotations

import ctypes
import logging
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from engines.backends.base import Backend, BackendError, BackendUnavailable, InputMismatch, tensorrt_hint
from engines.cuda_device import CudaUnavailable, cuda_runtime
from engines.manifest import Manifest, ManifestError, check_tensorrt_device, verify_files
from engines.tensorrt_build import GpuIdentity, import_tensorrt

log = logging.getLogger(__name__)

__all__ = ["CudaRuntime", "TensorRTBackend", "cuda_device_info"]


def import_cudart() -> Any:
    """The cuda-python runtime module (:func:`engines.cuda_device.cuda_runtime`); a missing cuda-python is
    :class:`BackendUnavailable`, like a missing TensorRT, so the backend's callers handle one error."""
    try:
        return cuda_runtime()
    except CudaUnavailable as exc:
        raise BackendUnavailable(f"{exc}; {tensorrt_hint()}") from exc


class CudaRuntime:
    """Checked calls into the cuda-python runtime: a failing call raises :class:`BackendError`."""

    def __init__(self, cudart: Any | None = None) -> None:
        self.rt = cudart if cudart is not None else import_cudart()

    def call(self, fn: str, *args: Any) -> Any:
        try:
            result = getattr(self.rt, fn)(*args)
        except RuntimeError as exc:  # e.g. "Failed to dlopen libcuda.so.1" on a machine without a driver
            raise BackendError(f"CUDA {fn} failed: {exc}") from exc
        err, values = result[0], result[1:]
        if int(err) != 0:
            # cudaError_t is an IntEnum: from Python 3.11 its str() is the bare number, so name it.
            raise BackendError(f"CUDA {fn} failed: {getattr(err, 'name', err)} ({int(err)})")
        if not values:
            return None
        return values[0] if len(values) == 1 else values


def cuda_device_info(device_id: int = 0) -> GpuIdentity:
    """What a TensorRT plan built on CUDA device ``device_id`` is tied to: its name, compute capability
    ``"M.m"`` and SM count."""
    cuda = CudaRuntime()
    props = cuda.call("cudaGetDeviceProperties", device_id)
    name = props.name
    if isinstance(name, bytes | bytearray):
        name = name.split(b"\0", 1)[0].decode(errors="replace")
    return GpuIdentity(str(name).strip(), f"{props.major}.{props.minor}", int(props.multiProcessorCount))


class _Buffer:
    """A pinned host array and its device twin, both sized for the profile's max batch."""

    def __init__(self, cuda: CudaRuntime, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.cuda = cuda
        self.row_bytes = int(math.prod(shape[1:])) * dtype.itemsize
        self.nbytes = self.row_bytes * shape[0]
        self.host_ptr = int(cuda.call("cudaMallocHost", self.nbytes))
        try:
            self.device_ptr = int(cuda.call("cudaMalloc", self.nbytes))
        except BackendError:
            cuda.call("cudaFreeHost", self.host_ptr)  # the pinned half must not leak
            raise
        raw = (ctypes.c_byte * self.nbytes).from_address(self.host_ptr)
        self.host = np.frombuffer(memoryview(raw), dtype=dtype).reshape(shape)

    def free(self) -> None:
        self.cuda.call("cudaFree", self.device_ptr)
        self.cuda.call("cudaFreeHost", self.host_ptr)


class TensorRTBackend(Backend):
    """Runs the manifest's TensorRT engine.

    Args:
        manifest: a manifest with a ``tensorrt`` block; TensorRT version, GPU and file hash must match.
        threads: unused (kept for the common backend signature).
        cuda_graph: capture copy-in + enqueue + copy-out as a CUDA graph after a warm-up run, and
            re-capture whenever the input batch changes. A capture that fails is logged once and turns
            graphs off for this backend (the batch's outputs, computed before the capture, are returned).
        device_id: CUDA device (the config's ``deepstream.gpu_id``): the engine is checked against it, loaded
            on it, and every inference call makes it the calling thread's current device.
    """

    name = "tensorrt"

    def __init__(
        self, manifest: Manifest, threads: int = 0, *, cuda_graph: bool = False, device_id: int = 0
    ) -> None:
        super().__init__(manifest)
        trt = import_tensorrt()
        self._trt = trt
        self._cuda = CudaRuntime()
        info = manifest.tensorrt
        if info is None:
            raise ManifestError(
                f"{manifest.path}: tensorrt: no engine recorded; build with --backend tensorrt"
            )
        # The TensorRT version first: a host with another TensorRT is told so even when CUDA fails too.
        check_tensorrt_device(manifest, tensorrt_version=trt.__version__)
        self._device = device_id
        self._cuda.call("cudaSetDevice", device_id)
        gpu = cuda_device_info(device_id)
        check_tensorrt_device(
            manifest,
            gpu_name=gpu.name,
            compute_capability=gpu.compute_capability,
            multiprocessor_count=gpu.multiprocessor_count,
        )
        verify_files(manifest, ("tensorrt",))
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        plan = manifest.resolve(info.path).read_bytes()
        self._engine = self._runtime.deserialize_cuda_engine(plan)
        if self._engine is None:
            raise BackendError(f"TensorRT could not deserialise {manifest.resolve(info.path)}")
        self._context = self._engine.create_execution_context()
        if self._context is None:  # TensorRT logs why; usually the device memory its activations need
            raise BackendError(
                f"TensorRT could not create an execution context for {manifest.resolve(info.path)} "
                "(out of GPU memory? other engines and cameras share it)"
            )
        self._check_engine_io(trt, info)
        self.max_batch = info.max_batch
        self.min_batch = info.min_batch
        self._cuda_graph = cuda_graph
        self._batch: int | None = None
        self._graph: Any = None
        self._graph_exec: Any = None
        self._stream: Any = None
        self._buffers: dict[str, _Buffer] = {}
        allocated = False
        try:
            # Non-blocking: a stream that synchronises with the legacy default stream would have its
            # capture invalidated (cudaErrorStreamCaptureImplicit) by any other thread's work on that stream
            # (DeepStream's, a library's), and would wait for that work on every plain run too.
            self._stream = self._cuda.call("cudaStreamCreateWithFlags", self._cuda.rt.cudaStreamNonBlocking)
            for spec in (*manifest.inputs, *manifest.outputs):
                dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(spec.name)))
                buf = _Buffer(self._cuda, spec.with_batch(self.max_batch), dtype)
                self._buffers[spec.name] = buf
                if not self._context.set_tensor_address(spec.name, buf.device_ptr):
                    raise BackendError(f"{manifest.path}: TensorRT refused the address of {spec.name}")
            allocated = True
        finally:
            if not allocated:
                # Whatever was allocated before the failure goes back; close() knows what exists.
                self.close()

    def _check_engine_io(self, trt: Any, info: Any) -> None:
        """Refuse an engine whose tensors (names, modes, non-batch dims) or batch profile differ from the
        manifest: TensorRT would only say so later, as a failed ``set_input_shape`` or enqueue."""
        engine, path = self._engine, self.manifest.path
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        engine_inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if sorted(engine_inputs) != sorted(self.input_names) or sorted(names) != sorted(
            self.input_names + self.output_names
        ):
            raise BackendError(f"{path}: engine tensors {names} differ from the manifest's I/O")
        for spec in (*self.manifest.inputs, *self.manifest.outputs):
            shape = tuple(engine.get_tensor_shape(spec.name))
            if len(shape) != len(spec.shape) or shape[1:] != tuple(spec.shape[1:]):
                raise BackendError(
                    f"{path}: engine tensor {spec.name} has shape {list(shape)}, the manifest "
                    f"{list(spec.shape)} ({spec.layout})"
                )
        for spec in self.manifest.inputs:
            lo, _, hi = (int(d[0]) for d in engine.get_tensor_profile_shape(spec.name, 0))
            if not lo <= info.min_batch <= info.max_batch <= hi:
                raise BackendError(
                    f"{path}: the manifest's batch {info.min_batch}..{info.max_batch} is outside the "
                    f"engine profile {lo}..{hi} of {spec.name}; rebuild the engine"
                )

    # -- one pass: copies in, enqueue, copies out (all on the stream) -----------------------------------

    def _enqueue(self, n: int) -> None:
        rt = self._cuda.rt
        h2d, d2h = rt.cudaMemcpyKind.cudaMemcpyHostToDevice, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name in self.input_names:
            b = self._buffers[name]
            self._cuda.call("cudaMemcpyAsync", b.device_ptr, b.host_ptr, n * b.row_bytes, h2d, self._stream)
        if not self._context.execute_async_v3(stream_handle=int(self._stream)):
            raise BackendError(f"{self.manifest.component}: TensorRT execute_async_v3 failed")
        for name in self.output_names:
            b = self._buffers[name]
            self._cuda.call("cudaMemcpyAsync", b.host_ptr, b.device_ptr, n * b.row_bytes, d2h, self._stream)

    def _drop_graph(self) -> None:
        if self._graph_exec is not None:
            self._cuda.call("cudaGraphExecDestroy", self._graph_exec)
        if self._graph is not None:
            self._cuda.call("cudaGraphDestroy", self._graph)
        self._graph = self._graph_exec = None

    def _capture(self, n: int) -> None:
        rt = self._cuda.rt
        # Thread-local: a global capture would make other threads' unsafe CUDA calls (DeepStream's, another
        # engine's) fail while this stream is being captured.
        mode = rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        self._cuda.call("cudaStreamBeginCapture", self._stream, mode)
        try:
            self._enqueue(n)
        finally:
            # Kept even when the enqueue failed, so that _drop_graph destroys it.
            self._graph = self._cuda.call("cudaStreamEndCapture", self._stream)
        self._graph_exec = self._cuda.call("cudaGraphInstantiate", self._graph, 0)

    def _try_capture(self, n: int) -> None:
        """:meth:`_capture`; a failure turns CUDA graphs off for this backend, logged once: graphs only save
        launch time, and the batch's outputs (computed before the capture) are good. Left on, every change
        of batch size would try again and fail the batch it came with."""
        try:
            self._capture(n)
        except BackendError as exc:
            self._cuda_graph = False
            try:
                self._drop_graph()
            except BackendError as drop_exc:  # nothing runs the half-made graph: forget it
                log.debug("%s: destroying the failed CUDA graph: %s", self.manifest.component, drop_exc)
                self._graph = self._graph_exec = None
            log.warning(
                "%s: CUDA graph capture at batch %d failed (%s); this engine runs without CUDA graphs",
                self.manifest.component,
                n,
                exc,
            )

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        # CUDA's current device belongs to the calling thread, and this one is not the thread that created
        # the backend (the scheduler's): without this, its kernels would go to device 0. A no-op when the
        # device is current already.
        self._cuda.call("cudaSetDevice", self._device)
        n = next(iter(feeds.values())).shape[0]
        if not self.min_batch <= n <= self.max_batch:
            raise InputMismatch(
                f"{self.manifest.component}: batch {n} is outside the engine profile "
                f"{self.min_batch}..{self.max_batch}; rebuild with a larger --max-batch"
            )
        for name in self.input_names:
            self._buffers[name].host[:n] = feeds[name]
        if n != self._batch:
            # New shapes: TensorRT needs a plain run before a capture, and an old graph is invalid.
            self._drop_graph()
            for name in self.input_names:
                if not self._context.set_input_shape(name, self._buffers[name].host[:n].shape):
                    raise InputMismatch(
                        f"{self.manifest.component}: TensorRT refused input {name} at batch {n} "
                        "(outside the engine profile?)"
                    )
            self._batch = n
            self._enqueue(n)
            self._cuda.call("cudaStreamSynchronize", self._stream)
            out = {name: self._buffers[name].host[:n].copy() for name in self.output_names}
            if self._cuda_graph:
                self._try_capture(n)
            return out
        if self._graph_exec is not None:
            self._cuda.call("cudaGraphLaunch", self._graph_exec, self._stream)
        else:
            self._enqueue(n)
        self._cuda.call("cudaStreamSynchronize", self._stream)
        return {name: self._buffers[name].host[:n].copy() for name in self.output_names}

    def close(self) -> None:
        if getattr(self, "_closed", True):
            return
        try:
            if self._stream is not None or self._buffers:  # what is freed lives on the backend's device
                self._cuda.call("cudaSetDevice", self._device)
            self._drop_graph()
            for buf in self._buffers.values():
                buf.free()
            if self._stream is not None:
                self._cuda.call("cudaStreamDestroy", self._stream)
        finally:
            self._stream = None
            self._buffers = {}
            self._context = self._engine = None
            super().close()
