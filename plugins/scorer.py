"""Streaming clip scoring shared by offline evaluation and the edge pipeline.

The backbone engine turns each clip into tokens; :class:`ClipScorer` keeps every camera's ring of past
clips and calls the DPC-head engine, batched across cameras, to get spatial error maps; each map is
reduced to one raw score per stream. The head streams: each clip goes through it once as the current
clip, and what it returns for that clip (its ConvGRU input projection) is the clip's history afterwards.
The runners are plain callables (named numpy arrays in, named numpy arrays out), so the same code drives
ONNX Runtime, TensorRT or PyTorch.

Maps that do not come from the DPC head (the appearance stream's, :mod:`plugins.appearance`) join a clip's
maps through ``ClipScorer.score(..., extra_maps=...)``, on the DPC maps' grid and before the filter below, so
that masks and learned levels apply to them as to every other map.

Before a map is reduced, the camera's :class:`plugins.zones.CellFilter` (its ignore mask and its learned
normal levels, set by the pipeline in a :class:`plugins.zones.CellFilters`) removes the cells that must not
count: they become NaN and :func:`reduce_map` skips them. A camera without a mask and without learned
levels is scored exactly as before.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from plugins.streams import MAP_STREAMS
from plugins.zones import CellFilter, CellFilters

__all__ = [
    "BACKBONE_INPUTS",
    "BACKBONE_OUTPUTS",
    "DPC_INPUTS",
    "DPC_OUTPUTS",
    "PROJECTION_OUTPUT",
    "ClipScorer",
    "ClipTokens",
    "ExtraMaps",
    "Runner",
    "StreamScores",
    "filter_scores",
    "reduce_map",
]

Runner = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]
#: ``extra_maps(indices, grid)``: for the clips at ``indices`` (positions in the list given to
#: :meth:`ClipScorer.score`) that got DPC maps, one ``{stream: (h, w) map on grid}`` each (empty: none).
ExtraMaps = Callable[[Sequence[int], tuple[int, int]], Sequence[Mapping[str, np.ndarray]]]

BACKBONE_INPUTS = ("clip",)
BACKBONE_OUTPUTS = ("tokens", "embedding")
DPC_INPUTS = ("history_proj", "last_tokens", "current", "last_frame", "current_frame")
DPC_OUTPUTS = ("feature_error", "pixel_error", "motion")  # the engine's map outputs, in its output order
PROJECTION_OUTPUT = "current_proj"  # the engine's last output: the current clip's history from now on


def reduce_map(error_map: np.ndarray) -> float:
    """One score from an ``(h, w)`` error map: the max over positions, so a small object still counts.

    NaN cells (masked, or at or below a learned normal level) do not count; a map without any counted cell
    gives NaN, and fusion then leaves that stream out of the clip's score."""
    m = np.asarray(error_map)
    nan = np.isnan(m)
    if not nan.any():
        return float(m.max())
    if nan.all():
        return float("nan")
    return float(np.nanmax(m))


@dataclass
class ClipTokens:
    """One encoded clip of one camera.

    tokens: ``(T, D, h, w)`` float32 backbone tokens. embedding: ``(D,)`` float32 CLS feature.
    first_frame / last_frame: ``(3, H, W)`` float32 frames of the clip, normalised by
    :class:`plugins.preprocess.Normaliser`.
    prev_last_frame: ``(3, H, W)``, the clip frame before ``last_frame``; needed only by a DPC head
    whose decoder extrapolates (``ClipScorer(prev_frame=True)``).
    projection: ``(3F, h, w)``, what the DPC head returned for this clip (``current_proj``); set by
    :class:`ClipScorer` once the clip has been through the head, None before.
    """

    camera: str
    index: int
    tokens: np.ndarray
    embedding: np.ndarray
    first_frame: np.ndarray
    last_frame: np.ndarray
    prev_last_frame: np.ndarray | None = None
    projection: np.ndarray | None = field(default=None, repr=False)


@dataclass
class StreamScores:
    """Raw (uncalibrated) per-stream scores of one clip, plus the spatial maps they came from.

    ``maps``: each map stream's ``(h, w)`` error map as the engine gave it. ``counted``: the same maps with
    NaN where a cell did not count (the camera's :class:`plugins.zones.CellFilter`), or None when every cell
    counted; the map streams' ``scores`` are reduced from these. ``filter_version``: the version of the
    filter applied (0: none), so a later stage can tell whether the scores are up to date.
    """

    camera: str
    index: int
    scores: dict[str, float]
    maps: dict[str, np.ndarray] = field(repr=False)
    embedding: np.ndarray = field(repr=False)
    counted: dict[str, np.ndarray] | None = field(default=None, repr=False)
    filter_version: int = 0

    @property
    def scored_maps(self) -> dict[str, np.ndarray]:
        """The maps the scores were reduced from (``counted``, else ``maps``)."""
        return self.counted if self.counted is not None else self.maps


def filter_scores(scores: StreamScores, cell_filter: CellFilter | None) -> StreamScores:
    """Apply ``cell_filter`` (None: none) to ``scores.maps`` and reduce each map stream's score again, in
    place; other streams (semantic) are left alone. Returns ``scores``. The one place where maps become
    scores, for the scorer and for a stage that finds the scores reduced under an older filter."""
    counted = cell_filter.apply(scores.maps) if cell_filter is not None else None
    for stream, error_map in (counted if counted is not None else scores.maps).items():
        scores.scores[stream] = reduce_map(error_map)
    scores.counted = counted
    scores.filter_version = cell_filter.version if cell_filter is not None else 0
    return scores


class ClipScorer:
    """Per-camera DPC history and batched scoring.

    Args:
        dpc: runner of the DPC-head engine (inputs :data:`DPC_INPUTS`, outputs :data:`DPC_OUTPUTS` and
            :data:`PROJECTION_OUTPUT`).
        context_clips: ``C``, past clips the DPC head aggregates.
        history_step: how many emitted clips apart the history clips are. The head was trained on
            clips ``T * stride`` source frames apart; a camera emitting a clip every ``hop`` frames
            uses ``history_step = T * stride / hop``.
        prev_frame: the engine takes ``prev_frame`` (its decoder extrapolates); every clip must then
            carry ``prev_last_frame``. ``None``: read it from the runner's ``input_names`` (a backend
            has them), else ``False``.
        filters: the cameras' masks and learned levels, applied before each map is reduced; None: none.
        projection_channels: ``3F``, channels of ``current_proj``; None: the runner's own
            ``projection_channels``, else its manifest's (a backend has one). Needed for the clips that fill
            a history (below).

    Every clip goes through the head as its current clip: a clip whose camera has a full history is
    scored; one that is still filling it runs against an all-zero history, its maps thrown away, only for
    its ``current_proj``. A clip whose history includes a clip of the same call (a camera with several
    clips queued, offline evaluation) runs that way first, with the whole call, and again in a second
    engine call, with its history's projections: at most two engine calls a :meth:`score`, each batched.

    The history holds a camera's last clips, taken as one hop apart. A clip dropped by a full queue leaves a
    gap that the history does not see: the next clip is scored against clips farther apart than the head
    was trained on. That is kept on purpose: starting the history again at every gap (tried,
    docs/results.md) left a camera that drops clips under sustained overload without any score until three
    clips in a row came, while the stream that reads the history (``predictive``) is weighed out by every
    calibration measured and the others barely depend on it. A clip lost with a failed engine call never got
    its projection: it leaves the history, which the camera's next clip fills again.
    """

    def __init__(
        self,
        dpc: Runner,
        *,
        context_clips: int,
        history_step: int = 1,
        prev_frame: bool | None = None,
        filters: CellFilters | None = None,
        projection_channels: int | None = None,
    ):
        if history_step < 1:
            raise ValueError(f"history_step must be >= 1, got {history_step}")
        self.dpc = dpc
        if prev_frame is None:
            prev_frame = "prev_frame" in getattr(dpc, "input_names", ())
        self.prev_frame = prev_frame
        self.context_clips = context_clips
        self.history_step = history_step
        self.filters = filters
        self.projection_channels = (
            projection_channels if projection_channels is not None else _runner_projection_channels(dpc)
        )
        self._rings: dict[str, deque[ClipTokens]] = {}

    @property
    def ring_len(self) -> int:
        return self.context_clips * self.history_step

    def reset(self, camera: str) -> None:
        """Forget a camera's history (after a reconnect, a seek or a resolution change)."""
        self._rings.pop(camera, None)

    def score(
        self, clips: Sequence[ClipTokens], *, extra_maps: ExtraMaps | None = None
    ) -> list[StreamScores | None]:
        """Score clips (any cameras, each camera's clips in order). ``None`` while history fills.

        ``extra_maps``: called once, with the clips that got DPC maps, for more streams' maps on the DPC
        maps' grid; they are filtered and reduced with the DPC maps."""
        entries: list[tuple[int, ClipTokens, list[ClipTokens] | None]] = []
        for i, clip in enumerate(clips):
            ring = self._rings.setdefault(clip.camera, deque(maxlen=self.ring_len))
            hist = list(ring)[:: self.history_step] if len(ring) == self.ring_len else None
            entries.append((i, clip, hist))
            ring.append(clip)
        # A clip whose history holds a clip of this call that has not been through the head yet runs twice:
        # in the first engine call only for its projection (history all zero), in a second for its maps.
        # Two calls at most, each as large as it can be, rather than a chain of one call a clip.
        waiting = {id(e) for e in entries if e[2] is not None and any(h.projection is None for h in e[2])}
        dpc_maps: dict[int, dict[str, np.ndarray]] = {}
        try:
            first = [(e[0], e[1], None if id(e) in waiting else e[2]) for e in entries]
            dpc_maps.update(self._run(first))  # every clip's projection: a clip's own, whatever its history
            if waiting:
                dpc_maps.update(self._run([e for e in entries if id(e) in waiting]))
        except BaseException:
            # Clips that never got their projection cannot be anyone's history: out of the rings.
            # (By identity: ClipTokens compare their arrays, which == cannot.)
            lost = {id(clip) for _, clip, _ in entries if clip.projection is None}
            for camera in {clip.camera for _, clip, _ in entries}:
                kept = self._rings.get(camera)
                if kept is not None:
                    self._rings[camera] = deque((c for c in kept if id(c) not in lost), maxlen=kept.maxlen)
            raise
        results: list[StreamScores | None] = [None] * len(clips)
        scored = sorted(dpc_maps)
        if not scored:
            return results
        grid = next(iter(dpc_maps[scored[0]].values())).shape[-2:]
        extras = extra_maps(scored, (grid[0], grid[1])) if extra_maps else None
        if extras is not None and len(extras) != len(scored):
            raise ValueError(f"extra_maps gave {len(extras)} map sets for {len(scored)} scored clips")
        for j, i in enumerate(scored):
            clip = clips[i]
            maps = dpc_maps[i]
            if extras is not None:
                maps.update(extras[j])
            result = StreamScores(
                camera=clip.camera, index=clip.index, scores={}, maps=maps, embedding=clip.embedding
            )
            cell_filter = self.filters.get(clip.camera) if self.filters is not None else None
            results[i] = filter_scores(result, cell_filter)
        return results

    def _run(
        self, wave: Sequence[tuple[int, ClipTokens, list[ClipTokens] | None]]
    ) -> dict[int, dict[str, np.ndarray]]:
        """One engine call for ``wave``: set each clip's ``projection``; the maps of those with a history."""
        history, last_tokens, last_frames, prev_frames = [], [], [], []
        for _, clip, hist in wave:
            if hist is None:
                # Filling its history: any history will do, only the clip's own projection is kept.
                grid = clip.tokens.shape[-2:]
                history.append(np.zeros((self.context_clips, self.projection_channels, *grid), np.float32))
                last_tokens.append(np.zeros(clip.tokens.shape[1:], np.float32))
                last_frames.append(clip.first_frame)
                if self.prev_frame:
                    prev_frames.append(clip.first_frame)
            else:
                history.append(np.stack([_projection_of(h) for h in hist]))
                last_tokens.append(hist[-1].tokens[-1])
                last_frames.append(hist[-1].last_frame)
                if self.prev_frame:
                    prev_frames.append(_prev_of(hist[-1]))
        feeds = {
            "history_proj": np.stack(history),
            "last_tokens": np.stack(last_tokens),
            "current": np.stack([clip.tokens for _, clip, _ in wave]),
            "last_frame": np.stack(last_frames),
            "current_frame": np.stack([clip.first_frame for _, clip, _ in wave]),
        }
        if self.prev_frame:
            feeds["prev_frame"] = np.stack(prev_frames)
        out = self.dpc(feeds)
        if PROJECTION_OUTPUT not in out:
            raise ValueError(f"the DPC head returned no {PROJECTION_OUTPUT} (outputs: {sorted(out)})")
        maps: dict[int, dict[str, np.ndarray]] = {}
        for j, (i, clip, hist) in enumerate(wave):
            # A copy: a view would keep the whole batch's output alive as long as the clip is history.
            clip.projection = np.array(out[PROJECTION_OUTPUT][j], dtype=np.float32)
            if hist is not None:
                maps[i] = {MAP_STREAMS[name]: out[name][j] for name in DPC_OUTPUTS}
        return maps


def _runner_projection_channels(dpc: Runner) -> int:
    """``3F`` of a runner: its own ``projection_channels`` (a runner written by hand, a test's), else its
    manifest's ``history_proj`` (a backend)."""
    own = getattr(dpc, "projection_channels", None)
    if isinstance(own, int):
        return own
    manifest = getattr(dpc, "manifest", None)
    for spec in getattr(manifest, "inputs", ()):
        if spec.name == "history_proj":
            return int(spec.shape[2])
    raise ValueError(
        "ClipScorer needs projection_channels: the DPC runner has no manifest naming history_proj "
        "(an engine built before the head streamed: rebuild it with build_engines.py)"
    )


def _projection_of(clip: ClipTokens) -> np.ndarray:
    if clip.projection is None:  # score() only runs a clip once its history has projections
        raise RuntimeError(f"camera {clip.camera}: clip {clip.index} has not been through the DPC head")
    return clip.projection


def _prev_of(clip: ClipTokens) -> np.ndarray:
    if clip.prev_last_frame is None:
        raise ValueError(
            f"camera {clip.camera}: clip {clip.index} has no prev_last_frame, which this DPC head needs"
        )
    return clip.prev_last_frame
