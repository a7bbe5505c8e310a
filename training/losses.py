"""Losses: dense CPC InfoNCE with negatives that position alone cannot solve, the future-frame loss,
a stop-gradient regression term and the video-text InfoNCE of the semantic stream.

Total: ``alpha * InfoNCE + (1 - alpha) * (CPC + regression) + pixel_weight * pixel``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

__all__ = ["LossTerms", "dense_cpc_loss", "frame_loss", "regression_loss", "video_text_infonce"]


@dataclass
class LossTerms:
    total: torch.Tensor
    cpc: torch.Tensor
    regression: torch.Tensor
    pixel: torch.Tensor
    infonce: torch.Tensor
    cpc_top1: float

    def as_floats(self) -> dict[str, float]:
        return {
            "loss": float(self.total.detach()),
            "cpc": float(self.cpc.detach()),
            "reg": float(self.regression.detach()),
            "pix": float(self.pixel.detach()),
            "nce": float(self.infonce.detach()),
            "top1": self.cpc_top1,
        }


def dense_cpc_loss(
    pred: torch.Tensor, target: torch.Tensor, context: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, float]:
    """Dense InfoNCE where every candidate sits at the anchor's own position.

    Args:
        pred: ``(N, K, F, h, w)`` predicted future clip features.
        target: ``(N, K, F, h, w)`` actual future clip features (the positives).
        context: ``(N, C, F, h, w)`` the past clips' features: hard temporal negatives, so that copying
            the last observed clip is penalised.
        temperature: softmax temperature.

    Negatives are the other clips and steps of the batch and the context clips, all at the same spatial
    position, so absolute position embeddings cannot solve the task (what made a first attempt collapse).

    Returns:
        The mean cross-entropy and the top-1 accuracy.
    """
    n, k, f, h, w = pred.shape
    anchors = F.normalize(pred, dim=2).permute(3, 4, 0, 1, 2).reshape(h * w, n * k, f)
    cands = torch.cat([target.flatten(0, 1), context.flatten(0, 1)], dim=0)  # (n*k + n*c, f, h, w)
    cands = F.normalize(cands, dim=1).permute(2, 3, 0, 1).reshape(h * w, cands.shape[0], f)
    logits = torch.bmm(anchors, cands.transpose(1, 2)) / temperature  # (hw, n*k, n*k + n*c)
    labels = torch.arange(n * k, device=pred.device).repeat(h * w)
    flat = logits.reshape(-1, logits.shape[-1])
    loss = F.cross_entropy(flat, labels)
    top1 = float((flat.argmax(dim=1) == labels).float().mean())
    return loss, top1


def regression_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``1 - cos(pred, stopgrad(target))`` averaged over positions: a BYOL-style term."""
    return (1.0 - F.cosine_similarity(pred, target.detach(), dim=2)).mean()


def frame_loss(predicted: torch.Tensor, actual: torch.Tensor) -> torch.Tensor:
    """Future-frame loss on ``(N, 3, H, W)`` normalised frames: MSE plus an image-gradient L1 term
    (as in FFP, Liu et al. CVPR 2018), which keeps moving edges sharp."""
    mse = F.mse_loss(predicted, actual)

    def grads(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (x[..., 1:, :] - x[..., :-1, :]).abs(), (x[..., :, 1:] - x[..., :, :-1]).abs()

    py, px = grads(predicted)
    ay, ax = grads(actual)
    return mse + 0.5 * (F.l1_loss(py, ay) + F.l1_loss(px, ax))


def video_text_infonce(
    video: torch.Tensor, text: torch.Tensor, labels: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Symmetric-free InfoNCE of video embeddings against a bank of text embeddings.

    Args:
        video: ``(N, d)`` L2-normalised video embeddings.
        text: ``(N, P, d)`` context-gated, L2-normalised text embeddings per sample.
        labels: ``(N,)`` index of each sample's positive text (its caption or its context's normal prompt).
    """
    logits = torch.einsum("nd,npd->np", video, text) / temperature
    return F.cross_entropy(logits, labels)
