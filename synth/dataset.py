"""A whole synthetic dataset in the UCSD Ped2 layout.

::

    OUT/training/frames/<clip>/001.jpg ...     normal-only clips
    OUT/training/videos/<clip>.mp4
    OUT/testing/frames/<clip>/001.jpg ...      clips with 1-2 injected anomalies
    OUT/testing/videos/<clip>.mp4
    OUT/testing/labels/frame_labels.json       {"<clip>": [0, 0, 1, ...]} one 0/1 per frame
    OUT/testing/masks/<clip>/001.png ...       1-bit PNG, True = abnormal pixel
    OUT/manifest.json                          counts, sizes, seed, events, contexts

Clips are named ``<context>_<NNN>`` and numbered from 000 in each split. Every clip is rendered from
its own generator seeded by ``(seed, split, context, index)``, so a clip does not depend on which
other clips are generated or in what order.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.gst.mp4 import Mp4Writer
from synth.actors import PlannedEvent
from synth.render import ClipRenderer, check_frame_size
from synth.scene import ANOMALY_KINDS, DEFAULT_CONTEXTS, SynthInputError, context_spec
from synth.writer import frame_name, open_video, video_errors, write_jpeg, write_json, write_mask

log = logging.getLogger(__name__)

GENERATOR = "zsad synth"
FORMAT_VERSION = 1
SPLITS: tuple[str, ...] = ("training", "testing")
LABELS_FILE = "frame_labels.json"

#: No anomaly starts in a clip's first frames, so models have normal context first.
EVENT_WARMUP = 40
#: Frames an event needs after its start to show itself clearly (off_path walks off first).
EVENT_TAIL: dict[str, int] = {"off_path": 35}
DEFAULT_EVENT_TAIL = 20
MIN_TEST_FRAMES = 40


def clip_seed(seed: int, split: str, context: str, index: int) -> int:
    """The render seed of one clip, from the dataset seed and the clip's identity only."""
    entropy = [seed, SPLITS.index(split), zlib.crc32(context.encode()), index]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0] >> 1)


def event_window(kind: str, n_frames: int) -> tuple[int, int]:
    """Inclusive range of allowed start frames for an event of ``kind`` in a clip of ``n_frames``."""
    first = min(EVENT_WARMUP, n_frames // 2)
    last = n_frames - max(EVENT_TAIL.get(kind, DEFAULT_EVENT_TAIL), n_frames // 5)
    if last < first:
        # Short clips: the event needs its tail more than the full warm-up.
        first = last = max(last, n_frames // 4)
    return first, last


def plan_events(seed: int, context: str, index: int, first_kind: str, n_frames: int) -> list[PlannedEvent]:
    """One or two anomalies for test clip ``index``: ``first_kind``, maybe one other kind."""
    rng = np.random.default_rng([seed, len(SPLITS), zlib.crc32(context.encode()), index])
    kinds = [first_kind]
    if rng.random() < 0.5:
        others = [k for k in ANOMALY_KINDS if k != first_kind]
        kinds.append(others[int(rng.integers(len(others)))])
    events = []
    for kind in kinds:
        lo, hi = event_window(kind, n_frames)
        events.append(PlannedEvent(kind, int(rng.integers(lo, hi + 1))))
    return events


def plan_dataset_events(
    contexts: Sequence[str], test_per_context: int, frames: int, seed: int
) -> dict[str, list[PlannedEvent]]:
    """The anomalies of every test clip, keyed by clip name, in generation order.

    Test clip ``g`` (counting over contexts, then index) gets ``ANOMALY_KINDS[(g + seed) % 6]`` first,
    so every kind appears once there are six test clips or more.
    """
    plans: dict[str, list[PlannedEvent]] = {}
    for name in contexts:
        for i in range(test_per_context):
            first_kind = ANOMALY_KINDS[(len(plans) + seed) % len(ANOMALY_KINDS)]
            plans[f"{name}_{i:03d}"] = plan_events(seed, name, i, first_kind, frames)
    return plans


def _prepare_out(out: Path) -> None:
    """Make ``out`` empty of old clips; refuse to touch a non-empty folder we did not write."""
    manifest = out / "manifest.json"
    if out.exists() and any(out.iterdir()):
        owned = False
        if manifest.is_file():
            try:
                owned = json.loads(manifest.read_text()).get("generator") == GENERATOR
            except (json.JSONDecodeError, AttributeError):
                owned = False
        if not owned:
            raise SynthInputError(
                f"{out} is not empty and holds no {GENERATOR} manifest; pick an empty or new folder"
            )
        for split in SPLITS:
            if (out / split).exists():
                shutil.rmtree(out / split)
    out.mkdir(parents=True, exist_ok=True)
    write_json(manifest, {"generator": GENERATOR, "complete": False})


def _reusable(out: Path, params: dict[str, Any]) -> dict[str, Any] | None:
    try:
        manifest: dict[str, Any] = json.loads((out / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if manifest.get("complete") and manifest.get("params") == params:
        return manifest
    return None


def generate_dataset(
    out: Path,
    contexts: Sequence[str] = DEFAULT_CONTEXTS,
    train_per_context: int = 2,
    test_per_context: int = 2,
    frames: int = 200,
    width: int = 320,
    height: int = 240,
    fps: int = 25,
    seed: int = 0,
    write_video: bool = True,
    reuse: bool = False,
) -> dict[str, Any]:
    """Render and write a synthetic dataset under ``out``; returns the manifest (also written).

    Training clips are normal only; test clips get the anomalies of :func:`plan_dataset_events`
    (every kind appears once there are at least six test clips). With ``reuse`` a
    complete earlier output with identical parameters is kept as is. An existing output of this
    generator in ``out`` is replaced; any other non-empty folder is refused.
    """
    out = Path(out)
    contexts = list(contexts)
    if not contexts:
        raise SynthInputError("no contexts given")
    for name in contexts:
        context_spec(name)
    if len(set(contexts)) != len(contexts):
        raise SynthInputError(f"contexts repeat: {contexts}")
    if train_per_context < 0 or test_per_context < 0:
        raise SynthInputError("clip counts per context must be >= 0")
    if frames < 1 or (test_per_context > 0 and frames < MIN_TEST_FRAMES):
        raise SynthInputError(f"test clips need at least {MIN_TEST_FRAMES} frames, got {frames}")
    if fps < 1:
        raise SynthInputError(f"fps must be >= 1, got {fps}")
    if seed < 0:
        raise SynthInputError(f"seed must be >= 0, got {seed}")
    check_frame_size(width, height)  # before anything in `out` is replaced
    if write_video and (width % 2 or height % 2):
        raise SynthInputError(f"video needs an even frame size, got {width}x{height} (or use no video)")
    params: dict[str, Any] = {
        "contexts": contexts,
        "train_per_context": train_per_context,
        "test_per_context": test_per_context,
        "frames": frames,
        "width": width,
        "height": height,
        "fps": fps,
        "seed": seed,
        "write_video": write_video,
    }
    if reuse:
        previous = _reusable(out, params)
        if previous is not None:
            log.info("synth: reusing %s (same parameters)", out)
            return previous
    _prepare_out(out)

    jobs: list[tuple[str, str, int]] = [
        (split, name, i)
        for split, per in (("training", train_per_context), ("testing", test_per_context))
        for name in contexts
        for i in range(per)
    ]
    counts: dict[str, dict[str, int]] = {split: {} for split in SPLITS}
    events: dict[str, list[dict[str, Any]]] = {}
    clip_contexts: dict[str, str] = {}
    labels: dict[str, list[int]] = {}
    plans = plan_dataset_events(contexts, test_per_context, frames, seed)
    started = time.monotonic()
    for number, (split, name, i) in enumerate(jobs, start=1):
        clip = f"{name}_{i:03d}"
        planned = plans[clip] if split == "testing" else []
        renderer = ClipRenderer(name, frames, width, height, clip_seed(seed, split, name, i), planned)
        frame_dir = out / split / "frames" / clip
        frame_dir.mkdir(parents=True)
        mask_dir = out / split / "masks" / clip
        if split == "testing":
            mask_dir.mkdir(parents=True)
        video: Mp4Writer | None = None
        video_path = out / split / "videos" / f"{clip}.mp4"
        if write_video:
            video_path.parent.mkdir(parents=True, exist_ok=True)
            video = open_video(video_path, width, height, fps)
        with video_errors(video_path):
            try:
                for t, (frame, mask) in enumerate(renderer):
                    write_jpeg(frame_dir / frame_name(t, frames, ".jpg"), frame)
                    if split == "testing":
                        write_mask(mask_dir / frame_name(t, frames, ".png"), mask)
                    if video is not None:
                        video.write(frame)
            except BaseException:
                if video is not None:
                    video.abort()
                raise
            if video is not None:
                video.close()
        counts[split][clip] = frames
        clip_contexts[clip] = name
        if split == "testing":
            labels[clip] = [int(v) for v in renderer.labels]
            events[clip] = [
                {
                    "kind": e.kind,
                    "start": e.start,
                    "end": e.end,
                    "runs": [list(r) for r in e.runs],
                    "context": name,
                }
                for e in renderer.events
            ]
        summary = ", ".join(f"{e.kind}@{e.start}-{e.end}" for e in renderer.events) or "normal"
        log.info("synth: [%d/%d] %s/%s %d frames: %s", number, len(jobs), split, clip, frames, summary)

    if test_per_context > 0:
        (out / "testing" / "labels").mkdir(parents=True, exist_ok=True)
        write_json(out / "testing" / "labels" / LABELS_FILE, labels)
    manifest: dict[str, Any] = {
        "generator": GENERATOR,
        "format_version": FORMAT_VERSION,
        "complete": True,
        "counts": counts,
        "train_clips": len(counts["training"]),
        "train_frames": sum(counts["training"].values()),
        "test_clips": len(counts["testing"]),
        "test_frames": sum(counts["testing"].values()),
        "abnormal_test_frames": sum(sum(v) for v in labels.values()),
        "frame_size_hw": [height, width],
        "fps": fps,
        "seed": seed,
        "anomaly_kinds": list(ANOMALY_KINDS),
        "contexts": clip_contexts,
        "events": events,
        "videos": write_video,
        "params": params,
    }
    write_json(out / "manifest.json", manifest)
    log.info("synth: wrote %d clips to %s in %.1f s", len(jobs), out, time.monotonic() - started)
    return manifest
