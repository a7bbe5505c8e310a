"""Dataset readers on tiny folders made here: the layouts, labels, contexts, captions and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.datasets import (
    DatasetError,
    decode_video_file,
    load_captions,
    load_split,
    make_dataset,
)

H, W = 12, 16


def colour(clip_index: int, frame: int) -> tuple[int, int, int]:
    return (10 * clip_index + 5, 3 * frame + 1, 200 - frame)


def write_frames(folder: Path, n: int, clip_index: int = 0, start: int = 1, digits: int = 3) -> None:
    """Solid-colour PNG frames (lossless, so values can be checked exactly)."""
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        Image.new("RGB", (W, H), colour(clip_index, k)).save(folder / f"{k + start:0{digits}d}.png")


def make_ucsd(root: Path, manifest: dict | None = None, label_file: str = "ped2_frame_labels.json") -> Path:
    write_frames(root / "training/frames/Train001", 5, 0)
    write_frames(root / "training/frames/Train002", 4, 1)
    write_frames(root / "testing/frames/Test001", 6, 2)
    write_frames(root / "testing/frames/Test002", 3, 3)
    labels = {"Test001": [0, 0, 1, 1, 0, 0], "Test002": [1, 1, 1]}
    (root / "testing/labels").mkdir(parents=True)
    (root / "testing/labels" / label_file).write_text(json.dumps(labels))
    for clip, n in (("Test001", 6), ("Test002", 3)):
        mdir = root / "testing/masks" / clip
        mdir.mkdir(parents=True)
        for k in range(n):
            m = np.zeros((H, W), dtype=bool)
            m[:4, :4] = labels[clip][k] == 1
            Image.fromarray(m).save(mdir / f"{k + 1:03d}.png")
    if manifest is None:
        manifest = {
            "counts": {"training": {"Train001": 5, "Train002": 4}, "testing": {"Test001": 6, "Test002": 3}}
        }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


# ---- the UCSD layout -----------------------------------------------------------------------------------


def test_ucsd_layout_frames_labels_masks(tmp_path: Path) -> None:
    root = make_ucsd(tmp_path / "ped2")
    train = make_dataset("ucsd", root, "train", (6, 8))
    assert train.names == ["Train001", "Train002"]
    assert train.labels == {}
    assert not train.has_labels
    frames = train.frames("Train001")
    assert frames.shape == (5, 6, 8, 3)
    assert frames.dtype == np.uint8
    # solid colours survive bilinear resizing exactly, in RGB order and frame order
    assert tuple(frames[3, 2, 2]) == colour(0, 3)
    assert train.frames("Train001") is frames  # cached, decoded once
    assert not frames.flags.writeable

    test = make_dataset("ucsd", root, "test", None)
    assert test.has_labels
    assert test.labels["Test001"].dtype == np.int8
    assert test.labels["Test001"].tolist() == [0, 0, 1, 1, 0, 0]
    assert test.contexts == {"Test001": "ped2", "Test002": "ped2"}
    assert test.frames("Test002").shape == (3, H, W, 3)
    masks = test.masks("Test001")
    assert masks.shape == (6, H, W)
    assert masks.dtype == bool
    assert masks.any(axis=(1, 2)).tolist() == [False, False, True, True, False, False]

    split = load_split("ucsd", root, "training", (6, 8))
    assert list(split) == ["Train001", "Train002"]
    assert split["Train002"].shape == (4, 6, 8, 3)


def test_synthetic_layout_contexts_and_events(tmp_path: Path) -> None:
    manifest = {
        "counts": {"training": {"Train001": 5, "Train002": 4}, "testing": {"Test001": 6, "Test002": 3}},
        "contexts": {"Train001": "street", "Train002": "park", "Test001": "street", "Test002": "park"},
        "events": {"Test001": [{"kind": "runner", "start": 2, "end": 4}]},
    }
    root = make_ucsd(tmp_path / "synth", manifest, label_file="frame_labels.json")
    test = make_dataset("synthetic", root, "test", (8, 8))
    assert test.contexts == {"Test001": "street", "Test002": "park"}
    assert test.clip("Test001").events == [{"kind": "runner", "start": 2, "end": 4}]
    assert test.clip("Test002").events is None
    assert test.manifest["events"] == manifest["events"]
    assert test.labels["Test002"].tolist() == [1, 1, 1]

    del manifest["contexts"]["Test002"]
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DatasetError, match=r"'Test002'.*no context"):
        make_dataset("synthetic", root, "test", (8, 8))


# ---- bad input names the clip ------------------------------------------------------------------------


def test_gap_in_frame_numbers(tmp_path: Path) -> None:
    root = make_ucsd(tmp_path / "ped2")
    (root / "training/frames/Train002/003.png").unlink()
    with pytest.raises(DatasetError, match=r"'Train002'.*missing frame\(s\) 3 ") as err:
        make_dataset("ucsd", root, "train", (6, 8))
    assert err.value.clip == "Train002"


def test_empty_clip_folder(tmp_path: Path) -> None:
    root = make_ucsd(tmp_path / "ped2")
    (root / "training/frames/Train003").mkdir()
    with pytest.raises(DatasetError, match=r"'Train003'.*no image frames"):
        make_dataset("ucsd", root, "train", (6, 8))


def test_unreadable_image_names_clip_and_file(tmp_path: Path) -> None:
    root = make_ucsd(tmp_path / "ped2")
    (root / "training/frames/Train001/004.png").write_bytes(b"not a png at all")
    ds = make_dataset("ucsd", root, "train", (6, 8))
    with pytest.raises(DatasetError, match=r"'Train001'.*cannot read frame .*004\.png"):
        ds.frames("Train001")


def test_labels_of_wrong_length(tmp_path: Path) -> None:
    root = make_ucsd(tmp_path / "ped2")
    path = root / "testing/labels/ped2_frame_labels.json"
    path.write_text(json.dumps({"Test001": [0, 0, 1, 1], "Test002": [1, 1, 1]}))
    with pytest.raises(DatasetError, match=r"'Test001'.*4 labels .* for 6 frames"):
        make_dataset("ucsd", root, "test", (6, 8))


def test_labels_missing_for_a_clip_or_not_binary(tmp_path: Path) -> None:
    root = make_ucsd(tmp_path / "ped2")
    path = root / "testing/labels/ped2_frame_labels.json"
    path.write_text(json.dumps({"Test001": [0, 0, 1, 1, 0, 0]}))
    with pytest.raises(DatasetError, match=r"'Test002'.*no frame labels"):
        make_dataset("ucsd", root, "test", (6, 8))
    path.write_text(json.dumps({"Test001": [0, 0, 2, 1, 0, 0], "Test002": [1, 1, 1]}))
    with pytest.raises(DatasetError, match=r"'Test001'.*0 or 1"):
        make_dataset("ucsd", root, "test", (6, 8))
    path.write_text(json.dumps({"Test001": [0] * 6, "Test002": [1] * 3, "Test099": [0]}))
    with pytest.raises(DatasetError, match=r"Test099"):
        make_dataset("ucsd", root, "test", (6, 8))


def test_manifest_counts_are_cross_checked(tmp_path: Path) -> None:
    root = make_ucsd(tmp_path / "ped2")
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["counts"]["training"]["Train002"] = 7
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DatasetError, match=r"'Train002'.*says 7 frames .* has 4"):
        make_dataset("ucsd", root, "train", (6, 8))
    manifest["counts"]["training"]["Train002"] = 4
    manifest["counts"]["training"]["Train009"] = 4
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DatasetError, match=r"Train009"):
        make_dataset("ucsd", root, "train", (6, 8))


def test_mixed_frame_sizes_at_native_size(tmp_path: Path) -> None:
    root = make_ucsd(tmp_path / "ped2")
    Image.new("RGB", (W + 2, H), (1, 2, 3)).save(root / "training/frames/Train001/002.png")
    with pytest.raises(DatasetError, match=r"'Train001'.*002.png"):
        make_dataset("ucsd", root, "train", None).frames("Train001")
    # resized on load, the odd frame is fine
    assert make_dataset("ucsd", root, "train", (6, 8)).frames("Train001").shape == (5, 6, 8, 3)


def test_bad_kind_split_and_missing_folders(tmp_path: Path) -> None:
    root = make_ucsd(tmp_path / "ped2")
    with pytest.raises(DatasetError, match=r"unknown dataset kind"):
        make_dataset("ped3", root, "train", (6, 8))
    with pytest.raises(DatasetError, match=r"unknown split"):
        make_dataset("ucsd", root, "val", (6, 8))
    with pytest.raises(DatasetError, match=r"does not exist"):
        make_dataset("ucsd", tmp_path / "nope", "train", (6, 8))
    with pytest.raises(DatasetError, match=r"no training clip folder"):
        make_dataset("avenue", tmp_path, "train", (6, 8))


# ---- Avenue and ShanghaiTech ---------------------------------------------------------------------------


def test_avenue_frame_folders_with_per_clip_label_files(tmp_path: Path) -> None:
    root = tmp_path / "avenue"
    write_frames(root / "training/frames/01", 4, 0, start=0, digits=4)
    write_frames(root / "testing/frames/01", 5, 1, start=0, digits=4)
    write_frames(root / "testing/frames/02", 3, 2, start=0, digits=4)
    (root / "testing/labels").mkdir(parents=True)
    np.save(root / "testing/labels/01.npy", np.array([0, 1, 1, 0, 0], dtype=np.uint8))
    (root / "testing/labels/02.json").write_text("[true, false, false]")
    train = make_dataset("avenue", root, "train", (6, 8))
    assert train.names == ["01"]
    assert train.frames("01").shape == (4, 6, 8, 3)
    assert tuple(train.frames("01")[0, 0, 0]) == colour(0, 0)  # 0000.png is the first frame
    test = make_dataset("avenue", root, "test", (6, 8))
    assert test.labels["01"].tolist() == [0, 1, 1, 0, 0]
    assert test.labels["02"].tolist() == [1, 0, 0]
    assert test.contexts["02"] == "avenue"


def test_avenue_original_video_folder_names(tmp_path: Path) -> None:
    root = tmp_path / "avenue"
    write_frames(root / "training_videos/01", 3, 0, start=0, digits=4)
    write_frames(root / "testing_videos/01", 3, 0, start=0, digits=4)
    (root / "testing_labels").mkdir()
    (root / "testing_labels/01.json").write_text("[0, 0, 1]")
    assert make_dataset("avenue", root, "train", (6, 8)).names == ["01"]
    assert make_dataset("avenue", root, "test", (6, 8)).labels["01"].tolist() == [0, 0, 1]


def test_shanghaitech_layout(tmp_path: Path) -> None:
    root = tmp_path / "sht"
    write_frames(root / "training/frames/01_001", 4, 0, start=0)
    write_frames(root / "training/frames/02_001", 3, 1, start=0)
    write_frames(root / "testing/frames/01_0014", 5, 2, start=0)
    (root / "testing/test_frame_mask").mkdir(parents=True)
    (root / "testing/test_pixel_mask").mkdir(parents=True)
    np.save(root / "testing/test_frame_mask/01_0014.npy", np.array([0, 0, 1, 1, 1]))
    pix = np.zeros((5, H, W), dtype=np.uint8)
    pix[2:, 5, 5] = 1
    np.save(root / "testing/test_pixel_mask/01_0014.npy", pix)
    train = make_dataset("shanghaitech", root, "train", (6, 8))
    assert train.contexts == {"01_001": "sht_scene01", "02_001": "sht_scene02"}
    test = make_dataset("shanghaitech", root, "test", None)
    assert test.labels["01_0014"].tolist() == [0, 0, 1, 1, 1]
    assert test.masks("01_0014").any(axis=(1, 2)).tolist() == [False, False, True, True, True]
    np.save(root / "testing/test_frame_mask/01_0014.npy", np.array([0, 1]))
    with pytest.raises(DatasetError, match=r"'01_0014'.*2 labels .* for 5 frames"):
        make_dataset("shanghaitech", root, "test", None)


# ---- video files (GStreamer) ---------------------------------------------------------------------------


def encode_test_mp4(path: Path, frames: int = 20) -> None:
    """SMPTE colour bars, 64x48, H.264 in MP4, encoded with GStreamer."""
    pytest.importorskip("gi")
    from core.gst import init_gstreamer

    Gst = init_gstreamer()
    if Gst.ElementFactory.find("x264enc") is None or Gst.ElementFactory.find("mp4mux") is None:
        pytest.skip("needs GStreamer x264enc and mp4mux")
    pipeline = Gst.parse_launch(
        f"videotestsrc num-buffers={frames} ! video/x-raw,width=64,height=48,framerate=10/1 ! "
        f"x264enc ! mp4mux ! filesink name=out"
    )
    pipeline.get_by_name("out").set_property("location", str(path))
    pipeline.set_state(Gst.State.PLAYING)
    msg = pipeline.get_bus().timed_pop_filtered(20 * Gst.SECOND, Gst.MessageType.EOS | Gst.MessageType.ERROR)
    pipeline.set_state(Gst.State.NULL)
    assert msg is not None, "encoding the test MP4 timed out"
    assert msg.type == Gst.MessageType.EOS, "encoding the test MP4 failed"


def test_video_folder_decodes_mp4_with_gstreamer(tmp_path: Path) -> None:
    root = tmp_path / "cams"
    root.mkdir()
    encode_test_mp4(root / "gate.mp4")
    (root / "notes.txt").write_text("not a video")
    ds = make_dataset("video_folder", root, "train", (30, 50))  # 50*3 bytes: a padded row stride
    assert ds.names == ["gate"]
    assert ds.clip("gate").num_frames is None
    frames = ds.frames("gate")
    assert frames.shape == (20, 30, 50, 3)
    assert frames.dtype == np.uint8
    # videotestsrc's bars, left to right: white, yellow, ..., blue (checks RGB order and row stride)
    white = frames[0, 5:15, 1:5].reshape(-1, 3).mean(axis=0)
    yellow = frames[0, 5:15, 9:12].reshape(-1, 3).mean(axis=0)
    blue = frames[0, 5:15, 46:49].reshape(-1, 3).mean(axis=0)
    assert np.all(white > 220), white
    assert (yellow > [220, 220, -1]).all(), yellow
    assert (yellow < [256, 256, 40]).all(), yellow
    assert (blue < [40, 40, 256]).all(), blue
    assert blue[2] > 220, blue
    assert decode_video_file(root / "gate.mp4", None).shape == (20, 48, 64, 3)


def test_broken_video_names_the_clip(tmp_path: Path) -> None:
    pytest.importorskip("gi")
    root = tmp_path / "cams"
    (root / "training").mkdir(parents=True)
    (root / "training/cam7.mp4").write_bytes(b"\x00" * 4096)
    ds = make_dataset("video_folder", root, "train", (30, 50))
    with pytest.raises(DatasetError, match=r"'cam7'.*cannot decode"):
        ds.frames("cam7")


# ---- captions -------------------------------------------------------------------------------------------


def test_caption_manifests(tmp_path: Path) -> None:
    as_json = tmp_path / "captions.json"
    as_json.write_text(json.dumps({"Train001": ["people walk", "a quiet path"], "Train002": "two walkers"}))
    assert load_captions(as_json) == {
        "Train001": ["people walk", "a quiet path"],
        "Train002": ["two walkers"],
    }
    as_jsonl = tmp_path / "captions.jsonl"
    as_jsonl.write_text(
        '{"clip": "Train001", "caption": "people walk"}\n\n'
        '{"video": "Train001", "captions": ["a quiet path"]}\n'
        '{"clip": "Other", "caption": "elsewhere"}\n'
    )
    caps = load_captions(as_jsonl)
    assert caps["Train001"] == ["people walk", "a quiet path"]
    root = make_ucsd(tmp_path / "ped2")
    ds = make_dataset("ucsd", root, "train", (6, 8), captions=as_jsonl)
    assert ds.captions == {"Train001": ["people walk", "a quiet path"]}  # clips outside the split dropped
    as_jsonl.write_text('{"clip": "Train001", "caption": "ok"}\n{"clip": "Train002"}\n')
    with pytest.raises(DatasetError, match=r"captions.jsonl:2: .*no caption"):
        load_captions(as_jsonl)
    as_jsonl.write_text("{broken\n")
    with pytest.raises(DatasetError, match=r"captions.jsonl:1: not JSON"):
        load_captions(as_jsonl)
