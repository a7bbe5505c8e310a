"""Readers for video anomaly datasets: named clips of RGB frames, optional frame labels and contexts.

A dataset split is a :class:`VideoClipSource`: an ordered list of :class:`VideoClip` (one per video),
each giving its frames as ``(N, H, W, 3) uint8 RGB`` resized on load to the requested ``(height, width)``
(Pillow bilinear for images, GStreamer ``videoscale`` bilinear for video files), its frame labels as
``(N,) int8`` (1 = anomalous) when the split has ground truth, and a context name (the scene). Decoded
clips are cached in memory, so a training loop pays for JPEG decoding once, not every epoch.

Layouts accepted (``<s>`` is ``training`` or ``testing``; the split may be given as ``train``/``test``):

``ucsd`` (UCSD Ped1/Ped2, the converted frame-folder copy) and ``synthetic`` (synth output)
    frames  ``<root>/<s>/frames/<clip>/<number>.<jpg|png|...>``
    labels  ``<root>/<s>/labels/*frame_labels.json``  ``{"<clip>": [0, 0, 1, ...]}``
    masks   ``<root>/<s>/masks/<clip>/<number>.png`` (pixel masks, optional)
    ``synthetic`` also requires ``manifest.json`` ``"contexts": {clip: name}`` and keeps ``"events"``.

``avenue`` (CUHK Avenue)
    frames  ``<root>/<s>/frames/<clip>/`` (the FFP/MNAD copy: ``training/frames/01/0000.jpg``), or
            ``<root>/<s>_videos/<clip>/`` frame folders, or ``<root>/<s>_videos/<clip>.avi`` video files
    labels  ``<root>/<s>/labels/`` or ``<root>/<s>_labels/``
    The official ``testing_label_mask/*.mat`` files are not read: convert them to one of the label forms.

``shanghaitech`` (ShanghaiTech Campus)
    frames  ``<root>/<s>/frames/<clip>/`` (``training/frames/01_001/000.jpg``,
            ``testing/frames/01_0014/000.jpg``), or ``<root>/<s>/videos/<clip>.avi`` (the official
            release ships the training split as videos)
    labels  ``<root>/<s>/test_frame_mask/<clip>.npy`` (official) or ``<root>/<s>/labels/``
    masks   ``<root>/<s>/test_pixel_mask/<clip>.npy`` ``(N, H, W)`` (official), or ``<root>/<s>/masks/``
    The default context is the scene: ``"sht_scene01"`` for clip ``01_0014``.

``video_folder`` (normal footage from your own cameras)
    videos  ``<root>/<s>/*.mp4|avi|mkv|mov|webm`` (``train``/``test`` folder names work too); for the
            training split only, video files directly in ``<root>`` when no split folder exists
    labels  ``<root>/<s>/labels/`` (optional)

A label folder holds either one ``*frame_labels.json`` mapping every clip to its label list, or one file
per clip: ``<clip>.npy`` (1-D array) or ``<clip>.json`` (a list). When a split has a label folder, every
clip must have labels of exactly its frame count, in {0, 1}.

Frame files are numbered by the trailing digits of their name (``001.jpg``, ``0000.jpg``,
``frame_12.png``); numbering starts at 0 or 1 and must have no gaps or duplicates. When
``<root>/manifest.json`` has ``"counts"`` (``{"training": {clip: n}, ...}`` or flat ``{clip: n}``), every
clip's frame count is checked against it. ``manifest.json`` ``"contexts"`` (flat or per split) sets the
context of any layout; otherwise it is the dataset folder's name (a single-scene dataset).

Caption manifests (for the semantic stream) are JSON ``{clip: [caption, ...]}`` (or ``{clip: caption}``,
or a list of records) or JSONL, one record a line: ``{"clip": ..., "caption": ...}`` or
``{"clip": ..., "captions": [...]}`` (``"video"`` or ``"name"`` may stand for ``"clip"``).

Any problem raises :class:`DatasetError` naming the clip and the file or the expected vs actual counts.
Test labels are exposed for scoring only; nothing here uses them to select or weight data.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from core.datafile import read_json
from core.gst import init_gstreamer
from core.gst.frames import FrameError, sample_to_rgb

__all__ = [
    "DATASET_KINDS",
    "IMAGE_SUFFIXES",
    "VIDEO_SUFFIXES",
    "DatasetError",
    "VideoClip",
    "VideoClipSource",
    "decode_video_file",
    "load_captions",
    "load_split",
    "make_dataset",
    "normalise_split",
]

log = logging.getLogger(__name__)

DATASET_KINDS = ("ucsd", "avenue", "shanghaitech", "video_folder", "synthetic")
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"})
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mkv", ".mov", ".webm"})

_SPLITS = {"train": "training", "training": "training", "test": "testing", "testing": "testing"}
_SHORT_SPLIT = {"training": "train", "testing": "test"}
_TRAILING_NUMBER = re.compile(r"(\d+)$")


class DatasetError(ValueError):
    """A dataset that cannot be read as asked. ``clip`` names the offending clip when there is one."""

    def __init__(self, message: str, clip: str | None = None) -> None:
        self.clip = clip
        super().__init__(f"clip {clip!r}: {message}" if clip is not None else message)


@dataclass(frozen=True, eq=False)
class VideoClip:
    """One video of a split.

    Exactly one of ``frame_paths`` (an image-folder clip, in frame order) and ``video_path`` (a video
    file, decoded with GStreamer) is set. ``labels`` is ``(N,) int8`` in {0, 1} or ``None`` (no ground
    truth); for a video file it is checked against the frame count when the clip is decoded.
    ``mask_path`` is a folder of per-frame mask images or an ``(N, H, W)`` ``.npy``; ``events`` is what
    the synthetic manifest says about this clip (its layout is the generator's).
    """

    name: str
    frame_paths: tuple[Path, ...] = ()
    video_path: Path | None = None
    labels: np.ndarray | None = None
    context: str | None = None
    mask_path: Path | None = None
    events: Any = None

    @property
    def num_frames(self) -> int | None:
        """Frame count, or ``None`` for a video file that has not been decoded."""
        return len(self.frame_paths) if self.video_path is None else None


class VideoClipSource:
    """A split of a dataset: named clips whose frames decode to ``(N, H, W, 3) uint8 RGB`` at ``size_hw``.

    ``size_hw=None`` keeps the native size (every frame of a clip must then share it). Decoded clips are
    kept in memory when ``cache`` is true. ``workers`` threads decode the images of a clip in parallel
    (Pillow releases the GIL while decoding and resizing).
    """

    def __init__(
        self,
        kind: str,
        root: Path,
        split: str,
        clips: Sequence[VideoClip],
        size_hw: tuple[int, int] | None,
        *,
        captions: Mapping[str, list[str]] | None = None,
        manifest: Mapping[str, Any] | None = None,
        expected_counts: Mapping[str, int] | None = None,
        workers: int = 2,
        cache: bool = True,
    ) -> None:
        if size_hw is not None and (len(size_hw) != 2 or min(size_hw) < 1):
            raise DatasetError(f"size_hw must be (height, width) of positive ints, got {size_hw!r}")
        if workers < 1:
            raise DatasetError(f"workers must be >= 1, got {workers}")
        names = [c.name for c in clips]
        if len(set(names)) != len(names):
            dupes = sorted({n for n in names if names.count(n) > 1})
            raise DatasetError(f"{root}: duplicate clip names {dupes}")
        self.kind = kind
        self.root = root
        self.split = split
        self.size_hw = None if size_hw is None else (int(size_hw[0]), int(size_hw[1]))
        self.clips: list[VideoClip] = list(clips)
        self.captions: dict[str, list[str]] = {k: list(v) for k, v in (captions or {}).items()}
        self.manifest: dict[str, Any] = dict(manifest or {})
        self.workers = workers
        self.cache = cache
        self._expected_counts = dict(expected_counts or {})
        self._by_name = {c.name: c for c in self.clips}
        self._frames: dict[str, np.ndarray] = {}
        self._video_labels_checked: set[str] = set()

    # ---- the clips -----------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return [c.name for c in self.clips]

    def __len__(self) -> int:
        return len(self.clips)

    def __iter__(self) -> Iterator[VideoClip]:
        return iter(self.clips)

    def clip(self, name: str) -> VideoClip:
        try:
            return self._by_name[name]
        except KeyError:
            raise DatasetError(f"no such clip in {self.root} {self.split}", name) from None

    @property
    def has_labels(self) -> bool:
        return bool(self.clips) and all(c.labels is not None for c in self.clips)

    @property
    def labels(self) -> dict[str, np.ndarray]:
        """``{clip: (N,) int8}`` for the clips that have ground truth. For scoring only."""
        return {c.name: c.labels for c in self.clips if c.labels is not None}

    @property
    def contexts(self) -> dict[str, str | None]:
        return {c.name: c.context for c in self.clips}

    # ---- frames --------------------------------------------------------------------------------
    def frames(self, name: str) -> np.ndarray:
        """The clip's frames, ``(N, H, W, 3) uint8 RGB``, decoded once and then served from memory."""
        cached = self._frames.get(name)
        if cached is not None:
            return cached
        clip = self.clip(name)
        if clip.video_path is not None:
            arr = decode_video_file(clip.video_path, self.size_hw, clip=name)
            self._check_video_count(clip, len(arr))
        else:
            arr = _decode_images(clip.name, clip.frame_paths, self.size_hw, self.workers)
        arr.setflags(write=False)  # shared between callers: nobody may edit the cache in place
        if self.cache:
            self._frames[name] = arr
        return arr

    def load_all(self) -> dict[str, np.ndarray]:
        """Every clip's frames, ``{clip: (N, H, W, 3) uint8 RGB}``, in clip order."""
        t0 = time.monotonic()
        out = {c.name: self.frames(c.name) for c in self.clips}
        nbytes = sum(a.nbytes for a in out.values())
        log.info(
            "%s %s: %d clips, %d frames, %.0f MB in %.1f s",
            self.root,
            self.split,
            len(out),
            sum(len(a) for a in out.values()),
            nbytes / 1e6,
            time.monotonic() - t0,
        )
        return out

    def clear_cache(self) -> None:
        self._frames.clear()

    def masks(self, name: str) -> np.ndarray:
        """Pixel masks of a clip, ``(N, H, W) bool`` at ``size_hw`` (nearest neighbour); True = anomalous."""
        clip = self.clip(name)
        if clip.mask_path is None:
            raise DatasetError("no pixel masks for this clip", name)
        if clip.mask_path.suffix.lower() == ".npy":
            try:
                raw = np.load(clip.mask_path)
            except (OSError, ValueError) as exc:
                raise DatasetError(f"cannot read masks {clip.mask_path}: {exc}", name) from exc
            if raw.ndim != 3:
                raise DatasetError(f"masks {clip.mask_path} must be (N, H, W), got {raw.shape}", name)
            masks = np.stack(
                [_resize_mask(Image.fromarray((m != 0).astype(np.uint8) * 255), self.size_hw) for m in raw]
            )
        else:
            paths = _scan_frame_folder(name, clip.mask_path)
            masks = np.stack([_read_mask(name, p, self.size_hw) for p in paths])
        expected = clip.num_frames if clip.video_path is None else len(self.frames(name))
        if len(masks) != expected:
            raise DatasetError(f"{len(masks)} masks in {clip.mask_path} but {expected} frames", name)
        return masks

    def _check_video_count(self, clip: VideoClip, n: int) -> None:
        if n == 0:
            raise DatasetError(f"video {clip.video_path} decoded to no frames", clip.name)
        want = self._expected_counts.get(clip.name)
        if want is not None and want != n:
            raise DatasetError(f"manifest.json says {want} frames but {clip.video_path} has {n}", clip.name)
        if clip.labels is not None and len(clip.labels) != n:
            raise DatasetError(f"{len(clip.labels)} labels for {n} frames of {clip.video_path}", clip.name)


# --------------------------------------------------------------------------------------------------
# Factory
# --------------------------------------------------------------------------------------------------


def make_dataset(
    kind: str,
    root: str | Path,
    split: str,
    size_hw: tuple[int, int] | None,
    *,
    captions: str | Path | None = None,
    workers: int = 2,
    cache: bool = True,
) -> VideoClipSource:
    """Index one split of a dataset (no frame is decoded yet).

    ``kind`` is one of :data:`DATASET_KINDS`; ``split`` is ``train``/``training`` or ``test``/``testing``;
    ``captions`` is an optional caption manifest (see :func:`load_captions`), kept as ``.captions``.
    """
    if kind not in DATASET_KINDS:
        raise DatasetError(f"unknown dataset kind {kind!r}; expected one of {', '.join(DATASET_KINDS)}")
    if split not in _SPLITS:
        raise DatasetError(f"unknown split {split!r}; expected train/training or test/testing")
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist")
    s = _SPLITS[split]
    manifest = _read_manifest(root)

    clip_dir = _pick_clip_dir(kind, root, s)
    clips = _scan_clips(kind, clip_dir)
    if not clips:
        raise DatasetError(f"no clips in {clip_dir}")

    expected = _manifest_counts(manifest, s)
    names = {name for name, _ in clips}
    if expected is not None and _counts_are_per_split(manifest):
        missing = sorted(set(expected) - names)
        if missing:
            raise DatasetError(f"manifest.json lists clips not found in {clip_dir}: {missing}")
    for name, entry in clips:
        if (
            isinstance(entry, tuple)
            and expected is not None
            and name in expected
            and expected[name] != len(entry)
        ):
            raise DatasetError(
                f"manifest.json says {expected[name]} frames but {clip_dir / name} has {len(entry)}", name
            )

    labels = _read_labels(kind, root, s, clips)
    contexts = _contexts(kind, root, s, manifest, [n for n, _ in clips])
    events = _section(manifest, "events", s)
    mask_dir = _first_dir(_mask_candidates(kind, root, s))

    built = []
    for name, entry in clips:
        frame_paths = entry if isinstance(entry, tuple) else ()
        video_path = entry if isinstance(entry, Path) else None
        built.append(
            VideoClip(
                name=name,
                frame_paths=frame_paths,
                video_path=video_path,
                labels=labels.get(name),
                context=contexts[name],
                mask_path=_clip_mask(mask_dir, name),
                events=events.get(name) if isinstance(events, dict) else None,
            )
        )
    caps = load_captions(captions) if captions is not None else {}
    unknown = sorted(set(caps) - names)
    if unknown:
        log.debug("caption manifest has %d clips outside %s %s", len(unknown), root, s)
    source = VideoClipSource(
        kind,
        root,
        s,
        built,
        size_hw,
        captions={k: v for k, v in caps.items() if k in names},
        manifest=manifest,
        expected_counts=expected or {},
        workers=workers,
        cache=cache,
    )
    log.info(
        "%s %s (%s): %d clips, labels=%s", root, s, kind, len(source), "yes" if source.has_labels else "no"
    )
    return source


def load_split(
    kind: str,
    root: str | Path,
    split: str,
    size_hw: tuple[int, int] | None,
    *,
    workers: int = 2,
) -> dict[str, np.ndarray]:
    """Decode a whole split into memory: ``{clip: (N, H, W, 3) uint8 RGB}``."""
    return make_dataset(kind, root, split, size_hw, workers=workers).load_all()


def normalise_split(split: str) -> str:
    """``train``/``training`` -> ``training``; ``test``/``testing`` -> ``testing``."""
    if split not in _SPLITS:
        raise DatasetError(f"unknown split {split!r}; expected train/training or test/testing")
    return _SPLITS[split]


# --------------------------------------------------------------------------------------------------
# Layout discovery
# --------------------------------------------------------------------------------------------------


def _clip_dir_candidates(kind: str, root: Path, s: str) -> list[Path]:
    short = _SHORT_SPLIT[s]
    if kind in ("ucsd", "synthetic"):
        return [root / s / "frames"]
    if kind == "avenue":
        return [root / s / "frames", root / f"{s}_videos"]
    if kind == "shanghaitech":
        return [root / s / "frames", root / s / "videos"]
    # video_folder: the split folder, or the root itself for training footage with no split folders
    cands = [root / s, root / short]
    if s == "training":
        cands.append(root)
    return cands


def _pick_clip_dir(kind: str, root: Path, s: str) -> Path:
    cands = _clip_dir_candidates(kind, root, s)
    found = _first_dir(cands)
    if found is None:
        tried = ", ".join(str(c) for c in cands)
        raise DatasetError(f"{kind} dataset at {root}: no {s} clip folder (looked for {tried})")
    return found


def _first_dir(cands: Sequence[Path]) -> Path | None:
    return next((c for c in cands if c.is_dir()), None)


def _scan_clips(kind: str, clip_dir: Path) -> list[tuple[str, tuple[Path, ...] | Path]]:
    """``[(clip name, frame paths or a video file)]`` sorted by name."""
    found: dict[str, tuple[Path, ...] | Path] = {}
    for p in sorted(clip_dir.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_dir() and kind != "video_folder":
            name = p.name
            entry: tuple[Path, ...] | Path = _scan_frame_folder(name, p)
        elif p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES:
            name = p.stem
            entry = p
        else:
            continue
        if name in found:
            raise DatasetError(f"both a frame folder and a video file in {clip_dir}", name)
        found[name] = entry
    return sorted(found.items())


def _scan_frame_folder(clip: str, folder: Path) -> tuple[Path, ...]:
    """The numbered image files of a folder in frame order; gaps, duplicates and no frames are errors."""
    numbered: dict[int, Path] = {}
    for p in folder.iterdir():
        if p.name.startswith(".") or not p.is_file() or p.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        m = _TRAILING_NUMBER.search(p.stem)
        if m is None:
            raise DatasetError(f"image {p} has no frame number in its name", clip)
        n = int(m.group(1))
        if n in numbered:
            raise DatasetError(f"two files for frame {n}: {numbered[n].name} and {p.name} in {folder}", clip)
        numbered[n] = p
    if not numbered:
        raise DatasetError(f"no image frames in {folder}", clip)
    first, last = min(numbered), max(numbered)
    if first not in (0, 1):
        raise DatasetError(f"frame numbering in {folder} starts at {first}, expected 0 or 1", clip)
    if last - first + 1 != len(numbered):
        missing = sorted(set(range(first, last + 1)) - set(numbered))
        shown = ", ".join(str(m) for m in missing[:10]) + (" ..." if len(missing) > 10 else "")
        raise DatasetError(
            f"missing frame(s) {shown} in {folder}: {len(numbered)} files for numbers {first}..{last}", clip
        )
    return tuple(numbered[k] for k in sorted(numbered))


def _label_candidates(kind: str, root: Path, s: str) -> list[Path]:
    if kind == "avenue":
        return [root / s / "labels", root / f"{s}_labels"]
    if kind == "shanghaitech":
        return [root / s / "test_frame_mask", root / s / "labels"]
    if kind == "video_folder":
        return [root / s / "labels", root / _SHORT_SPLIT[s] / "labels"]
    return [root / s / "labels"]


def _mask_candidates(kind: str, root: Path, s: str) -> list[Path]:
    if kind == "shanghaitech":
        return [root / s / "test_pixel_mask", root / s / "masks"]
    if kind == "video_folder":
        return []
    return [root / s / "masks"]


def _clip_mask(mask_dir: Path | None, name: str) -> Path | None:
    if mask_dir is None:
        return None
    if (mask_dir / name).is_dir():
        return mask_dir / name
    if (mask_dir / f"{name}.npy").is_file():
        return mask_dir / f"{name}.npy"
    return None


def _read_labels(
    kind: str, root: Path, s: str, clips: Sequence[tuple[str, tuple[Path, ...] | Path]]
) -> dict[str, np.ndarray]:
    label_dir = _first_dir(_label_candidates(kind, root, s))
    if label_dir is None:
        if s == "testing":
            log.warning("%s: no label folder for the testing split; it cannot be scored", root)
        return {}
    names = [n for n, _ in clips]
    mappings = sorted(label_dir.glob("*frame_labels.json"))
    raw: dict[str, Any] = {}
    if len(mappings) > 1:
        raise DatasetError(f"more than one *frame_labels.json in {label_dir}: {[m.name for m in mappings]}")
    if mappings:
        data = read_json(mappings[0], DatasetError)
        if not isinstance(data, dict):
            raise DatasetError(f"{mappings[0]} must map clip names to label lists")
        raw = data
        extra = sorted(set(raw) - set(names))
        if extra:
            raise DatasetError(f"{mappings[0]} has labels for clips that are not in the split: {extra}")
        source = {n: mappings[0] for n in names}
    else:
        source = {}
        for n in names:
            for suffix in (".npy", ".json"):
                if (label_dir / f"{n}{suffix}").is_file():
                    source[n] = label_dir / f"{n}{suffix}"
                    break
    out: dict[str, np.ndarray] = {}
    for name, entry in clips:
        path = source.get(name)
        if path is None or (mappings and name not in raw):
            raise DatasetError(f"no frame labels in {label_dir}", name)
        if mappings:
            values: Any = raw[name]
        elif path.suffix == ".npy":
            try:
                values = np.load(path)
            except (OSError, ValueError) as exc:
                raise DatasetError(f"cannot read labels {path}: {exc}", name) from exc
        else:
            values = read_json(path, DatasetError)
        labels = _as_labels(name, path, values)
        if isinstance(entry, tuple) and len(labels) != len(entry):
            raise DatasetError(f"{len(labels)} labels in {path} for {len(entry)} frames", name)
        out[name] = labels
    return out


def _as_labels(clip: str, path: Path, values: Any) -> np.ndarray:
    try:
        arr = np.asarray(values)
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"labels in {path} are not a list of 0/1: {exc}", clip) from exc
    if arr.ndim != 1 or arr.size == 0:
        raise DatasetError(f"labels in {path} must be a non-empty 1-D list, got shape {arr.shape}", clip)
    if arr.dtype == bool:
        arr = arr.astype(np.int8)
    if not np.issubdtype(arr.dtype, np.number) or not np.isin(arr, (0, 1)).all():
        raise DatasetError(f"labels in {path} must be 0 or 1", clip)
    return arr.astype(np.int8)


def _read_manifest(root: Path) -> dict[str, Any]:
    path = root / "manifest.json"
    if not path.is_file():
        return {}
    data = read_json(path, DatasetError)
    if not isinstance(data, dict):
        raise DatasetError(f"{path} must be a JSON object")
    return data


def _section(manifest: Mapping[str, Any], key: str, s: str) -> Any:
    """``manifest[key]``, looked up per split when it is ``{"training": {...}, "testing": {...}}``."""
    value = manifest.get(key)
    if isinstance(value, dict) and (s in value or _SHORT_SPLIT[s] in value):
        return value.get(s, value.get(_SHORT_SPLIT[s]))
    return value


def _counts_are_per_split(manifest: Mapping[str, Any]) -> bool:
    counts = manifest.get("counts")
    return isinstance(counts, dict) and any(k in counts for k in (*_SHORT_SPLIT, *_SHORT_SPLIT.values()))


def _manifest_counts(manifest: Mapping[str, Any], s: str) -> dict[str, int] | None:
    if _counts_are_per_split(manifest) and not any(k in manifest["counts"] for k in (s, _SHORT_SPLIT[s])):
        return None  # counts for the other split only
    counts = _section(manifest, "counts", s)
    if counts is None:
        return None
    if not isinstance(counts, dict) or not all(isinstance(v, int) for v in counts.values()):
        raise DatasetError(f"manifest.json counts must map clip names to frame counts, got {counts!r:.200}")
    return counts


def _contexts(
    kind: str, root: Path, s: str, manifest: Mapping[str, Any], names: Sequence[str]
) -> dict[str, str | None]:
    given = _section(manifest, "contexts", s)
    if given is not None and not isinstance(given, dict):
        raise DatasetError(f"{root / 'manifest.json'} contexts must map clip names to context names")
    given = given or {}
    out: dict[str, str | None] = {}
    for n in names:
        if n in given:
            out[n] = str(given[n])
        elif kind == "synthetic":
            raise DatasetError(f"{root / 'manifest.json'} gives no context for this clip", n)
        elif kind == "shanghaitech":
            out[n] = f"sht_scene{n.split('_')[0]}"
        else:
            out[n] = root.name
    return out


# --------------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------------


def _decode_images(
    clip: str, paths: Sequence[Path], size_hw: tuple[int, int] | None, workers: int
) -> np.ndarray:
    """``(N, H, W, 3) uint8 RGB`` from image files, decoded by ``workers`` threads."""
    if not paths:
        raise DatasetError("no frames", clip)
    first = _read_image(clip, paths[0], size_hw)
    out = np.empty((len(paths), *first.shape), dtype=np.uint8)
    out[0] = first

    def fill(i: int) -> None:
        img = _read_image(clip, paths[i], size_hw)
        if img.shape != first.shape:
            raise DatasetError(f"frame {paths[i]} is {img.shape[:2]} but the clip is {first.shape[:2]}", clip)
        out[i] = img

    if workers == 1 or len(paths) < 8:
        for i in range(1, len(paths)):
            fill(i)
    else:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="zsad-decode") as pool:
            list(pool.map(fill, range(1, len(paths))))  # list() re-raises the first worker error
    return out


def _read_image(clip: str, path: Path, size_hw: tuple[int, int] | None) -> np.ndarray:
    try:
        with Image.open(path) as im:
            rgb = im.convert("RGB")
            if size_hw is not None and (rgb.height, rgb.width) != size_hw:
                rgb = rgb.resize((size_hw[1], size_hw[0]), Image.Resampling.BILINEAR)
            return np.asarray(rgb, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError) as exc:  # Pillow's decoders raise all three for bad files
        raise DatasetError(f"cannot read frame {path}: {exc}", clip) from exc


def _resize_mask(im: Image.Image, size_hw: tuple[int, int] | None) -> np.ndarray:
    if size_hw is not None and (im.height, im.width) != size_hw:
        im = im.resize((size_hw[1], size_hw[0]), Image.Resampling.NEAREST)
    return np.asarray(im) != 0


def _read_mask(clip: str, path: Path, size_hw: tuple[int, int] | None) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return _resize_mask(im.convert("L"), size_hw)
    except (OSError, ValueError, SyntaxError) as exc:
        raise DatasetError(f"cannot read mask {path}: {exc}", clip) from exc


def decode_video_file(
    path: str | Path,
    size_hw: tuple[int, int] | None,
    *,
    clip: str | None = None,
    stall_timeout_s: float = 30.0,
) -> np.ndarray:
    """Decode every frame of a video file with GStreamer: ``(N, H, W, 3) uint8 RGB``.

    ``filesrc ! decodebin ! videoconvert ! videoscale ! video/x-raw,format=RGB,width,height ! appsink``,
    pulled synchronously (no clock, no dropping). ``size_hw=None`` keeps the decoded size. A decoder error
    or ``stall_timeout_s`` without a new frame raises :class:`DatasetError`.
    """
    path = Path(path)
    name = clip if clip is not None else path.stem
    if not path.is_file():
        raise DatasetError(f"video file {path} does not exist", name)
    Gst = init_gstreamer()
    caps = "video/x-raw,format=RGB,pixel-aspect-ratio=1/1"
    if size_hw is not None:
        caps += f",width={int(size_hw[1])},height={int(size_hw[0])}"
    pipeline = Gst.parse_launch(
        "filesrc name=src ! decodebin ! videoconvert ! videoscale add-borders=false ! "
        f"{caps} ! appsink name=sink sync=false max-buffers=8 drop=false emit-signals=false"
    )
    pipeline.get_by_name("src").set_property("location", str(path))  # no quoting issues with odd paths
    sink = pipeline.get_by_name("sink")
    bus = pipeline.get_bus()
    frames: list[np.ndarray] = []
    pipeline.set_state(Gst.State.PLAYING)
    try:
        idle = 0.0
        while True:
            sample = sink.emit("try-pull-sample", int(0.25 * Gst.SECOND))
            if sample is not None:
                frames.append(_sample_to_rgb(sample, path, name))
                idle = 0.0
                continue
            err = bus.pop_filtered(Gst.MessageType.ERROR)
            if err is not None:
                gerr, debug = err.parse_error()
                raise DatasetError(f"cannot decode {path}: {gerr.message} ({debug})", name)
            if sink.get_property("eos"):
                break
            idle += 0.25
            if idle >= stall_timeout_s:
                raise DatasetError(f"decoding {path} stalled for {stall_timeout_s:.0f} s", name)
    finally:
        pipeline.set_state(Gst.State.NULL)
    if not frames:
        raise DatasetError(f"video file {path} decoded to no frames", name)
    return np.stack(frames)


def _sample_to_rgb(sample: Any, path: Path, clip: str) -> np.ndarray:
    """One appsink RGB sample as ``(H, W, 3) uint8`` (:func:`core.gst.frames.sample_to_rgb`)."""
    try:
        return sample_to_rgb(sample)
    except FrameError as exc:
        raise DatasetError(f"cannot read a decoded frame of {path}: {exc}", clip) from exc


# --------------------------------------------------------------------------------------------------
# Captions
# --------------------------------------------------------------------------------------------------


def load_captions(path: str | Path) -> dict[str, list[str]]:
    """Read a caption manifest: ``{clip: [caption, ...]}``.

    ``.jsonl``: one JSON object a line with ``clip`` (or ``video``/``name``) and ``caption`` (a string) or
    ``captions`` (a list of strings); a clip may appear on several lines. Any other suffix is JSON: an
    object ``{clip: [captions] | caption}`` or a list of the same records as JSONL.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"caption manifest {path} does not exist")
    out: dict[str, list[str]] = {}
    if path.suffix.lower() == ".jsonl":
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise DatasetError(f"cannot read {path}: {exc}") from exc
        for i, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}:{i}: not JSON: {exc}") from exc
            _add_caption_record(out, record, f"{path}:{i}")
        return out
    data = read_json(path, DatasetError)
    if isinstance(data, dict):
        for clip, caps in data.items():
            out.setdefault(str(clip), []).extend(_caption_list(caps, f"{path}: {clip}"))
    elif isinstance(data, list):
        for i, record in enumerate(data):
            _add_caption_record(out, record, f"{path}[{i}]")
    else:
        raise DatasetError(f"{path} must be a JSON object or list of records")
    return out


def _add_caption_record(out: dict[str, list[str]], record: Any, where: str) -> None:
    if not isinstance(record, dict):
        raise DatasetError(f"{where}: a caption record must be an object")
    clip = next((record[k] for k in ("clip", "video", "name") if k in record), None)
    if not isinstance(clip, str) or not clip:
        raise DatasetError(f"{where}: record has no clip name (clip/video/name)")
    if "captions" in record:
        caps = _caption_list(record["captions"], where)
    elif "caption" in record:
        caps = _caption_list(record["caption"], where)
    else:
        raise DatasetError(f"{where}: record has no caption or captions")
    out.setdefault(clip, []).extend(caps)


def _caption_list(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise DatasetError(f"{where}: captions must be a non-empty string or a list of them")
    return list(value)
