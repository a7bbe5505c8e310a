"""Manifests: I/O contracts from the spec, save/load, and every mismatch check_manifest must refuse."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from core.config import ModelConfig
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

SPEC = ModelConfig.model_validate(
    {
        "backbone": {
            "image_height": 32,
            "image_width": 48,
            "patch_size": 8,
            "hidden_size": 32,
            "num_heads": 2,
        },
        "preprocess": {"clip_len": 2, "frame_stride": 1, "clip_hop": 2},
        "dpc": {"context_clips": 2},
        "semantic": {"embed_dim": 16},
    }
).model_dump(mode="json")


def _manifest(tmp_path: Path, component: str = "backbone", **update: object) -> Manifest:
    """A manifest as build-engines writes it, with a stand-in ONNX file (check_manifest never parses it)."""
    onnx = tmp_path / f"{component}.onnx"
    onnx.write_bytes(b"stand-in onnx bytes")
    engine = tmp_path / f"{component}.fp16.sm87-orin.trt10.3.0.engine"
    engine.write_bytes(b"stand-in plan")
    inputs, outputs = component_io(component, SPEC)
    m = Manifest(
        component=component,  # type: ignore[arg-type]
        zsad_version="0.1.0",
        created="2026-01-01T00:00:00+00:00",
        inputs=inputs,
        outputs=outputs,
        preprocessing=preprocessing_from_spec(SPEC),
        model_spec=SPEC,
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


def _spec(**changes: dict[str, object]) -> dict:
    spec = copy.deepcopy(SPEC)
    for section, values in changes.items():
        spec[section].update(values)
    return spec


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
    assert [i.name for i in ins] == ["history", "current", "last_frame", "current_frame"]
    ins, _ = component_io("dpc_head", {**SPEC, "dpc": {**SPEC["dpc"], "decoder": "extrapolate"}})
    assert [i.name for i in ins][-1] == "prev_frame"
    assert ins[-1].shape == (-1, 3, 32, 48)
    assert ins[0].shape == (-1, 2, 2, 32, 4, 6)
    assert [o.shape for o in outs] == [(-1, 4, 6)] * 3
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
        ),
    )


def test_spec_hash_ignores_machine_local_paths() -> None:
    moved = _spec(backbone={"pretrained": "/models/timesformer"}, semantic={"clip_text_model": "/opt/clip"})
    assert spec_sha256(moved) == spec_sha256(SPEC)
    assert spec_diff(SPEC, moved) == []
    assert spec_sha256(_spec(backbone={"num_layers": 3})) != spec_sha256(SPEC)


def test_shape_mismatch_names_the_field(tmp_path: Path) -> None:
    m = _manifest(tmp_path)
    with pytest.raises(
        ManifestMismatch, match=r"backbone\.manifest\.json: inputs\[0\]\.shape: clip has shape"
    ):
        check_manifest(m, Expectation(model_spec=_spec(backbone={"image_width": 64})))


def test_preprocessing_mismatch_names_the_field(tmp_path: Path) -> None:
    m = _manifest(tmp_path)
    with pytest.raises(ManifestMismatch, match=r"preprocessing\.mean"):
        check_manifest(m, Expectation(model_spec=_spec(preprocess={"mean": [0.5, 0.5, 0.5]})))


def test_spec_mismatch_outside_shapes_names_the_spec_field(tmp_path: Path) -> None:
    m = _manifest(tmp_path)
    with pytest.raises(ManifestMismatch, match=r"model_spec_sha256: .*model\.backbone\.num_layers"):
        check_manifest(m, Expectation(model_spec=_spec(backbone={"num_layers": 4})))


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
    (tmp_path / "backbone.fp16.sm87-orin.trt10.3.0.engine").unlink()
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
    ],
)
def test_tensorrt_device_mismatch(tmp_path: Path, expectation: dict, field: str, reason: str) -> None:
    m = _manifest(tmp_path)
    with pytest.raises(ManifestMismatch) as info:
        check_manifest(m, Expectation(backend="tensorrt", **expectation))
    assert field in str(info.value)
    assert reason in str(info.value)
    assert "backbone.manifest.json" in str(info.value)


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
