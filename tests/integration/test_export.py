"""The real engine build on the CPU: ONNX export + ONNX Runtime parity of every component at a tiny size and
at the size of configs/default.yaml, text embeddings from a tiny local CLIP, the stream gate, idempotency,
rebuilds after damage, the NCTHW variant, parity failures and the CLI's exit codes."""

from __future__ import annotations

import copy
import functools
import importlib.util
import shutil
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
import yaml

from core.config import ModelConfig, load_config
from engines.backends import load_backend
from engines.build import BuildOptions, BuildReport, build_engines, build_from_config
from engines.export import ParityError, export_onnx, exporter_options, random_feeds
from engines.manifest import (
    Expectation,
    ManifestError,
    ManifestMismatch,
    TensorSpec,
    check_manifest,
    component_io,
    file_sha256,
    load_manifest,
)
from engines.model import ZsadModel, load_checkpoint, save_checkpoint
from engines.prompts import PROMPT_DIR, load_prompt_set
from engines.tensorrt_build import TensorRTBuildError
from pipeline.cli import build as build_cli
from pipeline.cli.main import main as cli_main
from plugins.fusion import StreamGate
from plugins.streams import STREAMS
from tests.conftest import REPO
from tests.fixtures.cudart_test_double import CudartTestDouble, SimulatedDevice
from tests.fixtures.tensorrt_test_double import PlanOp, TensorRTTestDouble, builder_devices, engine_plan
from tests.fixtures.tiny_models import make_tiny_clip, tiny_model_dict

# ONNX operators TensorRT 10's ONNX parser supports (onnx-tensorrt docs/operators.md, TensorRT 10.x:
# "operators in the inclusive range of opset 9 to opset 20"; LayerNormalization is parsed since 8.6).
# Only ones our engines could plausibly contain (Einsum left out: restricted before TensorRT 10);
# anything else in a graph fails the test.
TENSORRT10_OPS = frozenset(
    """
    Abs Add And ArgMax ArgMin AveragePool BatchNormalization Cast Ceil Clip Concat Constant
    ConstantOfShape Conv ConvTranspose Cos CumSum DepthToSpace Div Dropout Elu Equal Erf Exp
    Expand Flatten Floor Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalMaxPool
    Greater GreaterOrEqual GroupNormalization HardSigmoid HardSwish Identity InstanceNormalization
    LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax LpNormalization MatMul Max MaxPool Mean
    Min Mod Mul Neg Not Or Pad Pow PRelu Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp
    ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize Round Shape
    Sigmoid Sign Sin Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tanh
    Tile TopK Transpose Trilu Unsqueeze Where Xor
    """.split()  # noqa: SIM905 - a table, easier to read and diff as words
)

CONTEXTS = {"campus": "campus", "parking": "parking", "harbour": "harbour"}  # harbour: no file -> generic


@dataclass
class Built:
    root: Path
    out: Path
    checkpoint: Path
    spec: ModelConfig
    report: BuildReport
    config: Path


def _spec(model: dict[str, Any], clip_dir: Path | None) -> ModelConfig:
    model = copy.deepcopy(model)
    if clip_dir is not None:
        model.setdefault("semantic", {})["clip_text_model"] = str(clip_dir)
    return ModelConfig.model_validate(model)


def _with(spec: ModelConfig, section: str, **fields: Any) -> ModelConfig:
    """A copy of ``spec`` with some fields of one section changed."""
    changed = spec.model_dump(mode="json")
    changed[section].update(fields)
    return ModelConfig.model_validate(changed)


def _write_config(path: Path, spec: ModelConfig, out: Path, checkpoint: Path) -> Path:
    cameras = [
        {"id": f"cam-{i}", "uri": f"file:///videos/{ctx}.mp4", "context": ctx}
        for i, ctx in enumerate(sorted(CONTEXTS))
    ]
    cfg = {
        "version": 1,
        "model": spec.model_dump(mode="json"),
        "engines": {"dir": str(out), "checkpoint": str(checkpoint)},
        # The checkpoint's engines only: the appearance engine has its own tests (test_appearance_engine.py).
        "appearance": {"enabled": False},
        "cameras": cameras,
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Built:
    root = tmp_path_factory.mktemp("tiny")
    clip_dir = make_tiny_clip(root / "clip", projection_dim=16)
    spec = _spec(tiny_model_dict(), clip_dir)
    torch.manual_seed(0)
    ckpt = save_checkpoint(ZsadModel(spec).eval(), root / "tiny.safetensors")
    out = root / "engines"
    report = build_engines(spec, ckpt, out, contexts=CONTEXTS)
    return Built(root, out, ckpt, spec, report, _write_config(root / "tiny.yaml", spec, out, ckpt))


def _copy(built: Built, dest: Path) -> Path:
    shutil.copytree(built.out, dest)
    return dest


def _statuses(report: BuildReport) -> dict[tuple[str, str], str]:
    return {(s.component, s.step): s.status for s in report.steps}


def _check_onnx(path: Path, component: str, weights_sha: str) -> None:
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [18]
    ops = {n.op_type for n in model.graph.node}
    assert ops <= TENSORRT10_OPS, f"{path.name}: ops TensorRT 10 cannot parse: {sorted(ops - TENSORRT10_OPS)}"
    assert not any(n.domain not in ("", "ai.onnx") for n in model.graph.node)
    for value in [*model.graph.input, *model.graph.output]:
        dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        assert dims[0] == "batch", (value.name, dims)
        assert all(isinstance(d, int) and d > 0 for d in dims[1:]), (value.name, dims)
    props = {p.key: p.value for p in model.metadata_props}
    assert props["component"] == component
    assert props["weights_sha256"] == weights_sha


# -- the tiny build -----------------------------------------------------------------------------------------


def test_tiny_build_exports_every_component(tiny: Built) -> None:
    assert not (tiny.out / ".staging").exists()
    statuses = _statuses(tiny.report)
    for component in ("backbone", "dpc_head", "semantic_head"):
        assert statuses[(component, "export")] == "built"
        assert statuses[(component, "parity torch/onnxruntime")] == "built"
        m = load_manifest(tiny.out / f"{component}.manifest.json")
        assert m.onnx is not None
        assert m.tensorrt is None
        _check_onnx(tiny.out / m.onnx.path, component, m.weights_sha256)
        assert [p.target for p in m.parity] == ["onnxruntime"]
        assert all(v <= 1e-3 for v in m.parity[0].max_rel_error.values())
        assert set(m.parity[0].max_rel_error) == {o.name for o in m.outputs}
        assert m.preprocessing.clip_len == 2
        assert m.preprocessing.color == "RGB"
        assert m.zsad_version
        check_manifest(m, Expectation(model_spec=tiny.spec, backend="onnxruntime"))
    assert statuses[("stream_gate", "npz")] == "built"


def test_text_embeddings_are_gated_normalised_prompts(tiny: Built) -> None:
    from engines.semantic import TextEncoder

    m = load_manifest(tiny.out / "semantic_head.manifest.json")
    entries = {t.context: t for t in m.text_embeddings}
    assert set(entries) == set(CONTEXTS)
    assert entries["harbour"].prompt_set == "generic"
    model, _ = load_checkpoint(tiny.checkpoint)
    model.eval()
    encoder = TextEncoder(str(tiny.spec.semantic.clip_text_model))
    for context, entry in entries.items():
        prompts = load_prompt_set(PROMPT_DIR / f"{entry.prompt_set}.yaml")
        emb = np.load(tiny.out / entry.path)
        assert emb.dtype == np.float32
        assert emb.shape == (len(prompts.normal) + len(prompts.anomalous), 16)
        assert (entry.normal, entry.anomalous) == (len(prompts.normal), len(prompts.anomalous))
        assert entry.prompt_sha256 == prompts.sha256
        assert entry.context_source == "zero-embedding"
        np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
        with torch.no_grad():  # rows: normal prompts then anomalous, gated by the zero-embedding context
            want = model.context_gate(
                encoder.encode(list(prompts.prompts)), model.context(torch.zeros(1, 32))
            )[0]
        np.testing.assert_allclose(emb, want.numpy(), atol=1e-5)
        assert f"text_{context}.npy" == entry.path
    check_manifest(m, Expectation(prompt_sha256={c: entries[c].prompt_sha256 for c in CONTEXTS}))


def test_stream_gate_composes_context_and_gate(tiny: Built) -> None:
    gate = StreamGate.load(tiny.out / "stream_gate.npz")
    assert gate.streams == STREAMS
    assert gate.W.shape == (4, 32)
    model, _ = load_checkpoint(tiny.checkpoint)
    torch.nn.init.normal_(model.stream_gate.linear.weight)  # the trained gate is zero-initialised
    from engines.build import compose_stream_gate

    W, b = compose_stream_gate(model)
    e = torch.randn(5, 32)
    with torch.no_grad():
        want = model.stream_gate.linear(model.context(e)).numpy()
    np.testing.assert_allclose(e.numpy() @ W.T + b, want, rtol=1e-4, atol=1e-5)


def test_rerun_is_up_to_date_and_rewrites_nothing(tiny: Built) -> None:
    before = {p: p.stat().st_mtime_ns for p in tiny.out.iterdir()}
    report = build_engines(tiny.spec, tiny.checkpoint, tiny.out, contexts=CONTEXTS)
    assert report.up_to_date
    assert set(_statuses(report).values()) == {"up to date"}
    assert report.table().endswith(": up to date")
    assert {p: p.stat().st_mtime_ns for p in tiny.out.iterdir()} == before


def test_changed_prompt_file_rebuilds_only_its_embeddings(tiny: Built, tmp_path: Path) -> None:
    prompts = shutil.copytree(PROMPT_DIR, tmp_path / "prompts")
    out = _copy(tiny, tmp_path / "engines")
    campus = prompts / "campus.yaml"
    data = yaml.safe_load(campus.read_text())
    data["anomalous"].append("a person climbing over a fence")
    campus.write_text(yaml.safe_dump(data))
    report = build_engines(tiny.spec, tiny.checkpoint, out, contexts=CONTEXTS, prompt_dir=prompts)
    built = {k for k, v in _statuses(report).items() if v != "up to date"}
    assert built == {("semantic_head", "text[campus]")}
    m = load_manifest(out / "semantic_head.manifest.json")
    entry = next(t for t in m.text_embeddings if t.context == "campus")
    assert entry.anomalous == len(data["anomalous"])
    assert np.load(out / entry.path).shape[0] == entry.normal + entry.anomalous


def test_a_changed_context_vector_rebuilds_its_text_embeddings(tiny: Built, tmp_path: Path) -> None:
    """A context's vector lives in the checkpoint's sidecar (outside the weights' hash): a new one must
    re-embed that context's prompts, not leave the embeddings gated by the old vector "up to date"."""
    import json

    root = tmp_path / "ckpt"
    root.mkdir()
    ckpt = Path(shutil.copy(tiny.checkpoint, root / tiny.checkpoint.name))
    sidecar = Path(shutil.copy(f"{tiny.checkpoint}.json", f"{ckpt}.json"))
    out = _copy(tiny, tmp_path / "engines")

    def with_vector(value: float) -> np.ndarray:
        meta = json.loads(sidecar.read_text())
        meta["context_embeddings"] = {"campus": [value] * 32}
        sidecar.write_text(json.dumps(meta))
        build_engines(tiny.spec, ckpt, out, contexts=CONTEXTS)
        return np.load(out / "text_campus.npy")

    first = with_vector(0.0)
    report = build_engines(tiny.spec, ckpt, out, contexts=CONTEXTS)
    assert _statuses(report)[("semantic_head", "text[campus]")] == "up to date"
    second = with_vector(5.0)
    fresh = tmp_path / "fresh"
    build_engines(tiny.spec, ckpt, fresh, contexts=CONTEXTS)
    np.testing.assert_allclose(second, np.load(fresh / "text_campus.npy"), atol=1e-6)
    assert not np.allclose(first, second)


def test_changed_engine_code_re_exports_only_that_component(
    tiny: Built, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ONNX build key covers the source of the module that becomes the graph, so an upgrade that
    changes the DPC head's forward re-exports the DPC head and leaves the backbone alone."""
    import engines.build as build

    out = _copy(tiny, tmp_path / "engines")
    real = build._graph_source_sha
    monkeypatch.setattr(
        build, "_graph_source_sha", lambda c: real(c) + ("-changed" if c == "dpc_head" else "")
    )
    report = build_engines(tiny.spec, tiny.checkpoint, out, contexts=CONTEXTS)
    statuses = _statuses(report)
    assert statuses[("dpc_head", "export")] == "built"
    assert statuses[("backbone", "onnx")] == "up to date"


def test_onnx_exported_under_another_torch_is_up_to_date(
    tiny: Built, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ONNX shipped from the development machine stays "up to date" on a device whose torch and
    transformers differ (JetPack 6.1: torch 2.5.0a0+nv24.08), so the device only compiles TensorRT from it;
    the exporting versions are recorded in the manifest as information."""
    import transformers

    out = _copy(tiny, tmp_path / "engines")
    recorded = {c: load_manifest(out / f"{c}.manifest.json").onnx for c in ("backbone", "dpc_head")}
    for artifact in recorded.values():
        assert artifact is not None
        assert artifact.exported_with["torch"] == str(torch.__version__)
        assert artifact.exported_with["onnxscript"] != "missing"
    monkeypatch.setattr(torch, "__version__", "2.5.0a0+872d972e41.nv24.08")
    monkeypatch.setattr(transformers, "__version__", "4.46.3")
    report = build_engines(tiny.spec, tiny.checkpoint, out, contexts=CONTEXTS)
    assert report.up_to_date, report.table()
    for component, artifact in recorded.items():
        assert load_manifest(out / f"{component}.manifest.json").onnx == artifact


def test_exporter_options_follow_the_torch_signature() -> None:
    def torch_2_5(model: Any, args: Any = (), f: Any = None, *, dynamo: bool = False) -> None: ...

    def torch_2_6(
        model: Any, args: Any = (), f: Any = None, *, dynamo: bool = False, optimize: bool = False
    ) -> None: ...

    @functools.wraps(torch_2_6)
    def wrapped(*args: Any, **kwargs: Any) -> None: ...

    assert exporter_options(torch_2_5) == {}
    assert exporter_options(torch_2_6) == {"optimize": True}
    assert exporter_options(wrapped) == {"optimize": True}
    assert exporter_options(torch.onnx.export) == {"optimize": True}  # torch 2.13 here


def test_export_under_a_torch_without_optimize(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch before 2.6 refuses ``optimize=``: the export leaves it out and optimises the program after."""
    real_export, real_optimize = torch.onnx.export, torch.onnx.ONNXProgram.optimize
    seen: dict[str, Any] = {"optimized": 0}

    def export_like_2_5(
        model: Any,
        args: Any = (),
        f: Any = None,
        *,
        input_names: Any = None,
        output_names: Any = None,
        opset_version: Any = None,
        dynamo: bool = False,
        dynamic_shapes: Any = None,
        verbose: Any = None,
    ) -> Any:
        seen["dynamo"] = dynamo
        return real_export(
            model,
            args,
            f,
            input_names=input_names,
            output_names=output_names,
            opset_version=opset_version,
            dynamo=dynamo,
            dynamic_shapes=dynamic_shapes,
            verbose=verbose,
            optimize=False,
        )

    def counting_optimize(self: Any) -> None:
        seen["optimized"] += 1
        real_optimize(self)

    monkeypatch.setattr(torch.onnx, "export", export_like_2_5)
    monkeypatch.setattr(torch.onnx.ONNXProgram, "optimize", counting_optimize)
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GELU(), torch.nn.Linear(8, 3))
    x, y = TensorSpec(name="x", shape=(-1, 4), layout="ND"), TensorSpec(name="y", shape=(-1, 3), layout="ND")
    path = export_onnx(module, [x], [y], tmp_path / "small.onnx")
    assert seen == {"dynamo": True, "optimized": 1}
    feeds = random_feeds([x], 3, np.random.default_rng(0))
    import onnxruntime

    got = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    with torch.no_grad():
        want = module(torch.from_numpy(feeds["x"])).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_damaged_files_are_refused_then_rebuilt(tiny: Built, tmp_path: Path) -> None:
    out = _copy(tiny, tmp_path / "engines")
    onnx_path = out / "backbone.onnx"
    onnx_path.write_bytes(onnx_path.read_bytes()[:1000])  # a truncated copy
    (out / "dpc_head.manifest.json").write_text('{"component": "dpc_head", ')
    with pytest.raises(ManifestMismatch, match=r"backbone\.manifest\.json: onnx\.sha256: file .* changed"):
        check_manifest(load_manifest(out / "backbone.manifest.json"), Expectation(backend="onnxruntime"))
    with pytest.raises(ManifestError, match=r"dpc_head\.manifest\.json is not valid JSON"):
        load_manifest(out / "dpc_head.manifest.json")
    report = build_engines(tiny.spec, tiny.checkpoint, out, contexts=CONTEXTS)
    rebuilt = {k[0] for k, v in _statuses(report).items() if v == "built"}
    assert rebuilt == {"backbone", "dpc_head"}
    for component in ("backbone", "dpc_head"):
        check_manifest(load_manifest(out / f"{component}.manifest.json"), Expectation(model_spec=tiny.spec))


def _install_tensorrt_doubles(
    monkeypatch: pytest.MonkeyPatch, plan: bytes | None, runtime: CudartTestDouble | None = None
) -> TensorRTTestDouble:
    """The TensorRT 10.3 and cuda-python 12.6 TEST DOUBLES, importable as ``tensorrt`` and
    ``cuda.bindings.runtime`` (``runtime``, an AGX Orin by default), so that the build's TensorRT stage runs
    here; ``plan``: what the double's builder returns (None: TensorRT fails the build)."""
    runtime = runtime or CudartTestDouble(device_name="Orin", compute_capability=(8, 7))
    cuda = types.ModuleType("cuda")
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = runtime  # type: ignore[attr-defined]
    cuda.bindings = bindings  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "cuda", cuda)
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", runtime)
    trt = TensorRTTestDouble(runtime, plan=plan)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    return trt


def _folder_files(folder: Path) -> dict[str, str]:
    """Every file of an engine folder (not the build's lock or staging folder) and its sha256."""
    return {p.name: file_sha256(p) for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")}


def _wrong_dpc_plan(spec: ModelConfig) -> bytes:
    """A TensorRT plan (the double's) with the DPC head's tensors whose outputs are not the ONNX model's:
    each map is the mean of ``current`` over time and channels, the projection the mean of the history's,
    as an FP16 engine gone wrong would give."""
    inputs, outputs = component_io("dpc_head", spec)

    def wrong(i: int, name: str, shape: tuple[int, ...]) -> PlanOp:
        if len(shape) == 3:  # (N, h, w): a map
            return PlanOp(name, "mean", ("current",), shift=i, axes=(1, 2))
        return PlanOp(name, "mean", ("history_proj",), shift=i, axes=(1,))  # (N, 3F, h, w)

    return engine_plan(
        {t.name: t.shape for t in inputs},
        {t.name: (t.shape, wrong(i, t.name, t.shape)) for i, t in enumerate(outputs)},
        profile=(1, 8, 32),
    )


@pytest.mark.parametrize("failure", ["tensorrt build", "fp16 parity"])
def test_a_failed_tensorrt_stage_leaves_the_previous_folder_intact(
    tiny: Built, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    """A retrained checkpoint's rebuild whose TensorRT stage fails (TensorRT cannot build the engine, or the
    engine disagrees with ONNX Runtime) changes nothing in the folder: the new ONNX stays in staging, so the
    previous manifest still names files with its hashes and its engines still load."""
    out = _copy(tiny, tmp_path / "engines")
    before = _folder_files(out)
    torch.manual_seed(1)
    retrained = save_checkpoint(ZsadModel(tiny.spec).eval(), tmp_path / "retrained.safetensors")
    _install_tensorrt_doubles(
        monkeypatch, None if failure == "tensorrt build" else _wrong_dpc_plan(tiny.spec)
    )
    expected: tuple[type[Exception], str] = (
        (TensorRTBuildError, r"could not build dpc_head\.")
        if failure == "tensorrt build"
        else (ParityError, r"dpc_head: onnxruntime vs tensorrt fp16")
    )
    with pytest.raises(expected[0], match=expected[1]):
        build_engines(
            tiny.spec,
            retrained,
            out,
            contexts=CONTEXTS,
            options=BuildOptions(backend="tensorrt", components=("dpc_head",)),
        )
    assert (out / ".staging" / "dpc_head.onnx").is_file()  # exported and checked, never moved in
    after = _folder_files(out)
    # TensorRT's timing cache is no artifact of a manifest: what a build tuned is kept, whatever its outcome.
    cache = {n for n in after if n.startswith("timing.") and n.endswith(".cache")}
    assert {n: h for n, h in after.items() if n not in cache} == before
    manifest = load_manifest(out / "dpc_head.manifest.json")
    check_manifest(manifest, Expectation(model_spec=tiny.spec, backend="onnxruntime"))  # hashes every file
    with load_backend(manifest, "onnxruntime") as backend:
        assert backend.warm_up(1) >= 0.0


def test_the_tensorrt_stage_builds_and_checks_on_the_configured_gpu(
    tiny: Built, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``deepstream.gpu_id: 1`` on a host whose two GPUs differ: build-engines identifies device 1, TensorRT
    builds on it (the builder's thread has it current), the engine and timing cache are named for it, and the
    parity check runs the engine on it. The engine (the double's) disagrees with ONNX Runtime, so the parity
    check is what stops the build: it loaded and ran the engine on device 1."""
    out = _copy(tiny, tmp_path / "engines")
    data = yaml.safe_load(tiny.config.read_text())
    data["engines"]["dir"] = str(out)
    data["deepstream"] = {"gpu_id": 1}
    config = tmp_path / "gpu1.yaml"
    config.write_text(yaml.safe_dump(data))
    two_gpus = CudartTestDouble(
        devices=[
            SimulatedDevice("NVIDIA H200", (9, 0), 132, False),
            SimulatedDevice("NVIDIA RTX A2000", (8, 6), 26, False),
        ]
    )
    trt = _install_tensorrt_doubles(monkeypatch, _wrong_dpc_plan(tiny.spec), two_gpus)
    with pytest.raises(ParityError, match=r"dpc_head: onnxruntime vs tensorrt fp16"):
        build_from_config(
            load_config(config), options=BuildOptions(backend="tensorrt", components=("dpc_head",))
        )
    assert builder_devices(trt) == [1]
    assert (out / "timing.sm86-rtx-a2000-26sm.trt10.3.0.cache").is_file()
    assert (out / ".staging" / "dpc_head.fp16.sm86-rtx-a2000-26sm.trt10.3.0.engine").is_file()


def test_ncthw_backbone_matches_ntchw(tiny: Built, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    build_engines(
        tiny.spec,
        tiny.checkpoint,
        out,
        contexts=CONTEXTS,
        options=BuildOptions(input_layout="NCTHW", components=("backbone",)),
    )
    m = load_manifest(out / "backbone.manifest.json")
    assert m.input_layout == "NCTHW"
    assert m.inputs[0].shape == (-1, 3, 2, 32, 48)
    assert m.inputs[0].layout == "NCTHW"
    check_manifest(m, Expectation(model_spec=tiny.spec, input_layout="NCTHW"))
    with pytest.raises(ManifestMismatch, match=r"options\.input_layout"):
        check_manifest(m, Expectation(input_layout="NTCHW"))
    clip = random_feeds(
        load_manifest(tiny.out / "backbone.manifest.json").inputs, 2, np.random.default_rng(0)
    )["clip"]
    with (
        load_backend(m, "onnxruntime") as ncthw,
        load_backend(tiny.out / "backbone.manifest.json", "onnxruntime") as ref,
    ):
        a = ref({"clip": clip})
        b = ncthw({"clip": np.ascontiguousarray(clip.transpose(0, 2, 1, 3, 4))})
    for name in ("tokens", "embedding"):
        np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-5)


def test_semantic_off_without_clip_removes_stale_semantic_files(tiny: Built, tmp_path: Path) -> None:
    out = _copy(tiny, tmp_path / "engines")
    spec = _with(tiny.spec, "semantic", clip_text_model=None)
    report = build_engines(spec, tiny.checkpoint, out, contexts=CONTEXTS)
    assert _statuses(report)[("semantic_head", "cleanup")] == "removed"
    assert not (out / "semantic_head.manifest.json").exists()
    assert not list(out.glob("text_*.npy"))
    assert not (out / "semantic_head.onnx").exists()
    assert (out / "backbone.onnx").exists()


# -- the default size --------------------------------------------------------------------------------------


def test_default_config_size_exports_with_parity(tmp_path: Path) -> None:
    model_section = yaml.safe_load((REPO / "configs" / "default.yaml").read_text())["model"]
    clip_dir = make_tiny_clip(
        tmp_path / "clip", projection_dim=ModelConfig.model_validate(model_section).semantic.embed_dim
    )
    spec = _spec(model_section, clip_dir)
    torch.manual_seed(1)
    ckpt = save_checkpoint(ZsadModel(spec).eval(), tmp_path / "default.safetensors")
    out = tmp_path / "engines"
    report = build_engines(spec, ckpt, out, contexts={"campus": "campus"})
    assert not report.up_to_date
    for component in ("backbone", "dpc_head", "semantic_head"):
        m = load_manifest(out / f"{component}.manifest.json")
        assert m.onnx is not None
        _check_onnx(out / m.onnx.path, component, m.weights_sha256)
        check_manifest(m, Expectation(model_spec=spec, backend="onnxruntime"))
        assert max(m.parity[0].max_rel_error.values()) <= 1e-3
        assert m.parity[0].batch_sizes == (1, 3)
    bb = load_manifest(out / "backbone.manifest.json")
    pre = model_section["preprocess"]
    assert bb.inputs[0].shape == (
        -1,
        pre["clip_len"],
        3,
        model_section["backbone"]["image_height"],
        model_section["backbone"]["image_width"],
    )


# -- failures and the CLI ------------------------------------------------------------------------------------


def test_parity_failure_exits_1_and_keeps_the_folder_clean(
    tiny: Built, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "strict"
    with pytest.raises(
        ParityError, match=r"backbone: torch vs onnxruntime: max relative error above 1e-12: tokens"
    ):
        build_engines(
            tiny.spec,
            tiny.checkpoint,
            out,
            options=BuildOptions(onnx_tolerance=1e-12, components=("backbone",)),
        )
    assert not (out / "backbone.onnx").exists()
    assert not (out / "backbone.manifest.json").exists()
    # The CLI maps it to exit code 1 (a real build with an impossible tolerance).
    monkeypatch.setattr(build_cli, "BuildOptions", functools.partial(BuildOptions, onnx_tolerance=1e-12))
    config = _write_config(tmp_path / "strict.yaml", tiny.spec, out, tiny.checkpoint)
    assert cli_main(["build-engines", "--config", str(config)]) == 1
    assert "parity failure" in capsys.readouterr().err


def test_cli_exit_codes(tiny: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = _copy(tiny, tmp_path / "engines")
    config = _write_config(tmp_path / "ok.yaml", tiny.spec, out, tiny.checkpoint)
    assert load_config(config).engines.dir == str(out)
    assert cli_main(["build-engines", "--config", str(config), "--backend", "all", "--out", str(out)]) == 0
    assert f"{out}: up to date" in capsys.readouterr().out

    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nmodel:\n  backbone:\n    hidden_sise: 3\n")
    assert cli_main(["build-engines", "--config", str(bad), "--checkpoint", str(tiny.checkpoint)]) == 2
    assert "hidden_sise" in capsys.readouterr().err

    args = ["build-engines", "--config", str(config), "--out", str(tmp_path / "x")]
    assert cli_main([*args, "--checkpoint", str(tmp_path / "missing.safetensors")]) == 2
    assert "missing.safetensors does not exist" in capsys.readouterr().err

    other = _with(tiny.spec, "backbone", num_layers=2)
    mismatch = _write_config(tmp_path / "other.yaml", other, tmp_path / "x", tiny.checkpoint)
    assert cli_main(["build-engines", "--config", str(mismatch)]) == 2
    assert "model.backbone.num_layers: checkpoint 1, config 2" in capsys.readouterr().err

    assert cli_main([*args, "--min-batch", "4", "--opt-batch", "2"]) == 2
    assert "1 <= min <= opt <= max" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_cli_tensorrt_without_tensorrt_is_bad_input(
    tiny: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _copy(tiny, tmp_path / "engines")
    config = _write_config(tmp_path / "ok.yaml", tiny.spec, out, tiny.checkpoint)
    assert cli_main(["build-engines", "--config", str(config), "--backend", "tensorrt"]) == 2
    assert "--backend tensorrt: tensorrt:" in capsys.readouterr().err


def test_build_engines_script_is_the_same_command() -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, str(REPO / "build_engines.py"), "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0
    for flag in ("--checkpoint", "--backend", "--max-batch", "--workspace-mb", "--input-layout", "--force"):
        assert flag in result.stdout


def test_two_builds_into_one_folder_take_turns(tiny: Built, tmp_path: Path) -> None:
    """A build into a folder another build is writing waits for it (they shared one staging folder, and
    the first to end deleted it under the other: FileNotFoundError), then finds its engines up to date."""
    import logging
    import threading

    from engines.build import BUILD_LOCK, build_lock

    out = _copy(tiny, tmp_path / "engines")
    waiting = threading.Event()

    class WaitSeen(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "another build is writing" in record.getMessage():
                waiting.set()

    seen = WaitSeen()
    logger = logging.getLogger("engines.build")
    logger.addHandler(seen)
    level = logger.level
    logger.setLevel(logging.INFO)
    reports: list[BuildReport] = []
    try:
        with build_lock(out):  # another build is writing the folder
            second = threading.Thread(
                target=lambda: reports.append(
                    build_engines(tiny.spec, tiny.checkpoint, out, contexts=CONTEXTS)
                )
            )
            second.start()
            assert waiting.wait(120), "the second build did not wait"
            assert second.is_alive()
            # Re-entrant in the thread that holds it: a first run holds it, then its build asks again.
            assert build_engines(tiny.spec, tiny.checkpoint, out, contexts=CONTEXTS).up_to_date
        second.join(300)
    finally:
        logger.removeHandler(seen)
        logger.setLevel(level)
    assert not second.is_alive()
    assert reports[0].up_to_date
    assert (out / BUILD_LOCK).is_file()


def test_a_device_without_clip_keeps_the_shipped_semantic_head(tiny: Built, tmp_path: Path) -> None:
    """Engines built where CLIP is, shipped to a device without it: the device's build keeps the semantic
    head and its prompt embeddings (it removed them, and with them the semantic stream); a prompt file
    edited on the device is refused by name, since only CLIP could embed it again."""
    from engines.build import BuildInputError

    device = _copy(tiny, tmp_path / "engines")
    without_clip = _with(tiny.spec, "semantic", clip_text_model=str(tmp_path / "no-clip-here"))
    report = build_engines(without_clip, tiny.checkpoint, device, contexts=CONTEXTS)
    statuses = _statuses(report)
    assert ("semantic_head", "cleanup") not in statuses
    assert statuses[("semantic_head", "onnx")] == "up to date"
    assert {statuses[("semantic_head", f"text[{c}]")] for c in CONTEXTS} == {"up to date"}
    kept = load_manifest(device / "semantic_head.manifest.json")
    shipped = load_manifest(tiny.out / "semantic_head.manifest.json")
    assert kept.text_embeddings == shipped.text_embeddings
    assert all((device / t.path).is_file() for t in kept.text_embeddings)
    prompts = shutil.copytree(PROMPT_DIR, tmp_path / "prompts")
    campus = prompts / "campus.yaml"
    data = yaml.safe_load(campus.read_text())
    data["anomalous"].append("a person climbing over a fence")
    campus.write_text(yaml.safe_dump(data))
    with pytest.raises(
        BuildInputError, match=r"context campus's prompt embeddings: .*cannot be embedded without CLIP"
    ):
        build_engines(without_clip, tiny.checkpoint, device, contexts=CONTEXTS, prompt_dir=prompts)
    # A checkpoint whose sidecar now gives campus a context vector: the shipped ones were gated by none.
    import json

    ckpt = Path(shutil.copy(tiny.checkpoint, tmp_path / tiny.checkpoint.name))
    meta = json.loads(Path(f"{tiny.checkpoint}.json").read_text())
    meta["context_embeddings"] = {"campus": [1.0] * 32}
    Path(f"{ckpt}.json").write_text(json.dumps(meta))
    with pytest.raises(
        BuildInputError, match=r"gated by a zero-embedding vector, this checkpoint gives a checkpoint"
    ):
        build_engines(without_clip, ckpt, device, contexts=CONTEXTS)
