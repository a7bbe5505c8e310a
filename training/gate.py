"""Fitting the stream gate from normal footage only.

For each context, a stream whose calibrated normal scores have a heavy upper tail would raise false
alarms, so it should weigh less: the target weight of stream ``s`` is proportional to
``1 / q(z_s)``, with ``q`` the 99th percentile of its z-scores on that context's normal clips. A softmax
regression from the context vector then learns those weights, so the gate generalises to a camera by
what its video looks like, not by its name. No anomaly is ever seen.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from engines.model import ZsadModel
from plugins.fusion import Calibration

__all__ = ["GateFitError", "fit_stream_gate", "target_weights"]


class GateFitError(ValueError):
    """Not enough normal data to fit the gate."""


def target_weights(z: np.ndarray, quantile: float = 0.99, floor: float = 0.5) -> np.ndarray:
    """``(M, S)`` calibrated normal z-scores -> ``(S,)`` weights summing to 1 (inverse upper-tail size)."""
    if z.ndim != 2 or len(z) < 10:
        raise GateFitError(f"need at least 10 clips of z-scores, got shape {z.shape}")
    tail = np.maximum(np.quantile(z, quantile, axis=0), floor)
    w = 1.0 / tail
    return w / w.sum()


def fit_stream_gate(
    context: np.ndarray,
    z: np.ndarray,
    groups: Sequence[str],
    *,
    steps: int = 300,
    weight_decay: float = 1e-3,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, dict[str, list[float]]]:
    """Fit ``softmax(W c + b)`` to per-group target weights.

    Args:
        context: ``(M, c)`` context vectors of normal clips.
        z: ``(M, S)`` calibrated z-scores of the same clips.
        groups: ``M`` context names (scenes); each gets its own target weights.

    Returns:
        ``W`` ``(S, c)``, ``b`` ``(S,)`` and the target weights per group.
    """
    if len(context) != len(z) or len(z) != len(groups):
        raise GateFitError("context, z and groups must have one row per clip")
    names = sorted(set(groups))
    targets = {g: target_weights(z[np.asarray(groups) == g]) for g in names}
    y = torch.from_numpy(np.stack([targets[g] for g in groups]).astype(np.float32))
    x = torch.from_numpy(context.astype(np.float32))
    mu, sd = x.mean(0), x.std(0) + 1e-6
    xn = (x - mu) / sd
    torch.manual_seed(seed)
    lin = torch.nn.Linear(x.shape[1], z.shape[1])
    torch.nn.init.zeros_(lin.weight)
    with torch.no_grad():
        lin.bias.copy_(torch.log(y.mean(0)))
    opt = torch.optim.Adam(lin.parameters(), lr=0.05, weight_decay=weight_decay)
    for _ in range(steps):
        opt.zero_grad()
        loss = -(y * torch.log_softmax(lin(xn), dim=1)).sum(1).mean()
        loss.backward()
        opt.step()
    # Fold the standardisation into the linear map: W (c - mu) / sd + b.
    w = (lin.weight / sd).detach()
    b = (lin.bias - (lin.weight / sd) @ mu).detach()
    return w.numpy(), b.numpy(), {g: t.tolist() for g, t in targets.items()}


def fit_model_gate(
    model: ZsadModel,
    scores: dict[str, np.ndarray],
    embeddings: np.ndarray,
    groups: Sequence[str],
    calibration: Calibration,
) -> dict[str, object]:
    """Fit the gate on normal clips and store it in ``model.stream_gate`` (streams absent here keep a
    neutral weight). ``scores`` ``{stream: (M,)}`` raw, ``embeddings`` ``(M, D)`` backbone CLS features,
    ``calibration`` a ``plugins.fusion.Calibration`` fitted on the same clips."""
    streams = [s for s in model.stream_gate.streams if s in scores]
    stats = calibration.streams
    z = np.stack([(scores[s] - stats[s].location) / stats[s].scale for s in streams], axis=1)
    with torch.no_grad():
        ctx = model.context(torch.from_numpy(embeddings.astype(np.float32))).numpy()
    w, b, targets = fit_stream_gate(ctx, z, groups)
    lin = model.stream_gate.linear
    with torch.no_grad():
        lin.weight.zero_()
        lin.bias.fill_(float(b.mean()))
        for i, s in enumerate(streams):
            j = model.stream_gate.streams.index(s)
            lin.weight[j] = torch.from_numpy(w[i])
            lin.bias[j] = float(b[i])
    return {"streams": streams, "targets": targets}


def gate_weights(model: ZsadModel, embeddings: np.ndarray, present: Sequence[str]) -> np.ndarray:
    """``(M, len(present))`` stream weights of the model's gate for clips with these embeddings."""
    with torch.no_grad():
        ctx = model.context(torch.from_numpy(embeddings.astype(np.float32)))
        names = model.stream_gate.streams
        mask = torch.tensor([n in present for n in names])
        w = model.stream_gate(ctx, mask).numpy()
    return w[:, [names.index(p) for p in present]]
