"""``zsad eval CONFIG --checkpoint CKPT --out DIR``: frame-level evaluation on a labelled test split.

The model scores every test video as the edge would, clip by clip with the DPC history (but densely: a clip
starts every ``frame_stride`` frames). Each stream is calibrated on the *training* split (normal footage; test
labels are used for scoring only), the memory streams' samples held out by folds of each context's training
videos (:func:`training.appearance_eval.context_folds`: ``plugins.fusion.HELDOUT_FOLDS`` groups, as ``zsad
calibrate`` splits a camera's footage in time), each stream's reliability weight judged on two halves of them
(:func:`assessment_fold_ids`), fused with the same ``plugins.fusion`` code the pipeline runs,
and reported beside the frame-difference floor computed in the same run. The fusion ablation
(:func:`fusion_ablation`) reports every rule with and without the reliability weights and the context gate;
the primary variant is the product's own fusion (the calibration's rule, reliability weights, context gate).

Writes ``metrics.json``, ``roc.png`` and ``timelines.png`` into the output folder. When the test videos
have pixel masks, ``metrics.json`` also gets a ``localisation`` block (``training.localisation``: pixel-level
AUC and peak hits of the evidence maps an alert would show: the calibration's rule, each clip's reliability
times gate weights, :func:`alert_weights`) and ``localisation/`` a few example PNGs.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from core.config import AlertPolicy, ZsadConfig, resolve_data_path
from engines.manifest import checkpoint_spec_mismatch
from engines.model import ZsadModel, load_checkpoint
from plugins.alerting import AlertParams, alert_params, resolve_policy
from plugins.fusion import (
    ASSESSMENT_FOLDS,
    CAMERA_THRESHOLD_QUANTILE,
    FUSION_RULES,
    Agreement,
    Calibration,
    fit_calibration,
    fuse_arrays,
    gate_multiplier,
    time_folds,
)
from plugins.objects import EMPTY as OBJECTS_EMPTY
from plugins.preprocess import normalise_frames
from plugins.pseudo_anomaly import paste_pseudo_anomalies
from plugins.scorer import DPC_INPUTS, DPC_OUTPUTS, PROJECTION_OUTPUT, ClipScorer, ClipTokens, Runner
from plugins.stationary import frame_step
from plugins.streams import APPEARANCE, MEMORY_STREAMS, OBJECTS, SEMANTIC, STATIONARY, STREAMS
from training.alert_replay import Event, replay_alerts
from training.appearance_eval import AppearanceEvaluator, context_folds
from training.baselines import extrapolation_scores, frame_difference_scores
from training.datasets import DatasetError, make_dataset
from training.gate import GateFitError, fit_model_gate, gate_weights
from training.localisation import LocalisationError, evaluation_localisation
from training.metrics import MetricError, alarm_events, gaussian_smooth, roc_auc, score_report
from training.objects_eval import ObjectsEvaluator
from training.plots import plot_roc_curves, plot_score_timelines
from training.stationary_eval import StationaryEvaluator

log = logging.getLogger(__name__)

__all__ = [
    "EvaluationError",
    "alert_weights",
    "assessment_fold_ids",
    "dpc_runner",
    "encoded_frames",
    "evaluate",
    "fusion_ablation",
    "fusion_variant",
    "gate_factors",
    "score_video",
]


class EvaluationError(ValueError):
    """The config cannot be evaluated (it names no dataset, or a model other than the checkpoint's)."""


def dpc_runner(model: ZsadModel) -> Runner:
    """The PyTorch DPC head as a named-arrays runner (the reference backend)."""

    @torch.no_grad()
    def run(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        args = [
            torch.from_numpy(np.ascontiguousarray(feeds[k]))
            for k in (*DPC_INPUTS, "prev_frame")
            if k in feeds
        ]
        outputs = (*DPC_OUTPUTS, PROJECTION_OUTPUT)  # the engine's output order
        return {name: t.numpy() for name, t in zip(outputs, model.dpc(*args), strict=True)}

    return run


@torch.no_grad()
def score_video(
    model: ZsadModel,
    frames: np.ndarray,
    *,
    hop: int,
    batch: int = 16,
    name: str = "video",
    reflect_history: bool = False,
    maps_out: list[dict[str, np.ndarray]] | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """Score one video clip by clip.

    Args:
        frames: ``(N, H, W, 3)`` uint8 RGB at the model's input size.
        hop: source frames between clip starts; must divide ``T * stride``.
        reflect_history: prefix the video with its own first ``C * T * stride`` frames in reverse, so
            that the first frames get a real DPC history (time-reversed walking is still walking at a
            normal speed) instead of no score. Offline evaluation only; a live camera simply starts
            scoring once its history is full.
        maps_out: when given, each scored clip's error maps are appended to it, aligned with ``targets``.

    Returns:
        ``targets`` ``(M,)`` the frame each scored clip predicts (its first frame), ``scores``
        ``{stream: (M,)}`` raw, and ``embeddings`` ``(M, D)``.
    """
    pre = model.spec.preprocess
    t, stride, span = model.clip_len, model.frame_stride, model.clip_span
    if span % hop:
        raise ValueError(f"hop {hop} must divide the clip span T*stride = {span}")
    pad = model.context_clips * span if reflect_history else 0
    if pad:
        if len(frames) <= pad:
            raise ValueError(f"clip {name!r}: {len(frames)} frames, reflection needs more than {pad}")
        frames = np.concatenate([frames[pad:0:-1], frames])
    norm = normalise_frames(frames, pre.mean, pre.std)  # (N, 3, H, W)
    starts = list(range(0, len(frames) - (t - 1) * stride, hop))
    scorer = ClipScorer(
        dpc_runner(model),
        context_clips=model.context_clips,
        history_step=span // hop,
        prev_frame=model.dpc.extrapolate,
        projection_channels=model.dpc.gru.projection_channels,
    )

    def reversed_prior(target: int) -> bool:
        # An extrapolating head whose prev frame lies before the reflection point sees the motion turn
        # round (prev == current), an error no real camera produces: leave that target to interpolation.
        return bool(pad) and model.dpc.extrapolate and stride <= target < 2 * stride

    targets: list[int] = []
    out: dict[str, list[float]] = {}
    embs: list[np.ndarray] = []
    for i in range(0, len(starts), batch):
        chunk = starts[i : i + batch]
        clips = np.stack([norm[s : s + t * stride : stride] for s in chunk])
        tokens, emb = model.backbone(torch.from_numpy(clips))
        tokens_np, emb_np = tokens.numpy(), emb.numpy()
        # The index is the clip's ordinal, as a run numbers its clips (pipeline.clips.Clip.index), not its
        # start frame.
        items = [
            ClipTokens(name, i + j, tokens_np[j], emb_np[j], clips[j, 0], clips[j, -1], clips[j, -2])
            for j in range(len(chunk))
        ]
        for s, res in zip(chunk, scorer.score(items), strict=True):
            if res is None:
                continue
            if reversed_prior(s - pad):
                continue
            targets.append(s - pad)
            embs.append(res.embedding)
            if maps_out is not None:
                maps_out.append(res.maps)
            for k, v in res.scores.items():
                out.setdefault(k, []).append(v)
    d = model.backbone.hidden_size
    return (
        np.asarray(targets, dtype=np.int64),
        {k: np.asarray(v, dtype=np.float64) for k, v in out.items()},
        np.stack(embs) if embs else np.zeros((0, d), np.float32),
    )


def _probe_video(
    model: ZsadModel,
    frames: np.ndarray,
    name: str,
    seed: int,
    appearance: AppearanceEvaluator | None,
    stationary: StationaryEvaluator | None,
    objects: ObjectsEvaluator | None,
    into: dict[str, dict[str, list[np.ndarray]]],
) -> None:
    """Score training video ``name`` again with pseudo-anomalies pasted in (``plugins.pseudo_anomaly``, as
    ``zsad calibrate`` does) and append, per kind and stream, the raw scores of the clips that hold a pasted
    event into ``into`` (kind -> stream -> arrays). A clip holds an event when any frame it reads does; the
    memory streams' scores are against the memory (model) its clean frames are held out by."""
    pasted, kinds = paste_pseudo_anomalies(frames, seed=seed)
    targets, sc, _ = score_video(model, pasted, hop=model.clip_span, name=name)
    span = (model.clip_len - 1) * model.frame_stride
    last = np.minimum(targets + span, len(frames) - 1)
    hit = [next((k for k in kinds[t : t + span + 1] if k is not None), None) for t in targets]
    picked = np.array([h is not None for h in hit], dtype=bool)
    held_out: dict[str, np.ndarray] = {}
    if picked.any():
        if appearance is not None:
            held_out[APPEARANCE] = appearance.held_out_frame_scores(name, pasted[last[picked]], last[picked])
        if stationary is not None:
            held_out[STATIONARY] = stationary.held_out_clip_scores(name, last[picked], frames=pasted)
        if objects is not None:
            held_out[OBJECTS] = objects.held_out_clip_scores(
                name, targets[picked], last[picked], frames=pasted
            )
    for stream, values in held_out.items():
        full = np.full(len(targets), np.nan)
        full[picked] = values
        sc = {**sc, stream: full}
    for kind in {h for h in hit if h is not None}:
        rows = np.array([h == kind for h in hit])
        for stream, values in sc.items():
            into.setdefault(kind, {}).setdefault(stream, []).append(np.asarray(values)[rows])


def to_frames(targets: np.ndarray, values: np.ndarray, n_frames: int) -> np.ndarray:
    """Spread clip scores at their target frames over all ``n_frames`` frames (linear in between,
    constant before the first and after the last scored frame)."""
    if len(targets) == 0:
        return np.zeros(n_frames, dtype=np.float64)
    return np.interp(np.arange(n_frames), targets, values)


def encoded_frames(
    targets: np.ndarray, n_frames: int, *, span: int, clip_hop: int, every: int, first: int
) -> np.ndarray:
    """For each scored clip (``targets`` ``(M,)``, the clips' first frames), the frame whose appearance
    encoding the run holds when it scores that clip: the run's clips start ``clip_hop`` frames apart, it
    encodes a camera's every ``every``-th scored clip (``appearance.spacing_s`` in clips) at the clip's last
    frame (``span`` frames after its first), counting from its first scored clip, the one that starts at frame
    ``first`` (when the DPC history is full: ``context_clips * clip_len * frame_stride``), and the clips
    between keep the last encoding. A target between the run's clip starts (the evaluation scores clips
    closer together than the run) holds what the run holds then; one before ``first`` (scored here with a
    reflected history, not at all by the run) follows the same count, and never reads a frame before the
    video's first or after its last."""
    if clip_hop < 1 or every < 1 or span < 0:
        raise ValueError(f"need clip_hop >= 1, every >= 1, span >= 0; got {clip_hop}, {every}, {span}")
    counted = (np.asarray(targets, dtype=np.int64) - first) // clip_hop  # the run's clips since its first
    start = np.maximum(first + (counted - np.mod(counted, every)) * clip_hop, 0)
    return np.minimum(start + span, max(n_frames - 1, 0))


def assessment_fold_ids(
    names: Sequence[str], contexts: Mapping[str, str | None], lengths: Sequence[int]
) -> np.ndarray:
    """The fold id of every calibration clip ``(sum(lengths),)`` int64 that the reliability weights are
    judged on, for training videos ``names`` (in order, each of ``lengths`` clips): each context's videos
    in two contiguous groups (:func:`training.appearance_eval.context_folds` with ``ASSESSMENT_FOLDS``: the
    halves of the ``HELDOUT_FOLDS`` groups the memory streams are held out by, a group a video when a
    context has two or three), a context's single video in its two time halves."""
    halves = context_folds(names, contexts, k=ASSESSMENT_FOLDS)
    return np.concatenate(
        [
            np.full(int(n), halves[name], np.int64) if halves[name] >= 0 else time_folds(int(n))
            for name, n in zip(names, lengths, strict=True)
        ]
        or [np.zeros(0, np.int64)]
    )


def gate_factors(weights: np.ndarray, gated: Sequence[str], streams: Sequence[str]) -> dict[str, np.ndarray]:
    """Per-frame gate factors, as ``plugins.fusion.StreamGate.factors`` gives them at run time: ``weights``
    ``(n, K)`` the gate's softmax over the ``gated`` streams (those it has a row for); each gets
    ``K * w``, every other stream of ``streams`` (a memory stream) a neutral 1."""
    n = weights.shape[0]
    out = {s: np.ones(n) for s in streams}
    for i, s in enumerate(gated):
        out[s] = len(gated) * np.asarray(weights[:, i], dtype=np.float64)
    return out


def fusion_variant(rule: str, reliability: bool, gate: bool, agreement: bool = True) -> str:
    """The metrics' name of one fusion ablation variant over all streams (``agreement`` False: the max rule
    without its calibration's agreement term, ``plugins.fusion.Agreement``)."""
    extra = (", reliability weights" if reliability else "") + (", context gate" if gate else "")
    extra += "" if agreement else ", no agreement term"
    return f"fused: all streams ({rule} rule{extra})"


def fusion_ablation(
    z: Mapping[str, Mapping[str, np.ndarray]],
    reliability: Mapping[str, float],
    factors: Mapping[str, Mapping[str, np.ndarray]] | None = None,
    rules: Sequence[str] = FUSION_RULES,
    per_video: Mapping[str, Mapping[str, float]] | None = None,
    agreement: Mapping[str, Agreement | None] | None = None,
) -> dict[str, dict[str, np.ndarray]]:
    """Every fusion rule with and without reliability weights and the context gate, by the run's own
    ``plugins.fusion.fuse_arrays``. The max rule with reliability weights takes each video's calibration's
    agreement term (fitted with those weights), and is also reported without it.

    Args:
        z: stream -> video -> ``(n,)`` calibrated z-scores per frame.
        reliability: stream -> reliability weight (``Calibration.weight``).
        factors: video -> stream -> ``(n,)`` gate factors (:func:`gate_factors`); None: no gate variants.
        per_video: video -> stream -> reliability weight, when each video's camera has its own calibration
            (it replaces ``reliability`` for the videos it names).
        agreement: video -> its calibration's agreement term (None or absent: the plain max).

    Returns:
        :func:`fusion_variant` name -> video -> ``(n,)`` fused score.
    """
    streams = list(z)
    videos = list(next(iter(z.values()))) if z else []
    out: dict[str, dict[str, np.ndarray]] = {}
    terms = {v: t for v, t in (agreement or {}).items() if t is not None}
    for rule in rules:
        for use_reliability in (False, True):
            # The agreement term belongs to the max rule with reliability weights (it is fitted with them).
            with_term = rule == "max" and use_reliability and bool(terms)
            agreeing = (True, False) if with_term else (True,)
            for use_gate in (False, True) if factors is not None else (False,):
                for use_agreement in agreeing:
                    fused: dict[str, np.ndarray] = {}
                    for v in videos:
                        weights: dict[str, float | np.ndarray] = {}
                        for s in streams:
                            own = per_video.get(v, reliability) if per_video is not None else reliability
                            w: float | np.ndarray = float(own.get(s, 1.0)) if use_reliability else 1.0
                            if use_gate and factors is not None:
                                w = w * gate_multiplier(factors[v][s], rule)
                            weights[s] = w
                        term = terms.get(v) if with_term and use_agreement else None
                        fused[v] = _as_the_run_fuses(
                            fuse_arrays({s: z[s][v] for s in streams}, weights, rule, term)
                        )
                    out[fusion_variant(rule, use_reliability, use_gate, use_agreement)] = fused
    return out


def _fuse_frames(
    per_stream: Mapping[str, np.ndarray], cal: Calibration, streams: Sequence[str]
) -> np.ndarray:
    """Uniformly weighted mean of calibrated z-scores over ``streams`` (frame arrays), over the streams that
    score a frame (a memory stream's window not yet full scores none; the DPC streams score every frame)."""
    z = {s: (per_stream[s] - cal.streams[s].location) / cal.streams[s].scale for s in streams}
    return _as_the_run_fuses(fuse_arrays(z, dict.fromkeys(streams, 1.0), "mean"))


def _as_the_run_fuses(fused: np.ndarray) -> np.ndarray:
    """``fuse_arrays``'s frames with 0.0 where no stream scores (NaN there): what the run's
    ``plugins.fusion.fuse`` gives such a clip, the normal median."""
    return np.where(np.isnan(fused), 0.0, fused)


def _add_memory_maps(
    clip_maps: list[dict[str, np.ndarray]],
    memory: Mapping[str, list[np.ndarray]],
    read_at: Mapping[str, np.ndarray],
) -> None:
    """Put each scored clip's memory-stream maps beside its DPC maps (``clip_maps[k]``), as the run's
    heatmap has them: a per-frame stream's map of frame ``read_at[stream][k]`` (the frame whose scoring its
    clip holds: appearance its last encoding, stationary its last frame), objects of the clip (per-clip
    maps). A map the stream did not score (a stationary window not yet full) is left out, as the run leaves
    the stream out."""
    for stream, kept in memory.items():
        if not kept:
            continue
        maps = kept[0]
        for k, entry in enumerate(clip_maps):
            m = maps[k] if stream == OBJECTS else maps[read_at[stream][k]]
            if np.isfinite(m).all():
                entry[stream] = m


def _unscored_as_normal(values: np.ndarray, cal: Calibration, stream: str) -> np.ndarray:
    """A stream's raw frame scores for its own row of the report: a frame it does not score (NaN: its
    window not yet full) reads as its camera's normal median, neither evidence nor its absence."""
    stats = cal.streams.get(stream)
    fill = stats.location if stats is not None else 0.0
    return np.where(np.isnan(values), fill, values)


def evaluate(
    cfg: ZsadConfig,
    checkpoint: str | Path,
    out_dir: str | Path,
    *,
    smooth_sigma: float = 3.0,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Evaluate ``checkpoint`` on the test split of ``cfg.train.dataset``; write metrics and plots."""
    if "OMP_NUM_THREADS" not in os.environ:
        # Every core by default; an explicit OMP_NUM_THREADS (a shared machine, a benchmark) wins.
        torch.set_num_threads(os.cpu_count() or 1)
    started = time.monotonic()
    out = Path(out_dir)
    if cfg.train is None:
        raise EvaluationError("the config has no 'train' section naming the dataset")
    model, meta = load_checkpoint(checkpoint)
    # The checkpoint carries its own spec; a config that states a different model would be silently
    # ignored, so it is refused, as build-engines refuses it. A config without a model section is fine.
    where = checkpoint_spec_mismatch(model.spec, cfg.model) if "model" in cfg.model_fields_set else None
    if where:
        raise EvaluationError(
            f"the config's model section does not match checkpoint {checkpoint}: {where} (evaluate with the "
            f"config the checkpoint was trained with, or remove the model section)"
        )
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    ds_cfg = cfg.train.dataset
    root = resolve_data_path(ds_cfg.root)
    size = (model.backbone.height, model.backbone.width)
    hop = model.frame_stride
    fps = _dataset_fps(root)

    test = make_dataset(ds_cfg.kind, root, "test", size, cache=False)
    labels = {c.name: np.asarray(c.labels) for c in test.clips}
    train = make_dataset(ds_cfg.kind, root, "train", size, cache=False)

    # Calibration on normal training footage, at the edge's clip spacing.
    cal_samples: dict[str, list[np.ndarray]] = {}
    cal_embs: list[np.ndarray] = []
    cal_groups: list[str] = []
    cal_lengths: list[int] = []
    patch = model.spec.backbone.patch_size
    grid = (size[0] // patch, size[1] // patch)
    dataset_contexts = sorted({c.context or "generic" for c in (*train.clips, *test.clips)})
    appearance = AppearanceEvaluator.from_config(
        cfg.appearance, grid, cfg.model.semantic.clip_text_model, dataset_contexts
    )
    stationary = _stationary_evaluator(cfg, model, grid, fps)
    objects = _objects_evaluator(cfg, model, grid, fps)
    train_contexts = {c.name: c.context or "generic" for c in train.clips}
    vfolds = context_folds([c.name for c in train.clips], train_contexts)
    cal_targets: list[np.ndarray] = []
    n_frames: dict[str, int] = {}
    # Clips of the training videos with pseudo-anomalies pasted in: context -> kind -> stream -> scores.
    probes: dict[str, dict[str, dict[str, list[np.ndarray]]]] = {}
    for clip in tqdm(train.clips, desc="calibrate", unit="video"):
        frames = train.frames(clip.name)
        targets_tr, sc, emb = score_video(model, frames, hop=model.clip_span, name=clip.name)
        for k, v in sc.items():
            cal_samples.setdefault(k, []).append(v)
        cal_embs.append(emb)
        cal_groups += [clip.context or "generic"] * len(emb)
        cal_lengths.append(len(emb))
        cal_targets.append(targets_tr)
        n_frames[clip.name] = len(frames)
        if appearance is not None:
            appearance.add_training_video(clip.name, frames, train_contexts[clip.name], vfolds[clip.name])
        if stationary is not None:
            stationary.add_training_video(clip.name, frames, train_contexts[clip.name], vfolds[clip.name])
        if objects is not None:
            objects.add_training_video(clip.name, frames, train_contexts[clip.name], vfolds[clip.name])
    span = (model.clip_len - 1) * model.frame_stride  # a clip's last frame, which the run scores
    cal_last = [
        np.minimum(t + span, n_frames[c.name] - 1) for c, t in zip(train.clips, cal_targets, strict=True)
    ]
    if appearance is not None:
        cal_samples[APPEARANCE] = [
            appearance.held_out_clip_scores(c.name, last)
            for c, last in zip(train.clips, cal_last, strict=True)
        ]
        if appearance.semantic:
            cal_samples[SEMANTIC] = [
                appearance.clip_semantic_scores(c.name, last)
                for c, last in zip(train.clips, cal_last, strict=True)
            ]
    if stationary is not None:
        held = _stationary_samples(stationary, train, cal_last, train_contexts)
        if held is not None:
            cal_samples[STATIONARY] = held
    if objects is not None:
        cal_samples[OBJECTS] = [
            objects.held_out_clip_scores(c.name, t, last)
            for c, t, last in zip(train.clips, cal_targets, cal_last, strict=True)
        ]
    # After every training video is in the memories: the pasted copies are scored against them.
    for i, clip in enumerate(tqdm(train.clips, desc="pseudo-anomalies", unit="video")):
        _probe_video(
            model,
            train.frames(clip.name),
            clip.name,
            i,
            appearance,
            stationary,
            objects,
            probes.setdefault(train_contexts[clip.name], {}),
        )
    cal_raw = _scored_streams({k: np.concatenate(v) for k, v in cal_samples.items()}, "the training videos")
    # Reliability weights judged on two halves of each context's training videos, as `zsad calibrate` judges
    # the halves of a camera's footage.
    folds = assessment_fold_ids([c.name for c in train.clips], train_contexts, cal_lengths)
    pooled_probes = {
        kind: {
            stream: np.concatenate([a for ctx in probes.values() for a in ctx.get(kind, {}).get(stream, [])])
            for stream in {s for ctx in probes.values() for s in ctx.get(kind, {})}
        }
        for kind in {k for ctx in probes.values() for k in ctx}
    }
    cal = fit_calibration(cal_raw, folds, threshold_quantile=0.99, probes=pooled_probes)
    clip_contexts = np.concatenate(
        [
            np.full(n, train_contexts[c.name], dtype=object)
            for c, n in zip(train.clips, cal_lengths, strict=True)
        ]
    )
    # Each clip's training video: the threshold's trailing median restarts at each, as at each footage file.
    clip_videos = np.concatenate([np.full(n, i) for i, n in enumerate(cal_lengths)])
    policy = cfg.defaults.alerts
    # Each context is calibrated as `zsad calibrate` calibrates a camera, its threshold included.
    context_cals = {
        ctx: fit_calibration(
            _scored_streams({k: v[clip_contexts == ctx] for k, v in cal_raw.items()}, f"context {ctx}"),
            folds[clip_contexts == ctx],
            threshold_quantile=CAMERA_THRESHOLD_QUANTILE,
            smoothing=policy.smoothing,
            segments=clip_videos[clip_contexts == ctx],
            camera=ctx,
            probes={
                kind: {stream: np.concatenate(v) for stream, v in by_stream.items()}
                for kind, by_stream in probes.get(ctx, {}).items()
            },
        )
        for ctx in sorted(set(train_contexts.values()))
    }
    try:
        gate_info: dict[str, Any] = fit_model_gate(model, cal_raw, np.concatenate(cal_embs), cal_groups, cal)
    except GateFitError as exc:  # too little training footage: the checkpoint's own gate, as train keeps it
        log.warning("stream gate not refitted on the training videos (the checkpoint's is used): %s", exc)
        gate_info = {"refitted": False, "reason": str(exc)}

    frame_scores: dict[str, dict[str, np.ndarray]] = {
        s: {} for s in (*STREAMS, *MEMORY_STREAMS) if s in cal.streams
    }
    present = list(frame_scores)
    gated = [s for s in present if s in model.stream_gate.streams]  # memory streams have no gate row
    frame_weights: dict[str, np.ndarray] = {}
    floor_native: dict[str, np.ndarray] = {}
    floor_model: dict[str, np.ndarray] = {}
    prior_model: dict[str, np.ndarray] = {}
    native = make_dataset(ds_cfg.kind, root, "test", None, cache=False)
    # Localisation: each masked video's error maps at its scored frames, with their gate weights.
    located: dict[str, tuple[np.ndarray, list[dict[str, np.ndarray]], np.ndarray]] = {}
    for clip in tqdm(test.clips, desc="score", unit="video"):
        frames = test.frames(clip.name)
        n = len(frames)
        if clip.labels is not None and len(clip.labels) != n:
            raise ValueError(f"clip {clip.name!r}: {len(clip.labels)} labels for {n} frames")
        clip_maps: list[dict[str, np.ndarray]] | None = [] if clip.mask_path is not None else None
        targets, sc, emb = score_video(
            model, frames, hop=hop, name=clip.name, reflect_history=True, maps_out=clip_maps
        )
        last = np.minimum(targets + span, n - 1)  # each scored clip's last frame, where the run scores it
        # The memory streams are scored at each clip's last frame, one value a clip as the run has them, and
        # spread over the frames as the DPC streams' are (frame t, a clip's first frame, takes the clip's).
        # The appearance stream, as the run's, encodes a clip every `spacing_s` at the dataset's rate
        # (every `clips_per_encoding`-th) and the clips between keep the last encoding (the encoder still
        # runs on every frame here, though only the `encoded` frames' scores and maps are read: a few
        # percent of an evaluation's time).
        # A masked video also keeps the memory streams' maps, which the run's heatmap holds beside the DPC
        # streams' (stream -> (frames or clips, h, w); per frame for appearance and stationary).
        encoded = encoded_frames(
            targets,
            n,
            span=span,
            clip_hop=model.spec.preprocess.clip_hop,
            every=cfg.appearance.clips_per_encoding(fps, model.spec.preprocess.clip_hop),
            first=model.context_clips * model.clip_span,
        )
        memory_maps: dict[str, list[np.ndarray]] | None = (
            {APPEARANCE: [], STATIONARY: [], OBJECTS: []} if clip_maps is not None else None
        )
        seen = (
            appearance.test_frame_scores(
                frames, clip.context or "generic", memory_maps[APPEARANCE] if memory_maps else None
            )
            if appearance is not None and (APPEARANCE in frame_scores or SEMANTIC in frame_scores)
            else None
        )
        for k in frame_scores:
            if k == APPEARANCE and seen is not None:
                frame_scores[k][clip.name] = to_frames(targets, seen[0][encoded], n)
            elif k == SEMANTIC:
                # Its only source offline is the appearance encoder's image embedding (score_video has none).
                if seen is None or seen[1] is None:
                    raise EvaluationError(
                        "the semantic stream was calibrated but its encoder gave no embedding"
                    )
                frame_scores[k][clip.name] = to_frames(targets, seen[1][encoded], n)
            elif k == STATIONARY and stationary is not None:
                # NaN (its window not yet full) spreads to the frames between a NaN clip and the next.
                frame_scores[k][clip.name] = to_frames(
                    targets,
                    stationary.test_frame_scores(
                        frames, clip.context or "generic", memory_maps[STATIONARY] if memory_maps else None
                    )[last],
                    n,
                )
            elif k == OBJECTS and objects is not None:
                # The clips the DPC streams score, by the run's rule, spread over the frames as theirs are.
                blobs = objects.test_clip_scores(
                    frames,
                    clip.context or "generic",
                    targets,
                    last,
                    memory_maps[OBJECTS] if memory_maps else None,
                )
                # A camera without a model has no stream (its calibration none, so fusion leaves it out);
                # alone, the stream then sees nothing there.
                frame_scores[k][clip.name] = (
                    np.full(n, OBJECTS_EMPTY, np.float64) if blobs is None else to_frames(targets, blobs, n)
                )
            else:
                frame_scores[k][clip.name] = to_frames(targets, sc[k], n)
        w = gate_weights(model, emb, gated) if gated else np.zeros((len(emb), 0))  # (M, K)
        if clip_maps is not None and memory_maps is not None:
            _add_memory_maps(clip_maps, memory_maps, {APPEARANCE: encoded, STATIONARY: last})
            located[clip.name] = (targets, clip_maps, w)
        frame_weights[clip.name] = np.stack(
            [to_frames(targets, w[:, i], n) for i in range(len(gated))], axis=1
        )
        floor_native[clip.name] = frame_difference_scores(native.frames(clip.name)).astype(np.float64)
        floor_model[clip.name] = frame_difference_scores(frames).astype(np.float64)
        prior_model[clip.name] = extrapolation_scores(frames).astype(np.float64)

    learned: list[str] = [s for s in ("predictive", "pixel") if s in frame_scores]
    variants: dict[str, dict[str, np.ndarray]] = {
        "floor: frame difference, native resolution": floor_native,
        "floor: frame difference, model resolution": floor_model,
        # Not a learned score: the extrapolate decoder's untrained prior, so its gain can be told apart.
        "reference: constant-velocity extrapolation of consecutive frames, model resolution": prior_model,
    }
    # The run calibrates each camera on its own footage; here each context is a camera, so the fusion
    # variants z-score and weigh each test video with its context's calibration (one context: the same).
    test_contexts = {c.name: c.context or "generic" for c in test.clips}
    own = {v: context_cals.get(test_contexts[v], cal) for v in labels}
    for s in frame_scores:
        variants[f"stream: {s} (raw)"] = {
            v: _unscored_as_normal(frame_scores[s][v], own[v], s) for v in frame_scores[s]
        }
    fused_sets: dict[str, list[str]] = {
        "fused: predictive + pixel (calibrated)": learned,
        "fused: all streams (calibrated)": list(frame_scores),
    }
    for name, streams in fused_sets.items():
        variants[name] = {
            v: _fuse_frames({s: frame_scores[s][v] for s in streams}, cal, streams) for v in labels
        }
    z = {s: {v: _calibrated(frame_scores[s][v], own[v], s) for v in labels} for s in present}
    factors = {v: gate_factors(frame_weights[v], gated, present) for v in labels}
    ablation = fusion_ablation(
        z,
        {s: cal.weight(s) for s in present},
        factors,
        per_video={v: {s: own[v].weight(s) for s in present} for v in labels},
        agreement={v: own[v].agreement for v in labels},
    )
    # The names earlier results use: the uniform and the gate-weighted mean, without reliability weights.
    variants["fused: all streams (calibrated, context gate)"] = ablation[fusion_variant("mean", False, True)]
    variants.update(ablation)
    product = fusion_variant(cal.rule, True, True)
    # The calibration's threshold is a quantile of its own rule's fused score with a uniform gate.
    thresholded = fusion_variant(cal.rule, True, False)

    results: dict[str, Any] = {}
    for name, scores in variants.items():
        # The threshold is one calibration's: with a calibration per context it fits no single one.
        threshold = cal.threshold if name == thresholded and len(context_cals) == 1 else None
        results[name] = score_report(scores, labels, fps=fps, threshold=threshold)
        smoothed = {v: gaussian_smooth(s, smooth_sigma) for v, s in scores.items()}
        results[name + f" + gaussian smoothing (sigma={smooth_sigma:g})"] = score_report(
            smoothed, labels, fps=fps, threshold=threshold
        )

    primary = f"{product} + gaussian smoothing (sigma={smooth_sigma:g})"
    summary = {
        name: {
            "micro_auc": r["micro_auc"],
            "macro_auc": r["macro_auc"],
            "ap": r["average_precision"],
            "recall_at_5pct_fpr": r["recall_at_fpr"].get("0.05"),
            "micro_auc_minmax_per_video": r["minmax_normalised"]["micro_auc"],
        }
        for name, r in results.items()
    }
    primary_scores = variants[product]
    contexts = {c.name: c.context for c in test.clips}
    events = {c.name: c.events for c in test.clips if c.events}
    smoothed_primary = {v: gaussian_smooth(s, smooth_sigma) for v, s in primary_scores.items()}
    metrics = {
        "breakdown": {
            "variant": primary,
            **breakdown(smoothed_primary, labels, contexts, events),
            "floor_model_resolution": breakdown(
                {v: gaussian_smooth(s, smooth_sigma) for v, s in floor_model.items()},
                labels,
                contexts,
                events,
            ),
        },
        "dataset": {"kind": ds_cfg.kind, "root": str(ds_cfg.root), "test_videos": len(labels), "fps": fps},
        "protocol": (
            "frame-level; every frame of every test video scored, the first ones with a DPC history made by "
            "time-reflecting the video's opening frames; raw scores pooled over videos (micro) unless marked "
            "min-max normalised; calibration fitted on the training split only; the floor is computed in the "
            "same run on the same frames"
        ),
        "checkpoint": {
            "path": str(checkpoint),
            "sha256": meta.get("sha256"),
            "step": meta.get("step"),
            "train_seconds": meta.get("train_seconds"),
        },
        "primary": primary,
        "summary": summary,
        "calibration": cal.to_dict(),
        "calibration_per_context": {ctx: c.to_dict() for ctx, c in context_cals.items()},
        "fusion_ablation": list(ablation),
        "stream_gate": gate_info,
        "details": results,
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "eval_seconds": round(time.monotonic() - started, 1),
    }
    metrics["alerts"] = _replayed_alerts(
        primary_scores,
        labels,
        events,
        {v: own[v] for v in labels},
        policy,
        model.spec.preprocess.clip_hop,
        fps,
        delay=(model.spec.preprocess.clip_len - 1) * model.spec.preprocess.frame_stride,
    )
    if located:
        metrics["localisation"] = _localisation(located, gated, present, own, native, out / "localisation")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=False))
    y = np.concatenate([labels[v] for v in labels])
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {
        name: (y, np.concatenate([variants[name][v] for v in labels]))
        for name in (
            "floor: frame difference, native resolution",
            "stream: pixel (raw)",
            "stream: predictive (raw)",
            "fused: all streams (calibrated)",
            "fused: all streams (calibrated, context gate)",
            product,
        )
        if name in variants
    }
    plot_roc_curves(curves, out / "roc.png", title=f"{ds_cfg.kind}: frame-level ROC")
    fused = variants[product]
    plot_score_timelines(
        {v: gaussian_smooth(s, smooth_sigma) for v, s in fused.items()},
        out / "timelines.png",
        labels=labels,
        title=f"{product} per frame (smoothed); shaded: ground-truth anomalies",
    )
    return metrics


def _replayed_alerts(
    fused: Mapping[str, np.ndarray],
    labels: Mapping[str, np.ndarray],
    events: Mapping[str, Sequence[Mapping[str, Any]]],
    cals: Mapping[str, Calibration],
    policy: AlertPolicy,
    hop: int,
    fps: float,
    delay: int = 0,
) -> dict[str, Any]:
    """The product's alerts on the test videos (:mod:`training.alert_replay`) under the config's default
    alert policy: each video at its context's calibration threshold when ``on_threshold`` is ``calibrated``
    (the threshold a camera of that context would get), else the number. Events: the dataset's own where it
    names them (synthetic scenes), else each run of abnormal frames (UCSD Ped2). ``delay``: frames from a
    clip's first frame to its last, when the run scores it (the replay's alerts open when the run's would;
    the fused score of a frame pairs the clip starting there with the memory streams of the clip's last
    frame, as the run's does)."""
    # One camera per context: its calibration resolves the policy once, as the run resolves a camera's.
    resolved: dict[str, AlertParams] = {}
    params: dict[str, AlertParams] = {}
    for v in fused:
        name = cals[v].camera or v
        if name not in resolved:
            resolved[name] = alert_params(resolve_policy(policy, cals[v], f"context {name}"))
        params[v] = resolved[name]
    by_video: dict[str, list[Event]] = {}
    for v, lab in labels.items():
        named = events.get(v)
        if named:
            # Each event where the labels call its frames abnormal (a synthetic event's span can hold normal
            # stretches): an alert only there is a false alarm, as the frame AUCs count it.
            by_video[v] = [ev for ev in (_labelled(e, lab) for e in named) if ev is not None]
        else:
            by_video[v] = [Event(a, b - 1) for a, b in alarm_events(lab, 1)]
    report = replay_alerts(fused, by_video, params, hop=hop, fps=fps, smoothing=policy.smoothing, delay=delay)
    return {
        "on_threshold": policy.on_threshold,
        "thresholds": {v: round(p.on_threshold, 3) for v, p in params.items()},
        "hop_frames": hop,
        **report,
    }


def _labelled(event: Mapping[str, Any], labels: np.ndarray) -> Event | None:
    """A dataset's event (``kind``, ``start``, ``end`` inclusive, and, from a synthetic set written since
    2026-12-06, ``runs``: its own abnormal frames' inclusive runs) as the replay's :class:`Event` with its
    detection windows, or None when it has no abnormal frame. A synthetic event's span runs from its actor's
    first to last abnormal frame, and can hold stretches where it is normal (an off-path walker back on the
    platform before wandering off again): an alert there is a false alarm, and those frames count as
    normal time, as the frame AUCs count them. Without ``runs`` (older sets), the runs of frames inside
    the span that the labels, a union over every event, call abnormal."""
    runs = _own_runs(event, labels)
    if not runs:
        return None
    return Event(runs[0][0], runs[-1][1], str(event["kind"]), tuple(runs) if len(runs) > 1 else ())


def _own_runs(event: Mapping[str, Any], labels: np.ndarray) -> list[tuple[int, int]]:
    """The inclusive frame runs where ``event`` (a dataset's event mapping) is abnormal: its ``runs`` where
    the dataset records them, else the runs of its span that ``labels`` ``(N,)`` call abnormal."""
    start, end = int(event["start"]), int(event["end"])
    recorded = event.get("runs")
    if recorded:
        runs = [(int(a), int(b)) for a, b in recorded]
        if any(not start <= a <= b <= end for a, b in runs) or runs != sorted(runs):
            raise EvaluationError(
                f"a {event.get('kind')} event of frames {start}..{end} records runs {recorded}: each run "
                f"must lie inside its span, in order"
            )
        return runs
    inside = np.asarray(labels)[start : end + 1] == 1
    return [(start + a, start + b - 1) for a, b in alarm_events(inside.astype(np.int64), 1)]


def breakdown(
    scores: Mapping[str, np.ndarray],
    labels: Mapping[str, np.ndarray],
    contexts: Mapping[str, str | None],
    events: Mapping[str, Any],
) -> dict[str, Any]:
    """Micro AUC per context (its videos only) and per anomaly kind (that kind's event frames against
    every normal frame of the test set). Kinds come from each clip's ``events`` (synthetic scenes).

    ``per_kind`` counts a kind's frames only where no event of another kind is on screen too: a frame an
    easier event shares (a van passing while someone walks off the path) says nothing of whether the
    harder one is seen. ``per_kind_with_overlaps`` counts every frame of the kind's events (what this
    reported as ``per_kind`` before 2026-12-06: on seed 59, 164 of the off-path walkers' 360 frames shared
    the screen); ``overlap_frames`` says how many of each kind's frames the first leaves out. Both count
    only frames the labels call abnormal: a synthetic event's span runs from its actor's first to its last
    abnormal frame and can hold normal stretches between (the labels are per frame, over every event)."""

    def auc(y: np.ndarray, s: np.ndarray) -> float | None:
        try:
            return round(roc_auc(y, s), 4)
        except MetricError:
            return None

    per_context: dict[str, float | None] = {}
    for ctx in sorted({c for c in contexts.values() if c}):
        names = [v for v in labels if contexts.get(v) == ctx]
        per_context[ctx] = auc(
            np.concatenate([labels[v] for v in names]), np.concatenate([scores[v] for v in names])
        )
    normal = np.concatenate([scores[v][labels[v] == 0] for v in labels])
    every: dict[str, list[np.ndarray]] = {}
    alone: dict[str, list[np.ndarray]] = {}
    overlap: dict[str, int] = {}
    for v, evs in events.items():
        named = [ev for ev in evs or [] if isinstance(ev, dict)]
        if v not in scores or not named:
            continue
        n = len(scores[v])
        abnormal = np.asarray(labels[v]) == 1
        covered: dict[str, np.ndarray] = {}  # kind -> frames its events are abnormal in, in this video
        for ev in named:
            mask = covered.setdefault(str(ev["kind"]), np.zeros(n, bool))
            # An event's span can hold frames where it is normal (a synthetic off-path walker back on the
            # platform before wandering off again): only its own abnormal frames are its (:func:`_own_runs`).
            for a, b in _own_runs(ev, labels[v]):
                mask[a : b + 1] = True
        for mask in covered.values():
            mask &= abnormal  # a frame the labels call normal is normal to every AUC here
        for kind, mask in covered.items():
            others = np.zeros(n, bool)
            for other, m in covered.items():
                if other != kind:
                    others |= m
            every.setdefault(kind, []).append(scores[v][mask])
            alone.setdefault(kind, []).append(scores[v][mask & ~others])
            overlap[kind] = overlap.get(kind, 0) + int((mask & others).sum())

    def kind_auc(parts: list[np.ndarray]) -> float | None:
        pos = np.concatenate(parts)
        if not len(pos):
            return None
        return auc(np.concatenate([np.ones(len(pos)), np.zeros(len(normal))]), np.concatenate([pos, normal]))

    return {
        "per_context": per_context,
        "per_kind": {kind: kind_auc(alone[kind]) for kind in sorted(alone)},
        "per_kind_with_overlaps": {kind: kind_auc(every[kind]) for kind in sorted(every)},
        "overlap_frames": {kind: overlap[kind] for kind in sorted(overlap)},
    }


def alert_weights(
    gate: np.ndarray, gated: Sequence[str], streams: Sequence[str], cal: Calibration
) -> np.ndarray:
    """``(M, len(streams))``: each clip's stream weights as ``plugins.fusion.fuse`` gives them to an alert
    (``FusedScore.weights``) from the gate's softmax ``gate`` ``(M, K)`` over ``gated``: the reliability
    weight times the gate factor (:func:`gate_factors`), normalised to sum 1 over ``streams`` under the
    calibration's ``mean`` rule, as they are under ``max``."""
    factors = gate_factors(gate, gated, streams)
    w = (
        np.stack([cal.weight(s) * gate_multiplier(factors[s], cal.rule) for s in streams], axis=1)
        if streams
        else np.zeros((len(gate), 0))
    )
    if cal.rule == "mean" and w.size:
        w = w / w.sum(axis=1, keepdims=True)
    return w


def _localisation(
    located: Mapping[str, tuple[np.ndarray, list[dict[str, np.ndarray]], np.ndarray]],
    gated: Sequence[str],
    streams: Sequence[str],
    own: Mapping[str, Calibration],
    native: Any,
    examples_dir: Path,
) -> dict[str, Any]:
    """The ``localisation`` block: the evidence maps an alert's heatmap and peak box would show (each video
    with its own context's calibration ``own[video]``, as its camera would be: its rule, statistics, and
    each clip's reliability times gate weights over ``streams``; ``located`` holds the gate's softmax over
    ``gated``) against the native pixel masks; a mask problem costs only this block."""
    # A context's calibration may lack a memory stream (no model could be fitted there): its evidence then
    # leaves the stream out, as its camera's would.
    stats = {
        v: {s: (own[v].streams[s].location, own[v].streams[s].scale) for s in streams if s in own[v].streams}
        for v in located
    }
    weighted = {
        name: (targets, maps, alert_weights(gate, gated, streams, own[name]))
        for name, (targets, maps, gate) in located.items()
    }
    rules = {own[v].rule for v in located}
    try:
        if len(rules) != 1:
            raise LocalisationError(f"the contexts' calibrations use different fusion rules: {sorted(rules)}")
        return evaluation_localisation(
            weighted,
            streams,
            None,
            native.masks,
            frames_of=native.frames,
            examples_dir=examples_dir,
            rule=rules.pop(),
            stats_of=stats,
        )
    except (LocalisationError, DatasetError) as exc:
        log.warning("localisation not measured: %s", exc)
        return {"error": str(exc)}


def _stationary_evaluator(
    cfg: ZsadConfig, model: ZsadModel, grid: tuple[int, int], fps: float
) -> StationaryEvaluator | None:
    """The stationary stream's evaluator (None when ``stationary.enabled`` is false), feeding frames at the
    step the run's window takes them from this dataset's frame rate and the model's clip layout."""
    step = _memory_step(cfg.stationary.spacing_s, model, fps)
    evaluator = StationaryEvaluator.from_config(cfg.stationary, grid, step)
    if evaluator is not None:
        log.info(
            "stationary stream: window %d frames, every %d-th (%.2f s apart at %g fps)",
            cfg.stationary.window,
            step,
            step / fps,
            fps,
        )
    return evaluator


def _stationary_samples(
    stationary: StationaryEvaluator,
    train: Any,
    last_frames: Sequence[np.ndarray],
    contexts: Mapping[str, str],
) -> list[np.ndarray] | None:
    """Each training video's held-out stationary clip scores, at each scored clip's last frame
    (``last_frames``: the frame the run's window has just taken). None (logged:
    the evaluation then has no stationary stream) when a context's videos give no score at all (too short
    for a model per fold and a full window), since every context is calibrated on its own."""
    out = []
    scored: dict[str, bool] = {}
    for clip, last in zip(train.clips, last_frames, strict=True):
        values = stationary.held_out_clip_scores(clip.name, last)
        out.append(values)
        ctx = contexts[clip.name]
        scored[ctx] = scored.get(ctx, False) or bool(np.isfinite(values).any())
    empty = sorted(ctx for ctx, ok in scored.items() if not ok)
    if empty:
        log.warning(
            "no stationary stream in this evaluation: the training videos of %s are too short for a model "
            "per fold and a full window (%d frames, every %d-th)",
            ", ".join(empty),
            stationary.window,
            stationary.step,
        )
        return None
    return out


def _objects_evaluator(
    cfg: ZsadConfig, model: ZsadModel, grid: tuple[int, int], fps: float
) -> ObjectsEvaluator | None:
    """The objects stream's evaluator (None when ``objects.enabled`` is false), feeding frames at the step
    the run takes them from this dataset's frame rate and the model's clip layout."""
    step = _memory_step(cfg.objects.spacing_s, model, fps)
    evaluator = ObjectsEvaluator.from_config(cfg.objects, grid, step)
    if evaluator is not None:
        log.info("objects stream: every %d-th frame (%.2f s apart at %g fps)", step, step / fps, fps)
        pre = model.spec.preprocess
        if pre.clip_hop != pre.clip_len * pre.frame_stride:
            # The evaluation scores clips a span apart; a run whose clips overlap gives each clip only the
            # frames it newly feeds, so its objects maps take the max over fewer frames than these.
            log.warning(
                "objects stream: clips overlap in the run (clip_hop %d < clip_len x frame_stride %d), so its "
                "clip maps cover fewer frames than the evaluation's; its numbers here are approximate",
                pre.clip_hop,
                pre.clip_len * pre.frame_stride,
            )
    return evaluator


def _memory_step(spacing_s: float, model: ZsadModel, fps: float) -> int:
    """The frames between those a frame-based memory stream takes at ``spacing_s`` seconds apart."""
    pre = model.spec.preprocess
    return frame_step(spacing_s, fps, pre.clip_len, pre.frame_stride, pre.clip_hop)


def _scored_streams(samples: Mapping[str, np.ndarray], where: str) -> dict[str, np.ndarray]:
    """``samples`` without the streams that have no finite score in them (logged): a memory stream whose
    model could not be fitted there (too few objects in the footage) is left out, not calibrated."""
    out = {k: v for k, v in samples.items() if np.isfinite(v).any()}
    for k in sorted(set(samples) - set(out)):
        log.warning("no %s stream for %s: no held-out score (no model could be fitted)", k, where)
    return out


def _calibrated(values: np.ndarray, cal: Calibration, stream: str) -> np.ndarray:
    """``values`` z-scored by ``cal``'s statistics of ``stream``; NaN, which fusion leaves out, where the
    calibration has no such stream (its camera has none)."""
    stats = cal.streams.get(stream)
    if stats is None:
        return np.full(np.shape(values), np.nan)
    return (np.asarray(values, dtype=np.float64) - stats.location) / stats.scale


def _dataset_fps(root: Path) -> float:
    manifest = root / "manifest.json"
    if manifest.is_file():
        fps = json.loads(manifest.read_text()).get("fps")
        if isinstance(fps, int | float) and fps > 0:
            return float(fps)
    return 10.0  # UCSD Ped1/Ped2 were recorded at 10 fps
