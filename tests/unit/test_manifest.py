"""Manifests: I/O contracts from the spec, save/load, and every mismatch check_manifest must refuse."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from engines.manifest import (
    Expectation,
    Manifest,
    ManifestError,
    ManifestMismatch,
    OnnxArtifact,
    TensorRTArtifact,
    TextEmbeddings,
    check_manifest,
    component_io,
    file_sha256,
    load_manifest,
    preprocessing_from_spec,
    save_manifest,
    spec_diff,
    spec_sha256,
)
from tests.fixtures.tiny_models import tiny_model

SPEC = tiny_model()
PINNED_TINY_SPEC_SHA256 = "1de0169de10d060966626516e0145c19e57abf0044b9a77c5280d4e5395dc81e"


def _manifest(tmp_path: Path, component: str = "backbone", **update: object) -> Manifest:
    """A manifest as build-engines writes it, with a stand-in ONNX file (check_manifest never parses it)."""
    onnx = tmp_path / f"{component}.onnx"
    onnx.write_bytes(b"stand-in onnx bytes")
    engine = tmp_path / f"{component}.fp16.sm87-orin-16sm.trt10.3.0.engine"
    engine.write_bytes(b"stand-in plan")
    inputs, outputs = component_io(component, SPEC)
    m = Manifest(
        component=component,  # type: ignore[arg-type]
        zsad_version="0.1.0",
        created="2026-01-01T00:00:00+00:00",
        inputs=inputs,
        outputs=outputs,
        preprocessing=preprocessing_from_spec(SPEC),
        model_spec=SPEC.model_dump(mode="json"),
        model_spec_sha256=spec_sha256(SPEC),
        weights_sha256="ab" * 32,
        checkpoint="/nowhere/model.safetensors",
        options={"input_layout": "NTCHW"},
        onnx=OnnxArtifact(
            path=onnx.name, sha256=file_sha256(onnx), size=19, opset=18, exporter="x", build_key="k"
        ),
        tensorrt=TensorRTArtifact(
            path=engine.name,
            sha256=file_sha256(engine),
            size=13,
            tensorrt_version="10.3.0.30",
            gpu_name="Orin",
            compute_capability="8.7",
            multiprocessor_count=16,
            precision="fp16",
            min_batch=1,
            opt_batch=8,
            max_batch=32,
            workspace_mb=2048,
            build_key="k",
        ),
    )
    m = m.model_copy(update=update)
    save_manifest(m, tmp_path)
    return load_manifest(tmp_path / f"{component}.manifest.json")


def test_component_io_follows_the_spec_and_layout() -> None:
    ins, outs = component_io("backbone", SPEC)
    assert ins[0].name == "clip"
    assert ins[0].shape == (-1, 2, 3, 32, 48)
    assert ins[0].layout == "NTCHW"
    assert [(o.name, o.shape) for o in outs] == [("tokens", (-1, 2, 32, 4, 6)), ("embedding", (-1, 32))]
    ins, _ = component_io("backbone", SPEC, "NCTHW")
    assert ins[0].shape == (-1, 3, 2, 32, 48)
    assert ins[0].layout == "NCTHW"
    ins, outs = component_io("dpc_head", SPEC)
    assert [i.name for i in ins] == ["history_proj", "last_tokens", "current", "last_frame", "current_frame"]
    ins, _ = component_io("dpc_head", tiny_model(dpc={"decoder": "extrapolate"}))
    assert [i.name for i in ins][-1] == "prev_frame"
    assert ins[-1].shape == (-1, 3, 32, 48)
    # C past clips' ConvGRU input projections: 3 x the head's width (16), on the patch grid.
    assert ins[0].shape == (-1, 2, 48, 4, 6)
    assert ins[1].shape == (-1, 32, 4, 6)
    assert [o.shape for o in outs] == [(-1, 4, 6)] * 3 + [(-1, 48, 4, 6)]
    assert outs[-1].name == "current_proj"
    ins, outs = component_io("semantic_head", SPEC)
    assert ins[0].shape == (-1, 32)
    assert outs[0].shape == (-1, 16)
    with pytest.raises(ValueError, match="unknown component"):
        component_io("classifier", SPEC)
    with pytest.raises(ValueError, match="layout"):
        component_io("backbone", SPEC, "NHWC")


def test_round_trip_and_matching_manifest_passes(tmp_path: Path) -> None:
    m = _manifest(tmp_path)
    assert m.directory == tmp_path
    assert m.onnx is not None
    assert m.resolve(m.onnx.path).is_file()
    check_manifest(m, Expectation(model_spec=SPEC, input_layout="NTCHW", backend="onnxruntime"))
    check_manifest(
        m,
        Expectation(
            model_spec=SPEC,
            backend="tensorrt",
            tensorrt_version="10.3.0.30",
            gpu_name="Orin",
            compute_capability="8.7",
            multiprocessor_count=16,
        ),
    )


def test_spec_hash_ignores_machine_local_paths() -> None:
    moved = tiny_model(
        backbone={"pretrained": "/models/timesformer"}, semantic={"clip_text_model": "/opt/clip"}
    )
    assert spec_sha256(moved) == spec_sha256(SPEC)
    assert spec_diff(SPEC, moved) == []
    assert spec_sha256(tiny_model(backbone={"num_layers": 3})) != spec_sha256(SPEC)


def test_spec_hash_is_stable() -> None:
    """The hash is part of every build key and manifest on disk: it is the SHA-256 of the spec's canonical
    JSON (sorted keys, no spaces, local paths left out) and must not change with how the spec is held in
    memory. The pinned value is what the dict-based code computed before the spec was typed."""
    plain = SPEC.model_dump(mode="json")
    for section, key in (("backbone", "pretrained"), ("semantic", "clip_text_model")):
        del plain[section][key]
    canonical = json.dumps(plain, sort_keys=True, separators=(",", ":"))
    assert spec_sha256(SPEC) == hashlib.sha256(canonical.encode()).hexdigest()
    assert spec_sha256(SPEC) == PINNED_TINY_SPEC_SHA256


def test_spec_diff_against_a_stored_spec_names_fields_it_predates() -> None:
    """A manifest stores its spec as JSON; one written before a field existed shows that field as None."""
    stored = SPEC.model_dump(mode="json")
    del stored["dpc"]["decoder"]
    assert spec_diff(stored, SPEC) == [("model.dpc.decoder", None, "residual")]
    assert spec_diff(SPEC.model_dump(mode="json"), SPEC) == []


def test_shape_mismatch_names_the_field(tmp_path: Path) -> None:
    m = _manifest(tmp_path)
    with pytest.raises(
        ManifestMismatch, match=r"backbone\.manifest\.json: inputs\[0\]\.shape: clip has shape"
    ):
        check_manifest(m, Expectation(model_spec=tiny_model(backbone={"image_width": 64})))


def test_preprocessing_mismatch_names_the_field(tmp_path: Path) -> None:
    m = _manifest(tmp_path)
    with pytest.raises(ManifestMismatch, match=r"preprocessing\.mean"):
        check_manifest(m, Expectation(model_spec=tiny_model(preprocess={"mean": [0.5, 0.5, 0.5]})))


def test_spec_mismatch_outside_shapes_names_the_spec_field(tmp_path: Path) -> None:
    m = _manifest(tmp_path)
    with pytest.raises(ManifestMismatch, match=r"model_spec_sha256: .*model\.backbone\.num_layers"):
        check_manifest(m, Expectation(model_spec=tiny_model(backbone={"num_layers": 4})))


def test_changed_and_missing_files_are_refused(tmp_path: Path) -> None:
    m = _manifest(tmp_path)
    onnx = tmp_path / "backbone.onnx"
    onnx.write_bytes(b"stand-in onnx bytez")
    with pytest.raises(
        ManifestMismatch, match=r"onnx\.sha256: file .*backbone\.onnx changed since the build"
    ):
        check_manifest(m, Expectation(backend="onnxruntime"))
    onnx.unlink()
    with pytest.raises(ManifestError, match=r"onnx\.path: file .*backbone\.onnx is missing"):
        check_manifest(m, Expectation(backend="onnxruntime"))


def test_onnx_backend_does_not_hash_the_engine(tmp_path: Path) -> None:
    m = _manifest(tmp_path)
    (tmp_path / "backbone.fp16.sm87-orin-16sm.trt10.3.0.engine").unlink()
    check_manifest(m, Expectation(backend="onnxruntime"))
    with pytest.raises(ManifestError, match=r"tensorrt\.path"):
        check_manifest(m, Expectation(backend="tensorrt"))


@pytest.mark.parametrize(
    ("expectation", "field", "reason"),
    [
        (
            {"tensorrt_version": "10.7.0.23"},
            "tensorrt.tensorrt_version",
            "TensorRT 10.3.0.30, this device has 10.7",
        ),
        ({"gpu_name": "NVIDIA H200"}, "tensorrt.gpu_name", "built on 'Orin'"),
        ({"compute_capability": "9.0"}, "tensorrt.compute_capability", "this device is sm 9.0"),
        # An AGX Orin's engine on an Orin NX: same name and compute capability, not the same GPU.
        (
            {"gpu_name": "Orin", "compute_capability": "8.7", "multiprocessor_count": 8},
            "tensorrt.multiprocessor_count",
            "engine built on a GPU with 16 SMs, this device has 8",
        ),
    ],
)
def test_tensorrt_device_mismatch(tmp_path: Path, expectation: dict, field: str, reason: str) -> None:
    m = _manifest(tmp_path)
    with pytest.raises(ManifestMismatch) as info:
        check_manifest(m, Expectation(backend="tensorrt", **expectation))
    assert field in str(info.value)
    assert reason in str(info.value)
    assert "backbone.manifest.json" in str(info.value)


def test_a_manifest_from_before_the_sm_count_loads_but_fits_no_device(tmp_path: Path) -> None:
    """A manifest an older zsad wrote (no ``tensorrt.multiprocessor_count``) still loads, and the ONNX Runtime
    backend takes it; a TensorRT run refuses it whatever the device, saying to rebuild."""
    m = _manifest(tmp_path)
    doc = json.loads(m.path.read_text())
    del doc["tensorrt"]["multiprocessor_count"]
    m.path.write_text(json.dumps(doc))
    old = load_manifest(m.path)
    assert old.tensorrt is not None
    assert old.tensorrt.multiprocessor_count is None
    check_manifest(old, Expectation(model_spec=SPEC, backend="onnxruntime"))
    check_manifest(old, Expectation(backend="tensorrt"))  # nothing about the device asked
    for sms in (16, 8):
        with pytest.raises(ManifestMismatch) as info:
            check_manifest(old, Expectation(backend="tensorrt", gpu_name="Orin", multiprocessor_count=sms))
        assert "tensorrt.multiprocessor_count: engine built before zsad recorded the GPU's SM count" in str(
            info.value
        )
        assert "rebuild the engines on this device" in str(info.value)


def test_tensorrt_backend_needs_an_engine(tmp_path: Path) -> None:
    m = _manifest(tmp_path, tensorrt=None)
    with pytest.raises(ManifestMismatch, match="built without TensorRT"):
        check_manifest(m, Expectation(backend="tensorrt"))


def test_layout_mismatch(tmp_path: Path) -> None:
    m = _manifest(tmp_path)
    with pytest.raises(
        ManifestMismatch, match=r"options\.input_layout: engine input layout NTCHW, the graph needs"
    ):
        check_manifest(m, Expectation(input_layout="NCTHW"))


def test_prompt_file_change_is_refused(tmp_path: Path) -> None:
    npy = tmp_path / "text_campus.npy"
    npy.write_bytes(b"x")
    text = TextEmbeddings(
        context="campus",
        prompt_set="campus",
        prompt_file="configs/prompts/campus.yaml",
        prompt_sha256="11" * 32,
        normal=3,
        anomalous=4,
        path=npy.name,
        sha256=file_sha256(npy),
        shape=(7, 16),
        context_source="zero-embedding",
        clip_model="/clip",
        build_key="k",
    )
    m = _manifest(tmp_path, "semantic_head", text_embeddings=[text], tensorrt=None)
    check_manifest(m, Expectation(model_spec=SPEC, prompt_sha256={"campus": "11" * 32}))
    with pytest.raises(ManifestMismatch, match=r"prompt_sha256: prompt file .*campus\.yaml changed"):
        check_manifest(m, Expectation(prompt_sha256={"campus": "22" * 32}))
    with pytest.raises(ManifestMismatch, match="no embeddings for context 'parking'"):
        check_manifest(m, Expectation(prompt_sha256={"parking": "22" * 32}))


def test_malformed_manifests_name_file_and_field(tmp_path: Path) -> None:
    m = _manifest(tmp_path)
    path = m.path
    with pytest.raises(ManifestError, match=r"manifest .*missing\.manifest\.json cannot be read"):
        load_manifest(tmp_path / "missing.manifest.json")
    path.write_text(path.read_text()[:200])
    with pytest.raises(ManifestError, match=r"backbone\.manifest\.json is not valid JSON \(line \d+\)"):
        load_manifest(path)
    data = json.loads(json.dumps(m.model_dump(mode="json")))
    data["inputs"][0]["shape"] = [4, 2, 3, 32, 48]
    path.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=r"malformed: inputs\.0: .*dynamic batch"):
        load_manifest(path)
    data = m.model_dump(mode="json")
    data["surprise"] = 1
    path.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="surprise"):
        load_manifest(path)
    path.write_text("[1, 2]")
    with pytest.raises(ManifestError, match="top level must be an object"):
        load_manifest(path)
