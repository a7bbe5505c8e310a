"""ONNX Runtime backend: the CPU default (and CUDA when asked and available)."""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

import numpy as np

from engines.backends.base import Backend, BackendError, BackendUnavailable, onnxruntime_hint
from engines.manifest import Manifest, verify_files

log = logging.getLogger(__name__)

__all__ = ["PARALLEL_MODES", "OnnxRuntimeBackend", "usable_cpus"]

#: How a backend with several threads uses them: ``operator`` splits each operator of a run across
#: ONNX Runtime's intra-op pool; ``batch`` splits a batch into one part per thread, each run whole by a
#: single-threaded session on its own thread (the items of a batch are independent, so the outputs are the
#: same: bit for bit on every engine tested and timed here, see docs/engines.md).
PARALLEL_MODES = ("operator", "batch")


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity: a container's cpuset, ``taskset``), not the host's
    count: ``threads: 0`` must not cut a batch into more parts than there are cores to run them."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no sched_getaffinity on this platform
        return os.cpu_count() or 1


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
        parallel: ``operator`` (ONNX Runtime's intra-op pool of ``threads``) or ``batch`` (on the CPU with
            more than one thread: a batch of ``n`` is cut into ``min(n, threads)`` contiguous parts, run at
            once by a single-threaded session on as many threads, the caller's one of them, and the
            outputs joined in order; ``threads`` 0: one part per CPU this process may use). The small
            engines here lose about a sixth of their intra-op time to splitting each operator; split by
            batch they do not (docs/benchmarks.md). A batch of one runs on the caller's thread alone, and
            ``spin`` has nothing to spin (a single-threaded session has no pool).
    """

    name = "onnxruntime"

    def __init__(
        self,
        manifest: Manifest,
        threads: int = 0,
        *,
        device: str = "cpu",
        spin: bool = True,
        parallel: str = "operator",
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
        if parallel not in PARALLEL_MODES:
            raise ValueError(f"parallel must be one of {', '.join(PARALLEL_MODES)}, got {parallel!r}")
        # Batch parts on their own threads only where the CPU runs them: a GPU takes the batch whole.
        self.parts = (threads or usable_cpus()) if parallel == "batch" and device == "cpu" else 1
        self._pool: ThreadPoolExecutor | None = None
        if self.parts > 1:
            self._pool = ThreadPoolExecutor(
                self.parts - 1, thread_name_prefix=f"zsad-ort-{manifest.component}"
            )
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1 if self.parts > 1 else threads
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        opts.log_severity_level = 3
        path = manifest.resolve(manifest.onnx.path)
        try:
            self._session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        except Exception as exc:  # ORT raises its own types (Fail, InvalidGraph, ...)
            self._shutdown()
            raise BackendError(f"onnxruntime cannot load {path}: {exc}") from exc
        graph_inputs = [i.name for i in self._session.get_inputs()]
        if graph_inputs != self.input_names:
            self._shutdown()
            raise BackendError(
                f"{path}: graph inputs {graph_inputs} differ from the manifest {self.input_names}"
            )
        self.providers = self._session.get_providers()
        log.debug(
            "onnxruntime %s: %s threads=%d spin=%s batch parts=%d",
            manifest.component,
            self.providers,
            threads,
            spin,
            self.parts,
        )

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = len(next(iter(feeds.values())))  # validate() checked every input has the same batch
        pool = self._pool
        if pool is None or batch < 2:
            return self._run(feeds)
        # Contiguous parts, the first on this thread: every tensor's dim 0 is the batch (TensorSpec).
        bounds = np.linspace(0, batch, min(batch, self.parts) + 1).round().astype(int)
        parts = [{k: v[a:b] for k, v in feeds.items()} for a, b in itertools.pairwise(bounds)]
        futures: list[Future[dict[str, np.ndarray]]] = []
        try:
            futures.extend(pool.submit(self._run, p) for p in parts[1:])
            first = self._run(parts[0])
        finally:
            wait(futures)  # never return (or raise) with a part still running on the session
        results = [first, *(f.result() for f in futures)]
        return {name: np.concatenate([r[name] for r in results]) for name in self.output_names}

    def _run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self._session.run(self.output_names, dict(feeds))
        return dict(zip(self.output_names, outputs, strict=True))

    def _shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def close(self) -> None:
        # Waits for parts still running (a session is never dropped under a run).
        self._shutdown()
        self._session = None
        super().close()
