"""The bundle of exportable modules that one checkpoint holds, and how a checkpoint is saved and loaded.

``ZsadModel`` only groups the engines (backbone, DPC head, semantic head, gates); losses and the training
loop live in ``training/``. A checkpoint is a safetensors file of weights plus a JSON sidecar with the
model spec, so loading never unpickles code (``torch.load`` is not used).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from torch import nn

from core.config import ModelConfig
from core.datafile import file_sha256
from engines.backbone import TimeSformerEncoder
from engines.dpc import DPCHead
from engines.semantic import ContextGate, ProjectionHead, StreamGateHead
from plugins.streams import STREAMS

__all__ = [
    "CheckpointError",
    "ZsadModel",
    "backbone_from_spec",
    "load_checkpoint",
    "parse_spec",
    "save_checkpoint",
    "upgrade_spec",
]


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated or does not match its spec."""


def backbone_from_spec(spec: ModelConfig, *, pretrained: bool = True) -> TimeSformerEncoder:
    """The backbone the spec describes; with ``pretrained=False``, randomly initialised."""
    bb, pre = spec.backbone, spec.preprocess
    return TimeSformerEncoder(
        height=bb.image_height,
        width=bb.image_width,
        num_frames=pre.clip_len,
        patch_size=bb.patch_size,
        hidden_size=bb.hidden_size,
        num_layers=bb.num_layers,
        num_heads=bb.num_heads,
        mlp_ratio=bb.mlp_ratio,
        pretrained=bb.pretrained if pretrained else None,
    )


class ZsadModel(nn.Module):
    """Backbone + DPC head + semantic projection + context gates, built from a model spec.

    ``spec`` is the ``model`` section of the config (:class:`core.config.ModelConfig`).
    """

    def __init__(self, spec: ModelConfig):
        super().__init__()
        # The model's own copy: a config edited afterwards must not change what the model says it is.
        self.spec = spec.model_copy(deep=True)
        bb, dpc, sem, gate = spec.backbone, spec.dpc, spec.semantic, spec.gate
        self.backbone = backbone_from_spec(spec)
        d = self.backbone.hidden_size
        self.dpc = DPCHead(
            in_dim=d,
            hidden=dpc.hidden_size,
            context_clips=dpc.context_clips,
            pred_steps=dpc.pred_steps,
            patch_size=bb.patch_size,
            decode_pixels=dpc.decode_pixels,
            decoder=dpc.decoder,
        )
        self.context = nn.Linear(d, gate.context_dim)
        self.projection = ProjectionHead(d, sem.embed_dim, layers=sem.projection_layers)
        self.context_gate = ContextGate(gate.context_dim, sem.embed_dim)
        self.stream_gate = StreamGateHead(gate.context_dim, STREAMS)

    @property
    def clip_len(self) -> int:
        return self.spec.preprocess.clip_len

    @property
    def frame_stride(self) -> int:
        return self.spec.preprocess.frame_stride

    @property
    def context_clips(self) -> int:
        return self.spec.dpc.context_clips

    @property
    def clip_span(self) -> int:
        """Source frames between the starts of consecutive clips in the DPC history (``T * stride``)."""
        return self.clip_len * self.frame_stride


# Spec fields added after checkpoints were first written, with the value those checkpoints implicitly had.
_SPEC_DEFAULTS_SINCE_V1 = {"dpc": {"decoder": "residual"}}


def upgrade_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A checkpoint's spec with fields added later filled in as the checkpoint implicitly had them,
    so an older checkpoint still matches a config that spells those fields out."""
    out = json.loads(json.dumps(dict(spec)))
    for section, fields in _SPEC_DEFAULTS_SINCE_V1.items():
        if isinstance(out.get(section), dict):
            for key, value in fields.items():
                out[section].setdefault(key, value)
    return out


def _missing_fields(data: Mapping[str, Any], schema: type[BaseModel], prefix: str) -> list[str]:
    """Dotted schema fields that ``data`` leaves out (recursing into nested sections)."""
    missing = []
    for name, info in schema.model_fields.items():
        if name not in data:
            missing.append(f"{prefix}{name}")
            continue
        sub = info.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel) and isinstance(data[name], Mapping):
            missing += _missing_fields(data[name], sub, f"{prefix}{name}.")
    return missing


def parse_spec(spec: Any) -> ModelConfig:
    """The :class:`ModelConfig` of a spec stored as JSON (a checkpoint's sidecar), after :func:`upgrade_spec`.

    Every field must be present: a field missing from an old checkpoint that :func:`upgrade_spec` does not
    know would otherwise silently take today's default, which need not be what the checkpoint was trained
    with. Raises :class:`CheckpointError` naming the fields.
    """
    if not isinstance(spec, Mapping):
        raise CheckpointError(f"the model spec must be a JSON object, got {type(spec).__name__}")
    data = upgrade_spec(spec)
    missing = _missing_fields(data, ModelConfig, "")
    if missing:
        raise CheckpointError(f"the model spec lacks {', '.join(missing[:8])}")
    try:
        return ModelConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in e['loc']) or '(root)'}: {e['msg']}" for e in exc.errors()[:5]
        )
        raise CheckpointError(f"the model spec is invalid: {problems}") from exc


def save_checkpoint(model: ZsadModel, path: str | Path, extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``<path>`` (safetensors weights) and ``<path>.json`` (spec, extra metadata, weights hash)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(state, str(tmp))
    tmp.replace(path)
    meta = {
        "spec": model.spec.model_dump(mode="json"),
        "sha256": file_sha256(path),
        **(dict(extra) if extra else {}),
    }
    meta_path = path.with_suffix(path.suffix + ".json")
    meta_path.write_text(json.dumps(meta, indent=2, sort_keys=True))
    return path


def load_checkpoint(path: str | Path, map_location: str = "cpu") -> tuple[ZsadModel, dict[str, Any]]:
    """Load a checkpoint written by :func:`save_checkpoint`; verify its hash and spec."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    meta_path = path.with_suffix(path.suffix + ".json")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder: name its .safetensors file")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not meta_path.is_file():
        raise CheckpointError(f"checkpoint metadata {meta_path} does not exist")
    try:
        meta = json.loads(meta_path.read_text())
        stored = meta["spec"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"checkpoint metadata {meta_path} is malformed: {exc}") from exc
    try:
        spec = parse_spec(stored)
    except CheckpointError as exc:
        raise CheckpointError(f"checkpoint metadata {meta_path}: {exc}") from exc
    digest = file_sha256(path)
    if meta.get("sha256") and meta["sha256"] != digest:
        raise CheckpointError(
            f"checkpoint {path} hash {digest[:12]} differs from its metadata {meta['sha256'][:12]}"
        )
    meta["sha256"] = digest  # the file's own, also where its sidecar records none: callers compare it
    try:
        state = load_file(str(path), device=map_location)
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"checkpoint {path} cannot be read: {exc}") from exc
    # The weights are in the checkpoint: never reload the pretrained source they started from.
    spec = spec.model_copy(update={"backbone": spec.backbone.model_copy(update={"pretrained": None})})
    model = ZsadModel(spec)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {path} does not fit its spec: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return model, meta
