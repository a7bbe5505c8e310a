"""PyTorch backend: the reference. Rebuilds the model from the checkpoint the manifest names and runs the
component's submodule on the CPU (or CUDA when asked); the appearance engine's encoder is rebuilt from the
weights file its manifest names."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from engines.backends.base import Backend, BackendError, BackendUnavailable
from engines.encoders import APPEARANCE_COMPONENT, APPEARANCE_EMBEDDING, encoder_weights_sha256
from engines.export import component_module
from engines.manifest import ONNX_COMPONENTS, Manifest, ManifestMismatch

log = logging.getLogger(__name__)

__all__ = ["TorchBackend"]


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise BackendUnavailable(
            f"torch: pip install torch (the build/training extra: pip install zsad[train]) ({exc})"
        ) from exc
    return torch


def _checkpoint_path(manifest: Manifest) -> Path:
    """The manifest's checkpoint path, or the same next to the manifest (a copied folder): a file of the same
    name, or for a CLIP encoder, whose weights are a folder (``model.safetensors`` beside its
    ``config.json``), that file in a folder of the same name."""
    recorded = Path(manifest.checkpoint)
    beside = [manifest.directory / recorded.name]
    if manifest.component == APPEARANCE_COMPONENT and manifest.options.get("encoder") == "clip":
        beside.insert(0, manifest.directory / recorded.parent.name / recorded.name)
    for candidate in (recorded, *beside):
        if candidate.is_file():
            return candidate
    raise BackendError(
        f"{manifest.path}: checkpoint {recorded} not found (also looked for "
        f"{' and '.join(str(b) for b in beside)})"
    )


def _load_encoder(manifest: Manifest) -> Any:
    """The appearance encoder with the weights file the manifest names (or one of that name next to it),
    refused when the file is not the one the engine was built from."""
    from engines.appearance import EncoderWeightsError, load_encoder

    encoder = str(manifest.options.get("encoder", ""))
    path = _checkpoint_path(manifest)
    try:
        digest = encoder_weights_sha256(encoder, path)
    except EncoderWeightsError as exc:
        raise BackendError(f"{manifest.path}: {exc}") from exc
    if digest != manifest.weights_sha256:
        raise ManifestMismatch(
            f"{manifest.path}: weights_sha256: {path} has sha256 {digest[:12]}, "
            f"the engine was built from {manifest.weights_sha256[:12]}"
        )
    # An engine built with the image embedding has it as its second output; the reference gives it too.
    embedding = any(o.name == APPEARANCE_EMBEDDING for o in manifest.outputs)
    try:
        return load_encoder(path, digest, encoder, embedding=embedding)
    except (EncoderWeightsError, ValueError) as exc:
        raise BackendError(f"{manifest.path}: {exc}") from exc


class TorchBackend(Backend):
    """Runs a :class:`~engines.model.ZsadModel` submodule. ``threads > 0`` sets torch's threads
    (process-wide)."""

    name = "torch"

    def __init__(
        self, manifest: Manifest, threads: int = 0, *, device: str = "cpu", model: Any = None
    ) -> None:
        super().__init__(manifest)
        torch = _import_torch()
        if threads > 0:
            torch.set_num_threads(threads)
        if model is None and manifest.component == APPEARANCE_COMPONENT:
            model = _load_encoder(manifest)
        elif model is None:
            from engines.model import load_checkpoint

            path = _checkpoint_path(manifest)
            model, meta = load_checkpoint(path)
            digest = meta["sha256"]  # the file's own (load_checkpoint), whatever its sidecar says
            if digest != manifest.weights_sha256:
                raise ManifestMismatch(
                    f"{manifest.path}: weights_sha256: checkpoint {path} has sha256 {digest[:12]}, "
                    f"the engines were built from {manifest.weights_sha256[:12]}"
                )
        if manifest.component not in ONNX_COMPONENTS:
            raise BackendError(f"{manifest.path}: component {manifest.component} has no torch module")
        self._torch = torch
        self._device = torch.device(device)
        self._module = (
            component_module(model, manifest.component, manifest.input_layout).to(self._device).eval()
        )

    @classmethod
    def from_model(cls, manifest: Manifest, model: Any) -> TorchBackend:
        """Wrap an already loaded :class:`~engines.model.ZsadModel`, or for the appearance engine an
        :class:`~engines.appearance.AppearanceEncoder` (build-time parity checks)."""
        return cls(manifest, model=model)

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        args = [torch.from_numpy(feeds[n]).to(self._device) for n in self.input_names]
        with torch.no_grad():
            out = self._module(*args)
        if isinstance(out, torch.Tensor):
            out = (out,)
        return {n: t.detach().cpu().numpy() for n, t in zip(self.output_names, out, strict=True)}

    def close(self) -> None:
        self._module = None
        super().close()
