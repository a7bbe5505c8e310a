"""The GPU part of the first-contact check: one ``PASS``/``FAIL`` line per check, never a skip.

``bash bench/device_check.sh`` runs ``python -m bench.device_check``; it installs nothing, needs no network.

The order puts first what a GPU box without TensorRT can run, and reports all of it (each check on its own,
a missing Python package is a FAIL line naming it, not a traceback):

1. the Python packages the later checks import (one line each);
2. ``nvidia-smi``; cuda-python (import, version, driver and runtime CUDA versions);
   ``cudaGetDeviceProperties(0)`` (name, integrated, compute capability); a device malloc + H2D + D2H round
   trip through cuda-python whose bytes must come back equal; ``torch.cuda``;
3. the ONNX export of every engine of a randomly initialised model (the backbone in NTCHW, the layout the
   DeepStream graph feeds it now that its probe assembles the clips) with PyTorch <-> ONNX Runtime (CPU)
   parity at batch 1 and 3; then the same for both appearance encoders with random weights (MobileNetV2,
   and a CLIP image tower of ViT-B/16's shape with its 512-wide image embedding, the semantic stream's);
4. measurements, where torch sees CUDA: FP32-vs-FP16 error per TimeSformer block (pure ``.half()`` and
   autocast) and backbone clips/s, at the default and the base size (TimeSformer-B, 8x224x224), and the
   FP16 error of the CLIP appearance encoder of ViT-B/16's shape (its features and image embedding);

then ``import tensorrt``: a FAIL, and the run stops there when it is missing; then the FP16 TensorRT
builds with ONNX Runtime <-> TensorRT parity at batch 1 and N, the engines deserialising on a second run
without a rebuild, and TensorRT throughput; the appearance engines' FP16 builds and parity (a 12-layer ViT in
FP16 is where overflow would show); then pyds and the DeepStream elements.

Our own modules load pydantic, PyYAML and torch, so they are imported inside the checks that need them,
after the package check (tests/unit/test_layers.py allows exactly these).

Exit 0 when every check passed, 1 otherwise. ``<out>/device_check.json`` holds every result. Randomly
initialised weights: activations are smaller than a trained model's, so FP16 errors are a lower bound.
"""

from __future__ import annotations

import argparse
import copy
import functools
import importlib.metadata
import importlib.util
import json
import logging
import platform
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engines.cuda_device import CudaUnavailable, cuda_runtime, device_properties
from pipeline.deepstream.availability import DEEPSTREAM_ELEMENTS, deepstream_unavailable_reason

if TYPE_CHECKING:
    from core.config import ModelConfig

log = logging.getLogger("device_check")

REPO = Path(__file__).resolve().parents[1]

# module to import -> (distribution names to read the version from, what needs it)
PACKAGES: dict[str, tuple[tuple[str, ...], str]] = {
    "numpy": (("numpy",), "everything"),
    "pydantic": (("pydantic",), "the config and the engine manifests"),
    "yaml": (("PyYAML",), "the config"),
    "torch": (("torch",), "the export, the FP16 and throughput measurements"),
    "onnx": (("onnx",), "the export"),
    "onnxscript": (("onnxscript",), "the export (torch.onnx.export(dynamo=True))"),
    "onnxruntime": (("onnxruntime", "onnxruntime-gpu"), "the parity references"),
    "transformers": (("transformers",), "the backbone (Hugging Face TimesformerModel)"),
    "safetensors": (("safetensors",), "the checkpoint"),
    "cuda.bindings": (("cuda-bindings", "cuda-python"), "the CUDA checks and the TensorRT backend"),
}
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
ROUND_TRIP_BYTES = 64 << 20


class CheckFailed(Exception):
    """A check's own verdict: the message is the FAIL line's detail."""


class StopChecks(Exception):
    """A check whose failure ends the run (TensorRT missing: nothing after it can run)."""


@dataclass
class Report:
    """Runs checks, prints one PASS/FAIL line each, keeps the results (and the measurements' numbers) in
    ``device_check.json``."""

    out: Path
    results: dict[str, Any] = field(default_factory=dict)
    measurements: dict[str, Any] = field(default_factory=dict)

    def save(self) -> None:
        data = {"checks": self.results, "measurements": self.measurements}
        (self.out / "device_check.json").write_text(json.dumps(data, indent=2, default=str))

    def check(self, name: str, fn: Callable[[], str], *, stop_on_fail: bool = False) -> bool:
        started = time.monotonic()
        try:
            detail = fn()
            ok = True
        except CheckFailed as exc:
            ok, detail = False, str(exc)
        except Exception as exc:  # any error is this check's FAIL line; the next check still runs
            log.debug("%s failed", name, exc_info=True)
            ok, detail = False, f"{type(exc).__name__}: {exc}"
            (self.out / f"{_slug(name)}.error.txt").write_text(traceback.format_exc())
        seconds = round(time.monotonic() - started, 1)
        self.results[name] = {"status": "PASS" if ok else "FAIL", "detail": detail, "seconds": seconds}
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}", flush=True)
        self.save()
        if not ok and stop_on_fail:
            raise StopChecks(name)
        return ok

    @property
    def failed(self) -> list[str]:
        return [k for k, v in self.results.items() if v["status"] == "FAIL"]


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


# -- packages --------------------------------------------------------------------------------------------


def package_version(module: str) -> str | None:
    """The installed version of ``module``'s distribution, ``"?"`` when unknown, None when not importable."""
    try:
        if importlib.util.find_spec(module) is None:
            return None
    except (ImportError, ValueError):  # a parent package that is missing or broken
        return None
    for dist in PACKAGES.get(module, ((module,), ""))[0]:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "?"


def needs(*modules: str) -> None:
    """Fail the calling check, naming every missing package it needs."""
    missing = [m for m in modules if package_version(m) is None]
    if missing:
        raise CheckFailed(f"needs Python package(s) {', '.join(missing)} (missing here)")


def check_package(module: str) -> Callable[[], str]:
    def run() -> str:
        version = package_version(module)
        if version is None:
            raise CheckFailed(f"missing (needed by {PACKAGES[module][1]})")
        return version

    return run


# -- CUDA without TensorRT -------------------------------------------------------------------------------


#: L4T's release file: there on every Jetson, whose nvidia-smi (JetPack 6) reports most fields N/A, and which
#: L4T containers may not carry at all.
TEGRA_RELEASE = Path("/etc/nv_tegra_release")


def check_nvidia_smi() -> str:
    exe = shutil.which("nvidia-smi")
    jetson = TEGRA_RELEASE.exists()
    if exe is None:
        if jetson:
            return "not on PATH (a Jetson: L4T containers may lack it); the CUDA checks below ask the GPU"
        raise CheckFailed("nvidia-smi is not on PATH: no NVIDIA driver here")
    query = "--query-gpu=name,driver_version,memory.total,compute_cap"
    result = subprocess.run(
        [exe, query, "--format=csv,noheader"], capture_output=True, text=True, timeout=60, check=False
    )
    if result.returncode != 0:
        why = f"exit {result.returncode}: {(result.stderr or result.stdout).strip()[:200]}"
        if jetson:
            return f"{why} (a Jetson: its nvidia-smi answers few queries); the CUDA checks below ask the GPU"
        raise CheckFailed(why)
    return "; ".join(line.strip() for line in result.stdout.splitlines() if line.strip())


def _cuda_version(value: int) -> str:
    return f"{value // 1000}.{(value % 1000) // 10}"


def _call(rt: Any, fn: str, *args: Any) -> Any:
    try:
        result = getattr(rt, fn)(*args)
    except RuntimeError as exc:
        raise CheckFailed(f"{fn}: {exc}") from exc
    if int(result[0]) != 0:
        raise CheckFailed(f"{fn}: {result[0]}")
    return result[1] if len(result) == 2 else result[1:]


def check_cuda_python() -> str:
    try:
        rt = cuda_runtime()
    except CudaUnavailable as exc:
        raise CheckFailed(str(exc)) from exc
    driver = _call(rt, "cudaDriverGetVersion")
    runtime = _call(rt, "cudaRuntimeGetVersion")
    version = package_version("cuda.bindings")
    return (
        f"{rt.__name__} (cuda-python {version}); driver supports CUDA {_cuda_version(driver)}, "
        f"runtime CUDA {_cuda_version(runtime)}"
    )


def check_device_properties() -> str:
    try:
        props = device_properties(0)
    except CudaUnavailable as exc:
        raise CheckFailed(str(exc)) from exc
    kind = "integrated (a Jetson)" if props.integrated else "discrete (not a Jetson)"
    return (
        f"{props.name}, sm {props.compute_capability}, {props.total_memory / 2**30:.1f} GiB, "
        f"integrated={props.integrated}: {kind}"
    )


def check_round_trip(nbytes: int = ROUND_TRIP_BYTES) -> str:
    """cudaMalloc, H2D and D2H of ``nbytes`` random bytes through cuda-python: they must come back equal."""
    try:
        rt = cuda_runtime()
    except CudaUnavailable as exc:
        raise CheckFailed(str(exc)) from exc
    sent = np.random.default_rng(0).integers(0, 256, nbytes, dtype=np.uint8)
    back = np.zeros_like(sent)
    kinds = rt.cudaMemcpyKind
    ptr = int(_call(rt, "cudaMalloc", nbytes))
    try:
        started = time.perf_counter()
        _call(rt, "cudaMemcpy", ptr, sent.ctypes.data, nbytes, kinds.cudaMemcpyHostToDevice)
        _call(rt, "cudaMemcpy", back.ctypes.data, ptr, nbytes, kinds.cudaMemcpyDeviceToHost)
        seconds = time.perf_counter() - started
        # A device-side memset between the copies proves the bytes came from the device, not a host alias.
        _call(rt, "cudaMemset", ptr, 0, nbytes)
        zeros = np.ones(16, dtype=np.uint8)
        _call(rt, "cudaMemcpy", zeros.ctypes.data, ptr, 16, kinds.cudaMemcpyDeviceToHost)
    finally:
        _call(rt, "cudaFree", ptr)
    if not np.array_equal(sent, back):
        bad = int(np.count_nonzero(sent != back))
        raise CheckFailed(f"{bad} of {nbytes} bytes differ after H2D + D2H")
    if zeros.any():
        raise CheckFailed("cudaMemset(0) on the device did not read back as zeros")
    return f"{nbytes >> 20} MiB H2D + D2H equal ({2 * nbytes / seconds / 1e9:.1f} GB/s pageable), memset ok"


def check_torch_cuda() -> str:
    needs("torch")
    import torch

    if not torch.cuda.is_available():
        raise CheckFailed(
            f"torch {torch.__version__} sees no CUDA device (built for CUDA {torch.version.cuda})"
        )
    a = torch.randn(256, 256, generator=torch.Generator().manual_seed(0))
    on_gpu = (a.cuda() @ a.cuda()).cpu()
    err = float((on_gpu - a @ a).abs().max() / (a @ a).abs().max())
    if not err < 1e-3:
        raise CheckFailed(f"a 256x256 matmul differs from the CPU's by {err:.2e}")
    name = torch.cuda.get_device_name(0)
    return f"torch {torch.__version__} (CUDA {torch.version.cuda}) on {name}; matmul vs CPU {err:.1e}"


# -- models ----------------------------------------------------------------------------------------------


def load_spec(size: str) -> ModelConfig:
    """The model spec of a size: ``default`` (configs/default.yaml), ``base`` (TimeSformer-B 8x224) or
    ``tiny`` (the test suite's, for a smoke run of this script on a CPU)."""
    from core.config import ModelConfig, load_config

    if size == "tiny":
        from tests.fixtures.tiny_models import tiny_model

        return tiny_model()
    model = load_config(REPO / "configs" / "default.yaml").model
    if size == "base":
        data = model.model_dump(mode="json")
        for section, values in BASE.items():
            data[section].update(values)
        return ModelConfig.model_validate(data)
    return model


def _random_checkpoint(spec: ModelConfig, work: Path) -> Path:
    import torch

    from engines.model import ZsadModel, save_checkpoint

    torch.manual_seed(0)
    return save_checkpoint(ZsadModel(spec).eval(), work / "model.safetensors")


def _parity_detail(directory: Path, target: str) -> tuple[str, dict[str, Any]]:
    from engines.manifest import load_manifest, manifest_path

    parts, record = [], {}
    for component in ("backbone", "dpc_head"):
        m = load_manifest(manifest_path(directory, component))
        for p in m.parity:
            if p.target == target:
                worst = max(p.max_rel_error.values())
                record[component] = {"batches": list(p.batch_sizes), "max_rel_error": p.max_rel_error}
                parts.append(f"{component} {worst:.1e} at batch {'/'.join(map(str, p.batch_sizes))}")
    return ", ".join(parts), record


def check_onnx_parity(spec_size: str, work: Path) -> str:
    needs("torch", "onnx", "onnxscript", "onnxruntime", "transformers", "safetensors", "pydantic", "yaml")
    from engines.build import BuildOptions, build_engines
    from engines.manifest import load_manifest, manifest_path

    spec = load_spec(spec_size)
    work.mkdir(parents=True, exist_ok=True)
    ckpt = _random_checkpoint(spec, work)
    out = work / "engines"
    options = BuildOptions(backend="onnxruntime", parity_batches=(1, 3))
    build_engines(spec, ckpt, out, options=options)
    backbone = load_manifest(manifest_path(out, "backbone"))
    clip = backbone.inputs[0]
    if backbone.input_layout != "NTCHW" or clip.layout != "NTCHW":
        raise CheckFailed(f"the backbone takes {clip.layout}, the DeepStream graph feeds NTCHW")
    again = build_engines(spec, ckpt, out, options=options)
    if not again.up_to_date:
        raise CheckFailed(f"a second build with the same inputs rebuilt something:\n{again.table()}")
    detail, _ = _parity_detail(out, "onnxruntime")
    exported = backbone.onnx.exported_with if backbone.onnx is not None else {}
    return f"{spec_size} size, clip {clip.shape} NTCHW; torch vs ORT {detail}; exported with {exported}"


#: The CLIP image tower of the appearance check at the default and base sizes: ViT-B/16's shape (random
#: weights), with CLIP ViT-B's 512-wide image embedding. The tiny size takes the test suite's tiny tower.
CLIP_VIT_B16: dict[str, Any] = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "image_size": 224,
    "patch_size": 16,
}
CLIP_TINY: dict[str, Any] = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_attention_heads": 4,
    "image_size": 64,
    "patch_size": 32,
}


def _appearance_sources(spec_size: str, work: Path) -> dict[str, Path]:
    """Random weights of each appearance encoder: encoder -> what ``appearance.weights`` names (MobileNetV2's
    state dict; a CLIP folder with a byte-level tokenizer, so that its engine has the embedding output)."""
    import torch

    from engines.appearance import AppearanceEncoder
    from tests.fixtures.tiny_models import make_tiny_clip

    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    mobilenet = work / "mobilenet_v2.pth"
    torch.save(AppearanceEncoder("mobilenet_v2").state_dict(), mobilenet)
    tiny = spec_size == "tiny"
    clip = make_tiny_clip(
        work / "clip", projection_dim=24 if tiny else 512, vision=CLIP_TINY if tiny else CLIP_VIT_B16
    )
    return {"mobilenet_v2": mobilenet, "clip": clip}


def _build_appearance(spec_size: str, work: Path, options: Any) -> list[Any]:
    """Build the appearance engine of each encoder into ``work/<encoder>``; their manifests."""
    from core.config import AppearanceConfig
    from engines.build import build_engines
    from engines.encoders import APPEARANCE_COMPONENT
    from engines.manifest import load_manifest, manifest_path

    spec = load_spec(spec_size)
    sources = _appearance_sources(spec_size, work / "weights")
    ckpt = _random_checkpoint(spec, work)
    built = []
    for encoder, weights in sources.items():
        out = work / encoder
        appearance = AppearanceConfig(encoder=encoder, weights=str(weights))  # type: ignore[arg-type]
        build_engines(spec, ckpt, out, options=options, appearance=appearance)
        built.append(load_manifest(manifest_path(out, APPEARANCE_COMPONENT)))
    return built


def _appearance_detail(manifests: list[Any], target: str) -> str:
    parts = []
    for m in manifests:
        outputs = ", ".join(f"{o.name} {tuple(o.shape)}" for o in m.outputs)
        for p in m.parity:
            if p.target == target:
                errors = ", ".join(f"{k} {v:.1e}" for k, v in p.max_rel_error.items())
                batches = "/".join(map(str, p.batch_sizes))
                parts.append(f"{m.options.get('encoder')} [{outputs}] {errors} at batch {batches}")
    if len(parts) != len(manifests):
        raise CheckFailed(f"a {target} parity record is missing: {parts}")
    return "; ".join(parts)


def check_appearance_onnx(spec_size: str, work: Path) -> str:
    """Both appearance encoders export, with PyTorch <-> ONNX Runtime parity; CLIP's has its embedding."""
    needs("torch", "onnx", "onnxscript", "onnxruntime", "transformers", "safetensors", "pydantic", "yaml")
    from engines.build import BuildOptions

    manifests = _build_appearance(spec_size, work, BuildOptions(backend="onnxruntime", parity_batches=(1, 3)))
    clip = next(m for m in manifests if m.options.get("encoder") == "clip")
    if [o.name for o in clip.outputs] != ["features", "embedding"]:
        raise CheckFailed(f"the CLIP appearance engine has outputs {[o.name for o in clip.outputs]}")
    return f"{spec_size} size; torch vs ORT: " + _appearance_detail(manifests, "onnxruntime")


def check_appearance_tensorrt(spec_size: str, work: Path, max_batch: int) -> str:
    """Both appearance engines as FP16 TensorRT engines, with ONNX Runtime <-> TensorRT parity."""
    from engines.build import BuildOptions
    from engines.tensorrt_build import BatchProfile

    options = BuildOptions(
        backend="tensorrt", profile=BatchProfile(1, max_batch, max_batch), parity_batches=(1, max_batch)
    )
    manifests = _build_appearance(spec_size, work, options)
    return f"{spec_size} size, FP16; ORT vs TensorRT: " + _appearance_detail(manifests, "tensorrt")


def _cuda_torch() -> Any:
    needs("torch", "transformers", "pydantic", "yaml")
    import torch

    if not torch.cuda.is_available():
        raise CheckFailed("torch sees no CUDA device")
    return torch


def _backbone(spec: ModelConfig) -> Any:
    from engines.model import backbone_from_spec

    # The measurements need the architecture only: no pretrained weights to find on the device.
    return backbone_from_spec(spec, pretrained=False).eval()


def _rel(a: Any, b: Any) -> float:
    a, b = a.float(), b.float()
    return float((a - b).abs().max() / a.abs().max().clamp_min(1e-6))


def _block_outputs(torch: Any, model: Any, x: Any, autocast: bool = False) -> list[Any]:
    """The output of every TimesformerLayer of ``model`` on ``x`` (forward hooks, removed afterwards)."""
    outputs: list[Any] = []

    def keep(_module: Any, _inputs: Any, output: Any) -> None:
        outputs.append((output[0] if isinstance(output, tuple) else output).detach())

    handles = [layer.register_forward_hook(keep) for layer in model.model.encoder.layer]
    try:
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=autocast):
            model(x)
    finally:
        for h in handles:
            h.remove()
    return outputs


def measure_fp16_blocks(size: str, results: dict[str, Any]) -> str:
    torch = _cuda_torch()
    spec = load_spec(size)
    torch.manual_seed(0)
    model = _backbone(spec).cuda()
    pre, bb = spec.preprocess, spec.backbone
    x = torch.randn(2, pre.clip_len, 3, bb.image_height, bb.image_width, device="cuda")
    reference = _block_outputs(torch, model, x)
    runs = {
        "half": _block_outputs(torch, copy.deepcopy(model).half(), x.half()),
        "autocast": _block_outputs(torch, model, x, autocast=True),
    }
    errors = {mode: [_rel(a, b) for a, b in zip(reference, outs, strict=True)] for mode, outs in runs.items()}
    results[f"fp16 blocks {size}"] = errors
    parts = []
    for mode, errs in errors.items():
        worst = max(range(len(errs)), key=errs.__getitem__)
        parts.append(f"{mode}: max rel err {errs[worst]:.2e} at block {worst}, last {errs[-1]:.2e}")
    return "; ".join(parts)


def measure_clip_fp16(results: dict[str, Any]) -> str:
    """FP32 against FP16 (``.half()`` and autocast) of the CLIP appearance encoder of ViT-B/16's shape, random
    weights, with its image embedding, on the default model's frames: the features and the embedding."""
    torch = _cuda_torch()
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from engines.appearance import ClipAppearanceEncoder

    spec = load_spec("default")
    torch.manual_seed(0)
    tower = CLIPVisionModel._from_config(CLIPVisionConfig(**CLIP_VIT_B16), attn_implementation="eager")
    vision = getattr(tower, "vision_model", tower)
    encoder = ClipAppearanceEncoder(vision, "", torch.nn.Linear(CLIP_VIT_B16["hidden_size"], 512, bias=False))
    encoder = encoder.cuda()
    x = torch.randn(2, 3, spec.backbone.image_height, spec.backbone.image_width, device="cuda")
    with torch.inference_mode():
        reference = encoder(x)
        with torch.autocast("cuda", dtype=torch.float16):
            autocast = encoder(x)
        half = copy.deepcopy(encoder).half()(x.half())
    errors = {
        mode: {name: _rel(a, b) for name, a, b in zip(("features", "embedding"), reference, out, strict=True)}
        for mode, out in (("half", half), ("autocast", autocast))
    }
    results["fp16 clip appearance ViT-B/16"] = errors
    return "; ".join(
        f"{mode}: " + ", ".join(f"{name} max rel err {e:.2e}" for name, e in errs.items())
        for mode, errs in errors.items()
    )


def _clips_per_s(torch: Any, model: Any, x: Any, min_seconds: float = 1.0) -> float:
    with torch.inference_mode():
        for _ in range(3):
            model(x)
        torch.cuda.synchronize()
        n, started = 0, time.perf_counter()
        while n < 5 or time.perf_counter() - started < min_seconds:
            model(x)
            n += 1
        torch.cuda.synchronize()
    return x.shape[0] * n / (time.perf_counter() - started)


def measure_throughput(size: str, results: dict[str, Any]) -> str:
    torch = _cuda_torch()
    torch.backends.cuda.matmul.allow_tf32 = False  # FP32 means FP32
    spec = load_spec(size)
    model = _backbone(spec).cuda()
    pre, bb = spec.preprocess, spec.backbone
    out: dict[str, Any] = {}
    for precision in ("fp32", "fp16"):
        m = model if precision == "fp32" else copy.deepcopy(model).half()
        for batch in BATCHES:
            x = torch.randn(batch, pre.clip_len, 3, bb.image_height, bb.image_width, device="cuda")
            try:
                out[f"{precision} b{batch}"] = round(
                    _clips_per_s(torch, m, x.half() if precision == "fp16" else x), 1
                )
            except torch.cuda.OutOfMemoryError:
                out[f"{precision} b{batch}"] = "out of memory"
                torch.cuda.empty_cache()
        del m
    results[f"throughput {size}"] = out
    return "clips/s " + ", ".join(f"{k} {v}" for k, v in out.items())


# -- TensorRT --------------------------------------------------------------------------------------------


def check_tensorrt_import() -> str:
    try:
        import tensorrt
    except (ImportError, OSError) as exc:
        raise CheckFailed(
            f"TensorRT's Python bindings do not import ({exc}); nothing after this can run here "
            "(DeepStream 7.1 needs TensorRT 10.3)"
        ) from exc
    version = str(tensorrt.__version__)
    if not version.startswith("10."):
        raise CheckFailed(
            f"TensorRT {version}: the engines are written for TensorRT 10 (10.3 on DeepStream 7.1)"
        )
    return f"tensorrt {version}"


def check_tensorrt_build(spec_size: str, work: Path, max_batch: int) -> str:
    from engines.build import BuildOptions, build_engines
    from engines.tensorrt_build import BatchProfile

    spec = load_spec(spec_size)
    work.mkdir(parents=True, exist_ok=True)
    ckpt = _random_checkpoint(spec, work)
    options = BuildOptions(
        backend="tensorrt", profile=BatchProfile(1, max_batch, max_batch), parity_batches=(1, max_batch)
    )
    report = build_engines(spec, ckpt, work / "engines", options=options)
    (work / "build_report.txt").write_text(report.table())
    detail, _ = _parity_detail(work / "engines", "tensorrt")
    return f"{spec_size} size, FP16, batch 1..{max_batch}; ORT vs TensorRT {detail}"


def check_tensorrt_reload(spec_size: str, work: Path, max_batch: int) -> str:
    """A second build is up to date (no rebuild), and each engine deserialises and runs at batch 1 and N."""
    from engines.backends import load_backend
    from engines.build import BuildOptions, build_engines
    from engines.export import random_feeds
    from engines.manifest import manifest_path
    from engines.tensorrt_build import BatchProfile

    spec = load_spec(spec_size)
    options = BuildOptions(
        backend="tensorrt", profile=BatchProfile(1, max_batch, max_batch), parity_batches=(1, max_batch)
    )
    again = build_engines(spec, work / "model.safetensors", work / "engines", options=options)
    if not again.up_to_date:
        raise CheckFailed(f"the second run rebuilt something:\n{again.table()}")
    shapes = []
    for component in ("backbone", "dpc_head"):
        with load_backend(manifest_path(work / "engines", component), "tensorrt") as engine:
            for batch in (1, max_batch):
                outputs = engine(random_feeds(engine.manifest.inputs, batch, np.random.default_rng(batch)))
                if not all(np.isfinite(v).all() for v in outputs.values()):
                    raise CheckFailed(f"{component} at batch {batch}: non-finite outputs")
            shapes.append(f"{component} ok")
    return "second build up to date; " + ", ".join(shapes) + f" at batch 1 and {max_batch}"


def measure_tensorrt_throughput(work: Path, results: dict[str, Any]) -> str:
    from engines.backends import load_backend
    from engines.export import random_feeds
    from engines.manifest import manifest_path

    out: dict[str, Any] = {}
    for graph in (False, True):
        with load_backend(
            manifest_path(work / "engines", "backbone"), "tensorrt", cuda_graph=graph
        ) as engine:
            max_batch = engine.manifest.tensorrt.max_batch if engine.manifest.tensorrt else 1
            for batch in sorted({1, max_batch}):
                feeds = random_feeds(engine.manifest.inputs, batch, np.random.default_rng(batch))
                for _ in range(3):
                    engine(feeds)
                n, started = 0, time.perf_counter()
                while n < 5 or time.perf_counter() - started < 1.0:
                    engine(feeds)
                    n += 1
                out[f"b{batch}{' graph' if graph else ''}"] = round(
                    batch * n / (time.perf_counter() - started), 1
                )
    results["tensorrt throughput"] = out
    return "backbone clips/s (incl. copies) " + ", ".join(f"{k} {v}" for k, v in out.items())


# -- DeepStream ------------------------------------------------------------------------------------------


def check_deepstream() -> str:
    """pyds and every DeepStream element the graph uses (the run's own availability check; the first-contact
    script, deploy/jetson/first_contact.sh, goes on from here on a DeepStream box)."""
    needs("gi")
    reason = deepstream_unavailable_reason()
    if reason:
        raise CheckFailed(reason)
    return f"pyds {package_version('pyds')}, {len(DEEPSTREAM_ELEMENTS)} DeepStream elements found"


# -- the run ---------------------------------------------------------------------------------------------


def run_checks(report: Report, args: argparse.Namespace) -> None:
    """Every check in order; :class:`StopChecks` when TensorRT is missing."""
    work = args.out / "work"
    shutil.rmtree(work, ignore_errors=True)
    for module in PACKAGES:
        report.check(f"package {module}", check_package(module))
    report.check("nvidia-smi", check_nvidia_smi)
    report.check("cuda-python", check_cuda_python)
    report.check("cudaGetDeviceProperties(0)", check_device_properties)
    report.check("cuda malloc + H2D + D2H", check_round_trip)
    report.check("torch.cuda", check_torch_cuda)
    report.check("export + onnxruntime parity", lambda: check_onnx_parity(args.spec, work / "onnx"))
    report.check(
        "appearance export + onnxruntime parity",
        lambda: check_appearance_onnx(args.spec, work / "appearance_onnx"),
    )
    if args.measure:
        for size in ("default", "base"):
            report.check(
                f"fp16 blocks [{size}]", functools.partial(measure_fp16_blocks, size, report.measurements)
            )
            report.check(
                f"torch throughput [{size}]", functools.partial(measure_throughput, size, report.measurements)
            )
        report.check(
            "fp16 clip appearance [ViT-B/16]", functools.partial(measure_clip_fp16, report.measurements)
        )
    report.check("tensorrt import", check_tensorrt_import, stop_on_fail=True)
    trt_work = work / "tensorrt"
    built = report.check(
        "tensorrt build + parity", lambda: check_tensorrt_build(args.spec, trt_work, args.max_batch)
    )
    if built:
        report.check(
            "tensorrt deserialise", lambda: check_tensorrt_reload(args.spec, trt_work, args.max_batch)
        )
        if args.measure:
            report.check(
                "tensorrt throughput", lambda: measure_tensorrt_throughput(trt_work, report.measurements)
            )
    report.check(
        "tensorrt appearance build + parity",
        lambda: check_appearance_tensorrt(args.spec, work / "appearance_tensorrt", args.max_batch),
    )
    report.check("pyds + deepstream elements", check_deepstream)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.device_check", description=__doc__.split("\n", 1)[0]
    )
    parser.add_argument("--out", type=Path, default=REPO / "out" / "device_check")
    parser.add_argument(
        "--spec",
        choices=("default", "base", "tiny"),
        default="default",
        help="model size of the engine checks",
    )
    parser.add_argument("--max-batch", type=int, default=8, help="N of the TensorRT profile and parity")
    parser.add_argument(
        "--no-measure",
        dest="measure",
        action="store_false",
        help="leave out the FP16 and throughput measurements",
    )
    args = parser.parse_args(argv)
    if args.max_batch < 2:
        parser.error("--max-batch must be at least 2 (parity runs at batch 1 and N)")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"device_check: python {platform.python_version()} on {platform.platform()}; results in {args.out}")
    report = Report(args.out)
    try:
        run_checks(report, args)
    except StopChecks as stop:
        print(f"device_check: stopped at '{stop}': every check after it needs it", flush=True)
    failed = report.failed
    passed = len(report.results) - len(failed)
    print(f"device_check: {passed} passed, {len(failed)} failed; details in {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
