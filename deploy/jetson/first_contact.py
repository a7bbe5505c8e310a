"""First contact with a real DeepStream box: one ``PASS``/``FAIL`` line per check, stop at the first failure.

Run from the repository root by ``deploy/jetson/first_contact.sh`` (natively, or inside the zsad image with
the checkout mounted, docs/deploy-jetson.md). The checks, in order:

1. DeepStream is here (its folder and ``gst-inspect-1.0 nvstreammux``), Python 3.10;
2. versions and imports: pyds 1.2, TensorRT 10.3, cuda-python (and what CUDA says about the GPU), numpy<2,
   torch, onnxscript / onnx / onnxruntime, the GstRtspServer typelib, zsad's own modules;
3. every pyds name the DeepStream wing uses exists in this pyds (``hasattr``; the names are read from
   the AST of ``pipeline/deepstream/*.py`` now, so the list cannot go stale);
4. ``gst-inspect-1.0`` shows every element and every property the graph plan of the config sets;
5. ``zsad build-engines --backend tensorrt`` with the flags the container entry point uses, with ONNX
   Runtime <-> TensorRT parity at batch 1 and N;
6. the engines deserialise without a rebuild (the entry point's cache check, a second build, and each
   engine run once from a thread other than the one that loaded it, as from a GStreamer streaming thread);
7. ``zsad run --graph deepstream --duration 60`` on synthetic file sources with injected anomalies (the
   demo's four cameras and its model, calibrated first): clips scored > 0, no batch dropped, and at least
   one alert that matches an injected anomaly.

Each check imports what it needs, so a missing dependency is a FAIL line naming it. Everything is written
under ``out/first_contact/`` (``--out``). ``--export-onnx`` on the development machine writes the same
config and the ONNX models (``build-engines --backend onnxruntime``): copy ``out/first_contact/engines``
into the device's checkout and step 5 only compiles TensorRT engines from them.
"""

from __future__ import annotations

import argparse
import ast
import importlib.metadata
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger("first_contact")

REPO = Path(__file__).resolve().parents[2]
DEEPSTREAM_DIR = Path(os.environ.get("DEEPSTREAM_DIR", "/opt/nvidia/deepstream/deepstream"))
DEEPSTREAM_WING = REPO / "pipeline" / "deepstream"
# The names the DeepStream wing's code may give the pyds module (a parameter, an attribute, the import).
PYDS_ALIASES = frozenset({"pyds", "_pyds"})
RUN_SECONDS = 60


class CheckFailed(Exception):
    """The message is the FAIL line's detail."""


# -- output --------------------------------------------------------------------------------------------


def say(ok: bool, name: str, detail: str) -> None:
    print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}", flush=True)


def run_checks(checks: Sequence[tuple[str, Callable[[], str]]]) -> int:
    """Run ``checks`` in order; stop at the first failure. Returns the exit code."""
    for name, check in checks:
        try:
            detail = check()
        except CheckFailed as exc:
            say(False, name, str(exc))
            return 1
        except Exception as exc:  # an unexpected error is this check's FAIL line, with its type
            say(False, name, f"{type(exc).__name__}: {exc}")
            log.error("%s: the traceback of the failure above", name, exc_info=True)
            return 1
        say(True, name, detail)
    print(f"first contact: all {len(checks)} checks passed", flush=True)
    return 0


def _import(module: str) -> Any:
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as exc:
        raise CheckFailed(f"{module} does not import: {exc}") from exc


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


# -- 1 and 2: the platform, versions and imports ---------------------------------------------------------


def check_deepstream() -> str:
    problems = []
    version_file = DEEPSTREAM_DIR / "version"
    version = ""
    if not DEEPSTREAM_DIR.is_dir():
        problems.append(f"no {DEEPSTREAM_DIR}")
    elif version_file.is_file():
        version = version_file.read_text(errors="replace").strip().splitlines()[0]
    inspect = shutil.which("gst-inspect-1.0")
    if inspect is None:
        problems.append("gst-inspect-1.0 is not installed")
    elif subprocess.run([inspect, "nvstreammux"], capture_output=True, check=False).returncode != 0:
        problems.append("gst-inspect-1.0 does not know nvstreammux")
    if problems:
        raise CheckFailed(
            "no DeepStream here (" + "; ".join(problems) + "): run this on a DeepStream 7.1 box, or in the "
            "zsad image (docs/deploy-jetson.md)"
        )
    if version and "7.1" not in version:
        raise CheckFailed(f"{version_file} says {version!r}; zsad is written for DeepStream 7.1")
    return version or f"{DEEPSTREAM_DIR} (no version file)"


def check_python() -> str:
    if sys.version_info[:2] != (3, 10):
        raise CheckFailed(f"Python {platform.python_version()}: pyds 1.2.0 is built for Python 3.10 only")
    return f"{platform.python_version()} ({sys.executable})"


def check_pyds() -> str:
    pyds = _import("pyds")
    version = _version("pyds")
    if not version.startswith("1.2"):
        raise CheckFailed(f"pyds {version}; DeepStream 7.1 goes with pyds 1.2.0")
    return f"pyds {version} ({Path(pyds.__file__).parent})"


def check_tensorrt() -> str:
    trt = _import("tensorrt")
    if not str(trt.__version__).startswith("10.3"):
        raise CheckFailed(f"TensorRT {trt.__version__}; DeepStream 7.1 goes with TensorRT 10.3")
    return f"tensorrt {trt.__version__}"


def check_cuda() -> str:
    _import("engines.cuda_device")
    from engines.cuda_device import CudaUnavailable, cuda_runtime, device_properties

    try:
        runtime = cuda_runtime()
        props = device_properties(0, runtime)
    except CudaUnavailable as exc:
        raise CheckFailed(str(exc)) from exc
    kind = "integrated (Jetson)" if props.integrated else "discrete"
    return (
        f"{runtime.__name__} (cuda-python {_version('cuda-python')}); {props.name}, sm "
        f"{props.compute_capability}, {kind}"
    )


def check_numpy() -> str:
    numpy = _import("numpy")
    if not numpy.__version__.startswith("1."):
        raise CheckFailed(f"numpy {numpy.__version__}: pyds 1.2.0 does not support numpy 2")
    return f"numpy {numpy.__version__}"


def check_torch() -> str:
    torch = _import("torch")  # NVIDIA's Jetson wheel fails here without OpenBLAS or cuSPARSELt
    if not torch.cuda.is_available():
        raise CheckFailed(f"torch {torch.__version__} sees no CUDA device (a CPU-only wheel?)")
    return f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}"


def check_export_toolchain() -> str:
    found = []
    for module, dist in (("onnxscript", "onnxscript"), ("onnx", "onnx"), ("onnxruntime", "onnxruntime")):
        _import(module)
        found.append(f"{module} {_version(dist)}")
    return ", ".join(found)


def check_rtsp_typelib() -> str:
    _import("core.gst")
    from core.gst import GstUnavailable, load_typelib

    try:
        load_typelib("GstRtspServer")
    except GstUnavailable as exc:
        raise CheckFailed(str(exc)) from exc
    return "gi.repository.GstRtspServer 1.0"


def check_zsad_modules() -> str:
    modules = ("core.config", "engines.build", "engines.backends.tensorrt", "pipeline.deepstream.app")
    for module in modules:
        _import(module)
    return ", ".join(modules)


# -- 3: pyds names ---------------------------------------------------------------------------------------


def _dotted(node: ast.expr) -> list[str] | None:
    """``pyds.A.B`` / ``self.pyds.A.B`` -> ``["A", "B"]``; None when the chain does not start at pyds."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        if node.attr in PYDS_ALIASES and parts:  # self.pyds.X
            return parts[::-1]
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name) and node.id in PYDS_ALIASES and parts:
        return parts[::-1]
    return None


def pyds_names(files: Iterable[Path]) -> list[str]:
    """Every dotted pyds name the code in ``files`` reads: ``pyds.X``, ``pyds.X.Y``, ``self.pyds.X`` and
    ``getattr(pyds.X, "Y")`` with a constant name. ``getattr`` with a default is the code tolerating a
    missing member, so that name is not required."""
    names: set[str] = set()
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                parts = _dotted(node)
                if parts is not None:
                    names.add(".".join(parts))
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "getattr"
                and len(node.args) == 2
                and isinstance(node.args[1], ast.Constant)
                and isinstance(node.args[1].value, str)
            ):
                target = node.args[0]
                base = [] if isinstance(target, ast.Name) and target.id in PYDS_ALIASES else _dotted(target)
                if base is not None:
                    names.add(".".join([*base, node.args[1].value]))
    # "pyds.A.B" also reads "pyds.A": keep the longest chains only.
    return sorted(n for n in names if not any(other.startswith(n + ".") for other in names))


def missing_names(module: Any, names: Iterable[str]) -> list[str]:
    missing = []
    for name in names:
        obj = module
        for part in name.split("."):
            if not hasattr(obj, part):
                missing.append(name)
                break
            obj = getattr(obj, part)
    return missing


def check_pyds_names() -> str:
    pyds = _import("pyds")
    names = pyds_names(sorted(DEEPSTREAM_WING.glob("*.py")))
    if not names:
        raise CheckFailed(f"found no pyds names in {DEEPSTREAM_WING}: is the checkout complete?")
    missing = missing_names(pyds, names)
    if missing:
        raise CheckFailed(
            f"pyds {_version('pyds')} lacks {len(missing)} of {len(names)} names: {', '.join(missing)}"
        )
    return f"all {len(names)} names the code uses exist"


# -- 4: elements and properties --------------------------------------------------------------------------


def graph_plan(cfg: Any, jetson: bool) -> Any:
    """The DeepStream graph's element plan for ``cfg`` (``pipeline.deepstream.graph.plan_graph``).

    The plan needs the rendered config files only as paths; nothing is written.
    """
    from pipeline.deepstream.graph import plan_graph
    from pipeline.deepstream.render import RenderedConfigs

    directory = Path(cfg.output_dir) / "deepstream"
    rendered = RenderedConfigs(
        directory=directory,
        batch=len(cfg.enabled_cameras()),
        mux=directory / "mux.txt" if cfg.deepstream.mux == "new" else None,
    )
    bb = cfg.model.backbone
    return plan_graph(cfg, rendered, (bb.image_width, bb.image_height), jetson=jetson)


def planned_properties(plan: Any) -> dict[str, set[str]]:
    """factory -> the properties the plan sets on it (``ElementSpec.props``; ``optional`` ones are set only
    where they exist, so they are not required)."""
    out: dict[str, set[str]] = {}
    for spec in [*(s.element for s in plan.sources), *plan.elements()]:
        out.setdefault(spec.factory, set()).update(spec.props)
    return out


def inspected_properties(text: str) -> set[str]:
    """Property names in ``gst-inspect-1.0 FACTORY`` output (``  name : blurb`` under Element Properties)."""
    section = text.split("Element Properties:", 1)[-1]
    return set(re.findall(r"^\s{2}([a-z][a-z0-9-]*)\s*:", section, flags=re.MULTILINE))


def check_elements(config: Path) -> str:
    from core.config import load_config
    from engines.cuda_device import device_is_integrated

    cfg = load_config(config)
    wanted = planned_properties(graph_plan(cfg, device_is_integrated()))
    inspect = shutil.which("gst-inspect-1.0") or "gst-inspect-1.0"
    problems = []
    for factory, props in sorted(wanted.items()):
        result = subprocess.run([inspect, factory], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            problems.append(f"no element {factory}")
            continue
        lacking = sorted(props - inspected_properties(result.stdout))
        if lacking:
            problems.append(f"{factory} lacks {', '.join(lacking)}")
    if problems:
        raise CheckFailed("; ".join(problems))
    n = sum(len(p) for p in wanted.values())
    return f"{len(wanted)} elements, {n} properties of the plan of {config}"


# -- the first-contact run: config, engines, the DeepStream run -----------------------------------------


def _from_repo(path: Path) -> Path:
    """``path`` relative to the repository root where it is inside it (the config then travels with the
    checkout, e.g. from the development machine to the device), else absolute."""
    full = path.resolve()
    return full.relative_to(REPO) if full.is_relative_to(REPO) else full


def write_config(out: Path, calibration: dict[str, str] | None = None) -> Path:
    """``out/site.yaml``: the demo's model and cameras on synthetic scenes, TensorRT engines, the DeepStream
    graph with no video output, every path relative to the repository root."""
    import yaml

    raw = yaml.safe_load((REPO / "configs" / "default.yaml").read_text())
    rel = _from_repo(out)
    for cam in raw["cameras"]:
        video = Path(cam["uri"].split("://", 1)[1]).name
        cam["uri"] = f"file://{rel}/scenes/testing/videos/{video}"
        if calibration and cam["id"] in calibration:
            cam["calibration"] = calibration[cam["id"]]
    raw["graph"] = "deepstream"
    raw["engines"] = {
        "dir": f"{rel}/engines",
        "checkpoint": raw["engines"]["checkpoint"],
        "backend": "tensorrt",
    }
    raw["deepstream"] = {"output": {"kind": "fakesink"}}
    raw["output_dir"] = f"{rel}/run"
    raw["metrics"] = {"enabled": False}
    raw["ui"] = {"enabled": False}
    out.mkdir(parents=True, exist_ok=True)
    path = out / "site.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def prepare(out: Path) -> tuple[Path, dict[str, Any]]:
    """The config and the synthetic scenes (the demo's: held-out seed 0, 60 s at 10 fps, anomalies)."""
    from core.config import load_config
    from pipeline.cli.demo import prepare_scenes

    config = write_config(out)
    manifest = prepare_scenes(load_config(config), out / "scenes")
    return config, manifest


def _stream(argv: Sequence[str], log: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` from the repository root, output to ``log``; the result keeps the output."""
    result = subprocess.run(
        list(argv), cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False
    )
    log.write_text(result.stdout + result.stderr)
    return result


def _tail(text: str, lines: int = 12) -> str:
    return " | ".join(text.strip().splitlines()[-lines:])


def build_flags(config: Path) -> list[str]:
    """The ``build-engines`` flags the container entry point uses (``pipeline.cli.engine_cache``)."""
    result = _stream(
        [sys.executable, "-m", "pipeline.cli.engine_cache", str(config), "--build-args"],
        config.parent / "engine_cache.log",
        120,
    )
    if result.returncode != 0:
        raise CheckFailed(f"engine_cache --build-args exit {result.returncode}: {_tail(result.stderr)}")
    return result.stdout.split()


def _zsad(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.cli.main", *args]


def check_build_engines(config: Path) -> str:
    from core.config import load_config
    from engines.manifest import load_manifest, manifest_path

    cfg = load_config(config)
    engines = REPO / cfg.engines.dir
    shipped = sorted(p.name for p in engines.glob("*.onnx")) if engines.is_dir() else []
    flags = build_flags(config)
    result = _stream(
        _zsad("-v", "build-engines", "--config", str(config), *flags), config.parent / "build.log", 3600
    )
    if result.returncode != 0:
        raise CheckFailed(f"build-engines exit {result.returncode}: {_tail(result.stdout + result.stderr)}")
    parts = []
    backbone = load_manifest(manifest_path(engines, "backbone"))
    exported = backbone.onnx.exported_with.get("torch", "?") if backbone.onnx is not None else "?"
    for component in ("backbone", "dpc_head"):
        m = load_manifest(manifest_path(engines, component))
        records = [p for p in m.parity if p.reference == "onnxruntime" and p.target == "tensorrt"]
        if not records:
            raise CheckFailed(f"{component}: no ONNX Runtime <-> TensorRT parity in its manifest")
        batches = records[-1].batch_sizes
        if 1 not in batches or max(batches) < 2:
            raise CheckFailed(f"{component}: parity ran at batch {batches}, not at 1 and N > 1")
        worst = max(records[-1].max_rel_error.values())
        parts.append(f"{component} {worst:.1e} at batch {'/'.join(map(str, batches))}")
    origin = (
        f"ONNX shipped ({', '.join(shipped)}; exported with torch {exported})"
        if shipped
        else "ONNX exported here"
    )
    return f"{' '.join(flags)}; {origin}; ORT vs TensorRT {', '.join(parts)}"


def check_engines_reload(config: Path) -> str:
    import numpy as np

    from core.config import load_config
    from engines.backends import load_backend
    from engines.export import random_feeds
    from engines.manifest import manifest_path

    cache = _stream(
        [sys.executable, "-m", "pipeline.cli.engine_cache", str(config)],
        config.parent / "engine_cache.log",
        120,
    )
    if cache.returncode != 0:
        raise CheckFailed(
            f"the entry point's cache check says rebuild (exit {cache.returncode}): "
            f"{_tail(cache.stdout + cache.stderr)}"
        )
    again = _stream(
        _zsad("build-engines", "--config", str(config), *build_flags(config)),
        config.parent / "build2.log",
        600,
    )
    if again.returncode != 0 or not again.stdout.rstrip().endswith("up to date"):
        raise CheckFailed(f"a second build-engines rebuilt or failed: {_tail(again.stdout + again.stderr)}")
    cfg = load_config(config)
    ran: list[str] = []
    errors: list[Exception] = []
    for component in ("backbone", "dpc_head"):
        engine = load_backend(
            manifest_path(REPO / cfg.engines.dir, component), "tensorrt", device_id=cfg.deepstream.gpu_id
        )
        try:
            feeds = random_feeds(engine.manifest.inputs, 1, np.random.default_rng(0))

            def infer(engine: Any = engine, feeds: Any = feeds, name: str = component) -> None:
                try:
                    outputs = engine(feeds)
                    if not all(np.isfinite(v).all() for v in outputs.values()):
                        raise CheckFailed(f"{name}: non-finite outputs")
                    ran.append(name)
                except Exception as exc:  # handed to the main thread, which fails the check with it
                    log.error("%s failed in its thread", name, exc_info=True)
                    errors.append(exc)

            thread = threading.Thread(target=infer, name=f"streaming-thread-{component}")
            thread.start()
            thread.join(timeout=120)
        finally:
            engine.close()
    if errors:
        raise CheckFailed(f"inference from another thread: {type(errors[0]).__name__}: {errors[0]}")
    return f"entry point cache current, second build up to date, {', '.join(ran)} ran from another thread"


def check_calibration(out: Path, config: Path) -> Path:
    from core.config import load_config
    from pipeline.cli.demo import prepare_calibration

    cfg = prepare_calibration(load_config(config), out / "scenes", out / "calibration")
    calibration = {c.id: str(_from_repo(Path(c.calibration))) for c in cfg.cameras if c.calibration}
    return write_config(out, calibration)


def check_run(out: Path, config: Path, manifest: dict[str, Any]) -> str:
    from core.config import load_config
    from pipeline.cli.demo import summarise_run

    cfg = load_config(config)
    run_dir = REPO / cfg.output_dir
    shutil.rmtree(run_dir, ignore_errors=True)
    started = time.monotonic()
    result = _stream(
        _zsad("-v", "run", str(config), "--graph", "deepstream", "--duration", str(RUN_SECONDS)),
        out / "run.log",
        RUN_SECONDS + 600,
    )
    log = result.stdout + result.stderr
    if result.returncode != 0:
        raise CheckFailed(f"zsad run exit {result.returncode}: {_tail(log)}")
    scores = run_dir / "scores.jsonl"
    clips = sum(1 for line in scores.read_text().splitlines() if line.strip()) if scores.is_file() else 0
    if clips == 0:
        raise CheckFailed(f"no clip scored (no rows in {scores}); see {out / 'run.log'}")
    probe = re.search(r"score probe: (\d+) batches, (\d+) clips, (\d+) dropped batches", log)
    if probe is None:
        raise CheckFailed(
            "the run did not log its score probe summary ('score probe: ... dropped batches'); "
            f"see {out / 'run.log'}"
        )
    if int(probe.group(3)):
        raise CheckFailed(f"{probe.group(3)} of {probe.group(1)} batches dropped; see {out / 'run.log'}")
    summary = summarise_run(cfg, manifest, run_dir)
    if not summary["detected"]:
        raise CheckFailed(
            f"no alert matched any of the {summary['injected']} injected anomalies "
            f"({summary['alerts']} alerts); see {run_dir / 'summary.md'}"
        )
    return (
        f"{time.monotonic() - started:.0f} s: {clips} clips scored, {probe.group(1)} batches, none dropped, "
        f"{summary['detected']} of {summary['injected']} injected anomalies alerted, "
        f"{summary['false_alarms']} false alarms"
    )


# -- main ----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="deploy/jetson/first_contact.sh", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--out", type=Path, default=REPO / "out" / "first_contact")
    parser.add_argument(
        "--config",
        type=Path,
        help="the site config whose graph plan is inspected (default: the generated one)",
    )
    parser.add_argument(
        "--export-onnx",
        action="store_true",
        help="on the development machine: write the config and its ONNX models to ship to the device",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    out: Path = args.out.resolve()
    state: dict[str, Any] = {}
    if args.export_onnx:

        def export() -> str:
            config = write_config(out)
            flags = build_flags(config)  # the device's flags (same input layout), ONNX Runtime only
            flags[flags.index("--backend") + 1] = "onnxruntime"
            result = _stream(
                _zsad("-v", "build-engines", "--config", str(config), *flags), out / "build.log", 3600
            )
            if result.returncode != 0:
                raise CheckFailed(
                    f"build-engines exit {result.returncode}: {_tail(result.stdout + result.stderr)}"
                )
            return f"{out / 'engines'}: copy it to the same path in the device's checkout"

        return run_checks([("export ONNX", export)])

    def prepared() -> str:
        state["config"], state["manifest"] = prepare(out)
        return f"{state['config']} and scenes in {out / 'scenes'}"

    def calibrated() -> str:
        state["config"] = check_calibration(out, state["config"])
        return f"{len(list((out / 'calibration').glob('*.json')))} cameras -> {state['config']}"

    checks: list[tuple[str, Callable[[], str]]] = [
        ("deepstream", check_deepstream),
        ("python", check_python),
        ("pyds", check_pyds),
        ("tensorrt", check_tensorrt),
        ("cuda-python", check_cuda),
        ("numpy", check_numpy),
        ("torch", check_torch),
        ("onnxscript, onnx, onnxruntime", check_export_toolchain),
        ("GstRtspServer typelib", check_rtsp_typelib),
        ("zsad modules", check_zsad_modules),
        ("pyds names", check_pyds_names),
        ("first-contact config and scenes", prepared),
        ("elements and properties", lambda: check_elements(args.config or state["config"])),
        ("build-engines --backend tensorrt", lambda: check_build_engines(state["config"])),
        ("engines deserialise without rebuild", lambda: check_engines_reload(state["config"])),
        ("calibration", calibrated),
        (
            f"zsad run --graph deepstream --duration {RUN_SECONDS}",
            lambda: check_run(out, state["config"], state["manifest"]),
        ),
    ]
    return run_checks(checks)


if __name__ == "__main__":
    sys.exit(main())
