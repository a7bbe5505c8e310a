"""The strict TEST DOUBLES of pyds 1.2.0, TensorRT 10.3 and cuda-python 12.6 are as strict as the real
bindings: their names, argument names and enum values come from the extracted API files under
tests/fixtures/api_names/ (each with the upstream repository, ref and commit it was read from), a name the
library lacks raises ``AttributeError``, and every public name and signature of every double is one the
library binds (conformance). Also: which ``pyds.<name>`` our DeepStream code uses, against pyds 1.2.0."""

from __future__ import annotations

import ast
import inspect
import re
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.fixtures import cudart_parity
from tests.fixtures import cudart_test_double as cudart_module
from tests.fixtures import pyds_test_double as pyds_module
from tests.fixtures import tensorrt_test_double as trt_module
from tests.fixtures.api_doubles import (
    ApiClass,
    NotEmulated,
    StrictObjectTestDouble,
    VoidPtrTestDouble,
    conformance_problems,
    load_api,
)
from tests.fixtures.cudart_test_double import CudartTestDouble, SimulatedDevice, set_device_calls
from tests.fixtures.pyds_test_double import (
    PYDS,
    FrameSpec,
    PydsApiMissing,
    PydsTestDouble,
    build_batch,
    layer,
    rgba,
    tensor_user_meta,
)
from tests.fixtures.tensorrt_test_double import TRT, TensorRTTestDouble

REPO = Path(__file__).resolve().parents[2]
DEEPSTREAM = REPO / "pipeline" / "deepstream"


# -- the extracted API files --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("file_name", "repository"),
    [
        ("pyds_1_2_0_names.json", "https://github.com/NVIDIA-AI-IOT/deepstream_python_apps"),
        ("tensorrt_10_3_api.json", "https://github.com/NVIDIA/TensorRT"),
        ("cudart_12_6_signatures.json", "https://github.com/NVIDIA/cuda-python"),
    ],
)
def test_each_api_file_names_its_source(file_name: str, repository: str) -> None:
    source = load_api(file_name)["source"]
    assert source["repository"] == repository
    assert re.fullmatch(r"[0-9a-f]{40}", source["commit"])
    assert source["files"]
    assert source["extracted_by"] == "tests/fixtures/api_names/extract.py"


def test_the_api_files_hold_what_the_issue_relies_on() -> None:
    assert PYDS["pyds_version"] == "1.2.0"
    assert load_api("pyds_1_2_0_names.json")["source"]["ref"] == "v1.2.0"
    meta_types = PYDS["enums"]["NvDsMetaType"]["values"]
    assert "NVDSINFER_TENSOR_OUTPUT_META" in meta_types
    assert "NVDS_PREPROCESS_BATCH_META" not in meta_types  # no nvdspreprocess meta in pyds 1.2.0
    assert not [c for c in PYDS["classes"] if "PreProcess" in c or "Roi" in c]
    assert PYDS["module"]["functions"]["get_nvds_buf_surface"]["overloads"] == [
        {"args": ["gst_buffer", "batchID"]}
    ]
    assert TRT["tensorrt_version"].startswith("10.3.")
    assert TRT["classes"]["IExecutionContext"]["members"]["execute_async_v3"]["overloads"] == [
        {"args": ["stream_handle"]}
    ]
    cudart = load_api("cudart_12_6_signatures.json")
    assert cudart["source"]["cross_check"]["same_signatures"] is True
    assert cudart["missing_functions"] == []  # every function the backend calls exists in 12.6
    assert [p["name"] for p in cudart["functions"]["cudaMemcpyAsync"]["params"]] == [
        "dst",
        "src",
        "count",
        "kind",
        "stream",
    ]


# -- pyds 1.2.0 ---------------------------------------------------------------------------------------------


def test_pyds_double_has_exactly_the_names_pyds_1_2_0_binds() -> None:
    pyds = PydsTestDouble()
    module = PYDS["module"]
    expected = {*PYDS["classes"], *PYDS["enums"], *module["functions"], *module["exported_enum_values"]}
    expected |= set(module["attributes"])
    assert set(dir(pyds)) == expected
    for name in expected:
        assert hasattr(pyds, name), name
    assert pyds.__version__ == "1.2.0"


@pytest.mark.parametrize(
    "name",
    ["NVDS_PREPROCESS_BATCH_META", "GstNvDsPreProcessBatchMeta", "NvDsRoiMeta", "NvDsPreProcessTensorMeta"],
)
def test_a_name_pyds_1_2_0_lacks_fails(name: str) -> None:
    pyds = PydsTestDouble()
    with pytest.raises(AttributeError, match=r"pyds 1\.2\.0"):
        getattr(pyds, name)
    assert not hasattr(pyds, name)


def test_pyds_meta_objects_are_as_strict_as_pybind11() -> None:
    pyds = PydsTestDouble()
    with pytest.raises(AttributeError, match="NVDS_PREPROCESS_BATCH_META"):
        _ = pyds.NvDsMetaType.NVDS_PREPROCESS_BATCH_META
    batch = build_batch(
        [
            FrameSpec(
                0,
                3,
                0,
                rgba(np.zeros((4, 4, 3), np.uint8)),
                [tensor_user_meta({"t": np.ones(2, np.float32)})],
            )
        ]
    )
    frame = pyds.NvDsFrameMeta.cast(batch.meta.frame_meta_list.data)
    assert (frame.source_id, frame.frame_num) == (0, 3)
    with pytest.raises(AttributeError, match="no attribute 'roi_vector'"):
        _ = frame.roi_vector
    with pytest.raises(AttributeError, match="no attribute 'display_metas'"):
        frame.display_metas = []  # pybind11 classes take no new attributes
    # A GList's data is a void*: it must be cast, and cast to the right struct.
    assert isinstance(batch.meta.frame_meta_list.data, VoidPtrTestDouble)
    with pytest.raises(AttributeError):
        _ = batch.meta.frame_meta_list.data.source_id
    with pytest.raises(TypeError, match="cast of a pointer to NvDsFrameMeta"):
        pyds.NvDsUserMeta.cast(batch.meta.frame_meta_list.data)
    user = pyds.NvDsUserMeta.cast(frame.frame_user_meta_list.data)
    assert user.base_meta.meta_type == pyds.NvDsMetaType.NVDSINFER_TENSOR_OUTPUT_META
    assert user.base_meta.meta_type == pyds.NVDSINFER_TENSOR_OUTPUT_META  # export_values()
    assert user.base_meta.meta_type != int(pyds.NVDSINFER_TENSOR_OUTPUT_META)  # not an arithmetic enum
    tensor_meta = pyds.NvDsInferTensorMeta.cast(user.user_meta_data)
    with pytest.raises(AttributeError, match="read-only"):
        tensor_meta.unique_id = 2
    info = pyds.get_nvds_LayerInfo(tensor_meta, 0)
    with pytest.raises(AttributeError, match="read-only"):
        info.dataType = pyds.NvDsInferDataType.HALF
    assert pyds.get_ptr(info.buffer) != 0
    with pytest.raises(NotEmulated, match="meta_mutex"):
        _ = pyds.NvDsBatchMeta.cast(batch.meta).meta_mutex  # bound, but the double was given no value
    # pyds takes buffers as hash(gst_buffer), an int.
    with pytest.raises(TypeError, match="hash"):
        pyds.gst_buffer_get_nvds_batch_meta(object())
    # Bound but not emulated: the arguments are checked, then NotEmulated.
    with pytest.raises(TypeError, match="incompatible function arguments"):
        pyds.nvds_acquire_meta_lock(batch.meta, 1)
    with pytest.raises(NotEmulated):
        pyds.nvds_acquire_meta_lock(batch_meta=batch.meta)
    assert layer("t", np.ones(1, np.float32), data_type=99).dataType != pyds.NvDsInferDataType.FLOAT


def test_the_harness_cannot_build_what_pyds_1_2_0_lacks() -> None:
    with pytest.raises(PydsApiMissing, match="NVDS_PREPROCESS_BATCH_META"):
        build_batch([FrameSpec(0, 0, 0, rgba(np.zeros((4, 4, 3), np.uint8)))], [(0, {"t": np.ones(1)})])


def test_pyds_double_conformance() -> None:
    problems = []
    for name, cls in pyds_module.STRUCTS.items():
        problems += conformance_problems(
            cls, ApiClass(PYDS, name, "pyds 1.2.0"), stop=StrictObjectTestDouble, class_call=["cast"]
        )
    problems += conformance_problems(PydsTestDouble, ApiClass.of_module(PYDS, "pyds 1.2.0"), stop=object)
    assert problems == []


# -- what our DeepStream code uses ---------------------------------------------------------------------------


def _is_pyds(node: ast.AST) -> bool:
    return (isinstance(node, ast.Name) and node.id == "pyds") or (
        isinstance(node, ast.Attribute) and node.attr == "pyds"
    )


def pyds_names_used() -> list[tuple[str, int, str]]:
    """``(file, line, name)`` of every ``pyds.X`` / ``pyds.X.Y`` in pipeline/deepstream/*.py, and of every
    enum-value-like string handed to a function together with pyds (e.g. ``_meta_type(pyds, "NVDS_...")``).
    Attributes read off meta objects (``frame_meta.source_id``) cannot be typed by a scan; the strict double
    checks those at run time."""
    used = []
    for path in sorted(DEEPSTREAM.glob("*.py")):
        rel = str(path.relative_to(REPO))
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and _is_pyds(node.value):
                used.append((rel, node.lineno, node.attr))
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Attribute)
                and _is_pyds(node.value.value)
            ):
                used.append((rel, node.lineno, f"{node.value.attr}.{node.attr}"))
            if isinstance(node, ast.Call) and any(_is_pyds(a) for a in node.args):
                used += [
                    (rel, node.lineno, f"<enum value>.{arg.value}")
                    for arg in node.args
                    if isinstance(arg, ast.Constant)
                    and isinstance(arg.value, str)
                    and re.fullmatch(r"[A-Z][A-Z0-9_]+", arg.value)
                ]
    return used


def pyds_1_2_0_has(name: str) -> bool:
    pyds = PydsTestDouble()
    if name.startswith("<enum value>."):
        value = name.split(".", 1)[1]
        return any(value in e["values"] for e in PYDS["enums"].values())
    head, _, tail = name.partition(".")
    if not hasattr(pyds, head):
        return False
    if not tail:
        return True
    if head in PYDS["enums"]:
        return tail in PYDS["enums"][head]["values"]
    if head in PYDS["classes"]:
        return ApiClass(PYDS, head, "pyds 1.2.0").kind(tail) is not None
    return False


def test_the_scan_finds_the_pyds_names_the_probe_uses() -> None:
    names = {name for _, _, name in pyds_names_used()}
    assert {"gst_buffer_get_nvds_batch_meta", "get_nvds_buf_surface", "NvDsFrameMeta.cast"} <= names


def test_every_pyds_name_the_deepstream_code_uses_exists_in_pyds_1_2_0() -> None:
    missing = [f"{f}:{line}: pyds.{name}" for f, line, name in pyds_names_used() if not pyds_1_2_0_has(name)]
    assert missing == []


# -- TensorRT 10.3 ------------------------------------------------------------------------------------------


TRT_CLASSES = [
    trt_module.ILogger,
    trt_module.Logger,
    trt_module.Runtime,
    trt_module.ICudaEngine,
    trt_module.IExecutionContext,
    trt_module.Builder,
    trt_module.INetworkDefinition,
    trt_module.OnnxParser,
    trt_module.IBuilderConfig,
    trt_module.IOptimizationProfile,
    trt_module.ITimingCache,
    trt_module.ILayer,
    trt_module.ITensor,
]


@pytest.mark.parametrize("cls", TRT_CLASSES, ids=lambda c: c.__name__)
def test_tensorrt_double_conformance(cls: type) -> None:
    api = ApiClass(TRT, cls.__name__, "tensorrt 10.3")
    assert conformance_problems(cls, api, stop=StrictObjectTestDouble) == []
    if "__init__" in vars(cls) and api.init:  # a class code constructs: the binding's argument names
        params = [p for p in inspect.signature(cls.__init__).parameters.values()][1:]
        assert any([p.name for p in params] == o["args"] for o in api.init), (cls.__name__, api.init)


def test_tensorrt_module_double_is_strict() -> None:
    trt = TensorRTTestDouble(CudartTestDouble())
    assert (
        conformance_problems(TensorRTTestDouble, ApiClass.of_module(TRT, "tensorrt 10.3"), stop=object) == []
    )
    with pytest.raises(AttributeError, match=r"tensorrt 10\.3 does not bind it"):
        _ = trt.IPluginV2DynamicExtEngine  # never bound in 10.3
    with pytest.raises(AttributeError, match=r"tensorrt 10\.3"):
        _ = trt.volume_of
    with pytest.raises(NotEmulated):
        _ = trt.Refitter  # bound, not emulated
    with pytest.raises(AttributeError, match="has no value 'SHAPE'"):
        _ = trt.TensorIOMode.SHAPE
    assert trt.Logger.WARNING == trt.ILogger.Severity.WARNING
    assert trt.Logger.WARNING.name == "WARNING"
    assert trt.float32 == trt.DataType.FLOAT
    assert trt.TensorIOMode.INPUT != trt.TensorIOMode.OUTPUT
    assert trt.TensorIOMode.INPUT != 1  # not an arithmetic enum
    assert trt.nptype(trt.float16) is np.float16
    with pytest.raises(TypeError, match="equivalent numpy datatype"):
        trt.nptype(trt.bfloat16)


# -- cuda-python 12.6 ---------------------------------------------------------------------------------------


def test_cudart_double_conformance_and_values() -> None:
    spec = load_api("cudart_12_6_signatures.json")
    for name in cudart_module.EMULATED:
        want = [p["name"] for p in spec["functions"][name]["params"]]
        got = list(inspect.signature(getattr(CudartTestDouble, name)).parameters)[1:]
        assert got == want, name
    assert set(spec["functions"]) <= set(cudart_module.EMULATED)  # all the backend calls
    rt = CudartTestDouble()
    public = [n for n in vars(CudartTestDouble) if not n.startswith("_")]
    names = {
        *spec["all_function_names"],
        *spec["all_enum_names"],
        *spec["all_class_names"],
        *spec["all_constant_names"],
    }
    assert [n for n in public if n not in names and n != "EMULATED"] == []
    # The module's constants are plain ints (Cython's anonymous enums), with the binding's values.
    assert type(rt.cudaStreamNonBlocking) is int
    assert rt.cudaStreamNonBlocking == spec["constants"]["cudaStreamNonBlocking"] == 1
    with pytest.raises(NotEmulated, match="constant cudaStreamPerThread"):
        _ = rt.cudaStreamPerThread
    assert int(rt.cudaMemcpyKind.cudaMemcpyDeviceToHost) == 2
    assert int(rt.cudaError_t.cudaErrorStreamCaptureUnsupported) == 900
    with pytest.raises(AttributeError, match=r"cuda-python 12\.6"):
        _ = rt.cudaLaunchHostFuncV2
    with pytest.raises(NotEmulated):
        rt.cudaMallocManaged(64, 1)


def _cuda_functions_named_in(path: Path) -> set[str]:
    """Every ``"cudaX"`` string handed to a call in ``path`` (how our code names the runtime functions it
    calls: ``cuda.call("cudaMalloc", n)``, ``_checked(rt, "cudaGetDeviceProperties", d)``)."""
    return {
        arg.value
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call)
        for arg in node.args
        if isinstance(arg, ast.Constant)
        and isinstance(arg.value, str)
        and re.fullmatch(r"cuda[A-Z]\w+", arg.value)
    }


def _cuda_functions_called_on_rt(path: Path) -> set[str]:
    """Every ``rt.cudaX(...)`` call in ``path`` (how tests/fixtures/cudart_parity.py calls the runtime)."""
    return {
        node.func.attr
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "rt"
        and re.fullmatch(r"cuda[A-Z]\w+", node.func.attr)
    }


def test_the_cudart_file_covers_every_runtime_function_our_code_calls() -> None:
    """The signatures file records what the TensorRT backend and the GPU-recorded call sequence
    (tests/fixtures/cudart_parity.py) called at extraction time: a function the backend (or
    engines/cuda_device.py, whose ``cuda_runtime`` the backend imports through) calls now must be in it, or
    the file must be extracted again (tests/fixtures/api_names/README.md); and it records nothing else."""
    spec = load_api("cudart_12_6_signatures.json")
    recorded = set(spec["functions"])
    backend = _cuda_functions_named_in(REPO / "engines" / "backends" / "tensorrt.py")
    harness = _cuda_functions_called_on_rt(REPO / spec["harness"])
    assert backend <= recorded
    assert recorded == backend | harness
    assert _cuda_functions_named_in(REPO / "engines" / "cuda_device.py") <= recorded
    # The constants the backend reads off the runtime are recorded with their values.
    source = (REPO / "engines" / "backends" / "tensorrt.py").read_text()
    assert set(spec["constants"]) == {"cudaStreamNonBlocking"}
    assert all(f"rt.{name}" in source for name in spec["constants"])


def test_cudart_double_streams_captures_and_copies() -> None:
    rt = CudartTestDouble()
    err, stream = rt.cudaStreamCreate()
    assert err == rt.cudaError_t.cudaSuccess
    assert int(stream) != 0
    _, host = rt.cudaMallocHost(8)
    _, dev = rt.cudaMalloc(8)
    view = rt._double_gpu.host_view(host, 8)
    assert view is not None
    view[:] = np.arange(8, dtype=np.uint8)
    assert rt.cudaMemcpyAsync(dev, host, 8, rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream) == (
        rt.cudaError_t.cudaSuccess,
    )
    assert rt._double_gpu.device[dev].tolist() == [0] * 8  # queued, not run
    assert rt.cudaStreamSynchronize(stream) == (rt.cudaError_t.cudaSuccess,)
    assert rt._double_gpu.device[dev].tolist() == list(range(8))
    # Out of bounds: refused as CUDA would.
    (err,) = rt.cudaMemcpyAsync(dev, host, 16, rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream)
    assert err == rt.cudaError_t.cudaErrorInvalidValue
    # Capture: synchronising the capturing stream is an error and spoils the capture...
    mode = rt.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal
    assert rt.cudaStreamBeginCapture(stream, mode)[0] == 0
    rt.cudaMemcpyAsync(host, dev, 8, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream)
    assert rt.cudaStreamSynchronize(stream) == (rt.cudaError_t.cudaErrorStreamCaptureUnsupported,)
    assert rt.cudaStreamEndCapture(stream)[0] == rt.cudaError_t.cudaErrorStreamCaptureInvalidated
    # ...a clean one records the work, which runs only when the graph is launched.
    assert rt.cudaStreamBeginCapture(stream, mode)[0] == 0
    rt.cudaMemcpyAsync(host, dev, 8, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream)
    err, graph = rt.cudaStreamEndCapture(stream)
    assert err == 0
    err, graph_exec = rt.cudaGraphInstantiate(graph, 0)
    assert err == 0
    view[:] = 0
    rt.cudaGraphLaunch(graph_exec, stream)
    rt.cudaStreamSynchronize(stream)
    assert view.tolist() == list(range(8))
    with pytest.raises(AttributeError, match="has no attribute 'value'"):  # as cuda-python 12.6.2 does
        rt.cudaStreamBeginCapture(stream, 0)
    with pytest.raises(TypeError):
        rt.cudaGraphLaunch(graph_exec)
    for fn, arg in [
        ("cudaGraphExecDestroy", graph_exec),
        ("cudaGraphDestroy", graph),
        ("cudaFree", dev),
        ("cudaFreeHost", host),
        ("cudaStreamDestroy", stream),
    ]:
        assert getattr(rt, fn)(arg) == (rt.cudaError_t.cudaSuccess,), fn
    assert rt.cudaFree(dev) == (rt.cudaError_t.cudaErrorInvalidValue,)  # twice
    assert rt._double_gpu.live() == {"host": 0, "device": 0, "streams": 0, "graphs": 0, "graph_execs": 0}


def test_cudart_double_stream_flags_and_the_legacy_stream_during_a_capture() -> None:
    """``cudaStreamCreateWithFlags(unsigned int flags)`` as cuda-python 12.6 binds it, and CUDA's rule that
    work on the legacy stream while a blocking stream captures fails (cudaErrorStreamCaptureImplicit) and
    spoils that capture, while a non-blocking stream's capture goes on."""
    rt = CudartTestDouble()
    with pytest.raises(TypeError):
        rt.cudaStreamCreateWithFlags()
    with pytest.raises(OverflowError, match="unsigned int"):
        rt.cudaStreamCreateWithFlags(-1)
    with pytest.raises(TypeError, match="an integer is required"):
        rt.cudaStreamCreateWithFlags("1")
    err, invalid = rt.cudaStreamCreateWithFlags(2)
    assert err == rt.cudaError_t.cudaErrorInvalidValue
    assert int(invalid) == 0
    _, host = rt.cudaMallocHost(8)
    _, dev = rt.cudaMalloc(8)
    d2h = rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
    mode = rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
    for create, spoilt in [
        (lambda: rt.cudaStreamCreate(), True),
        (lambda: rt.cudaStreamCreateWithFlags(0), True),  # cudaStreamDefault
        (lambda: rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking), False),
    ]:
        err, stream = create()
        assert err == rt.cudaError_t.cudaSuccess
        assert rt.cudaStreamBeginCapture(stream, mode)[0] == 0
        rt.cudaMemcpyAsync(host, dev, 8, d2h, stream)
        (legacy,) = rt.cudaMemcpyAsync(host, dev, 8, d2h, None)  # another library's work, stream 0
        err, graph = rt.cudaStreamEndCapture(stream)
        if spoilt:
            assert legacy == rt.cudaError_t.cudaErrorStreamCaptureImplicit
            assert err == rt.cudaError_t.cudaErrorStreamCaptureInvalidated
        else:
            assert legacy == rt.cudaError_t.cudaSuccess
            assert err == rt.cudaError_t.cudaSuccess
            assert rt.cudaGraphDestroy(graph) == (rt.cudaError_t.cudaSuccess,)
        assert rt.cudaStreamSynchronize(None)[0] == rt.cudaError_t.cudaSuccess
        assert rt.cudaStreamDestroy(stream) == (rt.cudaError_t.cudaSuccess,)
    rt.cudaFree(dev)
    rt.cudaFreeHost(host)
    assert rt._double_gpu.live() == {"host": 0, "device": 0, "streams": 0, "graphs": 0, "graph_execs": 0}


def test_cudart_double_devices_are_per_thread_as_in_cuda() -> None:
    """``cudaSetDevice(int device)`` / ``cudaGetDeviceProperties(int device)`` on a two-GPU machine: each
    device's properties (SM count included), cudaErrorInvalidDevice past the last one, a current device that
    belongs to the calling thread (0 on a thread that never set one), streams of the device current at their
    creation, and CUDA's rule that a kernel launch into another device's stream fails while a copy
    succeeds."""
    rt = CudartTestDouble(
        devices=[SimulatedDevice("NVIDIA H200", (9, 0), 132, False), SimulatedDevice("Orin", (8, 7), 8)]
    )
    gpu = rt._double_gpu
    ok, invalid = rt.cudaError_t.cudaSuccess, rt.cudaError_t.cudaErrorInvalidDevice
    err, props = rt.cudaGetDeviceProperties(1)
    assert err == ok
    assert (props.name, props.major, props.minor, props.multiProcessorCount) == (b"Orin", 8, 7, 8)
    assert rt.cudaGetDeviceProperties(0)[1].multiProcessorCount == 132
    assert rt.cudaGetDeviceProperties(2)[0] == invalid
    assert rt.cudaSetDevice(2) == (invalid,)
    with pytest.raises(TypeError):
        rt.cudaSetDevice()
    assert set_device_calls(rt) == []
    assert rt.cudaSetDevice(1) == (ok,)
    _, stream = rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking)
    assert gpu.streams[int(stream)].device == 1
    _, host = rt.cudaMallocHost(8)
    _, dev = rt.cudaMalloc(8)
    seen: list[Any] = []

    def other_thread() -> None:
        seen.append(gpu.current_device())  # not the main thread's device
        seen.append(gpu.launch(int(stream), lambda: 0))
        seen.append(rt.cudaMemcpyAsync(host, dev, 8, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream)[0])
        seen.append(rt.cudaSetDevice(1)[0])
        seen.append(gpu.launch(int(stream), lambda: 0))

    worker = threading.Thread(target=other_thread)
    worker.start()
    worker.join()
    assert seen == [0, rt.cudaError_t.cudaErrorInvalidResourceHandle, ok, ok, 0]
    assert gpu.current_device() == 1  # the worker's calls left this thread's device alone
    assert set_device_calls(rt) == [(threading.get_ident(), 1), (worker.ident, 1)]
    for fn, arg in [("cudaStreamDestroy", stream), ("cudaFree", dev), ("cudaFreeHost", host)]:
        assert getattr(rt, fn)(arg) == (ok,), fn
    assert gpu.live() == {"host": 0, "device": 0, "streams": 0, "graphs": 0, "graph_execs": 0}


def test_cudart_double_refuses_what_cuda_python_12_6_2_refuses() -> None:
    """The 12.6.2.post1 wheel's reactions to malformed calls (recorded without a GPU) are the double's."""
    wheel = load_api("cudart_12_6_2_wheel_refusals.json")
    rt = CudartTestDouble()
    assert cudart_parity.refusals(rt) == wheel["refusals"]
    assert cudart_parity.signatures(rt, sorted(wheel["signatures"])) == wheel["signatures"]


# Where the H200 record (cuda-bindings 13.3.1, the device image's) differs from 12.6 by design: 13 returns
# None beside an error where 12.6 returns a zeroed object, and 13 takes plain ints for enum arguments.
CUDA_13_DIFFERENCES = {
    "cudaStreamEndCapture after a sync": "None beside the error",
    "cudaStreamEndCapture not capturing": "None beside the error",
    "cudaMalloc while capturing": "None beside the error",
    "cudaStreamEndCapture after a malloc": "None beside the error",
    "cudaMemcpyAsync kind as int": "13 takes an int kind",
    "cudaStreamBeginCapture mode as int": "13 takes an int mode",
}


def test_cudart_double_behaves_as_a_real_gpu_did() -> None:
    """The same call sequence on an H200 and on the double: same errors, same result types, bytes that make
    the round trip, capture spoilt by a synchronise or an allocation, graphs that replay."""
    real = load_api("cudart_gpu_run.json")["steps"]
    double = cudart_parity.run(CudartTestDouble())
    assert double.keys() == real.keys()
    differ = {k for k in real if real[k] != double[k]}
    assert differ == set(CUDA_13_DIFFERENCES)
    for k in differ:
        if CUDA_13_DIFFERENCES[k] == "None beside the error":
            assert real[k]["error"] == double[k]["error"], k
            assert real[k]["values"] == ["NoneType"], k
        else:
            assert real[k] == {"error": "cudaSuccess", "values": []}, k
            assert double[k] == {"raises": "AttributeError"}, k  # as the 12.6.2 wheel does


def test_doubles_are_named_as_doubles() -> None:
    doubles: list[Any] = [PydsTestDouble, CudartTestDouble, TensorRTTestDouble, StrictObjectTestDouble]
    assert all(d.__name__.endswith("TestDouble") for d in doubles)
