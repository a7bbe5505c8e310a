"""``zsad train CONFIG``: train the model on normal video only.

One training sample is a window of ``C + K`` consecutive clips (``C`` context clips, ``K`` future clips)
of ``T`` frames each at the configured frame stride. The backbone encodes all of them; the DPC head
forecasts the ``K`` future clip features from the ``C`` past ones and decodes the first future frame.

Runs on CPU, on CUDA with AMP, and under ``torchrun`` with DistributedDataParallel (gloo on CPU).
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import pickle
import time
from collections.abc import Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from core.config import ZsadConfig, resolve_data_path
from engines.encoders import tokenizer_missing
from engines.manifest import checkpoint_spec_mismatch
from engines.model import CheckpointError, ZsadModel, load_checkpoint, save_checkpoint
from engines.prompts import load_prompt_sets
from engines.semantic import TextEncoder, clip_available
from plugins.fusion import fit_calibration
from plugins.preprocess import normalise_frames
from training.datasets import make_dataset
from training.evaluate import score_video
from training.gate import GateFitError, fit_model_gate
from training.losses import LossTerms, dense_cpc_loss, frame_loss, regression_loss, video_text_infonce

log = logging.getLogger(__name__)

__all__ = ["TrainStep", "WindowSampler", "train"]


class TrainingError(RuntimeError):
    """Training cannot start or continue."""


#: Beside the checkpoint: the torch and window-sampler random states at that step, one file per process
#: (``{rank}``): each process draws its own windows.
RNG_STATE_FILE = "rng_state.rank{rank}.pt"


class WindowSampler:
    """Random windows of ``n_clips`` clips x ``T`` frames from videos held in memory.

    ``videos``: ``{name: (N, H, W, 3) uint8 RGB}``. A window starting at source frame ``s`` holds frames
    ``s + j * stride`` for ``j < n_clips * T``; windows never cross a video boundary.
    """

    def __init__(
        self,
        videos: Mapping[str, np.ndarray],
        *,
        n_clips: int,
        clip_len: int,
        stride: int,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        contexts: Mapping[str, str] | None = None,
        seed: int = 0,
    ):
        self.n_clips, self.clip_len, self.stride = n_clips, clip_len, stride
        self.mean, self.std = mean, std
        self.span = n_clips * clip_len * stride
        self.videos = {k: v for k, v in videos.items() if len(v) >= self.span}
        if not self.videos:
            raise TrainingError(f"no training video has the {self.span} frames one window needs")
        self.names = sorted(self.videos)
        self.contexts = dict(contexts or {})
        self.starts = np.array([len(self.videos[n]) - self.span + 1 for n in self.names], dtype=np.int64)
        self.rng = np.random.default_rng(seed)

    @property
    def windows_per_epoch(self) -> int:
        return max(1, int(sum(len(v) for v in self.videos.values()) // self.span))

    def sample(self, batch: int) -> tuple[torch.Tensor, list[str]]:
        """Return ``(B, n_clips, T, 3, H, W)`` float32 normalised clips and each window's video name."""
        p = self.starts / self.starts.sum()
        vids = self.rng.choice(len(self.names), size=batch, p=p)
        out, names = [], []
        for v in vids:
            name = self.names[v]
            s = int(self.rng.integers(0, self.starts[v]))
            idx = s + self.stride * np.arange(self.n_clips * self.clip_len)
            frames = self.videos[name][idx]
            if self.rng.random() < 0.5:  # mirror: walking left or right is equally normal
                frames = frames[:, :, ::-1]
            out.append(normalise_frames(frames, self.mean, self.std))
            names.append(name)
        x = torch.from_numpy(np.stack(out))
        return x.unflatten(1, (self.n_clips, self.clip_len)), names


class TrainStep(nn.Module):
    """Computes the training losses in ``forward`` so DistributedDataParallel can wrap it."""

    def __init__(self, model: ZsadModel, *, alpha: float, pixel_weight: float, temperature: float):
        super().__init__()
        self.model = model
        self.alpha, self.pixel_weight, self.temperature = alpha, pixel_weight, temperature
        self.text_bank: torch.Tensor | None = None  # (P, d) when CLIP prompts are available
        self.context_offsets: dict[str, int] = {}  # context -> index of its first normal prompt

    def forward(self, windows: torch.Tensor, text_labels: torch.Tensor | None = None) -> LossTerms:
        m = self.model
        n, nc = windows.shape[:2]
        c = m.context_clips
        tokens, emb = m.backbone(windows.flatten(0, 1))  # (n*nc, T, D, h, w), (n*nc, D)
        feats = m.dpc.clip_features(tokens).unflatten(0, (n, nc))
        preds = m.dpc.forecast(feats[:, :c])
        target, context = feats[:, c:], feats[:, :c]
        cpc, top1 = dense_cpc_loss(preds, target, context, self.temperature)
        reg = regression_loss(preds, target)
        tokens = tokens.unflatten(0, (n, nc))
        predicted = m.dpc.decode_frame(
            preds[:, 0], tokens[:, c - 1, -1], windows[:, c - 1, -1], windows[:, c - 1, -2]
        )
        pixel = frame_loss(predicted, windows[:, c, 0])
        nce = windows.new_zeros(())
        if self.text_bank is not None and text_labels is not None and self.alpha > 0:
            ctx = m.context(emb.unflatten(0, (n, nc))[:, c - 1])
            video = m.projection(emb.unflatten(0, (n, nc))[:, c - 1])
            text = m.context_gate(self.text_bank, ctx)
            nce = video_text_infonce(video, text, text_labels, self.temperature)
            total = self.alpha * nce + (1 - self.alpha) * (cpc + reg) + self.pixel_weight * pixel
        else:
            total = cpc + reg + self.pixel_weight * pixel
        return LossTerms(total=total, cpc=cpc, regression=reg, pixel=pixel, infonce=nce, cpc_top1=top1)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError("device 'cuda' was asked for but torch.cuda.is_available() is False")
    return torch.device(name)


def _lr_at(step: int, progress: float, base: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 5 % over ``progress`` in [0, 1]."""
    if step < warmup:
        return base * (step + 1) / warmup
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _distributed() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    return rank, world


def train(cfg: ZsadConfig, *, resume: str | None = None, quiet: bool = False) -> Path:
    """Train from a validated :class:`core.config.ZsadConfig`; return the final checkpoint path."""
    if cfg.train is None:
        raise TrainingError("the config has no 'train' section")
    tc = cfg.train
    rank, world = _distributed()
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if tc.device == "cuda" else "gloo"
        torch.distributed.init_process_group(backend=backend)
    torch.manual_seed(tc.seed + rank)
    device = _device(tc.device)
    if device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        # Share the cores between DDP processes; an explicit OMP_NUM_THREADS wins.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))

    # A checkpoint to resume is checked before minutes of reading the dataset.
    resumed = _resumable(resume, cfg) if resume else None
    bb, pre = cfg.model.backbone, cfg.model.preprocess
    ds = make_dataset(
        tc.dataset.kind, resolve_data_path(tc.dataset.root), "train", (bb.image_height, bb.image_width)
    )
    videos = ds.load_all()
    contexts = {c.name: c.context or "generic" for c in ds.clips}
    n_clips = cfg.model.dpc.context_clips + cfg.model.dpc.pred_steps
    sampler = WindowSampler(
        videos,
        n_clips=n_clips,
        clip_len=pre.clip_len,
        stride=pre.frame_stride,
        mean=pre.mean,
        std=pre.std,
        contexts=contexts,
        seed=tc.seed * 1000 + rank,
    )

    out_dir = Path(tc.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = out_dir / "model.safetensors"
    step = 0
    history: list[dict[str, float]] = []
    seconds_before = 0.0
    if resume and resumed is not None:
        model, meta = resumed
        step = int(meta.get("step", 0))
        seconds_before = float(meta.get("train_seconds", 0.0))
        history = _read_history(Path(resume).with_name("history.jsonl"), step)
        own = Path(resume).with_name(RNG_STATE_FILE.format(rank=rank))
        older = Path(resume).with_name("rng_state.pt")  # one process's, as zsad wrote it before ranks
        _restore_rng(own if own.is_file() or world > 1 or not older.is_file() else older, sampler, step)
        log.info("resumed from %s at step %d", resume, step)
    else:
        model = ZsadModel(cfg.model)
    model.to(device)
    step_module = TrainStep(model, alpha=tc.alpha, pixel_weight=tc.pixel_weight, temperature=tc.temperature)
    _attach_text_bank(step_module, cfg, contexts)
    runner: nn.Module = step_module
    if world > 1:
        runner = nn.parallel.DistributedDataParallel(step_module, find_unused_parameters=True)

    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    opt_path = out_dir / "optimizer.pt"
    if resume and Path(resume).with_name("optimizer.pt").is_file():
        opt.load_state_dict(torch.load(Path(resume).with_name("optimizer.pt"), weights_only=True))

    per_rank_batch = max(1, tc.batch_size // world)
    steps_per_epoch = max(1, sampler.windows_per_epoch // tc.batch_size)
    total_steps = tc.epochs * steps_per_epoch
    if tc.max_steps is not None:
        # A step count, unlike a time budget, gives the same steps and schedule on any machine (and, on one
        # process and the same kind of device, the same weights); it replaces the epochs' count.
        total_steps = tc.max_steps
    budget_s = tc.max_minutes * 60 if tc.max_minutes else None
    use_amp = tc.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    if resume and step >= total_steps:
        # Nothing to train: going on would refit the gate and overwrite the run's history with an empty one.
        raise CheckpointError(
            f"checkpoint {resume} is at step {step}, already at the run's {total_steps} steps "
            f"(train.max_steps, else the epochs'): raise --max-steps to train on"
        )
    start = time.monotonic() - seconds_before  # a resumed run's time includes the steps before
    bar = tqdm(total=total_steps, initial=step, disable=quiet or rank != 0, desc="train", unit="step")
    model.train()
    while step < total_steps:
        elapsed = time.monotonic() - start
        if budget_s is not None and elapsed >= budget_s:
            log.info("time budget of %.1f min reached at step %d", tc.max_minutes, step)
            break
        progress = step / total_steps
        if budget_s is not None and tc.max_steps is None:
            progress = max(progress, elapsed / budget_s)
        lr = _lr_at(step, progress, tc.lr, tc.warmup_steps)
        for group in opt.param_groups:
            group["lr"] = lr
        windows, names = sampler.sample(per_rank_batch)
        windows = windows.to(device, non_blocking=True)
        labels = _text_labels(step_module, names, contexts, device)
        autocast = torch.autocast("cuda", dtype=torch.float16) if use_amp else nullcontext()
        with autocast:
            terms: LossTerms = runner(windows, labels)
        if not torch.isfinite(terms.total):
            raise TrainingError(f"loss became {float(terms.total)} at step {step}")
        opt.zero_grad(set_to_none=True)
        scaler.scale(terms.total).backward()
        scaler.unscale_(opt)
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        step += 1
        logs = {**terms.as_floats(), "lr": lr}
        history.append({"step": step, **logs})
        bar.update(1)
        if step % 10 == 0:
            bar.set_postfix({k: f"{v:.3g}" for k, v in logs.items() if k in ("loss", "cpc", "pix", "top1")})
        if step % 500 == 0:
            _save_rng(ckpt_path.with_name(RNG_STATE_FILE.format(rank=rank)), sampler, step)
            if rank == 0:
                _save(model, ckpt_path, opt, opt_path, cfg, step, history, time.monotonic() - start)
    bar.close()
    if rank == 0:
        train_seconds = time.monotonic() - start
        _fit_gate(model, videos, contexts)
        _save(model, ckpt_path, opt, opt_path, cfg, step, history, train_seconds)
        log.info("trained %d steps in %.1f min -> %s", step, (time.monotonic() - start) / 60, ckpt_path)
    _save_rng(ckpt_path.with_name(RNG_STATE_FILE.format(rank=rank)), sampler, step)
    if world > 1:
        # DDP's reducer holds the process group: drop it first, so that gloo's threads are joined by
        # destroy_process_group here and not in a destructor during interpreter teardown, where one
        # CI run saw rank 1 abort ("terminate called without an active exception").
        runner = step_module
        gc.collect()
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return ckpt_path


def _fit_gate(model: ZsadModel, videos: Mapping[str, np.ndarray], contexts: Mapping[str, str]) -> None:
    """Fit the stream gate on the (normal) training videos, at the edge's clip spacing."""
    # score_video feeds CPU tensors: a model trained on CUDA moves back first (and is saved from there).
    model.cpu()
    model.eval()
    raw: dict[str, list[np.ndarray]] = {}
    embs, groups = [], []
    for name, frames in videos.items():
        _, sc, emb = score_video(model, frames, hop=model.clip_span, name=name)
        for k, v in sc.items():
            raw.setdefault(k, []).append(v)
        embs.append(emb)
        groups += [contexts.get(name, "generic")] * len(emb)
    scores = {k: np.concatenate(v) for k, v in raw.items()}
    try:
        info = fit_model_gate(model, scores, np.concatenate(embs), groups, fit_calibration(scores))
    except GateFitError as exc:
        log.warning("stream gate not fitted (it stays uniform): %s", exc)
        return
    log.info("stream gate fitted on %d normal clips: %s", len(groups), info["targets"])


def _save(
    model: ZsadModel,
    path: Path,
    opt: torch.optim.Optimizer,
    opt_path: Path,
    cfg: ZsadConfig,
    step: int,
    history: list[dict[str, float]],
    seconds: float,
) -> None:
    save_checkpoint(
        model,
        path,
        extra={"step": step, "train_seconds": round(seconds, 1), "config": cfg.model_dump(mode="json")},
    )
    torch.save(opt.state_dict(), opt_path)
    with (path.parent / "history.jsonl").open("w") as f:
        for row in history:
            f.write(json.dumps(row) + "\n")


def _read_history(path: Path, step: int) -> list[dict[str, float]]:
    """The history rows of a run resumed at ``step`` (those up to it; none when the file is missing)."""
    if not path.is_file():
        log.warning("%s is missing: the resumed run's history starts at step %d", path, step + 1)
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
            rows.append(row)
    return rows


def _save_rng(path: Path, sampler: WindowSampler, step: int) -> None:
    """Where this process's random draws stand at ``step`` (torch's CPU generator and the window sampler),
    so that a resumed run draws what the uninterrupted one would have; written whole (temporary file,
    rename). The CUDA generators and the AMP scaler are not saved: on a GPU a resumed run is close, not
    identical."""
    tmp = path.with_name(path.name + ".tmp")
    sampled = json.dumps(sampler.rng.bit_generator.state)
    torch.save({"step": step, "torch": torch.get_rng_state(), "sampler": sampled}, tmp)
    tmp.replace(path)


def _resumable(resume: str | Path, cfg: ZsadConfig) -> tuple[ZsadModel, dict[str, Any]]:
    """The checkpoint ``resume`` and its metadata, refused (:class:`CheckpointError`) when it is of another
    model than ``cfg``'s: training on would keep the checkpoint's model and record the config's as its own."""
    model, meta = load_checkpoint(resume)
    where = checkpoint_spec_mismatch(model.spec, cfg.model)
    if where:
        raise CheckpointError(
            f"checkpoint {resume} is of another model than the config's: {where} (resume with the config it "
            "was trained with)"
        )
    return model, meta


def _restore_rng(path: Path, sampler: WindowSampler, step: int) -> None:
    """Put the torch and window-sampler random states back as they were at the checkpoint's ``step``;
    without a readable file of that step (a checkpoint of an older zsad, a torn write, a process that died
    between its state and the checkpoint) the resumed run draws other windows than an uninterrupted one,
    and says so. Either both states are restored or neither."""
    other = "the resumed run draws other windows than an uninterrupted one"
    if not path.is_file():
        log.warning("%s is missing: %s", path, other)
        return
    try:
        state = torch.load(path, weights_only=True)
        generator = state["torch"]
        sampled = json.loads(state["sampler"])
        saved_at = state["step"]  # a state without its step cannot be matched to the checkpoint
    except (OSError, RuntimeError, KeyError, TypeError, ValueError, EOFError, pickle.UnpicklingError) as exc:
        log.warning("%s cannot be read (%s): %s", path, exc, other)
        return
    if saved_at != step:
        log.warning("%s is of step %s, the checkpoint of step %d: %s", path, saved_at, step, other)
        return
    before = torch.get_rng_state()
    try:
        torch.set_rng_state(generator)
        sampler.rng.bit_generator.state = sampled
    except (RuntimeError, TypeError, ValueError) as exc:
        torch.set_rng_state(before)  # both or neither
        log.warning("%s does not fit (%s): %s", path, exc, other)


def _attach_text_bank(step_module: TrainStep, cfg: ZsadConfig, contexts: Mapping[str, str]) -> None:
    """Encode every context's prompts once when CLIP weights exist; otherwise say so once."""
    name = cfg.model.semantic.clip_text_model
    if not clip_available(name):
        log.warning(
            "no CLIP text weights configured or found (%s): semantic stream and InfoNCE are off", name
        )
        return
    why = tokenizer_missing(str(name))
    if why is not None:
        raise TrainingError(f"model.semantic.clip_text_model: {why}")
    sets = load_prompt_sets(sorted(set(contexts.values())))
    encoder = TextEncoder(str(name))
    prompts = [p for s in sets.values() for p in (*s.normal, *s.anomalous)]
    step_module.text_bank = encoder.encode(prompts)
    # Positive of a sample: the first normal prompt of its context.
    offsets, i = {}, 0
    for ctx, s in sets.items():
        offsets[ctx] = i
        i += len(s.normal) + len(s.anomalous)
    step_module.context_offsets = offsets


def _text_labels(
    step_module: TrainStep, names: list[str], contexts: Mapping[str, str], device: torch.device
) -> torch.Tensor | None:
    if step_module.text_bank is None:
        return None
    return torch.tensor([step_module.context_offsets[contexts[n]] for n in names], device=device)
