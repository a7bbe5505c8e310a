"""Inference backends, one file per runtime, chosen by name.

``load_backend(manifest, "onnxruntime" | "torch" | "tensorrt", threads)`` returns a
:class:`~engines.backends.base.Backend`. Runtime packages are imported only when their backend is
created; a missing one raises :class:`~engines.backends.base.BackendUnavailable` naming the package.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engines.backends.base import Backend, BackendError, BackendUnavailable, InputMismatch
from engines.manifest import Manifest, load_manifest

__all__ = ["BACKENDS", "Backend", "BackendError", "BackendUnavailable", "InputMismatch", "load_backend"]

# name -> "module:class", imported lazily.
BACKENDS = {
    "onnxruntime": "engines.backends.onnxruntime:OnnxRuntimeBackend",
    "torch": "engines.backends.torch:TorchBackend",
    "tensorrt": "engines.backends.tensorrt:TensorRTBackend",
}


def backend_class(backend: str) -> Callable[..., Backend]:
    if backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}; choose one of {sorted(BACKENDS)}")
    module_name, cls_name = BACKENDS[backend].split(":")
    cls: Callable[..., Backend] = getattr(importlib.import_module(module_name), cls_name)
    return cls


def load_backend(manifest: Manifest | str | Path, backend: str, threads: int = 0, **options: Any) -> Backend:
    """Load the engine of ``manifest`` (a :class:`Manifest` or the path of its JSON) with ``backend``.

    ``options`` go to the backend (e.g. ``device="cuda"`` for onnxruntime; ``cuda_graph=True`` and
    ``device_id=1``, the CUDA device to check, load and run the engine on, for tensorrt).
    """
    cls = backend_class(backend)
    m = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
    return cls(m, threads, **options)
