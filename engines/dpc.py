"""Dense predictive coding (DPC) head: the second engine.

After Han, Xie and Zisserman, "Video Representation Learning by Dense Predictive Coding" (ICCVW 2019):
a ConvGRU aggregates the feature grids of past clips and a prediction network forecasts the grids of
the next ``pred_steps`` clips. Two changes address what made a first attempt collapse to a near-copy:

* the ConvGRU uses 3x3 kernels, so a position can see where its neighbours are moving;
* a pixel decoder turns the step-1 prediction, together with the last frame's tokens, into a residual
  on a base frame: the predicted next frame. Its error, pooled per patch and maxed over patches, is
  the FFP-style anomaly signal; the feature error is the DPC signal. Both stay spatial.

The base frame is the decoder's prior. ``residual`` copies the last frame (its error is plain motion
energy, capped so the model never scores above copying). ``extrapolate`` continues the last two frames
at constant velocity, ``2 * last - prev``: the error of that prior is the second temporal difference,
small for slow, smooth motion (a walker a pixel or two a frame, within an edge's width) and large for
fast or jerky motion (the moved object leaves two ghosts), so it scores speed and not just change.

The inference forward computes error maps directly, so the edge only keeps a ring of what each past clip
gave: its ConvGRU input projection and its last frame's tokens.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["DECODERS", "ConvGRUCell", "DPCHead"]

DECODERS = ("residual", "warp", "extrapolate")


class ConvGRUCell(nn.Module):
    """A convolutional GRU cell on ``(N, C, h, w)`` grids.

    Each kernel sees ``[x, h]``; its input half and its state half are run apart, so that the input half
    of a clip, :meth:`project`, is computed once and reused at every step the clip is fed in again (the
    DPC head's streaming form). Same weights, same sums: ``conv([x, h]) = conv_x(x) + conv_h(h) + b``.
    """

    def __init__(self, in_channels: int, hidden: int, kernel: int = 3) -> None:
        super().__init__()
        pad = kernel // 2
        self.hidden = hidden
        self.in_channels = in_channels
        self.gates = nn.Conv2d(in_channels + hidden, 2 * hidden, kernel, padding=pad)
        self.cand = nn.Conv2d(in_channels + hidden, hidden, kernel, padding=pad)

    @property
    def projection_channels(self) -> int:
        """Channels of :meth:`project`'s output: the update and reset gates', then the candidate's."""
        return 3 * self.hidden

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """The input half of both kernels, biases left out: ``(N, in, h, w)`` -> ``(N, 3 * hidden, h, w)``
        (update gate, reset gate, candidate)."""
        c_in, pad = self.in_channels, self.gates.padding
        gates = F.conv2d(x, self.gates.weight[:, :c_in], None, padding=pad)
        cand = F.conv2d(x, self.cand.weight[:, :c_in], None, padding=pad)
        return torch.cat([gates, cand], dim=1)

    def step(self, xp: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """One step from a projected input ``xp`` (:meth:`project`) and the state ``h``."""
        k, c_in, pad = self.hidden, self.in_channels, self.gates.padding
        gates = xp[:, : 2 * k] + F.conv2d(h, self.gates.weight[:, c_in:], self.gates.bias, padding=pad)
        z, r = torch.sigmoid(gates).chunk(2, dim=1)
        c = torch.tanh(
            xp[:, 2 * k :] + F.conv2d(r * h, self.cand.weight[:, c_in:], self.cand.bias, padding=pad)
        )
        return (1 - z) * h + z * c

    def step_first(self, xp: torch.Tensor) -> torch.Tensor:
        """``step(xp, 0)`` without the zero state: the reset gate is unused and no state half runs."""
        k = self.hidden
        gates_bias = None if self.gates.bias is None else self.gates.bias[:k, None, None]
        cand_bias = None if self.cand.bias is None else self.cand.bias[:, None, None]
        z_in, c_in = xp[:, :k], xp[:, 2 * k :]
        z = torch.sigmoid(z_in if gates_bias is None else z_in + gates_bias)
        c = torch.tanh(c_in if cand_bias is None else c_in + cand_bias)
        return z * c

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return self.step(self.project(x), h)

    def first(self, x: torch.Tensor) -> torch.Tensor:
        """``forward(x, 0)`` without the zero state."""
        return self.step_first(self.project(x))


class DPCHead(nn.Module):
    """Forecasts future clip feature grids and the next frame; scores the current clip.

    Shapes: ``C`` past clips, ``T`` frames a clip, ``D`` backbone width, ``h x w`` patch grid,
    ``H x W`` pixels (``H = h * patch``), ``K`` prediction steps.

    The engine streams: each clip is encoded once, when it is the current clip, and its ConvGRU input
    projection comes back as ``current_proj`` for the host to keep and feed back as history. Recomputing the
    past clips on every call (the earlier contract, :meth:`score_history` here) cost about a quarter of the
    head's multiply-adds for the same maps.

    Inference inputs (the engine's I/O contract):
        history_proj: ``(N, C, 3F, h, w)`` float32 ``current_proj`` of each past clip, oldest first.
        last_tokens: ``(N, D, h, w)`` float32 backbone tokens of the last frame of the newest past clip.
        current: ``(N, T, D, h, w)`` float32 backbone tokens of the clip being scored.
        last_frame: ``(N, 3, H, W)`` float32 normalised RGB, the last frame of the newest past clip.
        current_frame: ``(N, 3, H, W)`` float32 normalised RGB, the first frame of the current clip.
        prev_frame: ``(N, 3, H, W)`` float32 normalised RGB, the frame before ``last_frame`` (one clip
            frame, ``frame_stride`` source frames, earlier); an input only of the ``extrapolate`` decoder.

    Inference outputs:
        feature_error: ``(N, h, w)`` 1 - cosine(predicted, actual) of the step-1 clip grid.
        pixel_error: ``(N, h, w)`` mean absolute error of the predicted frame per patch; with the
            ``residual`` and ``warp`` decoders capped by that of copying the last frame ("unexplained
            change").
        motion: ``(N, h, w)`` mean absolute frame difference per patch (the cheap motion stream).
        current_proj: ``(N, 3F, h, w)`` the current clip's ConvGRU input projection
            (:meth:`ConvGRUCell.project` of its clip features): its ``history_proj`` in later calls.
    """

    def __init__(
        self,
        *,
        in_dim: int,
        hidden: int = 96,
        context_clips: int = 3,
        pred_steps: int = 2,
        patch_size: int = 16,
        decode_pixels: bool = True,
        decoder: str = "residual",
    ) -> None:
        super().__init__()
        self.in_dim, self.hidden = in_dim, hidden
        self.context_clips, self.pred_steps, self.patch_size = context_clips, pred_steps, patch_size
        self.decode_pixels = decode_pixels
        self.warp = False
        self.extrapolate = False
        # Clip-grid features: the temporal mean and the temporal difference of the tokens.
        self.encode = nn.Sequential(nn.Conv2d(2 * in_dim, hidden, 1), nn.GroupNorm(1, hidden))
        self.gru = ConvGRUCell(hidden, hidden, kernel=3)
        self.predict_net = nn.Sequential(
            nn.Conv2d(hidden, hidden, 1), nn.ReLU(inplace=False), nn.Conv2d(hidden, hidden, 1)
        )
        if decode_pixels:
            self.decoder = nn.Sequential(
                nn.Conv2d(hidden + in_dim, 2 * hidden, 3, padding=1),
                nn.GELU(),
                nn.Conv2d(2 * hidden, 3 * patch_size * patch_size, 1),
            )
            if decoder not in DECODERS:
                raise ValueError(f"decoder must be one of {', '.join(DECODERS)}, got {decoder!r}")
            self.warp = decoder == "warp"
            self.extrapolate = decoder == "extrapolate"
            if self.warp:
                # A displacement field in pixels per patch, upsampled: how the last frame moves.
                self.flow = nn.Sequential(
                    nn.Conv2d(hidden + in_dim, 2 * hidden, 3, padding=1),
                    nn.GELU(),
                    nn.Conv2d(2 * hidden, 2, 1),
                )
                flow_out: nn.Conv2d = self.flow[-1]  # type: ignore[assignment]
                nn.init.zeros_(flow_out.weight)
                nn.init.zeros_(flow_out.bias)  # type: ignore[arg-type]
            last: nn.Conv2d = self.decoder[-1]  # type: ignore[assignment]
            nn.init.zeros_(last.weight)  # start as "copy the last frame": the motion floor
            nn.init.zeros_(last.bias)  # type: ignore[arg-type]

    # -- building blocks used by training and inference ---------------------------------------------

    def clip_features(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(N, T, D, h, w)`` tokens -> ``(N, F, h, w)`` clip grid feature."""
        mean = tokens.mean(dim=1)
        diff = tokens[:, -1] - tokens[:, 0]
        return self.encode(torch.cat([mean, diff], dim=1))

    def forecast(self, history_feats: torch.Tensor, steps: int | None = None) -> torch.Tensor:
        """``(N, C, F, h, w)`` past clip features -> ``(N, K, F, h, w)`` predicted future features.

        ``steps`` (default ``pred_steps``) is ``K``; the state is only rolled forward for steps still to
        come, so scoring (``steps=1``) never runs the GRU past the first prediction."""
        n, c = history_feats.shape[:2]
        projected = self.gru.project(history_feats.flatten(0, 1)).unflatten(0, (n, c))
        return self.forecast_projected(projected, steps)

    def forecast_projected(self, history_proj: torch.Tensor, steps: int | None = None) -> torch.Tensor:
        """:meth:`forecast` from the past clips' ConvGRU input projections ``(N, C, 3F, h, w)``
        (:meth:`ConvGRUCell.project` of each clip's features)."""
        steps = self.pred_steps if steps is None else steps
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        state = self.gru.step_first(history_proj[:, 0])
        for i in range(1, history_proj.shape[1]):
            state = self.gru.step(history_proj[:, i], state)
        preds = []
        for k in range(steps):
            p = self.predict_net(state)
            preds.append(p)
            if k + 1 < steps:
                state = self.gru(F.relu(p), state)
        return torch.stack(preds, dim=1)

    def decode_frame(
        self,
        pred1: torch.Tensor,
        last_tokens: torch.Tensor,
        last_frame: torch.Tensor,
        prev_frame: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the next frame ``(N, 3, H, W)`` as a residual on the decoder's base frame."""
        if not self.decode_pixels:
            return last_frame
        x = torch.cat([pred1, last_tokens], dim=1)
        base = last_frame
        if self.extrapolate:
            if prev_frame is None:
                raise ValueError("the extrapolate decoder needs prev_frame")
            base = 2.0 * last_frame - prev_frame
        elif self.warp:
            base = self.warp_frame(last_frame, self.flow(x))
        delta = self.decoder(x)  # (N, 3*p*p, h, w)
        return base + F.pixel_shuffle(delta, self.patch_size)

    def warp_frame(self, frame: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        """Move ``frame`` ``(N, 3, H, W)`` along ``flow`` ``(N, 2, h, w)`` (x, y displacement in pixels,
        per patch; bilinearly upsampled): ``out(p) = frame(p - flow(p))``."""
        height, width = frame.shape[-2:]
        flow = F.interpolate(flow, size=(height, width), mode="bilinear", align_corners=False)
        ys = torch.linspace(-1.0 + 1.0 / height, 1.0 - 1.0 / height, height, device=frame.device)
        xs = torch.linspace(-1.0 + 1.0 / width, 1.0 - 1.0 / width, width, device=frame.device)
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        grid = torch.stack([gx, gy], dim=-1).unsqueeze(0)  # (1, H, W, 2), normalised (x, y)
        shift = torch.stack([flow[:, 0] * (2.0 / width), flow[:, 1] * (2.0 / height)], dim=-1)
        return F.grid_sample(frame, grid - shift, mode="bilinear", padding_mode="border", align_corners=False)

    def patch_mean(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` -> ``(N, h, w)``: channel and patch mean."""
        return F.avg_pool2d(x.mean(dim=1, keepdim=True), self.patch_size).squeeze(1)

    # -- the engine ------------------------------------------------------------------------------------

    def forward(
        self,
        history_proj: torch.Tensor,
        last_tokens: torch.Tensor,
        current: torch.Tensor,
        last_frame: torch.Tensor,
        current_frame: torch.Tensor,
        prev_frame: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        actual = self.clip_features(current)
        # The current clip's input half of the ConvGRU, returned for the calls where it is history.
        current_proj = self.gru.project(actual)
        pred1 = self.forecast_projected(history_proj, steps=1)[:, 0]
        feature_error = 1.0 - F.cosine_similarity(pred1, actual, dim=1)
        predicted = self.decode_frame(pred1, last_tokens, last_frame, prev_frame)
        motion = self.patch_mean((current_frame - last_frame).abs())
        pixel_error = self.patch_mean((predicted - current_frame).abs())
        if not self.extrapolate:
            # Unexplained change: the model's error where it beats "copy the last frame", the copy's
            # error elsewhere, so decoder artefacts on normal frames never push a patch above the floor.
            pixel_error = torch.minimum(pixel_error, motion)
        return feature_error, pixel_error, motion, current_proj

    def project_history(self, history: torch.Tensor) -> torch.Tensor:
        """``(N, C, T, D, h, w)`` past clips' tokens -> their ``history_proj`` ``(N, C, 3F, h, w)``, as the
        engine's ``current_proj`` gave them one by one."""
        n, c = history.shape[:2]
        return self.gru.project(self.clip_features(history.flatten(0, 1))).unflatten(0, (n, c))

    def score_history(
        self,
        history: torch.Tensor,
        current: torch.Tensor,
        last_frame: torch.Tensor,
        current_frame: torch.Tensor,
        prev_frame: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`forward` from the past clips' tokens ``(N, C, T, D, h, w)`` instead of their projections:
        every past clip encoded again on every call (the non-streaming form; same three error maps)."""
        out = self(
            self.project_history(history), history[:, -1, -1], current, last_frame, current_frame, prev_frame
        )
        return out[0], out[1], out[2]
