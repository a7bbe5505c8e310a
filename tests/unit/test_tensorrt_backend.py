"""The TensorRT backend's whole run path (load, ``__call__``/``infer``, CUDA graphs, close) against the strict
TensorRT 10.3 and cuda-python 12.6 TEST DOUBLES (no GPU here): tests/fixtures/tensorrt_test_double.py and
tests/fixtures/cudart_test_double.py, installed as the ``tensorrt`` and ``cuda.bindings.runtime`` modules so
that the backend's own imports find them.

The test engine computes real numpy functions of its inputs on the simulated GPU (``y = x * 2 + 1``,
``m = mean(z, axis=2) - 0.5``, ``w = (x + z) * 3``), reading and writing the device memory the backend's
copies fill, and only when the backend synchronises its stream; so every output checked here went host ->
device -> kernel -> device -> host through the calls TensorRT 10.3 and cuda-python 12.6 really have.
"""

from __future__ import annotations

import hashlib
import logging
import sys
import threading
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engines.backends import BackendError, InputMismatch, load_backend
from engines.backends.tensorrt import TensorRTBackend
from engines.manifest import Manifest, ManifestMismatch
from pipeline.inference import backend_options
from tests.fixtures.cudart_test_double import CudartTestDouble, SimulatedDevice, set_device_calls
from tests.fixtures.deepstream_fixtures import site_config
from tests.fixtures.tensorrt_test_double import PlanOp, TensorRTTestDouble, engine_plan

X_SHAPE = (-1, 2, 3)
M_SHAPE = (-1, 2)


def expected(x: np.ndarray, z: np.ndarray) -> dict[str, np.ndarray]:
    return {"y": x * 2 + 1, "m": z.mean(axis=2) - 0.5, "w": (x + z) * 3}


def plan(*, profile: tuple[int, int, int] = (1, 4, 8), x_shape: tuple[int, ...] = X_SHAPE) -> bytes:
    return engine_plan(
        {"x": x_shape, "z": X_SHAPE},
        {
            "y": (x_shape, PlanOp("y", "affine", ("x",), scale=2.0, shift=1.0)),
            "m": (M_SHAPE, PlanOp("m", "mean", ("z",), shift=-0.5, axes=(2,))),
            "w": (X_SHAPE, PlanOp("w", "add", ("x", "z"), scale=3.0)),
        },
        profile=profile,
    )


def write_manifest(
    directory: Path,
    trt: TensorRTTestDouble,
    plan_bytes: bytes,
    *,
    batches: tuple[int, int, int] = (1, 4, 8),
    gpu: tuple[str, str, int | None] = ("Orin", "8.7", 16),
    version: str | None = None,
) -> Manifest:
    """A manifest of the test engine, built on ``gpu`` (name, compute capability, SM count; None: written
    before zsad recorded the SM count)."""
    engine = directory / "dpc_head.engine"
    engine.write_bytes(plan_bytes)
    doc: dict[str, Any] = {
        "component": "dpc_head",
        "zsad_version": "test",
        "created": "2025-01-01T00:00:00+00:00",
        "inputs": [
            {"name": "x", "shape": list(X_SHAPE), "layout": "NCW"},
            {"name": "z", "shape": list(X_SHAPE), "layout": "NCW"},
        ],
        "outputs": [
            {"name": "y", "shape": list(X_SHAPE), "layout": "NCW"},
            {"name": "m", "shape": list(M_SHAPE), "layout": "NC"},
            {"name": "w", "shape": list(X_SHAPE), "layout": "NCW"},
        ],
        "preprocessing": {
            "mean": [0.45, 0.45, 0.45],
            "std": [0.225, 0.225, 0.225],
            "clip_len": 2,
            "frame_stride": 1,
            "clip_hop": 1,
            "image_height": 32,
            "image_width": 48,
        },
        "model_spec": {},
        "model_spec_sha256": "0" * 64,
        "weights_sha256": "0" * 64,
        "checkpoint": "test.safetensors",
        "tensorrt": {
            "path": engine.name,
            "sha256": hashlib.sha256(plan_bytes).hexdigest(),
            "size": len(plan_bytes),
            "tensorrt_version": version or trt.__version__,
            "gpu_name": gpu[0],
            "compute_capability": gpu[1],
            **({"multiprocessor_count": gpu[2]} if gpu[2] is not None else {}),
            "precision": "fp32",
            "min_batch": batches[0],
            "opt_batch": batches[1],
            "max_batch": batches[2],
            "workspace_mb": 64,
            "build_key": "test",
        },
    }
    manifest = Manifest.model_validate(doc).bind(directory)
    manifest.path.write_text(manifest.model_dump_json())
    return manifest


def install_doubles(monkeypatch: pytest.MonkeyPatch, runtime: CudartTestDouble) -> None:
    """``runtime`` importable as ``cuda.bindings.runtime``, and TensorRT's double over its simulated GPU as
    ``tensorrt``."""
    cuda = types.ModuleType("cuda")
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = runtime  # type: ignore[attr-defined]
    cuda.bindings = bindings  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "cuda", cuda)
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", runtime)
    monkeypatch.setitem(sys.modules, "tensorrt", TensorRTTestDouble(runtime))


@pytest.fixture
def cudart(monkeypatch: pytest.MonkeyPatch) -> CudartTestDouble:
    """The cuda-python double of an AGX Orin 64GB (installed by :func:`install_doubles`)."""
    runtime = CudartTestDouble(device_name="Orin", compute_capability=(8, 7), multiprocessor_count=16)
    install_doubles(monkeypatch, runtime)
    return runtime


@pytest.fixture
def trt(cudart: CudartTestDouble) -> TensorRTTestDouble:
    module = sys.modules["tensorrt"]
    assert isinstance(module, TensorRTTestDouble)
    return module


def feeds(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal((n, 2, 3)).astype(np.float32) for k in ("x", "z")}


@pytest.mark.parametrize("cuda_graph", [False, True])
def test_infer_end_to_end_at_batch_1_and_n(
    tmp_path: Path, cudart: CudartTestDouble, trt: TensorRTTestDouble, cuda_graph: bool
) -> None:
    manifest = write_manifest(tmp_path, trt, plan())
    gpu = cudart._double_gpu
    with load_backend(manifest.path, "tensorrt", cuda_graph=cuda_graph) as backend:
        assert isinstance(backend, TensorRTBackend)
        # Batch 1, then N, then N again (the same shapes: a graph replay when enabled), then 1 again.
        for i, n in enumerate((1, 5, 5, 5, 8, 1)):
            f = feeds(n, seed=i)
            synced = gpu.synchronized
            out = backend(f)
            assert gpu.synchronized > synced  # every call waits for its stream
            assert list(out) == ["y", "m", "w"]
            for name, want in expected(f["x"], f["z"]).items():
                assert out[name].shape == want.shape, name
                assert out[name].dtype == np.float32
                np.testing.assert_allclose(out[name], want, rtol=1e-6, atol=1e-6, err_msg=name)
            # The shapes TensorRT was given are this call's (set whenever the batch changes).
            assert tuple(backend._context.get_tensor_shape("x")) == (n, 2, 3)
            assert tuple(backend._context.get_tensor_shape("m")) == (n, 2)
        if cuda_graph:
            assert len(gpu.execs) == 1  # the graph of the last batch, instantiated once
        # Outputs are copies: a later call does not change an earlier result.
        first = backend(feeds(2, seed=10))
        kept = {k: v.copy() for k, v in first.items()}
        backend(feeds(2, seed=11))
        for name in kept:
            np.testing.assert_array_equal(first[name], kept[name])
    assert gpu.live() == {"host": 0, "device": 0, "streams": 0, "graphs": 0, "graph_execs": 0}


def test_warm_up_and_load_through_the_backend_registry(
    tmp_path: Path, cudart: CudartTestDouble, trt: TensorRTTestDouble
) -> None:
    manifest = write_manifest(tmp_path, trt, plan())
    backend = load_backend(manifest, "tensorrt")
    try:
        assert backend.warm_up(8) >= 0.0
        out = backend(feeds(3, seed=1))
        np.testing.assert_allclose(out["y"], feeds(3, seed=1)["x"] * 2 + 1, rtol=1e-6)
    finally:
        backend.close()
    with pytest.raises(BackendError, match="closed"):
        backend(feeds(1, seed=0))


def test_bad_input_gets_named_errors(
    tmp_path: Path, cudart: CudartTestDouble, trt: TensorRTTestDouble
) -> None:
    manifest = write_manifest(tmp_path, trt, plan())
    with load_backend(manifest, "tensorrt") as backend:
        good = feeds(2, seed=0)
        with pytest.raises(InputMismatch, match=r"batch 9 is outside the engine profile 1\.\.8"):
            backend(feeds(9, seed=0))
        with pytest.raises(InputMismatch, match="input x must be float32, got float64"):
            backend({"x": good["x"].astype(np.float64), "z": good["z"]})
        with pytest.raises(InputMismatch, match=r"input z must have shape \[-1, 2, 3\]"):
            backend({"x": good["x"], "z": good["z"][:, :, :2]})
        with pytest.raises(InputMismatch, match=r"missing \['z'\]"):
            backend({"x": good["x"]})
        with pytest.raises(InputMismatch, match="input z has batch 3, other inputs 2"):
            backend({"x": good["x"], "z": feeds(3, seed=0)["z"]})
        # The backend still works after refusing bad input.
        out = backend(good)
        np.testing.assert_allclose(out["w"], (good["x"] + good["z"]) * 3, rtol=1e-6)


def test_engine_that_does_not_fit_the_manifest_is_refused(
    tmp_path: Path, cudart: CudartTestDouble, trt: TensorRTTestDouble
) -> None:
    gpu = cudart._double_gpu
    with pytest.raises(BackendError, match=r"engine tensor x has shape \[-1, 3, 2\]"):
        TensorRTBackend(write_manifest(tmp_path, trt, plan(x_shape=(-1, 3, 2))))
    with pytest.raises(BackendError, match=r"batch 1\.\.16 is outside the engine profile 1\.\.8"):
        TensorRTBackend(write_manifest(tmp_path, trt, plan(), batches=(1, 4, 16)))
    with pytest.raises(
        ManifestMismatch, match=r"engine built with TensorRT 10\.2\.0\.19, this device has 10\.3\.0\.30"
    ):
        TensorRTBackend(write_manifest(tmp_path, trt, plan(), version="10.2.0.19"))
    with pytest.raises(
        ManifestMismatch,
        match=r"tensorrt\.gpu_name: engine built on 'NVIDIA H200', this device is 'Orin'",
    ):
        TensorRTBackend(write_manifest(tmp_path, trt, plan(), gpu=("NVIDIA H200", "9.0", 132)))
    with pytest.raises(BackendError, match="could not deserialise"):
        TensorRTBackend(write_manifest(tmp_path, trt, b"not a plan"))
    assert gpu.live() == {"host": 0, "device": 0, "streams": 0, "graphs": 0, "graph_execs": 0}


def test_an_engine_of_another_orin_module_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every Orin module reports "Orin", sm 8.7: an engine built on an AGX Orin (16 SMs) is refused on an
    Orin NX (8 SMs), and one whose manifest predates the SM count is refused on any Orin, asking for a
    rebuild, before anything is allocated."""
    orin_nx = CudartTestDouble(device_name="Orin", compute_capability=(8, 7), multiprocessor_count=8)
    install_doubles(monkeypatch, orin_nx)
    trt = sys.modules["tensorrt"]
    assert isinstance(trt, TensorRTTestDouble)
    with pytest.raises(
        ManifestMismatch,
        match=r"tensorrt\.multiprocessor_count: engine built on a GPU with 16 SMs, this device has 8: "
        r"rebuild the engines on this device",
    ):
        TensorRTBackend(write_manifest(tmp_path, trt, plan(), gpu=("Orin", "8.7", 16)))
    with pytest.raises(
        ManifestMismatch,
        match=r"tensorrt\.multiprocessor_count: engine built before zsad recorded the GPU's SM count, this "
        r"device has 8: .* rebuild the engines on this device",
    ):
        TensorRTBackend(write_manifest(tmp_path, trt, plan(), gpu=("Orin", "8.7", None)))
    with TensorRTBackend(write_manifest(tmp_path, trt, plan(), gpu=("Orin", "8.7", 8))) as backend:
        np.testing.assert_allclose(backend(feeds(2, seed=1))["y"], feeds(2, seed=1)["x"] * 2 + 1, rtol=1e-6)
    assert orin_nx._double_gpu.live() == {"host": 0, "device": 0, "streams": 0, "graphs": 0, "graph_execs": 0}


def two_gpu_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, device0: SimulatedDevice
) -> tuple[CudartTestDouble, Manifest]:
    """A host of two GPUs, ``device0`` and an RTX A2000 as device 1 (the TensorRT and cudart TEST DOUBLES
    installed), and the manifest of an engine built on device 1."""
    host = CudartTestDouble(devices=[device0, SimulatedDevice("NVIDIA RTX A2000", (8, 6), 26, False)])
    install_doubles(monkeypatch, host)
    trt = sys.modules["tensorrt"]
    assert isinstance(trt, TensorRTTestDouble)
    return host, write_manifest(tmp_path, trt, plan(), gpu=("NVIDIA RTX A2000", "8.6", 26))


@pytest.mark.parametrize("cuda_graph", [False, True])
def test_the_engine_runs_on_its_gpu_from_any_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cuda_graph: bool
) -> None:
    """On a two-GPU host with ``deepstream.gpu_id: 1``: the engine is checked against and loaded on device 1,
    and the scheduler's thread, which did not create the backend (its current device is 0, as for any
    thread of a CUDA process), runs it on device 1: a kernel launched into device 1's stream from device 0
    would fail."""
    host, manifest = two_gpu_host(tmp_path, monkeypatch, SimulatedDevice("NVIDIA H200", (9, 0), 132, False))
    with pytest.raises(ManifestMismatch, match=r"tensorrt\.gpu_name: .* this device is 'NVIDIA H200'"):
        load_backend(manifest, "tensorrt")  # device 0
    with load_backend(manifest, "tensorrt", device_id=1, cuda_graph=cuda_graph) as backend:
        assert isinstance(backend, TensorRTBackend)
        assert host._double_gpu.streams[int(backend._stream)].device == 1
        results: list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]] = []
        errors: list[BaseException] = []

        def scheduler() -> None:
            try:
                for i, n in enumerate((2, 2, 5)):  # a plain run, then (with graphs) a replay, a new batch
                    f = feeds(n, seed=40 + i)
                    results.append((f, backend(f)))
            except BackendError as exc:
                errors.append(exc)

        worker = threading.Thread(target=scheduler, name="zsad-scheduler")
        worker.start()
        worker.join()
        assert errors == []
        for f, out in results:
            for name, want in expected(f["x"], f["z"]).items():
                np.testing.assert_allclose(out[name], want, rtol=1e-6, atol=1e-6, err_msg=name)
        assert (worker.ident, 1) in set_device_calls(host)
    assert host._double_gpu.live() == {"host": 0, "device": 0, "streams": 0, "graphs": 0, "graph_execs": 0}


def test_a_run_opens_its_tensorrt_engines_on_deepstream_gpu_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``load_engines`` opens each engine with :func:`pipeline.inference.backend_options`: with
    ``deepstream.gpu_id: 1`` a TensorRT engine built on device 1 opens on device 1, the device the DeepStream
    elements use, not on device 0; ONNX Runtime keeps its own options."""
    host, manifest = two_gpu_host(
        tmp_path, monkeypatch, SimulatedDevice("NVIDIA RTX A4000", (8, 6), 48, False)
    )
    cfg = site_config(1, deepstream={"gpu_id": 1})
    assert cfg.engines.backend == "tensorrt"
    with load_backend(manifest, cfg.engines.backend, threads=0, **backend_options(cfg)) as backend:
        assert isinstance(backend, TensorRTBackend)
        assert host._double_gpu.streams[int(backend._stream)].device == 1
    with pytest.raises(ManifestMismatch, match=r"tensorrt\.gpu_name: .* this device is 'NVIDIA RTX A4000'"):
        load_backend(manifest, cfg.engines.backend, threads=0, **backend_options(site_config(1)))  # gpu_id 0
    cpu = site_config(1, engines={"dir": str(tmp_path), "backend": "onnxruntime", "spin": False})
    assert backend_options(cpu) == {"spin": False, "parallel": "batch"}


def test_a_failed_allocation_releases_what_was_allocated(tmp_path: Path, trt: TensorRTTestDouble) -> None:
    failing = CudartTestDouble(fail={"cudaMalloc": "cudaErrorMemoryAllocation"})
    sys.modules["cuda.bindings.runtime"] = failing  # the fixture's monkeypatch restores it
    sys.modules["cuda.bindings"].runtime = failing  # type: ignore[attr-defined]
    manifest = write_manifest(tmp_path, trt, plan())
    with pytest.raises(BackendError, match=r"CUDA cudaMalloc failed: cudaErrorMemoryAllocation \(2\)"):
        TensorRTBackend(manifest)
    assert failing._double_gpu.live() == {"host": 0, "device": 0, "streams": 0, "graphs": 0, "graph_execs": 0}


def test_the_doubles_catch_what_the_backend_must_get_right(
    tmp_path: Path, cudart: CudartTestDouble, trt: TensorRTTestDouble
) -> None:
    """The strictness the backend is tested against: work runs only at a synchronise, shapes outside the
    profile are refused, unset addresses fail the enqueue, and TensorRT 8's binding API is gone."""
    manifest = write_manifest(tmp_path, trt, plan())
    with load_backend(manifest, "tensorrt") as backend:
        assert isinstance(backend, TensorRTBackend)
        context, stream = backend._context, backend._stream
        f = feeds(2, seed=3)
        backend(f)  # sets shapes for batch 2
        for name in ("x", "z"):
            backend._buffers[name].host[:2] = f[name] + 100
        backend._enqueue(2)  # copies and kernel queued, not run
        np.testing.assert_allclose(backend._buffers["y"].host[:2], f["x"] * 2 + 1, rtol=1e-6)  # stale
        cudart.cudaStreamSynchronize(stream)
        np.testing.assert_allclose(backend._buffers["y"].host[:2], (f["x"] + 100) * 2 + 1, rtol=1e-6)
        assert context.set_input_shape("x", (9, 2, 3)) is False  # outside the profile
        assert context.set_input_shape("y", (2, 2, 3)) is False  # not an input
        with pytest.raises(AttributeError, match=r"tensorrt 10\.3"):
            context.set_binding_shape(0, (2, 2, 3))  # TensorRT 8 API, removed in 10
        with pytest.raises(AttributeError, match="no attribute 'execute_async_v2'"):
            context.execute_async_v2([], int(stream))
        with pytest.raises(TypeError, match="execute_async_v3"):
            context.execute_async_v3(int(stream), 0)
        with pytest.raises(TypeError, match="execute_async_v3"):
            context.execute_async_v3(stream=int(stream))  # the keyword is stream_handle
    fresh = backend_engine_context(trt)
    assert fresh.execute_async_v3(0) is False  # no shapes, no addresses
    address = backend._buffers["x"].device_ptr if backend._buffers else cudart._double_gpu.alloc_device(64)
    assert fresh.set_tensor_address("x", int(address) + 4) is False  # TensorRT wants 256-byte alignment
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan())
    with pytest.raises(TypeError, match="create_execution_context"):
        engine.create_execution_context(None)  # the binding's default is STATIC; None is not accepted


def test_an_engine_without_an_execution_context_is_refused_by_name(
    tmp_path: Path, trt: TensorRTTestDouble, cudart: CudartTestDouble, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TensorRT returns None when it cannot make a context (an 8 GB Orin holding several engines): a
    BackendError that says so, not an AttributeError later."""
    from tests.fixtures.tensorrt_test_double import ICudaEngine

    monkeypatch.setattr(ICudaEngine, "_double_context_fails", True)
    manifest = write_manifest(tmp_path, trt, plan())
    with pytest.raises(BackendError, match=r"could not create an execution context .*out of GPU memory"):
        TensorRTBackend(manifest)


def test_a_cuda_graph_capture_leaves_other_threads_free_to_allocate(
    tmp_path: Path, trt: TensorRTTestDouble, cudart: CudartTestDouble
) -> None:
    """The capture is thread-local: while one engine's stream is captured, another thread (DeepStream's,
    another engine's) may still call cudaMalloc; the capturing thread may not."""
    import threading

    stream = cudart.cudaStreamCreate()[1]
    mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
    assert cudart.cudaStreamBeginCapture(stream, mode)[0] == 0
    other: list[Any] = []
    worker = threading.Thread(target=lambda: other.append(cudart.cudaMalloc(64)[0]))
    worker.start()
    worker.join()
    assert other == [cudart.cudaError_t.cudaSuccess]
    assert cudart.cudaMalloc(64)[0] == cudart.cudaError_t.cudaErrorStreamCaptureUnsupported  # this thread
    cudart.cudaStreamEndCapture(stream)
    # A global-mode capture refuses every thread: what the backend's captures used to be.
    assert (
        cudart.cudaStreamBeginCapture(stream, cudart.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal)[0]
        == 0
    )
    worker = threading.Thread(target=lambda: other.append(cudart.cudaMalloc(64)[0]))
    worker.start()
    worker.join()
    assert other[-1] == cudart.cudaError_t.cudaErrorStreamCaptureUnsupported
    cudart.cudaStreamEndCapture(stream)
    manifest = write_manifest(tmp_path, trt, plan())
    with load_backend(manifest, "tensorrt", cuda_graph=True) as backend:
        assert isinstance(backend, TensorRTBackend)
        f = feeds(2, seed=5)
        np.testing.assert_allclose(backend(f)["y"], f["x"] * 2 + 1, rtol=1e-6)
        assert backend._graph_exec is not None


def test_other_threads_legacy_stream_work_leaves_the_capture_intact(
    tmp_path: Path, trt: TensorRTTestDouble, cudart: CudartTestDouble, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The backend's stream is non-blocking: another thread's work on the legacy default stream while a
    batch is being captured (DeepStream's, a library's) neither fails nor spoils the capture."""
    import threading

    from tests.fixtures.tensorrt_test_double import IExecutionContext

    _, host = cudart.cudaMallocHost(64)
    _, dev = cudart.cudaMalloc(64)
    legacy: list[Any] = []
    real_enqueue = IExecutionContext.execute_async_v3

    def enqueue_beside_legacy_work(self: Any, stream_handle: int) -> bool:
        capturing = cudart._double_gpu.streams[int(stream_handle)].capture is not None
        if capturing:
            d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
            worker = threading.Thread(
                target=lambda: legacy.append(cudart.cudaMemcpyAsync(host, dev, 64, d2h, 0))
            )
            worker.start()
            worker.join()
        return bool(real_enqueue(self, stream_handle))

    monkeypatch.setattr(IExecutionContext, "execute_async_v3", enqueue_beside_legacy_work)
    manifest = write_manifest(tmp_path, trt, plan())
    with load_backend(manifest, "tensorrt", cuda_graph=True) as backend:
        assert isinstance(backend, TensorRTBackend)
        for i, n in enumerate((2, 2, 5)):
            f = feeds(n, seed=20 + i)
            np.testing.assert_allclose(backend(f)["y"], f["x"] * 2 + 1, rtol=1e-6)
        assert backend._graph_exec is not None  # captured at batch 5, as at batch 2 before
    assert legacy == [(cudart.cudaError_t.cudaSuccess,)] * 2  # one beside each capture
    cudart.cudaStreamSynchronize(0)
    cudart.cudaFree(dev)
    cudart.cudaFreeHost(host)
    assert cudart._double_gpu.live() == {"host": 0, "device": 0, "streams": 0, "graphs": 0, "graph_execs": 0}


def test_a_failed_capture_returns_the_batch_and_turns_graphs_off_once(
    tmp_path: Path,
    cudart: CudartTestDouble,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A CUDA graph that cannot be made costs nothing but the graph: the batch's outputs (computed before the
    capture) come back, one warning says graphs are off, and later batch changes run plainly without trying
    again."""
    failing = CudartTestDouble(fail={"cudaGraphInstantiate": "cudaErrorInvalidValue"})
    failing_trt = TensorRTTestDouble(failing)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", failing)
    monkeypatch.setattr(sys.modules["cuda.bindings"], "runtime", failing)
    monkeypatch.setitem(sys.modules, "tensorrt", failing_trt)
    gpu = failing._double_gpu
    manifest = write_manifest(tmp_path, failing_trt, plan())
    with (
        caplog.at_level(logging.WARNING, logger="engines.backends.tensorrt"),
        load_backend(manifest, "tensorrt", cuda_graph=True) as backend,
    ):
        assert isinstance(backend, TensorRTBackend)
        for i, n in enumerate((3, 3, 6, 1, 6)):
            f = feeds(n, seed=30 + i)
            out = backend(f)
            for name, want in expected(f["x"], f["z"]).items():
                np.testing.assert_allclose(out[name], want, rtol=1e-6, atol=1e-6, err_msg=name)
            assert (gpu.graphs, gpu.execs) == ({}, {})  # the failed capture's graph was destroyed
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "dpc_head: CUDA graph capture at batch 3 failed" in warnings[0]
    assert "cudaErrorInvalidValue" in warnings[0]
    assert "without CUDA graphs" in warnings[0]
    assert gpu.live() == {"host": 0, "device": 0, "streams": 0, "graphs": 0, "graph_execs": 0}


def backend_engine_context(trt: TensorRTTestDouble) -> Any:
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(plan())
    return engine.create_execution_context()
