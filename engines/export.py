"""ONNX export of the engine modules and numerical parity checks between runtimes.

Exporter choice (checked with torch 2.13 + onnxscript 0.7): the ``torch.export``-based ("dynamo")
exporter at opset 18. It keeps the batch dimension symbolic through the DPC head's ConvGRU (the
TorchScript exporter bakes the trace batch into ``new_zeros`` there, which only a multi-batch parity
check catches) and yields a graph of plain standard ops with no Shape/Gather chains around the
divided-attention reshapes. Opset 17 is not reachable from it: its down-conversion fails on ``Split``
and leaves an opset-18 attribute on ``ReduceMean``. Opset 18 keeps ``LayerNormalization`` a single op
(needed for the FP16 LayerNorm pinning, NVIDIA/TensorRT#2781) and is within TensorRT 10's ONNX parser
range (opsets 9-20, onnx-tensorrt ``docs/operators.md``).
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engines.manifest import TensorSpec

log = logging.getLogger(__name__)

__all__ = [
    "EXPORTER",
    "EXPORT_OPSET",
    "ExportError",
    "ParityError",
    "check_parity",
    "component_module",
    "export_onnx",
    "exporter_options",
    "max_rel_error",
    "random_feeds",
]

EXPORT_OPSET = 18
EXPORTER = "torch.onnx.export(dynamo=True)"
# The dynamo exporter cannot go below 18; TensorRT 10's parser stops at 20.
_OPSET_RANGE = (18, 20)

Runner = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]


class ExportError(RuntimeError):
    """ONNX export produced no file, an invalid graph, or a graph that breaks the I/O contract."""


class ParityError(RuntimeError):
    """Two runtimes disagree beyond the tolerance; the message names component, output and error."""


def component_module(model: Any, component: str, input_layout: str = "NTCHW") -> Any:
    """The ``nn.Module`` whose forward is the engine of ``component`` (a :class:`ZsadModel` submodule; for
    ``appearance``, ``model`` is the :class:`~engines.appearance.AppearanceEncoder` and is returned as is).

    ``input_layout="NCTHW"`` wraps the backbone so the ONNX input is ``(N, 3, T, H, W)`` (the layout
    DeepStream's nvdspreprocess sequence library writes, for a graph that feeds it so; ours no longer does);
    the wrapper permutes it to ``(N, T, 3, H, W)``.
    """
    if component == "backbone":
        if input_layout == "NTCHW":
            return model.backbone
        if input_layout == "NCTHW":
            return _ncthw_backbone(model.backbone)
        raise ExportError(f"unknown input layout {input_layout!r}; use NTCHW or NCTHW")
    if component == "dpc_head":
        return model.dpc
    if component == "semantic_head":
        return model.projection
    if component == "appearance":  # the model is the encoder itself (engines.appearance.AppearanceEncoder)
        return model
    raise ExportError(f"component {component!r} has no ONNX module")


def _ncthw_backbone(backbone: Any) -> Any:
    """Wrap the backbone: ``clip`` ``(N, 3, T, H, W)`` -> its ``(N, T, 3, H, W)`` input; same outputs."""
    from torch import nn

    class NCTHWBackbone(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.backbone = inner

        def forward(self, clip: Any) -> Any:
            return self.backbone(clip.permute(0, 2, 1, 3, 4))

    return NCTHWBackbone(backbone)


def exporter_options(export: Callable[..., Any]) -> dict[str, bool]:
    """``{"optimize": True}`` when ``export`` (``torch.onnx.export``) takes ``optimize``, else ``{}``.

    ``optimize`` (the ONNX Script graph optimiser run inside the export) appeared in torch 2.6; the torch
    of JetPack 6.1 (2.5.0a0+nv24.08) refuses the keyword, so it is passed only where the signature has it
    (``inspect.signature`` follows ``functools.wraps``) and :func:`export_onnx` optimises the returned
    program itself otherwise.
    """
    try:
        params = inspect.signature(export).parameters
    except (TypeError, ValueError):  # a builtin without a signature: pass nothing optional
        return {}
    return {"optimize": True} if "optimize" in params else {}


def random_feeds(specs: Sequence[TensorSpec], batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Standard-normal float32 inputs of the given batch for each tensor spec."""
    return {s.name: rng.standard_normal(s.with_batch(batch)).astype(np.float32) for s in specs}


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Keep the exporter's own chatter (optional torchvision ops, deprecations) out of our logs."""
    noisy = [
        logging.getLogger(n) for n in ("torch.onnx._internal.exporter._registration", "onnx_ir", "onnxscript")
    ]
    levels = [n.level for n in noisy]
    for n in noisy:
        n.setLevel(logging.ERROR)
    buf = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(buf):
            warnings.simplefilter("ignore")
            yield
    finally:
        for n, level in zip(noisy, levels, strict=True):
            n.setLevel(level)
        if buf.getvalue().strip():
            log.debug("exporter output: %s", buf.getvalue().strip())


def export_onnx(
    module: Any,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    path: str | Path,
    *,
    opset: int = EXPORT_OPSET,
    metadata: Mapping[str, str] | None = None,
    example_batch: int = 2,
) -> Path:
    """Export ``module`` to ``path`` with named I/O, a dynamic batch (dim 0, ``"batch"``) and static
    other dims; run ``onnx.checker`` and check the graph's I/O against the specs.

    ``metadata`` goes into the model's ``metadata_props``. Writes atomically (``path.tmp`` then rename).
    """
    import onnx
    import torch

    if not _OPSET_RANGE[0] <= opset <= _OPSET_RANGE[1]:
        raise ExportError(
            f"opset {opset} is outside the supported range {_OPSET_RANGE[0]}..{_OPSET_RANGE[1]}"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = module.eval()
    gen = torch.Generator().manual_seed(0)
    args = tuple(torch.randn(s.with_batch(example_batch), generator=gen) for s in inputs)
    batch = torch.export.Dim("batch", min=1, max=4096)
    dynamic = tuple({0: batch} for _ in inputs)
    # Typed loosely: the keywords differ between torch versions (optimize is 2.6+, see exporter_options).
    export: Callable[..., Any] = torch.onnx.export
    optimize_here = exporter_options(export)
    try:
        with _quiet_exporter(), torch.no_grad():
            program = export(
                module,
                args,
                None,
                input_names=[s.name for s in inputs],
                output_names=[s.name for s in outputs],
                opset_version=opset,
                dynamo=True,
                dynamic_shapes=dynamic,
                verbose=False,
                **optimize_here,
            )
            if program is not None and not optimize_here and callable(getattr(program, "optimize", None)):
                program.optimize()  # what optimize=True does inside export from torch 2.6 on
    except Exception as exc:  # the exporter raises many types; callers get one
        raise ExportError(f"torch.onnx.export failed for {path.name}: {type(exc).__name__}: {exc}") from exc
    if program is None:
        raise ExportError(f"torch.onnx.export returned no program for {path.name}")
    model = getattr(program, "model_proto", None)
    if model is None:
        raise ExportError(
            f"torch {torch.__version__}: the exporter's program has no model_proto; "
            "export on the development machine and ship the ONNX (docs/engines.md)"
        )
    got_opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if got_opset != opset:
        raise ExportError(f"{path.name}: exporter produced opset {got_opset}, asked for {opset}")
    if metadata:
        onnx.helper.set_model_props(model, {str(k): str(v) for k, v in metadata.items()})
    _check_graph_io(model, inputs, outputs, path)
    tmp = path.with_name(path.name + ".tmp")
    onnx.save_model(model, str(tmp))
    try:
        onnx.checker.check_model(str(tmp), full_check=True)
    except onnx.checker.ValidationError as exc:
        tmp.unlink(missing_ok=True)
        raise ExportError(f"{path.name} fails onnx.checker: {exc}") from exc
    if tmp.stat().st_size == 0:
        raise ExportError(f"{path.name}: export wrote an empty file")
    tmp.replace(path)
    return path


def _dims(value_info: Any) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def _check_graph_io(
    model: Any, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], path: Path
) -> None:
    """The graph's named I/O must be exactly the specs: dim 0 the symbolic ``batch``, the rest static."""
    for kind, graph_vals, specs in (
        ("input", model.graph.input, inputs),
        ("output", model.graph.output, outputs),
    ):
        names = [v.name for v in graph_vals]
        if names != [s.name for s in specs]:
            raise ExportError(f"{path.name}: graph {kind}s {names} differ from {[s.name for s in specs]}")
        for v, s in zip(graph_vals, specs, strict=True):
            dims = _dims(v)
            want: list[int | str] = ["batch", *s.shape[1:]]
            if dims != want:
                raise ExportError(f"{path.name}: {kind} {v.name} has dims {dims}, expected {want}")


def max_rel_error(reference: np.ndarray, other: np.ndarray) -> float:
    """``max|a - b| / max|a|`` (the denominator floored at 1e-6 so an all-zero output stays defined)."""
    a = np.asarray(reference, dtype=np.float64)
    b = np.asarray(other, dtype=np.float64)
    if a.shape != b.shape:
        return float("inf")
    if not np.isfinite(b).all():
        return float("inf")
    return float(np.max(np.abs(a - b), initial=0.0) / max(float(np.max(np.abs(a), initial=0.0)), 1e-6))


def check_parity(
    reference: Runner,
    target: Runner,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    *,
    batch_sizes: Sequence[int] = (1, 3),
    tolerance: float = 1e-3,
    label: str = "",
    seed: int = 0,
) -> dict[str, float]:
    """Run both runners on the same fresh random inputs per batch size; return the worst relative error
    per output. Raises :class:`ParityError` naming the output when any exceeds ``tolerance``."""
    rng = np.random.default_rng(seed)
    worst = {s.name: 0.0 for s in outputs}
    for n in batch_sizes:
        feeds = random_feeds(inputs, n, rng)
        ref = reference(feeds)
        got = target(feeds)
        for s in outputs:
            if s.name not in ref or s.name not in got:
                raise ParityError(f"{label}: output {s.name} missing from a runner's results")
            worst[s.name] = max(worst[s.name], max_rel_error(ref[s.name], got[s.name]))
    bad = {k: v for k, v in worst.items() if not v <= tolerance}
    if bad:
        detail = ", ".join(f"{k} {v:.3g}" for k, v in bad.items())
        raise ParityError(f"{label}: max relative error above {tolerance:g}: {detail}")
    return worst
