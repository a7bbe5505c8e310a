"""Damaged and awkward video files for fault-injection tests: truncated, corrupt header, size change."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def truncate_copy(src: Path, dst: Path, fraction: float = 0.5) -> Path:
    """Copy ``src`` to ``dst`` and cut it to ``fraction`` of its size (a recording that stopped mid-write)."""
    shutil.copyfile(src, dst)
    os.truncate(dst, int(dst.stat().st_size * fraction))
    return dst


def corrupt_header_copy(src: Path, dst: Path, n: int = 256) -> Path:
    """Copy ``src`` with its first ``n`` bytes overwritten by random ones (the container header is lost)."""
    data = bytearray(src.read_bytes())
    data[:n] = os.urandom(n)
    dst.write_bytes(bytes(data))
    return dst


def remux_faststart(src: Path, dst: Path) -> Path:
    """Remux an H.264 MP4 with its index (moov) first, as streaming recorders write it: a truncated copy
    then still has playable frames up to the cut."""
    from core.gst import init_gstreamer

    Gst = init_gstreamer()
    pipe = Gst.parse_launch(
        f'filesrc location="{src}" ! qtdemux ! h264parse ! mp4mux faststart=true ! filesink location="{dst}"'
    )
    pipe.set_state(Gst.State.PLAYING)
    msg = pipe.get_bus().timed_pop_filtered(30 * Gst.SECOND, Gst.MessageType.EOS | Gst.MessageType.ERROR)
    pipe.set_state(Gst.State.NULL)
    if msg is None or msg.type != Gst.MessageType.EOS:
        raise RuntimeError(f"remux of {src} failed: {msg.parse_error() if msg is not None else 'timeout'}")
    return dst


def concat_files(parts: list[Path], dst: Path) -> Path:
    """Byte-concatenate ``parts`` (valid for MPEG-TS: the stream simply changes mid-way)."""
    with dst.open("wb") as out:
        for part in parts:
            out.write(part.read_bytes())
    return dst
