"""Backends (ONNX Runtime vs the PyTorch reference, input validation, lifecycle, missing runtimes) and the
TensorRT build logic, the latter driven through the strict TensorRT 10.3 test double
(tests/fixtures/tensorrt_test_double.py). The TensorRT backend's run path is in test_tensorrt_backend.py."""

from __future__ import annotations

import importlib.util
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from engines.backends import BACKENDS, Backend, BackendError, BackendUnavailable, InputMismatch, load_backend
from engines.backends import backend_class as get_backend_class
from engines.backends.tensorrt import CudaRuntime, import_cudart
from engines.build import BuildOptions, build_engines
from engines.export import max_rel_error, random_feeds
from engines.manifest import Manifest, ManifestMismatch, component_io, load_manifest
from engines.model import ZsadModel, save_checkpoint
from engines.tensorrt_build import (
    BatchProfile,
    GpuIdentity,
    LayerInfo,
    ProfileError,
    TensorRTBuildError,
    build_engine,
    engine_filename,
    gpu_slug,
    plan_precision,
    profile_shapes,
    short_version,
    timing_cache_filename,
)
from plugins.scorer import ClipScorer, ClipTokens
from tests.fixtures.cudart_test_double import CudartTestDouble
from tests.fixtures.tensorrt_test_double import (
    IBuilderConfig,
    INetworkDefinition,
    IOptimizationProfile,
    TensorRTTestDouble,
    created,
    parsed,
)
from tests.fixtures.tiny_models import tiny_model

TINY = tiny_model()


@pytest.fixture(scope="module")
def engines_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny checkpoint's backbone and DPC head, exported to ONNX by the real build."""
    root = tmp_path_factory.mktemp("engines")
    torch.manual_seed(0)
    ckpt = save_checkpoint(ZsadModel(TINY).eval(), root / "tiny.safetensors")
    out = root / "out"
    build_engines(TINY, ckpt, out, options=BuildOptions(components=("backbone", "dpc_head")))
    return out


# -- the interface -------------------------------------------------------------------------------------------


def test_every_backend_subclasses_the_base() -> None:
    assert set(BACKENDS) == {"onnxruntime", "torch", "tensorrt"}
    for name in BACKENDS:
        cls = get_backend_class(name)
        assert isinstance(cls, type)
        assert issubclass(cls, Backend)
        assert cls.name == name


def test_unknown_backend_is_refused(engines_dir: Path) -> None:
    with pytest.raises(BackendError, match="unknown backend 'openvino'"):
        load_backend(engines_dir / "backbone.manifest.json", "openvino")


class EchoBackend(Backend):
    """A minimal concrete backend to exercise the base class's template method."""

    name = "echo"

    def __init__(self, manifest: Manifest, drop: str | None = None) -> None:
        super().__init__(manifest)
        self.drop = drop
        self.calls = 0

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls += 1
        n = next(iter(feeds.values())).shape[0]
        out = {s.name: np.zeros(s.with_batch(n), np.float32) for s in self.manifest.outputs}
        if self.drop:
            out.pop(self.drop)
        return out


def test_base_class_lifecycle_and_output_check(engines_dir: Path) -> None:
    manifest = load_manifest(engines_dir / "backbone.manifest.json")
    with EchoBackend(manifest) as echo:
        feeds = random_feeds(manifest.inputs, 2, np.random.default_rng(0))
        out = echo(feeds)
        assert list(out) == ["tokens", "embedding"]
        assert out["tokens"].shape == (2, 2, 32, 4, 6)
    with pytest.raises(BackendError, match="echo backend is closed"):
        echo.infer(feeds)
    with pytest.raises(BackendError, match=r"echo returned no \['embedding'\]"):
        EchoBackend(manifest, drop="embedding").infer(feeds)


# -- ONNX Runtime vs the PyTorch reference -----------------------------------------------------------------


@pytest.mark.parametrize("component", ["backbone", "dpc_head"])
def test_onnxruntime_matches_torch(engines_dir: Path, component: str) -> None:
    path = engines_dir / f"{component}.manifest.json"
    with load_backend(path, "onnxruntime", threads=1) as ort, load_backend(path, "torch") as ref:
        assert ort.input_names == ref.input_names
        for n in (1, 4):
            feeds = random_feeds(ort.manifest.inputs, n, np.random.default_rng(n))
            a, b = ref(feeds), ort(feeds)
            for name in ort.output_names:
                assert a[name].shape == b[name].shape
                assert a[name].shape[0] == n
                assert max_rel_error(a[name], b[name]) < 1e-4, name


@pytest.mark.parametrize("component", ["backbone", "dpc_head"])
def test_warm_up_runs_the_engine_at_the_given_batch(engines_dir: Path, component: str) -> None:
    manifest = load_manifest(engines_dir / f"{component}.manifest.json")
    seen: list[dict[str, tuple[int, ...]]] = []

    class Recording(EchoBackend):
        def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
            seen.append({k: v.shape for k, v in feeds.items()})
            return super()._infer(feeds)

    with Recording(manifest) as rec:
        assert rec.warm_up(5) >= 0.0
        with pytest.raises(ValueError, match="batch must be >= 1"):
            rec.warm_up(0)
    assert seen == [{s.name: s.with_batch(5) for s in manifest.inputs}]
    with load_backend(engines_dir / f"{component}.manifest.json", "onnxruntime", threads=1) as ort:
        assert ort.warm_up(3) > 0.0
        feeds = random_feeds(ort.manifest.inputs, 3, np.random.default_rng(0))
        assert all(v.shape[0] == 3 for v in ort(feeds).values())


def test_extrapolating_dpc_head_exports_with_prev_frame(tmp_path: Path) -> None:
    spec = tiny_model(dpc={"decoder": "extrapolate"})
    torch.manual_seed(0)
    model = ZsadModel(spec).eval()
    torch.nn.init.normal_(model.dpc.decoder[-1].weight, std=0.05)  # a trained-looking residual
    ckpt = save_checkpoint(model, tmp_path / "x.safetensors")
    build_engines(spec, ckpt, tmp_path / "out", options=BuildOptions(components=("dpc_head",)))
    path = tmp_path / "out" / "dpc_head.manifest.json"
    with load_backend(path, "onnxruntime", threads=1) as ort, load_backend(path, "torch") as ref:
        assert ort.input_names == [
            "history_proj",
            "last_tokens",
            "current",
            "last_frame",
            "current_frame",
            "prev_frame",
        ]
        feeds = random_feeds(ort.manifest.inputs, 3, np.random.default_rng(3))
        a, b = ref(feeds), ort(feeds)
        for name in ort.output_names:
            assert max_rel_error(a[name], b[name]) < 1e-4, name
        # The prev_frame input is live in the graph: changing it changes the pixel error.
        moved = ort({**feeds, "prev_frame": feeds["prev_frame"] + 1.0})
        assert not np.allclose(moved["pixel_error"], b["pixel_error"])
        assert np.allclose(moved["motion"], b["motion"])


def test_wrong_inputs_are_refused_with_the_reason(engines_dir: Path) -> None:
    with load_backend(engines_dir / "dpc_head.manifest.json", "onnxruntime") as ort:
        good = random_feeds(ort.manifest.inputs, 2, np.random.default_rng(0))
        with pytest.raises(InputMismatch, match=r"missing \['current_frame'\], unknown \['frame'\]"):
            ort({**{k: v for k, v in good.items() if k != "current_frame"}, "frame": good["current_frame"]})
        with pytest.raises(
            InputMismatch, match=r"input history_proj must have shape \[-1, 2, 48, 4, 6\] \(NSCHW\)"
        ):
            ort({**good, "history_proj": good["history_proj"][:, :1]})
        with pytest.raises(InputMismatch, match="input last_frame must be float32, got float64"):
            ort({**good, "last_frame": good["last_frame"].astype(np.float64)})
        with pytest.raises(InputMismatch, match="input current has batch 1, other inputs 2"):
            ort({**good, "current": good["current"][:1]})
        with pytest.raises(InputMismatch, match="empty batch"):
            ort({k: v[:0] for k, v in good.items()})
        assert set(ort(good)) == {"feature_error", "pixel_error", "motion", "current_proj"}


def test_changed_onnx_is_refused_on_load(engines_dir: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(engines_dir, copy)
    onnx = copy / "backbone.onnx"
    onnx.write_bytes(onnx.read_bytes()[: onnx.stat().st_size // 2])
    with pytest.raises(
        ManifestMismatch, match=r"onnx\.sha256: file .*backbone\.onnx changed since the build"
    ):
        load_backend(copy / "backbone.manifest.json", "onnxruntime")


def test_the_torch_backend_refuses_other_weights_whatever_their_sidecar_says(tmp_path: Path) -> None:
    """Engines copied to a machine with other weights of the checkpoint's name beside them, whose sidecar
    records no sha256: the torch reference must compare the file itself with the build's weights."""
    import json
    import shutil

    from engines.manifest import load_manifest

    root = tmp_path / "root"
    torch.manual_seed(0)
    ckpt = save_checkpoint(ZsadModel(TINY).eval(), root / "tiny.safetensors")
    built = root / "out"
    build_engines(TINY, ckpt, built, options=BuildOptions(components=("backbone",)))
    copy = tmp_path / "device" / "engines"
    shutil.copytree(built, copy)
    torch.manual_seed(1)
    other = save_checkpoint(ZsadModel(TINY).eval(), copy / "tiny.safetensors")  # the same name, beside
    sidecar = other.with_suffix(".safetensors.json")
    meta = json.loads(sidecar.read_text())
    meta.pop("sha256")
    sidecar.write_text(json.dumps(meta))
    ckpt.rename(root / "moved.safetensors")  # the recorded path is not on this machine
    manifest = load_manifest(copy / "backbone.manifest.json")
    with pytest.raises(ManifestMismatch, match=r"weights_sha256: checkpoint .*tiny\.safetensors has sha256"):
        load_backend(manifest, "torch")


def test_backends_are_scoring_runners(engines_dir: Path) -> None:
    """The DPC backend drives ClipScorer directly; the backbone backend makes its clip tokens."""
    rng = np.random.default_rng(0)
    with (
        load_backend(engines_dir / "backbone.manifest.json", "onnxruntime") as backbone,
        load_backend(engines_dir / "dpc_head.manifest.json", "onnxruntime") as dpc,
    ):
        scorer = ClipScorer(dpc, context_clips=2)
        results = []
        for i in range(3):
            clip = rng.standard_normal((1, 2, 3, 32, 48)).astype(np.float32)
            out = backbone({"clip": clip})
            tokens = ClipTokens("cam", i, out["tokens"][0], out["embedding"][0], clip[0, 0], clip[0, -1])
            results.extend(scorer.score([tokens]))
    assert results[:2] == [None, None]
    scores = results[2]
    assert scores is not None
    assert set(scores.scores) == {"predictive", "pixel", "motion"}
    assert all(np.isfinite(v) for v in scores.scores.values())


# -- missing runtimes ---------------------------------------------------------------------------------------


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_tensorrt_backend_without_tensorrt_is_unavailable(engines_dir: Path) -> None:
    import engines.backends.tensorrt as module  # the module itself imports without TensorRT

    assert module.TensorRTBackend.name == "tensorrt"
    with pytest.raises(BackendUnavailable) as info:
        load_backend(engines_dir / "backbone.manifest.json", "tensorrt")
    message = str(info.value)
    assert message.startswith("tensorrt:")
    assert "JetPack 6.1" in message
    assert "tensorrt-cu12==10.3" in message


@pytest.mark.skipif(importlib.util.find_spec("cuda") is not None, reason="cuda-python is installed here")
def test_cuda_python_missing_is_unavailable() -> None:
    with pytest.raises(BackendUnavailable, match="cuda-python"):
        import_cudart()


def test_cuda_runtime_wrapper_checks_every_call() -> None:
    """CudaRuntime against the strict cuda-python 12.6 double: values unpacked from ``(err, value)``, errors
    and loader failures become BackendError, unknown names and wrong argument counts are refused."""
    cuda = CudaRuntime(CudartTestDouble())
    ptr = cuda.call("cudaMalloc", 64)
    assert isinstance(ptr, int)
    assert ptr != 0
    stream = cuda.call("cudaStreamCreate")
    assert cuda.call("cudaStreamSynchronize", stream) is None  # (err,) alone gives None
    with pytest.raises(BackendError, match=r"CUDA cudaMalloc failed: cudaErrorMemoryAllocation \(2\)"):
        CudaRuntime(CudartTestDouble(fail={"cudaMalloc": "cudaErrorMemoryAllocation"})).call("cudaMalloc", 64)
    with pytest.raises(BackendError, match=r"Failed to dlopen libcuda\.so\.1"):
        CudaRuntime(CudartTestDouble(missing_library="libcuda.so.1")).call("cudaMalloc", 64)
    with pytest.raises(AttributeError, match=r"cuda-python 12\.6"):
        cuda.call("cudaMallocPitchy", 64)
    with pytest.raises(TypeError, match="incompatible function arguments"):
        cuda.call("cudaMalloc", 64, 0)
    with pytest.raises(AttributeError, match="has no attribute 'value'"):
        cuda.call("cudaMemcpyAsync", ptr, ptr, 8, 1, stream)  # 12.6 reads kind.value: an int has none


# -- TensorRT build logic (pure) ----------------------------------------------------------------------------


def test_precision_plan_pins_norms_softmax_and_reductions() -> None:
    layers = [
        LayerInfo("/encoder/layer.0/layernorm_before/LayerNormalization", "NORMALIZATION"),
        LayerInfo("/encoder/layer.0/attention/MatMul", "MATRIX_MULTIPLY"),
        LayerInfo("/encoder/layer.0/attention/Softmax", "SOFTMAX"),
        LayerInfo("node_mean", "REDUCE"),
        LayerInfo("node_shape_reduce", "REDUCE", float_output=False),
        LayerInfo("/blocks.0/norm1/LayerNorm_pow", "ELEMENTWISE"),
        LayerInfo("node_add", "ELEMENTWISE"),
        LayerInfo("/dpc/encode/InstanceNormalization", "NORMALIZATION"),
    ]
    assert plan_precision(layers) == [
        "/encoder/layer.0/layernorm_before/LayerNormalization",
        "/encoder/layer.0/attention/Softmax",
        "node_mean",
        "/blocks.0/norm1/LayerNorm_pow",
        "/dpc/encode/InstanceNormalization",
    ]
    assert plan_precision([]) == []


def test_profile_shapes_vary_only_the_batch() -> None:
    inputs, _ = component_io("dpc_head", TINY)
    shapes = profile_shapes(inputs, BatchProfile(1, 8, 32))
    assert list(shapes) == ["history_proj", "last_tokens", "current", "last_frame", "current_frame"]
    assert shapes["history_proj"] == ((1, 2, 48, 4, 6), (8, 2, 48, 4, 6), (32, 2, 48, 4, 6))
    assert shapes["last_frame"][2] == (32, 3, 32, 48)
    for bad in [(0, 1, 1), (2, 1, 4), (1, 8, 4)]:
        with pytest.raises(ProfileError, match="1 <= min <= opt <= max"):
            BatchProfile(*bad)


def test_engine_names_carry_component_precision_gpu_and_version() -> None:
    agx = GpuIdentity("Orin", "8.7", 16)
    assert (
        engine_filename("backbone", "fp16", agx, "10.3.0.30")
        == "backbone.fp16.sm87-orin-16sm.trt10.3.0.engine"
    )
    assert gpu_slug(GpuIdentity("NVIDIA H200", "9.0", 132)) == "sm90-h200-132sm"
    assert gpu_slug(GpuIdentity("NVIDIA GeForce RTX 4090", "8.9", 128)) == "sm89-geforce-rtx-4090-128sm"
    assert short_version("10.3.0.30") == "10.3.0"
    assert timing_cache_filename(agx, "10.3.0.30") == "timing.sm87-orin-16sm.trt10.3.0.cache"


def test_orin_modules_get_their_own_engine_and_timing_cache_names() -> None:
    """Every Jetson Orin module reports "Orin", sm 8.7: its SM count is what keeps an AGX Orin's engines and
    timing cache from being taken for an Orin NX's (or a 32GB AGX's) in a shared or copied engine folder."""
    modules = {
        "AGX Orin 64GB": GpuIdentity("Orin", "8.7", 16),
        "AGX Orin 32GB": GpuIdentity("Orin", "8.7", 14),
        "Orin NX 16GB": GpuIdentity("Orin", "8.7", 8),
        "Orin Nano 4GB": GpuIdentity("Orin", "8.7", 4),
    }
    engines = {engine_filename("backbone", "fp16", gpu, "10.3.0.30") for gpu in modules.values()}
    caches = {timing_cache_filename(gpu, "10.3.0.30") for gpu in modules.values()}
    assert len(engines) == len(caches) == len(modules)
    assert str(modules["Orin NX 16GB"]) == "Orin (sm 8.7, 8 SMs)"


# -- TensorRT build flow through the strict TensorRT 10.3 double --------------------------------------------


LAYERS = [
    ("/layer.0/layernorm_before/LayerNormalization", "NORMALIZATION", "FLOAT"),
    ("/layer.0/attention/MatMul", "MATRIX_MULTIPLY", "FLOAT"),
    ("/layer.0/attention/Softmax", "SOFTMAX", "FLOAT"),
    ("node_Shape_0_reduce", "REDUCE", "INT32"),
    ("node_mean", "REDUCE", "FLOAT"),
]


def _flags(trt: TensorRTTestDouble, config: Any) -> set[str]:
    return {name for name, flag in trt.BuilderFlag.__members__.items() if config.get_flag(flag)}


def test_build_engine_pins_fp32_layers_and_sets_the_profile(tmp_path: Path) -> None:
    trt = TensorRTTestDouble(layers=LAYERS)
    inputs, _ = component_io("backbone", TINY)
    onnx = tmp_path / "backbone.onnx"
    onnx.write_bytes(b"onnx")
    cache = tmp_path / "timing.cache"
    built = build_engine(
        onnx,
        tmp_path / "backbone.fp16.engine",
        inputs=inputs,
        profile=BatchProfile(1, 4, 16),
        workspace_mb=512,
        timing_cache=cache,
        trt=trt,
    )
    assert parsed(trt) == [str(onnx)]
    assert built.fp32_layers == [
        "/layer.0/layernorm_before/LayerNormalization",
        "/layer.0/attention/Softmax",
        "node_mean",
    ]
    (network,) = created(trt, INetworkDefinition)
    layers = {network.get_layer(i).name: network.get_layer(i) for i in range(network.num_layers)}
    assert layers["node_mean"].precision == trt.float32
    assert layers["node_mean"].get_output_type(0) == trt.float32
    assert layers["node_mean"].output_type_is_set(0)
    assert not layers["/layer.0/attention/MatMul"].precision_is_set
    assert not layers["/layer.0/attention/MatMul"].output_type_is_set(0)
    assert not layers["node_Shape_0_reduce"].precision_is_set  # integer shape math keeps its type
    (config,) = created(trt, IBuilderConfig)
    assert _flags(trt, config) == {"FP16", "OBEY_PRECISION_CONSTRAINTS"}
    assert config.get_memory_pool_limit(trt.MemoryPoolType.WORKSPACE) == 512 << 20
    (profile,) = created(trt, IOptimizationProfile)
    assert [tuple(d) for d in profile.get_shape("clip")] == [
        (1, 2, 3, 32, 48),
        (4, 2, 3, 32, 48),
        (16, 2, 3, 32, 48),
    ]
    assert (tmp_path / "backbone.fp16.engine").read_bytes() == b"PLAN"
    assert built.size == 4
    assert cache.read_bytes() == b"+"  # the double's cache grows a byte a build, from the empty start
    # A second build starts from the saved timing cache.
    build_engine(
        onnx,
        tmp_path / "again.engine",
        inputs=inputs,
        profile=BatchProfile(),
        timing_cache=cache,
        trt=TensorRTTestDouble(layers=LAYERS),
    )
    assert cache.read_bytes() == b"++"


def test_build_engine_fp32_pins_nothing(tmp_path: Path) -> None:
    trt = TensorRTTestDouble(layers=LAYERS)
    inputs, _ = component_io("semantic_head", TINY)
    built = build_engine(
        tmp_path / "m.onnx", tmp_path / "m.engine", inputs=inputs, profile=BatchProfile(), fp16=False, trt=trt
    )
    assert built.fp32_layers == []
    (config,) = created(trt, IBuilderConfig)
    assert _flags(trt, config) == set()


def test_build_engine_failures_are_named(tmp_path: Path) -> None:
    inputs, _ = component_io("backbone", TINY)
    kw: dict[str, Any] = {"inputs": inputs, "profile": BatchProfile()}
    bad_onnx = TensorRTTestDouble(layers=LAYERS, parse_error="In node 7 (Einsum): UNSUPPORTED_NODE")
    with pytest.raises(TensorRTBuildError, match=r"ONNX parser rejected m\.onnx: .*Einsum"):
        build_engine(tmp_path / "m.onnx", tmp_path / "m.engine", trt=bad_onnx, **kw)
    with pytest.raises(TensorRTBuildError, match=r"could not build m\.engine"):
        build_engine(
            tmp_path / "m.onnx", tmp_path / "m.engine", trt=TensorRTTestDouble(layers=LAYERS, plan=None), **kw
        )
    with pytest.raises(TensorRTBuildError, match="empty plan"):
        build_engine(
            tmp_path / "m.onnx", tmp_path / "m.engine", trt=TensorRTTestDouble(layers=LAYERS, plan=b""), **kw
        )
    no_gpu = TensorRTTestDouble(
        layers=LAYERS, builder_error=TypeError("pybind11::init(): factory function returned nullptr")
    )
    with pytest.raises(TensorRTBuildError, match="builder could not start"):
        build_engine(tmp_path / "m.onnx", tmp_path / "m.engine", trt=no_gpu, **kw)
    assert not (tmp_path / "m.engine").exists()


@pytest.mark.parametrize(("threads", "batch"), [(2, 8), (2, 5), (4, 3), (3, 1)])
def test_onnxruntime_batch_parts_give_the_operator_split_outputs_bit_for_bit(
    engines_dir: Path, threads: int, batch: int
) -> None:
    rng = np.random.default_rng(batch)
    for component in ("backbone", "dpc_head"):
        path = engines_dir / f"{component}.manifest.json"
        with (
            load_backend(path, "onnxruntime", threads=threads, parallel="operator") as whole,
            load_backend(path, "onnxruntime", threads=threads, parallel="batch") as parts,
        ):
            assert (whole.parts, parts.parts) == (1, threads)
            assert parts._session.get_session_options().intra_op_num_threads == 1
            feeds = random_feeds(whole.manifest.inputs, batch, rng)
            expected, got = whole(feeds), parts(feeds)
            for name in whole.output_names:
                assert got[name].shape == expected[name].shape
                np.testing.assert_array_equal(got[name], expected[name])


def test_onnxruntime_batch_parts_run_at_once_on_their_own_threads(engines_dir: Path) -> None:
    path = engines_dir / "dpc_head.manifest.json"
    with load_backend(path, "onnxruntime", threads=3, parallel="batch") as ort:
        run = ort._run
        seen: list[tuple[str, int]] = []
        # Each part of the first run waits for the others: they can only pass if they run together.
        together = [threading.Barrier(3, timeout=30)]

        def record(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
            seen.append((threading.current_thread().name, len(next(iter(feeds.values())))))
            if together:
                together[0].wait()
            return run(feeds)

        ort._run = record  # type: ignore[method-assign]
        out = ort(random_feeds(ort.manifest.inputs, 7, np.random.default_rng(1)))
        together.clear()
        assert all(v.shape[0] == 7 for v in out.values())
        names = sorted(name for name, _ in seen)
        assert sorted(size for _, size in seen) == [2, 2, 3]
        assert threading.current_thread().name in names
        assert len(set(names)) == 3
        assert sum(n.startswith("zsad-ort-dpc_head") for n in names) == 2
        seen.clear()
        ort(random_feeds(ort.manifest.inputs, 1, np.random.default_rng(2)))
        assert seen == [(threading.current_thread().name, 1)]  # a batch of one: the caller alone


def test_onnxruntime_a_failing_batch_part_fails_the_run_after_every_part_ended(engines_dir: Path) -> None:
    path = engines_dir / "dpc_head.manifest.json"
    with load_backend(path, "onnxruntime", threads=2, parallel="batch") as ort:
        run = ort._run
        ended: list[str] = []

        def failing(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
            if threading.current_thread().name.startswith("zsad-ort-"):
                ended.append("worker")
                raise RuntimeError("part failed")
            out = run(feeds)
            ended.append("caller")
            return out

        ort._run = failing  # type: ignore[method-assign]
        with pytest.raises(RuntimeError, match="part failed"):
            ort(random_feeds(ort.manifest.inputs, 4, np.random.default_rng(3)))
        assert sorted(ended) == ["caller", "worker"]


def test_onnxruntime_threads_0_cuts_a_batch_into_one_part_per_usable_cpu(
    engines_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A process pinned to 3 of the host's CPUs (a container's cpuset): 3 parts, whatever the host has.
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 5, 9})
    with load_backend(engines_dir / "dpc_head.manifest.json", "onnxruntime", parallel="batch") as ort:
        assert ort.parts == 3


def test_onnxruntime_close_stops_the_batch_part_threads(engines_dir: Path) -> None:
    path = engines_dir / "backbone.manifest.json"
    ort = load_backend(path, "onnxruntime", threads=2, parallel="batch")
    ort(random_feeds(ort.manifest.inputs, 2, np.random.default_rng(4)))
    workers = list(ort._pool._threads)  # this backend's own part threads
    assert len(workers) == 1
    assert all(t.is_alive() and t.name.startswith("zsad-ort-backbone") for t in workers)
    ort.close()
    assert not any(t.is_alive() for t in workers)
    with pytest.raises(ValueError, match="parallel must be one of operator, batch, got 'rows'"):
        load_backend(path, "onnxruntime", threads=2, parallel="rows")


@pytest.mark.parametrize("spin", [True, False])
def test_onnxruntime_worker_threads_spin_only_when_asked(engines_dir: Path, spin: bool) -> None:
    path = engines_dir / "dpc_head.manifest.json"
    with load_backend(path, "onnxruntime", threads=2, spin=spin) as ort:
        options = ort._session.get_session_options()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == ("1" if spin else "0")
        feeds = random_feeds(ort.manifest.inputs, 2, np.random.default_rng(0))
        out = ort(feeds)
        assert all(value.shape[0] == 2 for value in out.values())
