"""The semantic stream from the CLIP appearance engine (``appearance.encoder: clip``,
``appearance.semantic``): one encoding of a camera's frame gives both the appearance stream's patch
features and CLIP's image embedding, which is scored against the camera's prompts as embedded by the same
CLIP's text tower. A tiny, seeded, random ``CLIPModel`` with a byte-level tokenizer stands in for real CLIP
weights (none can be downloaded here): what is checked is the wiring (equal to Hugging Face's own forward
and text tower, the engine's I/O, manifest, parity and rebuilds, and the run's scores), not what a real
CLIP would see."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import CLIPModel

from core.config import ZsadConfig
from engines.appearance import ClipAppearanceEncoder, EncoderWeightsError, load_encoder
from engines.backends import load_backend
from engines.build import BuildInputError, BuildOptions, build_from_config
from engines.encoders import clip_embed_dim, has_tokenizer
from engines.export import random_feeds
from engines.manifest import load_manifest
from engines.prompts import PROMPT_DIR, load_prompt_set
from engines.semantic import TextEncoder
from pipeline.clips import Clip
from pipeline.inference import ClipInference, EngineSet, appearance_expectation, load_engines
from plugins.appearance import AppearanceMemories, fit_memory
from plugins.fusion import Calibration, CalibrationError, StreamStats, check_semantic_source
from plugins.semantic import DEFAULT_CONTEXT, PromptBank, PromptBanks, SemanticError, match_prompts
from plugins.streams import APPEARANCE, SEMANTIC
from tests.fixtures.tiny_models import make_tiny_clip, tiny_model, tiny_model_dict

EMBED = 24  # the tiny CLIP's projection_dim
PATCH16 = {"patch_size": 16}  # the backbone's grid is then CLIP's one token per 16x16 cell: 2 x 3


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A full tiny CLIP (image tower 128 wide, patch 32, text tower, tokenizer)."""
    vision = {"hidden_size": 128, "intermediate_size": 256, "num_attention_heads": 4, "image_size": 64}
    return make_tiny_clip(
        tmp_path_factory.mktemp("clip"), projection_dim=EMBED, vision=vision | {"patch_size": 32}
    )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from engines.model import ZsadModel, save_checkpoint

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("ckpt")
    return save_checkpoint(ZsadModel(tiny_model(backbone=PATCH16)).eval(), folder / "tiny.safetensors")


def _config(engines: Path, checkpoint: Path, clip: Path, **appearance: Any) -> ZsadConfig:
    return ZsadConfig.model_validate(
        {
            "model": tiny_model_dict(backbone=PATCH16),
            "engines": {"dir": str(engines), "checkpoint": str(checkpoint), "threads": 1},
            "defaults": {"context": "campus"},
            "appearance": {"encoder": "clip", "weights": str(clip), **appearance},
        }
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, checkpoint: Path, clip_dir: Path) -> ZsadConfig:
    cfg = _config(tmp_path_factory.mktemp("engines"), checkpoint, clip_dir)
    build_from_config(cfg, options=BuildOptions(backend="onnxruntime"))
    return cfg


def _reference_embedding(folder: Path, frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Hugging Face's own image embedding of the frames resized to ``size`` (positions interpolated)."""
    model = CLIPModel.from_pretrained(str(folder), local_files_only=True, attn_implementation="eager")
    x = torch.nn.functional.interpolate(frames, size=size, mode="bilinear")
    with torch.no_grad():
        pooled = model.vision_model(pixel_values=x, interpolate_pos_encoding=True).pooler_output
        return torch.nn.functional.normalize(model.visual_projection(pooled), dim=-1)


def test_the_encoder_gives_clips_own_image_embedding_beside_the_features(clip_dir: Path) -> None:
    with_embedding = load_encoder(clip_dir, "x", "clip", embedding=True)
    features_only = load_encoder(clip_dir, "x", "clip")
    assert isinstance(with_embedding, ClipAppearanceEncoder)
    assert (with_embedding.embed_dim, features_only.embed_dim) == (EMBED, 0)  # type: ignore[union-attr]
    frames = torch.randn(3, 3, 32, 48, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        features, embedding = with_embedding(frames)
        alone = features_only(frames)
    assert isinstance(alone, torch.Tensor)
    torch.testing.assert_close(features, alone, rtol=0, atol=0)  # the embedding changes no feature
    assert embedding.shape == (3, EMBED)
    torch.testing.assert_close(embedding.norm(dim=-1), torch.ones(3))
    # 32 x 48 frames are resized to 64 x 96 for a patch-32 tower (one token per 16x16 cell of the frame).
    torch.testing.assert_close(
        embedding, _reference_embedding(clip_dir, frames, (64, 96)), rtol=1e-4, atol=1e-4
    )


def test_what_has_no_embedding_or_no_words_says_so(clip_dir: Path, tmp_path: Path) -> None:
    """MobileNetV2 and an image tower alone have no embedding; a folder without a tokenizer cannot embed
    prompts, where transformers would silently build a tokenizer of two special tokens."""
    with pytest.raises(EncoderWeightsError, match="only clip has one"):
        load_encoder(tmp_path / "w.pth", "", "mobilenet_v2", embedding=True)
    model = CLIPModel.from_pretrained(str(clip_dir), local_files_only=True)
    tower = tmp_path / "tower"
    from transformers import CLIPVisionModel

    vision = CLIPVisionModel(model.config.vision_config)
    vision.save_pretrained(str(tower))
    assert clip_embed_dim(tower) == 0
    assert clip_embed_dim(clip_dir) == EMBED
    with pytest.raises(EncoderWeightsError, match="no visual projection"):
        load_encoder(tower, "", "clip", embedding=True)
    bare = tmp_path / "bare"
    model.save_pretrained(str(bare))  # weights and config, no tokenizer files
    assert has_tokenizer(clip_dir)
    assert not has_tokenizer(bare)


def test_the_engine_has_the_embedding_output_and_the_prompts_of_the_same_clip(
    built: ZsadConfig, clip_dir: Path
) -> None:
    folder = Path(built.engines.dir)
    m = load_manifest(folder / "appearance.manifest.json")
    assert [(t.name, t.shape, t.layout) for t in m.outputs] == [
        ("features", (-1, 128, 2, 3), "NCHW"),
        ("embedding", (-1, EMBED), "NC"),
    ]
    assert m.model_spec["embed_dim"] == EMBED
    assert set(m.parity[0].max_rel_error) == {"features", "embedding"}
    [text] = m.text_embeddings
    assert (text.context, text.context_source, text.path) == (
        "campus",
        "ungated",
        "appearance_text_campus.npy",
    )
    assert text.clip_model == str(clip_dir)
    prompts = load_prompt_set(PROMPT_DIR / "campus.yaml")
    want = TextEncoder(str(clip_dir)).encode(list(prompts.prompts)).numpy()
    np.testing.assert_allclose(np.load(folder / text.path), want, rtol=1e-5, atol=1e-6)
    assert (text.normal, text.anomalous) == (len(prompts.normal), len(prompts.anomalous))
    # The torch reference, rebuilt from the folder the manifest names, gives both outputs as ONNX Runtime.
    feeds = random_feeds(m.inputs, 2, np.random.default_rng(0))
    with load_backend(m, "onnxruntime") as ort, load_backend(m, "torch") as ref:
        got, ref_out = ort(feeds), ref(feeds)
    for name in ("features", "embedding"):
        np.testing.assert_allclose(got[name], ref_out[name], rtol=1e-4, atol=1e-4)


def test_turning_the_semantic_stream_off_rebuilds_the_engine_without_it(
    checkpoint: Path,
    clip_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import core.datafile

    engines = tmp_path / "engines"
    build_from_config(_config(engines, checkpoint, clip_dir), options=BuildOptions(backend="onnxruntime"))
    assert (engines / "appearance_text_campus.npy").is_file()
    read: list[str] = []
    real = core.datafile.file_sha256

    def recording(path: Any, *args: Any, **kwargs: Any) -> str:
        read.append(Path(path).name)
        return real(path, *args, **kwargs)

    for module in ("engines.build", "engines.encoders"):
        monkeypatch.setattr(f"{module}.file_sha256", recording)
    again = build_from_config(
        _config(engines, checkpoint, clip_dir), options=BuildOptions(backend="onnxruntime")
    )
    monkeypatch.undo()
    # Up to date without reading the CLIP weights again (gigabytes for a real CLIP); its small files are read.
    assert "model.safetensors" not in read
    assert "vocab.json" in read
    steps = {(s.component, s.step): s.status for s in again.steps}
    assert steps[("appearance", "onnx")] == "up to date"
    assert steps[("appearance", "text[campus]")] == "up to date"
    report = build_from_config(
        _config(engines, checkpoint, clip_dir, semantic=False), options=BuildOptions(backend="onnxruntime")
    )
    m = load_manifest(engines / "appearance.manifest.json")
    assert [t.name for t in m.outputs] == ["features"]
    assert not m.text_embeddings
    assert "embed_dim" not in m.model_spec
    assert not (engines / "appearance_text_campus.npy").exists()
    assert {(s.component, s.step): s.status for s in report.steps}[("appearance", "export")] == "built"
    cfg = _config(
        engines, checkpoint, clip_dir
    )  # the config asks for it; the engine has none: said, not used
    with caplog.at_level(logging.WARNING, logger="pipeline.inference"):
        loaded = load_engines(cfg)
    try:
        assert loaded.appearance is not None
        assert loaded.appearance_texts == {}
    finally:
        loaded.close()
    said = [r for r in caplog.records if "the semantic stream does not come from it" in r.getMessage()]
    assert len(said) == 1  # once a start, however many checks look at the engine


def test_a_folder_without_a_tokenizer_builds_the_appearance_engine_alone(
    checkpoint: Path, clip_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bare = tmp_path / "bare"
    CLIPModel.from_pretrained(str(clip_dir), local_files_only=True).save_pretrained(str(bare))
    engines = tmp_path / "engines"
    with caplog.at_level(logging.WARNING, logger="engines.build"):
        build_from_config(_config(engines, checkpoint, bare), options=BuildOptions(backend="onnxruntime"))
    assert "has no tokenizer to embed the prompts with" in caplog.text
    m = load_manifest(engines / "appearance.manifest.json")
    assert [t.name for t in m.outputs] == ["features"]
    assert not m.text_embeddings


def _clip(camera: str, index: int, frames: np.ndarray) -> Clip:
    return Clip(camera, index, frames, np.arange(frames.shape[0], dtype=np.float64), index * frames.shape[0])


def _expected(engines: EngineSet, frame: np.ndarray, bank: PromptBank) -> tuple[float, str]:
    """The semantic match of one frame, computed apart from ClipInference: the engine's embedding of the
    frame normalised with the manifest's mean and std, against the bank."""
    pre = engines.appearance.manifest.preprocessing  # type: ignore[union-attr]
    x = (frame.astype(np.float32) / 255.0 - np.array(pre.mean, np.float32)) / np.array(pre.std, np.float32)
    emb = engines.appearance({"frames": x.transpose(2, 0, 1)[None]})["embedding"][0]  # type: ignore[misc]
    return match_prompts(emb, bank)


def test_the_run_scores_each_clips_last_frame_against_its_cameras_prompts(built: ZsadConfig) -> None:
    """The semantic stream runs from the appearance engine (no semantic head), every 2nd clip encoded, the
    clips between keeping the camera's last match and map, whether the camera has prompts only (a), a memory
    and prompts (m) or a memory only (n, a context without prompts); a camera with neither (c) gets neither
    stream and costs no encoding."""
    engines = load_engines(built)
    try:
        assert set(engines.appearance_texts) == {"campus"}
        assert engines.semantic_source == "appearance"
        bank = engines.appearance_texts["campus"]
        rng = np.random.default_rng(3)
        h, w = engines.frame_size[1], engines.frame_size[0]
        expect = appearance_expectation(engines)
        assert expect is not None
        normal = rng.integers(0, 256, (40, 3, h, w)).astype(np.float32) / 255.0
        memory = fit_memory(
            engines.appearance({"frames": normal})["features"],  # type: ignore[misc]
            encoder=expect.encoder,
            weights_sha256=expect.weights_sha256,
        )
        memories = AppearanceMemories()
        memories.set("m", memory)
        memories.set("n", memory)
        cameras = {"a": "campus", "m": "campus", "n": "parking", "c": "parking"}
        inference = ClipInference(
            engines,
            context_clips=built.model.dpc.context_clips,
            history_step=1,
            contexts=dict(cameras),
            memories=memories,
            appearance_every=2,
        )
        results: dict[str, list[Any]] = {c: [] for c in cameras}
        frames: dict[str, list[np.ndarray]] = {c: [] for c in cameras}
        for index in range(6):
            batch = []
            for camera in cameras:
                clip_frames = rng.integers(0, 256, (2, h, w, 3), dtype=np.uint8)
                frames[camera].append(clip_frames[-1])
                batch.append(_clip(camera, index, clip_frames))
            for clip, res in zip(batch, inference(batch), strict=True):
                results[clip.camera_id].append(res)
        scored = [i for i, r in enumerate(results["a"]) if r.scores is not None]
        assert len(scored) >= 3
        for camera in ("a", "m"):
            for n, i in enumerate(scored):
                encoded = scored[n - n % 2]  # the last encoded clip: every 2nd scored one
                score, prompt = _expected(engines, frames[camera][encoded], bank)
                res = results[camera][i]
                assert res.scores.scores[SEMANTIC] == pytest.approx(score, abs=1e-5)
                assert res.prompt == prompt
            # Random frames differ: the scores of the encoded clips differ, and the kept ones repeat them.
            values = [results[camera][i].scores.scores[SEMANTIC] for i in scored]
            assert values[0] == values[1]
            assert values[0] != values[2]
        for camera in ("m", "n"):  # a memory: the appearance map, kept between encodings too
            maps = [results[camera][i].scores.maps[APPEARANCE] for i in scored]
            np.testing.assert_array_equal(maps[0], maps[1])
            assert not np.array_equal(maps[0], maps[2])
        for camera in ("n", "c"):
            for i in scored:
                assert SEMANTIC not in results[camera][i].scores.scores
                assert results[camera][i].prompt is None
        for i in scored:
            assert APPEARANCE not in results["a"][i].scores.maps
            assert APPEARANCE not in results["c"][i].scores.maps
    finally:
        engines.close()


def test_a_semantic_head_beside_it_is_not_opened_unless_the_appearance_engine_is_off(
    checkpoint: Path, clip_dir: Path, tmp_path: Path
) -> None:
    """One source of the semantic stream: with the CLIP appearance engine's prompts, a semantic head built
    from model.semantic.clip_text_model is left closed; with appearance.semantic: false it is the source. A
    text CLIP without a tokenizer fails the build by name instead of embedding every prompt the same."""
    text_clip = make_tiny_clip(tmp_path / "text_clip", projection_dim=16)  # the tiny model's semantic width
    engines = tmp_path / "engines"

    def config(semantic: bool, text: Path) -> ZsadConfig:
        cfg = _config(engines, checkpoint, clip_dir, semantic=semantic)
        model = tiny_model_dict(backbone=PATCH16, semantic={"clip_text_model": str(text)})
        return ZsadConfig.model_validate({**cfg.model_dump(mode="json"), "model": model})

    build_from_config(config(True, text_clip), options=BuildOptions(backend="onnxruntime"))
    assert (engines / "semantic_head.manifest.json").is_file()
    loaded = load_engines(config(True, text_clip))
    try:
        assert loaded.semantic is None
        assert loaded.semantic_source == "appearance"
    finally:
        loaded.close()
    loaded = load_engines(config(False, text_clip))
    try:
        assert loaded.semantic is not None
        assert loaded.appearance_texts == {}
        assert loaded.semantic_source == "head"
    finally:
        loaded.close()
    bare = tmp_path / "bare"
    CLIPModel.from_pretrained(str(text_clip), local_files_only=True).save_pretrained(str(bare))
    with pytest.raises(BuildInputError, match="has no tokenizer"):
        build_from_config(
            config(True, bare), options=BuildOptions(backend="onnxruntime", components=("semantic_head",))
        )


def test_a_calibration_of_the_other_semantic_source_is_refused() -> None:
    stats = {SEMANTIC: StreamStats(0.0, 1.0, 50), "pixel": StreamStats(0.0, 1.0, 50)}
    mine = Calibration(streams=stats, rule="max", semantic_source="appearance")
    again = Calibration.from_dict(mine.to_dict())
    assert again.semantic_source == "appearance"
    check_semantic_source(again, "appearance")
    check_semantic_source(again, None)  # the run has no semantic stream: nothing to refuse
    with pytest.raises(CalibrationError, match=r"calibrated on the appearance source .* comes from the head"):
        check_semantic_source(again, "head")
    older = Calibration(streams=stats, rule="max")  # from before the source was recorded: the head's
    assert "semantic_source" not in older.to_dict()
    check_semantic_source(older, "head")
    with pytest.raises(CalibrationError, match="recalibrate"):
        check_semantic_source(older, "appearance")
    check_semantic_source(Calibration(streams={"pixel": StreamStats(0.0, 1.0, 50)}), "appearance")
    with pytest.raises(CalibrationError, match="semantic_source must be one of"):
        Calibration(streams=stats, semantic_source="clip")


def test_prompts_of_another_width_are_refused_by_name() -> None:
    bank = PromptBank(np.eye(3, 5, dtype=np.float32), 1, ("a", "b", "c"))
    banks = PromptBanks({DEFAULT_CONTEXT: bank}, {})
    with pytest.raises(SemanticError, match="camera cam: an embedding of shape"):
        banks.match("cam", np.ones(4, np.float32))
    assert banks.match("cam", np.ones(5, np.float32)) is not None
    assert PromptBanks({}, {}).match("cam", np.ones(5, np.float32)) is None


def test_eval_scores_the_semantic_stream_from_the_clip_encoder(
    clip_dir: Path, tmp_path: Path, checkpoint: Path
) -> None:
    """``zsad eval`` with a full CLIP folder: the semantic stream is scored from the encoder's image
    embeddings (calibrated like the appearance stream, on the same clips) and reported alone; with
    ``appearance.semantic: false`` it is not."""
    from tests.fixtures.tiny_data import write_ucsd_layout
    from training.evaluate import evaluate

    data = write_ucsd_layout(tmp_path / "ucsd", n_train=2, n_test=1, frames=40)

    def run(semantic: bool, out: str) -> dict[str, Any]:
        cfg = ZsadConfig.model_validate(
            {
                "model": tiny_model_dict(backbone=PATCH16),
                "train": {"dataset": {"kind": "ucsd", "root": str(data)}},
                "appearance": {"encoder": "clip", "weights": str(clip_dir), "semantic": semantic},
                "stationary": {"enabled": False},
            }
        )
        return evaluate(cfg, checkpoint, tmp_path / out)

    on = run(True, "on")
    streams = on["calibration"]["streams"]
    assert SEMANTIC in streams
    assert streams[SEMANTIC]["n"] == streams["appearance"]["n"]  # one score per calibration clip, both
    alone = next(k for k in on["summary"] if k.startswith(f"stream: {SEMANTIC} (raw)"))
    assert np.isfinite(on["summary"][alone]["micro_auc"])
    off = run(False, "off")
    assert SEMANTIC not in off["calibration"]["streams"]
    assert not any(k.startswith(f"stream: {SEMANTIC}") for k in off["summary"])


def test_validate_says_which_cameras_must_be_recalibrated_and_what_a_folder_lacks(
    clip_dir: Path, checkpoint: Path, tmp_path: Path
) -> None:
    from pipeline.cli.validate import config_warnings
    from plugins.fusion import save_calibration

    stats = {SEMANTIC: StreamStats(0.0, 1.0, 50), "pixel": StreamStats(0.0, 1.0, 50)}
    old = tmp_path / "old.json"  # the semantic head's (no source recorded)
    save_calibration(Calibration(streams=stats, rule="max"), old)
    new = tmp_path / "new.json"
    save_calibration(Calibration(streams=stats, rule="max", semantic_source="appearance"), new)

    def warnings(clip: Path) -> list[str]:
        cfg = _config(tmp_path / "engines", checkpoint, clip)
        cameras = [
            {"id": "old", "uri": "rtsp://127.0.0.1:8554/a", "calibration": str(old)},
            {"id": "new", "uri": "rtsp://127.0.0.1:8554/b", "calibration": str(new)},
        ]
        return config_warnings(ZsadConfig.model_validate({**cfg.model_dump(mode="json"), "cameras": cameras}))

    (line,) = warnings(clip_dir)
    assert line.startswith("camera old: ")
    assert "calibrated on the head source and this run's comes from the appearance" in line
    bare = tmp_path / "bare"
    CLIPModel.from_pretrained(str(clip_dir), local_files_only=True).save_pretrained(str(bare))
    no_stream = (
        f"appearance: semantic is on but the CLIP folder {bare} has no tokenizer: an appearance engine built "
        "from it feeds the appearance stream only (no semantic stream)"
    )
    assert warnings(bare) == [no_stream]  # no semantic stream at all, so neither calibration is refused
    # Engines already built: a run opens them and does not rebuild, so they, not the config, decide.
    build_from_config(
        _config(tmp_path / "engines", checkpoint, clip_dir), options=BuildOptions(backend="onnxruntime")
    )
    got = warnings(bare)
    assert got[0] == no_stream
    assert got[1].startswith("camera old: ")
    assert "calibrated on the head source and this run's comes from the appearance" in got[1]
    assert len(got) == 2


class _CountingEngine:
    """An engine that counts the frames it is given, and is otherwise the engine it wraps."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.frames = 0

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.frames += len(feeds["frames"])
        return self.inner(feeds)  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_calibrate_records_the_appearance_source_and_a_run_keeps_it(
    world: dict[str, Path], clip_dir: Path, tmp_path: Path
) -> None:
    """``zsad calibrate`` with the CLIP appearance engine: the camera's semantic stream is calibrated from the
    image embedding, at no extra encoding, and the file says so, so a run of the same engines keeps it."""
    import shutil

    from pipeline.cli.calibrate import calibrate_camera
    from plugins.fusion import load_calibration
    from tests.fixtures.run_world import scene_uri, site_config

    engines_dir = tmp_path / "engines"
    shutil.copytree(world["engines"], engines_dir)
    camera = {"id": "campus", "uri": scene_uri(world, "training", "campus_000.mp4"), "context": "campus"}
    raw = site_config(world, tmp_path / "out", [camera])
    raw["engines"] = {"dir": str(engines_dir), "checkpoint": str(world["checkpoint"]), "threads": 1}
    raw["appearance"] = {"encoder": "clip", "weights": str(clip_dir)}
    cfg = ZsadConfig.model_validate(raw)
    build_from_config(cfg, options=BuildOptions(backend="onnxruntime"))  # adds the CLIP appearance engine
    engines = load_engines(cfg)
    try:
        assert engines.semantic_source == "appearance"
        counting = _CountingEngine(engines.appearance)
        engines.appearance = counting  # type: ignore[assignment]
        out = calibrate_camera(cfg, engines, "campus", [camera["uri"]], tmp_path / "campus.json", min_clips=8)
        with_semantic = counting.frames
        # The same calibration without the semantic stream encodes as many frames: the stream reuses the
        # memory's encodings of the clips' last frames, and the pasted-event twins are not scored by it.
        texts, engines.appearance_texts = engines.appearance_texts, {}
        counting.frames = 0
        calibrate_camera(cfg, engines, "campus", [camera["uri"]], tmp_path / "without.json", min_clips=8)
        assert counting.frames == with_semantic
        engines.appearance_texts = texts
    finally:
        engines.close()
    assert SEMANTIC not in load_calibration(tmp_path / "without.json").streams
    cal = load_calibration(out)
    assert SEMANTIC in cal.streams
    assert cal.semantic_source == "appearance"
    assert np.isfinite(cal.streams[SEMANTIC].location)
    check_semantic_source(cal, engines.semantic_source)  # what the run checks: kept


def test_engines_that_do_not_fit_are_refused_by_name(built: ZsadConfig, tmp_path: Path) -> None:
    """Prompt embeddings of another width than the engine's image embedding, or an image embedding claimed by
    an encoder that has none, refuse to start with what to do, instead of failing every clip later."""
    import json
    import shutil

    from engines.manifest import Expectation, ManifestMismatch, check_manifest
    from pipeline.inference import EngineError

    folder = tmp_path / "engines"
    shutil.copytree(built.engines.dir, folder)
    path = folder / "appearance.manifest.json"
    data = json.loads(path.read_text())
    data["text_embeddings"][0]["shape"] = [data["text_embeddings"][0]["shape"][0], EMBED + 1]
    path.write_text(json.dumps(data))
    cfg = built.model_copy(update={"engines": built.engines.model_copy(update={"dir": str(folder)})})
    with pytest.raises(EngineError, match=rf"text_embeddings\[campus\] are {EMBED + 1}-wide .* rebuild"):
        load_engines(cfg)
    # The prompts name the rows: a prompt file edited since the build, or not on this machine, refuses too.
    data = json.loads((Path(built.engines.dir) / "appearance.manifest.json").read_text())
    edited = tmp_path / "campus.yaml"
    edited.write_text(Path(data["text_embeddings"][0]["prompt_file"]).read_text() + "# edited\n")
    data["text_embeddings"][0]["prompt_file"] = str(edited)
    path.write_text(json.dumps(data))
    with pytest.raises(
        EngineError, match=r"text_embeddings\[campus\]: .*campus.yaml changed since the build"
    ):
        load_engines(cfg)
    # Not on this machine: this checkout's configs/prompts/campus.yaml stands in (the same file: it runs).
    edited.unlink()
    load_engines(cfg).close()
    data["text_embeddings"][0]["prompt_file"] = str(tmp_path / "gone" / "nowhere.yaml")
    path.write_text(json.dumps(data))
    with pytest.raises(EngineError, match=r"text_embeddings\[campus\]: .*copy it here, or rebuild"):
        load_engines(cfg)
    m = load_manifest(Path(built.engines.dir) / "appearance.manifest.json")
    mobilenet = m.model_copy(update={"options": {**m.options, "encoder": "mobilenet_v2"}})
    with pytest.raises(ManifestMismatch, match=r"model_spec\.embed_dim"):
        check_manifest(mobilenet, Expectation(model_spec=tiny_model(backbone=PATCH16)))


def test_cameras_with_contexts_are_not_told_the_semantic_stream_is_off(
    built: ZsadConfig, caplog: pytest.LogCaptureFixture
) -> None:
    from types import SimpleNamespace

    from pipeline.run import warn_idle_contexts

    cfg = ZsadConfig.model_validate(
        {
            **built.model_dump(mode="json"),
            "cameras": [{"id": "a", "uri": "rtsp://127.0.0.1/a", "context": "campus"}],
        }
    )
    with caplog.at_level(logging.WARNING, logger="pipeline.run"):
        warn_idle_contexts(cfg.enabled_cameras(), SimpleNamespace(semantic_source="appearance"), "E")  # type: ignore[arg-type]
        assert "only picks the semantic stream's prompts" not in caplog.text
        warn_idle_contexts(cfg.enabled_cameras(), SimpleNamespace(semantic_source=None), "E")  # type: ignore[arg-type]
        assert "camera a: context 'campus' only picks the semantic stream's prompts" in caplog.text


def test_the_demo_calibrates_again_a_camera_whose_calibration_the_run_would_refuse(
    built: ZsadConfig, tmp_path: Path
) -> None:
    from pipeline.cli.demo import calibration_fits
    from plugins.fusion import save_calibration

    stats = {SEMANTIC: StreamStats(0.0, 1.0, 50), "pixel": StreamStats(0.0, 1.0, 50)}
    cfg = ZsadConfig.model_validate(
        {**built.model_dump(mode="json"), "cameras": [{"id": "a", "uri": "rtsp://127.0.0.1/a"}]}
    )
    smoothing = cfg.camera_settings("a").alerts.smoothing
    path = tmp_path / "a.json"
    save_calibration(
        Calibration(streams=stats, rule="max", threshold_smoothing=smoothing), path
    )  # the head's
    assert calibration_fits(cfg, "a", path, "head")
    assert calibration_fits(cfg, "a", path, None)
    assert not calibration_fits(cfg, "a", path, "appearance")


def test_training_refuses_a_clip_folder_without_a_tokenizer(clip_dir: Path, tmp_path: Path) -> None:
    from training.trainer import TrainingError, _attach_text_bank

    bare = tmp_path / "bare"
    CLIPModel.from_pretrained(str(clip_dir), local_files_only=True).save_pretrained(str(bare))
    cfg = ZsadConfig.model_validate({"model": tiny_model_dict(semantic={"clip_text_model": str(bare)})})
    with pytest.raises(
        TrainingError, match=r"model\.semantic\.clip_text_model: CLIP folder .* has no tokenizer"
    ):
        _attach_text_bank(None, cfg, {"v": "generic"})  # type: ignore[arg-type]
