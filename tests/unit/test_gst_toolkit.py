"""The GStreamer toolkit (core/gst): checked make and link, the RGB copier's row strides, the MP4 writer."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import core.gst as gst
from core.gst import (
    ElementMissingError,
    GstError,
    GstUnavailable,
    LinkError,
    TypelibMissingError,
    init_gstreamer,
    link,
    link_pads,
    load_typelib,
    make,
    missing_elements,
)
from core.gst.frames import FrameError, copy_rgb, i420_to_rgb, rgb_stride, sample_to_rgb
from core.gst.mp4 import Mp4Error, Mp4Writer
from tests.conftest import REPO

gi = pytest.importorskip("gi")


def _gst() -> Any:
    return init_gstreamer()


def _needs(*elements: str) -> None:
    missing = missing_elements(elements)
    if missing:
        pytest.skip(f"needs GStreamer {missing[0]}")


# ---- make and link ------------------------------------------------------------------------------------


def test_make_of_a_missing_element_names_it_and_its_package() -> None:
    with pytest.raises(ElementMissingError, match=r"'no-such-element' is missing") as info:
        make("no-such-element")
    assert info.value.element == "no-such-element"
    assert info.value.package == "a GStreamer plugins package"
    with pytest.raises(ElementMissingError, match=r"'nvfoo' is missing: it is provided by DeepStream 7\.1$"):
        make("nvfoo", "foo", package="DeepStream 7.1")
    err = ElementMissingError("x264enc")
    assert err.package == "gstreamer1.0-plugins-ugly"
    assert "apt-get install gstreamer1.0-plugins-ugly" in str(err)
    assert isinstance(err, GstError)
    assert isinstance(err, RuntimeError)


def test_make_sets_properties_with_dashes() -> None:
    queue = make("queue", "q", max_size_buffers=3, leaky=2)
    assert queue.get_name() == "q"
    assert queue.get_property("max-size-buffers") == 3


def test_a_failed_link_raises_naming_both_ends() -> None:
    _needs("audioconvert", "videoconvert")
    pipeline = init_gstreamer().Pipeline.new("links")
    audio, video, sink = make("audioconvert", "audio"), make("videoconvert", "video"), make("fakesink")
    for element in (audio, video, sink):
        pipeline.add(element)
    link(video, sink)  # compatible: no error
    with pytest.raises(LinkError, match="cannot link audio -> video"):
        link(audio, video)
    with pytest.raises(LinkError, match=r"cannot link audio:src -> video:sink \(noformat\)"):
        link_pads(audio.get_static_pad("src"), video.get_static_pad("sink"))


# A fresh interpreter whose threads all map a buffer for the first time at once (barrier, a thread switch
# as often as Python allows). Before core.gst bound Gst.MapInfo at init, 4 in 10 such processes of 32
# threads ended with two MapInfo classes: "Expected Gst.MapInfo, but got gi.repository.Gst.MapInfo".
_FIRST_MAPS = """
import sys, threading
sys.setswitchinterval(1e-6)
from core.gst import init_gstreamer
Gst = init_gstreamer()
barrier = threading.Barrier(32)
errors = []
def first_map():
    buf = Gst.Buffer.new_wrapped(bytes(64))
    barrier.wait()
    try:
        ok, info = buf.map(Gst.MapFlags.READ)
        buf.unmap(info)
    except TypeError as exc:
        errors.append(str(exc))
threads = [threading.Thread(target=first_map) for _ in range(32)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(len(errors), errors[:1])
"""


def test_buffers_mapped_first_by_many_threads_at_once_unmap() -> None:
    # The race exists once per process (the first map), so each try is a fresh interpreter.
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for _ in range(8):
        proc = subprocess.run(
            [sys.executable, "-c", _FIRST_MAPS],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == "0 []"


def test_typelibs_load_once_and_unknown_ones_are_refused() -> None:
    glib = load_typelib("GLib")
    assert load_typelib("GLib") is glib
    assert load_typelib("Gst") is _gst()
    with pytest.raises(ValueError, match="unknown GObject namespace"):
        load_typelib("Gtk")


def test_a_missing_typelib_names_its_package(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the DeepStream images without gir1.2-gst-rtsp-server-1.0 see: a named error with the apt line
    (a namespace no machine has stands in for it, through the real gi)."""
    monkeypatch.setitem(gst._TYPELIBS, "GstZsadAbsent", ("1.0", "gir1.2-gst-zsad-absent-1.0"))
    with pytest.raises(TypelibMissingError, match=r"apt-get install gir1\.2-gst-zsad-absent-1\.0") as err:
        load_typelib("GstZsadAbsent")
    assert isinstance(err.value, GstUnavailable)
    assert (err.value.namespace, err.value.package) == ("GstZsadAbsent", "gir1.2-gst-zsad-absent-1.0")
    assert "GstZsadAbsent" not in gst._typelibs


# ---- frames -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("width", "height", "size", "stride"),
    [
        (5, 2, 32, 16),  # GStreamer's default: 15 bytes padded to 16
        (5, 2, 30, 15),  # tightly packed
        (4, 3, 36, 12),  # no padding needed
        (5, 2, 40, 20),  # another producer's stride
        (5, 2, 33, 16),  # default rows, one stray byte at the end
        (130, 2, 784, 392),
    ],
)
def test_rgb_stride(width: int, height: int, size: int, stride: int) -> None:
    assert rgb_stride(width, height, size) == stride


def test_rgb_stride_refuses_a_short_buffer() -> None:
    with pytest.raises(FrameError, match="smaller than 5x2"):
        rgb_stride(5, 2, 29)


def test_the_rgb_copier_removes_row_padding() -> None:
    Gst = _gst()
    image = np.arange(3 * 130 * 3, dtype=np.uint32).astype(np.uint8).reshape(3, 130, 3)
    padded = np.zeros((3, 392), np.uint8)  # 130 * 3 = 390 bytes, padded to 392
    padded[:, :390] = image.reshape(3, 390)
    padded[:, 390:] = 0xEE  # padding that must not leak into the frame
    for data in (padded.tobytes(), image.tobytes()):
        frame = copy_rgb(Gst.Buffer.new_wrapped(data), 130, 3)
        assert frame.flags.c_contiguous
        assert frame.flags.writeable
        np.testing.assert_array_equal(frame, image)
    caps = Gst.Caps.from_string("video/x-raw,format=RGB,width=130,height=3")
    sample = Gst.Sample.new(Gst.Buffer.new_wrapped(padded.tobytes()), caps, None, None)
    np.testing.assert_array_equal(sample_to_rgb(sample), image)
    bgr = Gst.Caps.from_string("video/x-raw,format=BGR,width=130,height=3")
    wrong = Gst.Sample.new(Gst.Buffer.new_wrapped(padded.tobytes()), bgr, None, None)
    with pytest.raises(FrameError, match="expected RGB frames"):
        sample_to_rgb(wrong)


def test_i420_of_a_flat_grey_is_grey() -> None:
    Gst = _gst()
    w, h = 6, 4  # luma rows padded 6 -> 8, chroma 3 -> 4
    data = np.concatenate([np.full(8 * 4, 126, np.uint8), np.full(4 * 2 * 2, 128, np.uint8)])
    rgb = i420_to_rgb(Gst.Buffer.new_wrapped(data.tobytes()), w, h, "bt601")
    assert rgb.shape == (h, w, 3)
    assert np.all(np.abs(rgb.astype(int) - 128) <= 1)  # limited range: 126 -> (126 - 16) * 255/219
    with pytest.raises(FrameError, match="smaller than"):
        i420_to_rgb(Gst.Buffer.new_wrapped(data[:-1].tobytes()), w, h)


# ---- the MP4 writer -----------------------------------------------------------------------------------


def _decode(path: Path) -> tuple[list[np.ndarray], list[int]]:
    """``(RGB frames, their pts in ns)`` of an MP4, decoded with GStreamer."""
    Gst = _gst()
    pipeline = Gst.parse_launch(
        "filesrc name=src ! qtdemux ! h264parse ! avdec_h264 ! videoconvert ! video/x-raw,format=RGB ! "
        "appsink name=sink sync=false"
    )
    pipeline.get_by_name("src").set_property("location", str(path))
    sink = pipeline.get_by_name("sink")
    pipeline.set_state(Gst.State.PLAYING)
    frames, pts = [], []
    try:
        while (sample := sink.emit("try-pull-sample", 10 * Gst.SECOND)) is not None:
            frames.append(sample_to_rgb(sample))
            pts.append(sample.get_buffer().pts)
        assert pipeline.get_bus().pop_filtered(Gst.MessageType.ERROR) is None
    finally:
        pipeline.set_state(Gst.State.NULL)
    return frames, pts


def _colour(i: int, h: int, w: int) -> np.ndarray:
    frame = np.zeros((h, w, 3), np.uint8)
    frame[:, : w // 2] = (40 + 20 * i, 200, 60)
    frame[:, w // 2 :] = (220, 30 + 20 * i, 180)
    return frame


def test_mp4_writer_round_trip_at_a_padded_width(tmp_path: Path) -> None:
    _needs("x264enc", "mp4mux", "qtdemux", "h264parse", "avdec_h264")
    h, w = 48, 130  # 130 * 3 bytes is not a multiple of 4: the case a tightly packed RGB push got wrong
    path = tmp_path / "clip.mp4"
    with Mp4Writer(path, w, h, 25, zerolatency=True) as writer:
        for i in range(8):
            writer.write(_colour(i, h, w))
    assert writer.frames == 8
    frames, pts = _decode(path)
    assert len(frames) == 8
    assert pts == [i * 40_000_000 for i in range(8)]  # the exact 25 fps grid
    for i, frame in enumerate(frames):
        assert frame.shape == (h, w, 3)
        # Away from the colour edge (4:2:0 chroma blurs it), every pixel is close to what went in.
        error = np.abs(frame.astype(int) - _colour(i, h, w).astype(int))
        assert error[:, 4 : w // 2 - 4].mean() < 6
        assert error[:, w // 2 + 4 : -4].mean() < 6


def test_mp4_writer_takes_raw_buffers_without_touching_them(tmp_path: Path) -> None:
    _needs("x264enc", "mp4mux", "qtdemux", "h264parse", "avdec_h264")
    Gst = _gst()
    w, h = 64, 48
    buffers = []
    for i in range(5):  # I420 with every row already a multiple of 4: flat grey, brighter each frame
        planes = np.concatenate([np.full(w * h, 60 + 30 * i, np.uint8), np.full(w * h // 2, 128, np.uint8)])
        buf = Gst.Buffer.new_wrapped(planes.tobytes())
        buf.pts = 7 * Gst.SECOND
        buffers.append(buf)
    path = tmp_path / "raw.mp4"
    caps = f"video/x-raw,format=I420,width={w},height={h}"
    with Mp4Writer(path, w, h, 10.0, input_caps=caps) as writer:
        for i, buf in enumerate(buffers):
            writer.write_buffer(buf, pts_s=i / 10)
        with pytest.raises(Mp4Error, match="takes buffers"):
            writer.write(np.zeros((h, w, 3), np.uint8))
    assert [b.pts for b in buffers] == [7 * Gst.SECOND] * 5  # the clip's timestamps went on copies
    frames, pts = _decode(path)
    assert pts == [i * 100_000_000 for i in range(5)]
    levels = [float(f.mean()) for f in frames]
    assert levels == sorted(levels)
    assert levels[4] > levels[0] + 60


def test_mp4_writer_refusals(tmp_path: Path) -> None:
    _needs("x264enc", "mp4mux", "h264parse")
    with pytest.raises(Mp4Error, match="even frame size"):
        Mp4Writer(tmp_path / "odd.mp4", 161, 120, 25)
    with pytest.raises(Mp4Error, match="fps must be > 0"):
        Mp4Writer(tmp_path / "still.mp4", 64, 48, 0)
    # filesink cannot open the file: the bus's reason, and nothing left behind.
    with pytest.raises(Mp4Error, match="sink: "):
        Mp4Writer(tmp_path / "no-such-dir" / "x.mp4", 64, 48, 25)
    path = tmp_path / "partial.mp4"
    writer = Mp4Writer(path, 64, 48, 25)

    def write_bad_clip() -> None:
        with writer:
            writer.write(np.zeros((48, 64, 3), np.uint8))
            writer.write(np.zeros((10, 10, 3), np.uint8))

    with pytest.raises(Mp4Error, match=r"frame must be \(48, 64, 3\) uint8"):
        write_bad_clip()
    assert not path.exists()  # aborted: no half file
    with pytest.raises(Mp4Error, match="already closed"):
        writer.write(np.zeros((48, 64, 3), np.uint8))
