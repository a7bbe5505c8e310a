"""Device checks for a lent GPU machine (bench/device_check.sh runs ``python -m bench.device_check``; installs
nothing, needs no network).

Sections, each on its own so one failure does not hide the rest:

* ``env``: Python, torch/CUDA, GPU, TensorRT, ONNX Runtime providers, cuda-python.
* ``fp16_blocks``: PyTorch CUDA FP32 vs FP16 per TimeSformer block (forward hooks on every
  ``TimesformerLayer``), pure ``.half()`` and ``torch.autocast``; max relative error per block, to catch
  the FP16 LayerNorm drift (github.com/zmy1116/timesfromer_trtfp16_error).
* ``throughput``: backbone clips/s at batch 1, 8, 32, FP32 and FP16, default and base size.
* ``tensorrt`` (when ``import tensorrt`` works): the full build-engines run with ``--backend tensorrt``
  (ORT-vs-TRT parity included), then TensorRT throughput with and without a CUDA graph.
* ``tensorrt_base`` (``--trt-base``): the same engine build for the base-size backbone.

Writes ``<out>/device_check.json`` (and ``<section>.error.txt`` on failures); prints a table last.
Randomly initialised weights: activations are smaller than a trained model's, so FP16 errors here are a
lower bound.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import platform
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from core.config import ModelConfig
from engines.backends import BackendUnavailable, load_backend
from engines.backends.tensorrt import import_cudart
from engines.build import BuildOptions, build_engines
from engines.export import random_feeds
from engines.manifest import load_manifest

log = logging.getLogger("device_check")

BASE: dict[str, dict[str, Any]] = {  # TimeSformer-B 8x224 (the paper's backbone size)
    "backbone": {
        "image_height": 224,
        "image_width": 224,
        "patch_size": 16,
        "hidden_size": 768,
        "num_layers": 12,
        "num_heads": 12,
        "mlp_ratio": 4.0,
    },
    "preprocess": {"clip_len": 8},
}
BATCHES = (1, 8, 32)
# "cuda" on the device; "cpu" only to smoke-test this script on a machine without a GPU (no measurement).
DEVICE = "cuda"


class Report:
    def __init__(self, out: Path) -> None:
        self.out = out
        self.results: dict[str, Any] = {}
        self.rows: list[tuple[str, str, str]] = []

    def run(self, name: str, fn: Callable[[], Any]) -> None:
        log.info("== %s", name)
        started = time.monotonic()
        try:
            value = fn()
            self.results[name] = {
                "status": "ok",
                "seconds": round(time.monotonic() - started, 1),
                "result": value,
            }
        except SkipSection as skip:
            log.info("%s skipped: %s", name, skip)
            self.results[name] = {"status": "skipped", "reason": str(skip)}
            self.rows.append((name, "skipped", str(skip)))
        except Exception as exc:  # each section reports its own failure and the next one still runs
            log.exception("%s failed", name)
            (self.out / f"{name}.error.txt").write_text(traceback.format_exc())
            self.results[name] = {"status": "error", "error": f"{type(exc).__name__}: {exc}"}
            self.rows.append((name, "ERROR", f"{type(exc).__name__}: {str(exc)[:120]}"))
        self.save()

    def row(self, section: str, item: str, value: str) -> None:
        self.rows.append((section, item, value))

    def save(self) -> None:
        (self.out / "device_check.json").write_text(json.dumps(self.results, indent=2, default=str))

    def table(self) -> str:
        rows = [("section", "item", "value"), *self.rows]
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


class SkipSection(Exception):
    """A section that cannot run here (no CUDA, no TensorRT); not a failure."""


def _spec(overrides: dict[str, Any] | None = None) -> ModelConfig:
    repo = Path(__file__).resolve().parents[1]
    model = yaml.safe_load((repo / "configs" / "default.yaml").read_text())["model"]
    for section, values in (overrides or {}).items():
        model.setdefault(section, {}).update(values)
    return ModelConfig.model_validate(model)


def _need_cuda() -> Any:
    import torch

    if DEVICE == "cuda" and not torch.cuda.is_available():
        raise SkipSection(f"no CUDA device visible to torch {torch.__version__}")
    return torch


def _backbone(spec: ModelConfig) -> Any:
    from engines.backbone import TimeSformerEncoder

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
    ).eval()


def _rel(a: Any, b: Any) -> float:
    a, b = a.float(), b.float()
    return float((a - b).abs().max() / a.abs().max().clamp_min(1e-6))


# -- sections ----------------------------------------------------------------------------------------------


def section_env(report: Report) -> dict[str, Any]:
    info: dict[str, Any] = {"python": sys.version.split()[0], "platform": platform.platform()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda"] = torch.cuda.is_available()
        if info["cuda"]:
            props = torch.cuda.get_device_properties(0)
            info["gpu"] = props.name
            info["compute_capability"] = f"{props.major}.{props.minor}"
            info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
    except ImportError as exc:
        info["torch"] = f"missing ({exc})"
    for module in ("tensorrt", "onnxruntime", "onnx", "transformers"):
        try:
            mod = __import__(module)
            info[module] = getattr(mod, "__version__", "?")
        except (ImportError, OSError) as exc:
            info[module] = f"missing ({exc})"
    try:
        import onnxruntime

        info["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except ImportError:
        pass
    try:
        import_cudart()
        info["cuda_python"] = "ok"
    except BackendUnavailable as exc:
        info["cuda_python"] = f"missing ({exc})"
    for key in ("torch", "cuda", "gpu", "compute_capability", "tensorrt", "onnxruntime", "cuda_python"):
        report.row("env", key, str(info.get(key, "-")))
    if not info.get("cuda"):
        report.row("env", "note", "no CUDA: GPU sections are skipped")
    return info


def _sync(torch: Any) -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _block_outputs(torch: Any, model: Any, x: Any, autocast: bool = False) -> list[Any]:
    """The output of every TimesformerLayer of ``model`` on ``x`` (forward hooks, removed afterwards)."""
    outputs: list[Any] = []

    def keep(_module: Any, _inputs: Any, output: Any) -> None:
        outputs.append((output[0] if isinstance(output, tuple) else output).detach())

    handles = [layer.register_forward_hook(keep) for layer in model.model.encoder.layer]
    try:
        with torch.inference_mode(), torch.autocast(DEVICE, dtype=torch.float16, enabled=autocast):
            model(x)
    finally:
        for h in handles:
            h.remove()
    return outputs


def section_fp16_blocks(report: Report, name: str, spec: ModelConfig) -> dict[str, Any]:
    torch = _need_cuda()
    torch.manual_seed(0)
    model = _backbone(spec).to(DEVICE)
    pre, bb = spec.preprocess, spec.backbone
    x = torch.randn(2, pre.clip_len, 3, bb.image_height, bb.image_width, device=DEVICE)
    reference = _block_outputs(torch, model, x)
    runs = {
        "half": _block_outputs(torch, copy.deepcopy(model).half(), x.half()),
        "autocast": _block_outputs(torch, model, x, autocast=True),
    }
    result = {mode: [_rel(a, b) for a, b in zip(reference, outs, strict=True)] for mode, outs in runs.items()}
    for mode, errs in result.items():
        worst = max(range(len(errs)), key=errs.__getitem__)
        report.row(
            f"fp16_blocks[{name}]",
            mode,
            f"max rel err {errs[worst]:.2e} at block {worst}; last {errs[-1]:.2e}",
        )
    return result


def _clips_per_s(torch: Any, model: Any, x: Any, min_seconds: float = 1.0) -> float:
    with torch.inference_mode():
        for _ in range(3):
            model(x)
        _sync(torch)
        n, started = 0, time.perf_counter()
        while n < 5 or time.perf_counter() - started < min_seconds:
            model(x)
            n += 1
        _sync(torch)
    return x.shape[0] * n / (time.perf_counter() - started)


def section_throughput(report: Report, name: str, spec: ModelConfig) -> dict[str, Any]:
    torch = _need_cuda()
    torch.backends.cuda.matmul.allow_tf32 = False  # FP32 means FP32
    model = _backbone(spec).to(DEVICE)
    pre, bb = spec.preprocess, spec.backbone
    out: dict[str, Any] = {}
    for precision in ("fp32", "fp16"):
        m = model if precision == "fp32" else copy.deepcopy(model).half()
        for batch in BATCHES:
            key = f"{precision} b{batch}"
            x = torch.randn(batch, pre.clip_len, 3, bb.image_height, bb.image_width, device=DEVICE)
            try:
                out[key] = round(_clips_per_s(torch, m, x.half() if precision == "fp16" else x), 1)
            except torch.cuda.OutOfMemoryError:
                out[key] = "out of memory"
                torch.cuda.empty_cache()
            report.row(f"throughput[{name}]", key, f"{out[key]} clips/s")
        del m
    return out


def _build_tensorrt(report: Report, name: str, spec: ModelConfig, work: Path) -> dict[str, Any]:
    torch = _need_cuda()
    if DEVICE != "cuda":
        raise SkipSection("TensorRT needs --device cuda")
    try:
        import tensorrt
    except (ImportError, OSError) as exc:
        raise SkipSection(f"tensorrt does not import: {exc}") from exc
    from engines.model import ZsadModel, save_checkpoint

    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    ckpt = save_checkpoint(ZsadModel(spec).eval(), work / "model.safetensors")
    built = build_engines(spec, ckpt, work / "engines", options=BuildOptions(backend="tensorrt"))
    (work / "build_report.txt").write_text(built.table())
    out: dict[str, Any] = {"tensorrt": tensorrt.__version__, "parity": {}}
    for component in ("backbone", "dpc_head"):
        m = load_manifest(work / "engines" / f"{component}.manifest.json")
        for p in m.parity:
            out["parity"][f"{component} {p.reference}->{p.target}"] = p.max_rel_error
            worst = max(p.max_rel_error.values())
            report.row(
                f"tensorrt[{name}]", f"{component} {p.reference}->{p.target}", f"max rel err {worst:.2e}"
            )
        if m.tensorrt is not None:
            report.row(f"tensorrt[{name}]", f"{component} fp32 layers", str(len(m.tensorrt.fp32_layers)))
    out["throughput"] = _tensorrt_throughput(report, name, work / "engines" / "backbone.manifest.json")
    return out


def _tensorrt_throughput(report: Report, name: str, manifest_path: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for graph in (False, True):
        with load_backend(manifest_path, "tensorrt", cuda_graph=graph) as engine:
            for batch in BATCHES:
                if batch > engine.manifest.tensorrt.max_batch:  # type: ignore[union-attr]
                    continue
                feeds = random_feeds(engine.manifest.inputs, batch, np.random.default_rng(batch))
                for _ in range(3):
                    engine(feeds)
                n, started = 0, time.perf_counter()
                while n < 5 or time.perf_counter() - started < 1.0:
                    engine(feeds)
                    n += 1
                key = f"b{batch}{' graph' if graph else ''}"
                out[key] = round(batch * n / (time.perf_counter() - started), 1)
                report.row(f"tensorrt[{name}]", f"throughput {key}", f"{out[key]} clips/s (incl. copies)")
    return out


def _sized(
    section: Callable[[Report, str, ModelConfig], dict[str, Any]],
    report: Report,
    size: str,
    overrides: dict[str, Any] | None,
) -> Callable[[], dict[str, Any]]:
    """``section`` for one backbone size, its spec read when the section runs (so a bad spec is that
    section's error, not the script's)."""

    def run() -> dict[str, Any]:
        return section(report, size, _spec(overrides))

    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.device_check", description=__doc__.split("\n", 1)[0]
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--sections",
        default="env,fp16_blocks,throughput,tensorrt",
        help="comma-separated: env, fp16_blocks, throughput, tensorrt, tensorrt_base",
    )
    parser.add_argument("--trt-base", action="store_true", help="also build and time the base-size engines")
    parser.add_argument("--sizes", default="default,base", help="backbone sizes for fp16_blocks/throughput")
    parser.add_argument(
        "--device", choices=("cuda", "cpu"), default="cuda", help="cpu: smoke-test the script"
    )
    args = parser.parse_args(argv)
    global DEVICE
    DEVICE = args.device
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    wanted = set(args.sections.split(","))
    if args.trt_base:
        wanted.add("tensorrt_base")
    report = Report(args.out)
    if "env" in wanted:
        report.run("env", lambda: section_env(report))
    sizes: dict[str, dict[str, Any] | None] = {"default": None, "base": BASE}
    for size, overrides in sizes.items():
        if size not in args.sizes.split(","):
            continue
        if "fp16_blocks" in wanted:
            report.run(f"fp16_blocks_{size}", _sized(section_fp16_blocks, report, size, overrides))
        if "throughput" in wanted:
            report.run(f"throughput_{size}", _sized(section_throughput, report, size, overrides))
    if "tensorrt" in wanted:
        report.run(
            "tensorrt_default", lambda: _build_tensorrt(report, "default", _spec(), args.out / "trt_default")
        )
    if "tensorrt_base" in wanted:
        report.run(
            "tensorrt_base", lambda: _build_tensorrt(report, "base", _spec(BASE), args.out / "trt_base")
        )
    print()
    print(report.table())
    failed = [k for k, v in report.results.items() if v["status"] == "error"]
    names = ": " + ", ".join(failed) if failed else ""
    print(f"\n{len(failed)} section(s) failed{names}; details in {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
