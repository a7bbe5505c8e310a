"""The generated DeepStream config files: GLib key-file syntax, documented key names, snapshots for 1, 4 and
16 cameras, the normalisation and clip-timing math, the NCTHW/NTCHW layout handling and refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.config import ConfigError, ZsadConfig, parse_config
from pipeline.deepstream.render import (
    BACKBONE_UNIQUE_ID,
    SEQUENCE_PREPROCESS_LIB,
    ClipGeometry,
    KeyFile,
    LayoutMismatch,
    RenderError,
    backbone_geometry,
    normalisation,
    render_all,
    render_mux,
    render_nvinfer,
    render_preprocess,
    sequence_params,
)
from tests.fixtures.deepstream_fixtures import ENGINE_DIR, backbone_manifest, site_config
from tests.fixtures.snapshots import assert_snapshot

GLib = pytest.importorskip("gi.repository.GLib")

# [property] keys as documented (gstnvinfer_property_parser.h; nvdspreprocess plugin manual and the
# 3D action sample; the new nvstreammux config keys), see shared/docs/deepstream-tensorrt.md sections 1.3-1.7.
NVINFER_KEYS = {
    "gie-unique-id", "process-mode", "interval", "labelfile-path", "gpu-id", "secondary-reinfer-interval",
    "output-tensor-meta", "enable-dla", "use-dla-core", "batch-size", "tensor-meta-pool-size", "network-mode",
    "model-engine-file", "int8-calib-file", "workspace-size", "output-blob-names", "is-classifier",
    "network-type", "force-implicit-batch-dim", "infer-dims", "output-io-formats", "layer-device-precision",
    "model-color-format", "net-scale-factor", "offsets", "mean-file", "maintain-aspect-ratio",
    "symmetric-padding", "scaling-filter", "scaling-compute-hw", "network-input-order",
    "input-tensor-from-meta", "custom-lib-path", "parse-bbox-func-name", "engine-create-func-name",
    "parse-classifier-func-name",
    "onnx-file", "tlt-encoded-model", "tlt-model-key", "num-detected-classes", "cluster-mode",
    "classifier-threshold", "operate-on-gie-id", "operate-on-class-ids", "disable-output-host-copy",
}  # fmt: skip
PREPROCESS_KEYS = {
    "enable", "unique-id", "gpu-id", "target-unique-ids", "network-input-order", "process-on-frame",
    "maintain-aspect-ratio", "symmetric-padding", "processing-width", "processing-height",
    "scaling-buf-pool-size", "tensor-buf-pool-size", "network-input-shape", "network-color-format",
    "tensor-data-type", "tensor-name", "scaling-pool-memory-type", "scaling-pool-compute-hw",
    "scaling-filter", "custom-lib-path", "custom-tensor-preparation-function",
}  # fmt: skip
PREPROCESS_USER_KEYS = {"channel-scale-factors", "channel-mean-offsets", "stride", "subsample"}
PREPROCESS_GROUP_KEYS = {"src-ids", "process-on-roi", "custom-input-transformation-function"}
MUX_KEYS = {
    "algorithm-type", "batch-size", "overall-max-fps-n", "overall-max-fps-d", "overall-min-fps-n",
    "overall-min-fps-d", "max-same-source-frames", "adaptive-batching", "max-fps-control",
}  # fmt: skip
# Keys whose value is a ';'-separated list; ';' anywhere else would be a stray comment or separator.
LIST_KEYS = {
    "output-blob-names", "layer-device-precision", "network-input-shape", "channel-scale-factors",
    "channel-mean-offsets", "src-ids",
}  # fmt: skip


def parse_keyfile(path: Path) -> GLib.KeyFile:
    keyfile = GLib.KeyFile.new()
    keyfile.load_from_file(str(path), GLib.KeyFileFlags.NONE)
    return keyfile


def check_syntax(path: Path, allowed: dict[str, set[str]]) -> dict[str, dict[str, str]]:
    """Parse with GLib, check groups/keys against the documented names and values for comment text."""
    text = path.read_text()
    assert "#" not in text, f"{path.name} contains '#'"
    keyfile = parse_keyfile(path)
    groups = list(keyfile.get_groups()[0])
    assert set(groups) <= set(allowed), f"unexpected groups {set(groups) - set(allowed)}"
    values: dict[str, dict[str, str]] = {}
    for group in groups:
        keys = list(keyfile.get_keys(group)[0])
        unknown = set(keys) - allowed[group]
        assert not unknown, f"[{group}] has undocumented keys {unknown}"
        values[group] = {}
        for key in keys:
            value = keyfile.get_value(group, key)
            assert value, f"[{group}] {key} is empty"
            assert value == value.strip(), f"[{group}] {key}={value!r} is padded"
            if key in LIST_KEYS:
                assert all(item and item == item.strip() for item in value.split(";")), f"{key}={value!r}"
            else:
                assert ";" not in value, f"[{group}] {key}={value!r} contains ';'"
            values[group][key] = value
    return values


def allowed_preprocess() -> dict[str, set[str]]:
    return {
        "property": PREPROCESS_KEYS,
        "user-configs": PREPROCESS_USER_KEYS,
        "group-0": PREPROCESS_GROUP_KEYS,
    }


@pytest.mark.parametrize("n", [1, 4, 16])
def test_rendered_configs_parse_match_docs_and_snapshots(tmp_path: Path, n: int) -> None:
    cfg = site_config(n, deepstream={"mux": "new"})
    rendered = render_all(cfg, backbone_manifest(cfg), tmp_path / "ds")
    assert rendered.batch == n
    assert rendered.mux is not None
    infer = check_syntax(rendered.nvinfer, {"property": NVINFER_KEYS})["property"]
    pre = check_syntax(rendered.preprocess, allowed_preprocess())
    mux = check_syntax(rendered.mux, {"property": MUX_KEYS})["property"]
    for name, path in (
        ("nvinfer", rendered.nvinfer),
        ("preprocess", rendered.preprocess),
        ("mux", rendered.mux),
    ):
        assert_snapshot(f"deepstream/{name}_{n}cam.txt", path.read_text())

    # nvinfer: tensors in from nvdspreprocess, tensors out as meta, the manifest's engine and ONNX.
    kf = parse_keyfile(rendered.nvinfer)
    assert kf.get_integer("property", "batch-size") == n
    assert kf.get_integer("property", "network-type") == 100
    assert kf.get_integer("property", "network-mode") == 2
    assert kf.get_integer("property", "output-tensor-meta") == 1
    assert kf.get_integer("property", "input-tensor-from-meta") == 1
    assert kf.get_integer("property", "gie-unique-id") == BACKBONE_UNIQUE_ID
    assert infer["output-blob-names"] == "tokens;embedding"
    assert infer["model-engine-file"] == str(ENGINE_DIR / "backbone.fp16.sm87-orin.trt10.3.0.engine")
    assert infer["onnx-file"] == str(ENGINE_DIR / "backbone.ncthw.onnx")
    assert "infer-dims" not in infer  # dims come from the engine / ONNX model
    assert infer["layer-device-precision"].split(";") == [
        "/blocks.0/norm1/LayerNormalization:fp32:gpu",
        "/blocks.0/attn/Softmax:fp32:gpu",
    ]
    # nvdspreprocess: targets the backbone, one group over every camera.
    pkf = parse_keyfile(rendered.preprocess)
    assert pkf.get_integer("property", "target-unique-ids") == BACKBONE_UNIQUE_ID
    assert list(pkf.get_integer_list("group-0", "src-ids")) == list(range(n))
    assert pkf.get_integer("group-0", "process-on-roi") == 0
    assert list(pkf.get_integer_list("property", "network-input-shape")) == [n, 3, 4, 128, 192]
    assert pre["property"]["custom-lib-path"] == SEQUENCE_PREPROCESS_LIB
    assert pre["property"]["tensor-name"] == "clip"
    # The new mux batches every camera.
    assert int(mux["batch-size"]) == n


def test_legacy_mux_writes_no_mux_file(tmp_path: Path) -> None:
    cfg = site_config(2)
    rendered = render_all(cfg, backbone_manifest(cfg), tmp_path)
    assert rendered.mux is None
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "config_infer_backbone.txt",
        "config_preprocess.txt",
    ]


def test_normalisation_reproduces_the_model_input() -> None:
    """The sequence library's (x - offset) * scale equals the CPU graph's (x / 255 - mean) / std."""
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    scales, offsets = normalisation(mean, std)
    x = np.arange(256, dtype=np.float64)[:, None]
    device = (x - np.array(offsets)) * np.array(scales)
    model = (x / 255.0 - np.array(mean)) / np.array(std)
    np.testing.assert_allclose(device, model, rtol=0, atol=1e-9)
    # ...and what lands in the file, after formatting, is still within float32 precision.
    kf = KeyFile.of([("g", [("channel-scale-factors", scales)])])
    written = [float(v) for v in kf.get("g", "channel-scale-factors").split(";")]
    np.testing.assert_allclose(written, scales, rtol=1e-8)


def test_sequence_params_reproduce_the_cpu_clip_grid() -> None:
    """Simulate the sequence library's frame rule and compare with pipeline.clips.ClipRing's clips."""
    from pipeline.clips import ClipRing

    for clip_len, frame_stride, clip_hop in [(4, 2, 8), (4, 2, 4), (8, 1, 4), (2, 2, 2), (3, 3, 9)]:
        stride, subsample = sequence_params(frame_stride, clip_hop)
        # The library's rule (custom_sequence_preprocess): keep frames more than `subsample` apart; a
        # sequence is ready once T frames are kept and the last is >= next_ready, which then advances by
        # stride * (subsample + 1).
        kept: list[int] = []
        next_ready = (clip_len - 1) * (subsample + 1)
        device_clips = []
        for f in range(60):
            if kept and (f <= kept[-1] + subsample or f + (clip_len - 1) * (subsample + 1) < next_ready):
                continue
            kept.append(f)
            if len(kept) >= clip_len and f >= next_ready:
                device_clips.append(kept[-clip_len:])
                next_ready = f + stride * (subsample + 1)
        ring = ClipRing("c", clip_len, frame_stride, clip_hop)
        frame = np.zeros((2, 2, 3), np.uint8)
        cpu_clips = []
        for f in range(60):
            clip = ring.push(float(f), frame)
            if clip is not None:
                cpu_clips.append([int(p) for p in clip.pts])
        assert device_clips == cpu_clips, (clip_len, frame_stride, clip_hop)


def test_clip_hop_not_multiple_of_stride_is_refused() -> None:
    with pytest.raises(RenderError, match="clip_hop 3 is not a multiple of frame_stride 2"):
        sequence_params(2, 3)


def test_rendered_shape_agrees_with_the_manifest_layout() -> None:
    cfg = site_config(4)
    for layout in ("NCTHW", "NTCHW"):
        manifest = backbone_manifest(cfg, layout=layout)
        geometry = backbone_geometry(manifest, 4, preprocess_lib=None if layout == "NCTHW" else "/opt/lib.so")
        shape = geometry.network_input_shape()
        assert shape[1:] == manifest.inputs[0].shape[1:]
        assert dict(zip(layout, shape, strict=True)) == {"N": 4, "C": 3, "T": 4, "H": 128, "W": 192}


def test_ntchw_backbone_is_refused_with_the_stock_library() -> None:
    cfg = site_config(2)
    manifest = backbone_manifest(cfg, layout="NTCHW")
    with pytest.raises(LayoutMismatch, match=r"takes NTCHW.*produces NCTHW.*--input-layout NCTHW"):
        render_preprocess(cfg, manifest, 2)


def test_custom_library_renders_the_ntchw_shape() -> None:
    cfg = site_config(2, deepstream={"preprocess_lib": "/opt/zsad/lib/libntchw.so"})
    keyfile = render_preprocess(cfg, backbone_manifest(cfg, layout="NTCHW"), 2)
    assert keyfile.get("property", "network-input-shape") == "2;4;3;128;192"
    assert keyfile.get("property", "custom-lib-path") == "/opt/zsad/lib/libntchw.so"


def test_manifest_whose_shape_contradicts_its_layout_is_refused() -> None:
    cfg = site_config(1)
    manifest = backbone_manifest(cfg, layout="NTCHW")
    lying = manifest.model_copy(update={"options": {"input_layout": "NCTHW"}}).bind(ENGINE_DIR)
    with pytest.raises(LayoutMismatch, match=r"does not match options\.input_layout NCTHW"):
        backbone_geometry(lying, 1)


def test_unknown_layout_is_refused() -> None:
    with pytest.raises(LayoutMismatch, match="unknown clip layout"):
        ClipGeometry(1, 4, 8, 8, "NHWC").network_input_shape()


def test_too_many_cameras_for_the_engine_profile() -> None:
    cfg = site_config(16)
    with pytest.raises(RenderError, match=r"16 cameras .* profile stops at 8.*--max-batch 16"):
        render_all(cfg, backbone_manifest(cfg, max_batch=8), "/nonexistent")


def test_profile_must_accept_partial_batches() -> None:
    cfg = site_config(4)
    with pytest.raises(RenderError, match="min_batch is 2"):
        render_all(cfg, backbone_manifest(cfg, min_batch=2), "/nonexistent")


def test_no_cameras_is_refused() -> None:
    cfg = site_config(0)
    with pytest.raises(RenderError, match="at least one enabled camera"):
        render_all(cfg, backbone_manifest(cfg), "/nonexistent")


def test_onnx_only_manifest_lets_nvinfer_build(tmp_path: Path) -> None:
    cfg = site_config(1)
    infer = render_nvinfer(cfg, backbone_manifest(cfg, tensorrt=False), 1)
    assert infer.get("property", "onnx-file").endswith("backbone.ncthw.onnx")
    assert infer.get("property", "network-mode") == "2"
    with pytest.raises(KeyError):
        infer.get("property", "model-engine-file")


def test_values_with_comment_characters_are_refused() -> None:
    with pytest.raises(RenderError, match="contains"):
        KeyFile.of([("property", [("onnx-file", "/models/a#b.onnx")])])
    with pytest.raises(RenderError, match="contains"):
        KeyFile.of([("property", [("tensor-name", "clip;x")])])
    with pytest.raises(RenderError, match="repeats a key"):
        KeyFile.of([("property", [("a", 1), ("a", 2)])])


def test_inline_comment_would_corrupt_values(tmp_path: Path) -> None:
    """Why the renderer never writes inline comments: GLib keeps them in the value (doc finding 9)."""
    path = tmp_path / "bad.txt"
    path.write_text("[property]\ntensor-name=clip # the input\n")
    assert parse_keyfile(path).get_value("property", "tensor-name") == "clip # the input"


def test_mux_fps_bounds() -> None:
    cfg = site_config(2, deepstream={"mux": "new", "mux_min_fps": 30, "mux_max_fps": 10})
    with pytest.raises(RenderError, match="mux_min_fps 30"):
        render_mux(cfg, 2)


def test_deepstream_section_is_strict_and_bounded() -> None:
    with pytest.raises(ConfigError, match=r"deepstream\.mux"):
        parse_config("deepstream:\n  mux: fancy\n")
    with pytest.raises(ConfigError, match=r"deepstream\.batched_push_timeout_us"):
        parse_config("deepstream:\n  batched_push_timeout_us: 1\n")
    with pytest.raises(ConfigError, match="unknown key"):
        parse_config("deepstream:\n  output:\n    kind: file\n    codec: h265\n")
    cfg = parse_config("graph: deepstream\ndeepstream:\n  output: {kind: rtsp, rtsp_port: 8555}\n")
    assert cfg.deepstream.output.rtsp_port == 8555
    assert ZsadConfig().deepstream.mux == "legacy"
