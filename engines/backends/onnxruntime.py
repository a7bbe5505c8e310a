"""ONNX Runtime backend: the CPU default (and CUDA when asked and available)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from engines.backends.base import Backend, BackendError, BackendUnavailable, onnxruntime_hint
from engines.manifest import Manifest, verify_files

log = logging.getLogger(__name__)

__all__ = ["OnnxRuntimeBackend"]


def _import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendUnavailable(f"onnxruntime: {onnxruntime_hint()} ({exc})") from exc
    return onnxruntime


class OnnxRuntimeBackend(Backend):
    """Runs the manifest's ONNX model with ONNX Runtime.

    Args:
        manifest: a manifest with an ``onnx`` block; the file's sha256 is checked on load.
        threads: intra-op threads (0 = ONNX Runtime's default, one per core).
        device: ``cpu`` or ``cuda`` (needs onnxruntime-gpu, else :class:`BackendUnavailable`).
        spin: whether the intra-op worker threads spin-wait after a run (ONNX Runtime's default) or sleep.
            Spinning shaves a little latency off back-to-back runs and burns the cores meanwhile; a process
            that also decodes video wants them asleep. Each session has its own pool, so with ``threads``
            above 1 several pools would spin at once.
    """

    name = "onnxruntime"

    def __init__(
        self, manifest: Manifest, threads: int = 0, *, device: str = "cpu", spin: bool = True
    ) -> None:
        super().__init__(manifest)
        ort = _import_onnxruntime()
        if manifest.onnx is None:
            raise BackendError(f"{manifest.path}: no onnx block; rebuild with zsad build-engines")
        verify_files(manifest, ("onnx",))
        if threads < 0:
            raise ValueError(f"threads must be >= 0, got {threads}")
        providers = ["CPUExecutionProvider"]
        if device == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BackendUnavailable(
                    "onnxruntime CUDA provider: install onnxruntime-gpu matching the CUDA version"
                )
            providers.insert(0, "CUDAExecutionProvider")
        elif device != "cpu":
            raise ValueError(f"device must be cpu or cuda, got {device!r}")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        opts.log_severity_level = 3
        path = manifest.resolve(manifest.onnx.path)
        try:
            self._session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        except Exception as exc:  # ORT raises its own types (Fail, InvalidGraph, ...)
            raise BackendError(f"onnxruntime cannot load {path}: {exc}") from exc
        graph_inputs = [i.name for i in self._session.get_inputs()]
        if graph_inputs != self.input_names:
            raise BackendError(
                f"{path}: graph inputs {graph_inputs} differ from the manifest {self.input_names}"
            )
        self.providers = self._session.get_providers()
        log.debug("onnxruntime %s: %s threads=%d spin=%s", manifest.component, self.providers, threads, spin)

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self._session.run(self.output_names, dict(feeds))
        return dict(zip(self.output_names, outputs, strict=True))

    def close(self) -> None:
        self._session = None
        super().close()
