"""deploy/jetson: shell scripts pass shellcheck, Dockerfiles pass hadolint (each skipped if the tool is
missing), versions are pinned in versions.env only, compose/systemd files say what the docs promise, the
example site config validates, and the engine cache check decides build vs skip per TensorRT and GPU."""

from __future__ import annotations

import configparser
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml

from core.config import load_config
from pipeline.cli.engine_cache import main
from pipeline.deepstream.engine_cache import DeviceIdentity, build_args, engines_current
from tests.conftest import REPO
from tests.fixtures.deepstream_fixtures import engine_manifest, site_config

DEPLOY = REPO / "deploy" / "jetson"
DOCKERFILES = [DEPLOY / "Dockerfile", DEPLOY / "Dockerfile.x86"]
ORIN = DeviceIdentity("10.3.0.30", "Orin", "8.7", 16)  # an AGX Orin 64GB


def tool(name: str) -> str | None:
    return shutil.which(name) or next(
        (str(p) for p in (Path(sys.executable).parent / name,) if p.is_file()), None
    )


def shell_scripts() -> list[Path]:
    return sorted([*DEPLOY.glob("*.sh"), *(REPO / "bench").glob("*.sh")])


def test_shell_scripts_pass_shellcheck() -> None:
    shellcheck = tool("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed")
    scripts = shell_scripts()
    assert DEPLOY / "entrypoint.sh" in scripts
    result = subprocess.run(
        [shellcheck, "--severity=style", *map(str, scripts)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for script in DEPLOY.glob("*.sh"):
        assert script.stat().st_mode & 0o111, f"{script} is not executable"
        assert "set -euo pipefail" in script.read_text()


def test_dockerfiles_pass_hadolint() -> None:
    hadolint = tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed")
    result = subprocess.run([hadolint, *map(str, DOCKERFILES)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def versions() -> dict[str, str]:
    out = {}
    for line in (DEPLOY / "versions.env").read_text().splitlines():
        if line and not line.startswith("#"):
            key, value = line.split("=", 1)
            out[key] = value
    return out


def test_versions_are_pinned_in_one_file() -> None:
    pins = versions()
    assert pins["DEEPSTREAM_VERSION"] == "7.1"
    assert pins["TENSORRT_VERSION"] == "10.3"
    assert pins["JETPACK_VERSION"] == "6.1"
    assert pins["PYDS_VERSION"] == "1.2.0"
    assert pins["NUMPY_VERSION"].startswith("1.")  # pyds 1.2.0 does not support numpy 2
    for dockerfile in DOCKERFILES:
        text = dockerfile.read_text()
        args = re.findall(r"^ARG (\w+)(=?)", text, flags=re.MULTILINE)
        assert args
        for name, default in args:
            assert name in pins, f"{dockerfile.name}: ARG {name} is not in versions.env"
            assert not default, f"{dockerfile.name}: ARG {name} has a default (pin it in versions.env only)"
        assert "FROM ${DEEPSTREAM_IMAGE}" in text
        assert "nvcr.io" not in text  # the base image is pinned in versions.env
    compose = (DEPLOY / "compose.yaml").read_text()
    for name in re.findall(r"\$\{(\w+)", compose):
        assert name in pins, f"compose.yaml uses ${{{name}}} that versions.env does not define"


def test_compose_services() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    jetson, x86 = compose["services"]["zsad"], compose["services"]["zsad-x86"]
    assert jetson["runtime"] == "nvidia"
    assert jetson["profiles"] == ["jetson"]
    assert jetson["build"]["dockerfile"] == "deploy/jetson/Dockerfile"
    assert x86["profiles"] == ["x86"]
    assert x86["build"]["dockerfile"] == "deploy/jetson/Dockerfile.x86"
    (device,) = x86["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia"
    for service in (jetson, x86):
        assert "engines:/var/lib/zsad/engines" in service["volumes"]
        assert service["network_mode"] == "host"
        # Time for a clean stop (sinks flush up to 10 s, then the graph and clips): Docker's 10 s is short.
        assert int(service["stop_grace_period"].removesuffix("s")) >= 30
        dockerfile_args = set(
            re.findall(r"^ARG (\w+)", (REPO / service["build"]["dockerfile"]).read_text(), re.M)
        )
        assert dockerfile_args <= set(service["build"]["args"]) <= set(versions())


# What the container needs of the driver: libcuda (compute), nvidia-smi (utility), NVDEC/NVENC (video).
# Docker sets NVIDIA_DRIVER_CAPABILITIES from a device request's capabilities, replacing the image's.
DRIVER_CAPABILITIES = {"compute", "utility", "video"}


def gpu_services(compose: dict) -> dict[str, set[str]]:
    """service -> the driver capabilities it gets: those of its NVIDIA device request, or, under the NVIDIA
    runtime (Jetson), the image's NVIDIA_DRIVER_CAPABILITIES ("all" in DeepStream's Jetson images) unless
    the service overrides it."""
    out = {}
    for name, service in compose["services"].items():
        devices = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
        nvidia = [d for d in devices if d.get("driver") == "nvidia"]
        if nvidia:
            out[name] = set().union(*(set(d.get("capabilities", [])) for d in nvidia))
        elif service.get("runtime") == "nvidia":
            env = service.get("environment") or {}
            if isinstance(env, list):
                env = dict(item.split("=", 1) for item in env)
            caps = str(env.get("NVIDIA_DRIVER_CAPABILITIES", "all"))
            out[name] = DRIVER_CAPABILITIES | {"gpu"} if caps == "all" else set(caps.split(",")) | {"gpu"}
    return out


def check_gpu_capabilities(compose: dict) -> None:
    services = gpu_services(compose)
    assert set(services) == set(compose["services"]), "every zsad service runs on the GPU"
    for name, caps in services.items():
        missing = ({"gpu"} | DRIVER_CAPABILITIES) - caps
        assert not missing, f"service {name}: capabilities {sorted(caps)} lack {sorted(missing)}"


def test_compose_gives_every_gpu_service_compute_utility_and_video() -> None:
    """`capabilities: [gpu, video]` would make Docker set NVIDIA_DRIVER_CAPABILITIES=video, overriding the
    image's compute,utility,video: a container without libcuda."""
    check_gpu_capabilities(yaml.safe_load((DEPLOY / "compose.yaml").read_text()))
    broken = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    broken["services"]["zsad-x86"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] = [
        "gpu",
        "video",
    ]
    with pytest.raises(AssertionError, match=r"zsad-x86: .* lack \['compute', 'utility'\]"):
        check_gpu_capabilities(broken)


def _docker_compose() -> list[str] | None:
    docker = shutil.which("docker")
    if docker is None:
        return None
    probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True, check=False)
    return [docker, "compose"] if probe.returncode == 0 else None


@pytest.mark.parametrize("profile", ["jetson", "x86"])
def test_compose_config_renders(profile: str) -> None:
    """`docker compose config` (interpolation, merge keys, profiles) where the compose plugin exists."""
    compose = _docker_compose()
    if compose is None:
        pytest.skip("docker compose is not installed (the YAML-level test above still checks the file)")
    result = subprocess.run(
        [
            *compose,
            "--env-file",
            str(DEPLOY / "versions.env"),
            "-f",
            str(DEPLOY / "compose.yaml"),
            "--profile",
            profile,
            "config",
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    check_gpu_capabilities(json.loads(result.stdout))


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((DEPLOY / name).read_text())
    return parser


def test_systemd_units() -> None:
    app = unit("zsad.service")
    assert app["Service"]["Restart"] == "on-failure"
    assert int(app["Service"]["RestartSec"]) > 0
    assert "docker compose" in app["Service"]["ExecStart"]
    assert "--env-file deploy/jetson/versions.env" in app["Service"]["ExecStart"]
    assert "zsad-clocks.service" in app["Unit"]["After"]
    assert app["Install"]["WantedBy"] == "multi-user.target"
    clocks_text = (DEPLOY / "zsad-clocks.service").read_text()
    clocks = unit("zsad-clocks.service")
    assert clocks["Service"]["Type"] == "oneshot"
    assert clocks["Service"]["RemainAfterExit"] == "yes"
    assert "ExecStart=/usr/sbin/nvpmodel -m ${ZSAD_NVPMODEL_MODE}" in clocks_text
    assert "ExecStart=/usr/bin/jetson_clocks\n" in clocks_text


def test_example_site_config_validates() -> None:
    cfg = load_config(DEPLOY / "site.example.yaml")
    assert cfg.graph == "deepstream"
    assert cfg.engines.backend == "tensorrt"
    assert cfg.engines.dir == "/var/lib/zsad/engines"
    assert build_args(cfg)[:2] == ["--backend", "tensorrt"]


# --------------------------------------------------------------------------------------------------
# The engine cache check that entrypoint.sh runs at every start
# --------------------------------------------------------------------------------------------------


def built(tmp_path: Path, n_cameras: int = 2, **kwargs: object) -> tuple[Path, object]:
    engines = tmp_path / "engines"
    cfg = site_config(n_cameras, engines={"dir": str(engines), "backend": "tensorrt"})
    for component in ("backbone", "dpc_head", "appearance"):
        engine_manifest(cfg, component, directory=engines, write_files=True, **kwargs)  # type: ignore[arg-type]
    return engines, cfg


def test_the_package_carries_the_review_page_and_the_images_run_the_code_with_its_data(
    tmp_path: Path,
) -> None:
    """A wheel of zsad held every module but not the review page's files, so an installed `zsad run`
    failed at the page's start (the container restarting every 15 s). The wheel now carries them, and the
    images install zsad editable, so the code runs in /opt/zsad beside configs/prompts."""
    import zipfile

    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for package in ("core", "engines", "plugins", "synth", "training", "pipeline"):
        shutil.copytree(REPO / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            ".",
        ],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = tmp_path.glob("zsad-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    static = REPO / "pipeline" / "outputs" / "web" / "static"
    assert {f"pipeline/outputs/web/static/{p.name}" for p in static.iterdir()} <= names
    for dockerfile in ("Dockerfile", "Dockerfile.x86"):
        text = (REPO / "deploy" / "jetson" / dockerfile).read_text()
        assert "pip install --no-deps -e ." in text, dockerfile


def test_engines_current_for_this_device(tmp_path: Path) -> None:
    _, cfg = built(tmp_path)
    assert engines_current(cfg, ORIN) is None  # type: ignore[arg-type]


def test_other_tensorrt_or_gpu_needs_a_build(tmp_path: Path) -> None:
    _, cfg = built(tmp_path)
    reason = engines_current(cfg, DeviceIdentity("10.3.0.26", "Orin", "8.7", 16))  # type: ignore[arg-type]
    assert reason is not None
    assert "tensorrt_version" in reason
    reason = engines_current(cfg, DeviceIdentity("10.3.0.30", "NVIDIA RTX A2000", "8.6", 26))  # type: ignore[arg-type]
    assert reason is not None
    assert "gpu_name" in reason


def test_engines_of_another_orin_module_need_a_build(tmp_path: Path) -> None:
    """An engine folder built on an AGX Orin (16 SMs) and copied to an Orin NX (8 SMs): both report "Orin",
    sm 8.7, and only the SM count tells them apart; the NX rebuilds."""
    _, cfg = built(tmp_path)
    orin_nx = DeviceIdentity("10.3.0.30", "Orin", "8.7", 8)
    reason = engines_current(cfg, orin_nx)  # type: ignore[arg-type]
    assert reason is not None
    assert "tensorrt.multiprocessor_count: engine built on a GPU with 16 SMs, this device has 8" in reason


def test_engines_from_before_the_sm_count_was_recorded_need_a_build(tmp_path: Path) -> None:
    """Manifests written before zsad recorded the SM count load, but are not current on any device (they may
    come from another Orin module): the entry point rebuilds them once, saying why."""
    engines, cfg = built(tmp_path)
    assert engines_current(cfg, ORIN) is None  # type: ignore[arg-type]
    for path in engines.glob("*.manifest.json"):
        doc = json.loads(path.read_text())
        del doc["tensorrt"]["multiprocessor_count"]  # as an older zsad wrote it
        path.write_text(json.dumps(doc))
    reason = engines_current(cfg, ORIN)  # type: ignore[arg-type]
    assert reason is not None
    assert "tensorrt.multiprocessor_count: engine built before zsad recorded the GPU's SM count" in reason
    assert "rebuild the engines on this device" in reason


def test_missing_or_changed_engine_needs_a_build(tmp_path: Path) -> None:
    engines, cfg = built(tmp_path)
    engine = next(engines.glob("dpc_head.*.engine"))
    engine.write_bytes(b"truncated")
    reason = engines_current(cfg, ORIN)  # type: ignore[arg-type]
    assert reason is not None
    assert "changed since the build" in reason
    (engines / "dpc_head.manifest.json").unlink()
    reason = engines_current(cfg, ORIN)  # type: ignore[arg-type]
    assert reason is not None
    assert "dpc_head.manifest.json is missing" in reason


def test_engines_built_for_fewer_clips_than_the_scheduler_batches_need_a_build(tmp_path: Path) -> None:
    """Engines whose profile stops below scheduler.max_batch (built with an older config's --max-batch) are
    not current: the entry point rebuilds them with this config's build_args."""
    _, cfg = built(tmp_path / "small", max_batch=4)
    assert cfg.scheduler.max_batch == 8  # type: ignore[attr-defined]
    reason = engines_current(cfg, ORIN)  # type: ignore[arg-type]
    assert reason is not None
    assert "tensorrt.max_batch: engine takes at most 4 clips a batch" in reason
    assert "rebuild with --max-batch 8" in reason
    assert build_args(cfg)[-2:] == ["--max-batch", "8"]  # type: ignore[arg-type]
    _, cfg = built(tmp_path / "exact", max_batch=8)
    assert engines_current(cfg, ORIN) is None  # type: ignore[arg-type]


def test_the_appearance_engine_is_needed_while_the_stream_is_on(tmp_path: Path) -> None:
    engines, cfg = built(tmp_path)
    (engines / "appearance.manifest.json").unlink()
    reason = engines_current(cfg, ORIN)  # type: ignore[arg-type]
    assert reason is not None
    assert "appearance.manifest.json is missing" in reason
    off = cfg.model_copy(update={"appearance": cfg.appearance.model_copy(update={"enabled": False})})  # type: ignore[attr-defined]
    assert engines_current(off, ORIN) is None  # type: ignore[arg-type]


def test_engines_load_engines_would_refuse_are_not_current(tmp_path: Path) -> None:
    """The device's check asks what load_engines asks: engines of another checkpoint than
    engines.checkpoint (retrained) or from two builds (one stopped part way) need a build, or the container
    would skip it and refuse to start at every restart."""
    import json

    from engines.manifest import load_manifest, save_manifest

    engines, cfg = built(tmp_path)
    checkpoint = tmp_path / "retrained.safetensors"
    checkpoint.write_bytes(b"weights")
    (tmp_path / "retrained.safetensors.json").write_text(json.dumps({"sha256": "f" * 64}))
    retrained = cfg.model_copy(  # type: ignore[attr-defined]
        update={"engines": cfg.engines.model_copy(update={"checkpoint": str(checkpoint)})}  # type: ignore[attr-defined]
    )
    reason = engines_current(retrained, ORIN)
    assert reason is not None
    assert "weights_sha256: built from weights 000000000000" in reason
    assert "ffffffffffff" in reason
    dpc = load_manifest(engines / "dpc_head.manifest.json")
    save_manifest(dpc.model_copy(update={"weights_sha256": "e" * 64}), engines)
    reason = engines_current(cfg, ORIN)  # type: ignore[arg-type]
    assert reason is not None
    assert "built from different weights (backbone 000000000000, dpc_head eeeeeeeeeeee" in reason
    assert "run zsad build-engines again" in reason


def test_any_backbone_layout_is_current(tmp_path: Path) -> None:
    """The DeepStream graph feeds the backbone through ClipInference, which takes the manifest's layout."""
    for layout in ("NTCHW", "NCTHW"):
        _, cfg = built(tmp_path / layout, layout=layout)
        assert engines_current(cfg, ORIN) is None  # type: ignore[arg-type]


def test_build_args_cover_the_schedulers_batches(tmp_path: Path) -> None:
    assert build_args(site_config(3)) == [
        "--backend", "tensorrt", "--min-batch", "1", "--opt-batch", "3", "--max-batch", "8",
    ]  # fmt: skip
    # More cameras than the scheduler batches: the profile stops at scheduler.max_batch.
    assert build_args(site_config(20))[-4:] == ["--opt-batch", "8", "--max-batch", "8"]
    big = site_config(20, scheduler={"max_batch": 16})
    assert build_args(big)[-4:] == ["--opt-batch", "16", "--max-batch", "16"]


def test_engine_cache_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "site.yaml"
    config.write_text((DEPLOY / "site.example.yaml").read_text())
    assert main([str(config), "--build-args"]) == 0
    assert capsys.readouterr().out.startswith("--backend tensorrt --min-batch 1")
    # No TensorRT here: the device cannot be identified (exit 2, not a crash, not a build).
    assert main([str(config)]) == 2
    assert "cannot identify this device" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("deepstream: {mux: nope}\n")
    assert main([str(bad)]) == 2


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_copy_every_edge_package(dockerfile: Path) -> None:
    """The images `pip install .` from copied folders: every package the install names, apart from the
    training code the edge never imports, must be copied, or the image builds without it."""
    pyproject = (REPO / "pyproject.toml").read_text()
    include = re.search(r"include = \[(.*?)\]", pyproject)
    assert include is not None
    packages = {name.strip().strip('"').rstrip("*") for name in include.group(1).split(",")}
    copied = set(re.findall(r"^COPY (\w+) \1$", dockerfile.read_text(), flags=re.MULTILINE))
    assert packages - {"training"} <= copied, sorted(packages - {"training"} - copied)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_install_the_default_configs_weights_and_one_cuda_python(dockerfile: Path) -> None:
    """The stock config's appearance stream needs MobileNetV2's weights (requirements/appearance.txt) at the
    first build-engines; and the pinned cuda-python goes in only after the pyds script's unpinned one (and
    its split packages) is removed, or cuda/bindings is a mix of two releases."""
    text = dockerfile.read_text()
    assert re.search(
        r"^RUN python3 -m pip install --no-deps -r requirements/appearance\.txt$", text, re.MULTILINE
    )
    uninstall = text.index("pip uninstall -y cuda-python cuda-bindings cuda-pathfinder")
    assert uninstall < text.index('"cuda-python==${CUDA_PYTHON_VERSION}"')


# --------------------------------------------------------------------------------------------------
# The first-contact script (deploy/jetson/first_contact.sh and .py)
# --------------------------------------------------------------------------------------------------


def first_contact() -> types.ModuleType:
    """deploy/jetson/first_contact.py (a script, not a package module) loaded from its path."""
    spec = importlib.util.spec_from_file_location("first_contact", DEPLOY / "first_contact.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(Path("/opt/nvidia/deepstream/deepstream").exists(), reason="DeepStream is installed here")
def test_first_contact_stops_at_its_first_check_here() -> None:
    result = subprocess.run(
        ["bash", str(DEPLOY / "first_contact.sh")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": sys.executable},
        timeout=120,
        check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    assert lines[0].startswith("FAIL  deepstream: no DeepStream here (no /opt/nvidia/deepstream/deepstream")
    assert "Traceback" not in result.stderr


def test_pyds_names_come_from_the_code(tmp_path: Path) -> None:
    fc = first_contact()
    source = tmp_path / "probe.py"
    source.write_text(
        "def f(pyds, buf, frame):\n"
        "    meta = pyds.gst_buffer_get_nvds_batch_meta(hash(buf))\n"
        "    kind = getattr(pyds.NvDsMetaType, 'NVDSINFER_TENSOR_OUTPUT_META', None)\n"
        "    frames = pyds.NvDsFrameMeta.cast(meta)\n"
        "    optional = getattr(pyds, 'alloc_custom_struct', None)\n"  # tolerated when missing
        "    required = getattr(pyds, 'unmap_nvds_buf_surface')\n"
        "    name = getattr(pyds, frame)\n"  # not a constant: cannot be checked ahead of time
        "class App:\n"
        "    def g(self, x):\n"
        "        return self.pyds.get_nvds_buf_surface(x, 0), self._pyds.NvDsUserMeta.cast(x), x.pyds_like\n"
    )
    assert fc.pyds_names([source]) == [
        "NvDsFrameMeta.cast",
        "NvDsMetaType",
        "NvDsUserMeta.cast",
        "get_nvds_buf_surface",
        "gst_buffer_get_nvds_batch_meta",
        "unmap_nvds_buf_surface",
    ]
    stand_in = types.SimpleNamespace(
        NvDsFrameMeta=types.SimpleNamespace(cast=None), gst_buffer_get_nvds_batch_meta=None
    )
    assert fc.missing_names(
        stand_in, ["NvDsFrameMeta.cast", "NvDsMetaType.X", "gst_buffer_get_nvds_batch_meta"]
    ) == ["NvDsMetaType.X"]
    # The DeepStream wing as it is: the list is read from it, not kept by hand.
    wing = fc.pyds_names(sorted((REPO / "pipeline" / "deepstream").glob("*.py")))
    assert "gst_buffer_get_nvds_batch_meta" in wing
    assert all(not name.startswith(("pyds", "_")) for name in wing), wing


def test_elements_and_properties_come_from_the_graph_plan(tmp_path: Path) -> None:
    """The element check plans the first-contact config with the graph's own planner and asks the real
    gst-inspect-1.0: here every DeepStream element is missing and every stock one has its properties."""
    if shutil.which("gst-inspect-1.0") is None:
        pytest.skip("gst-inspect-1.0 is not installed")
    fc = first_contact()
    config = fc.write_config(tmp_path / "fc")
    cfg = load_config(config)
    assert cfg.graph == "deepstream"
    assert cfg.engines.backend == "tensorrt"
    assert len(cfg.enabled_cameras()) == 4
    wanted = fc.planned_properties(fc.graph_plan(cfg, jetson=False))
    assert "batch-size" in wanted["nvstreammux"]
    assert "uri" in wanted["nvurisrcbin"]
    queue = subprocess.run(["gst-inspect-1.0", "queue"], capture_output=True, text=True, check=True).stdout
    assert {"max-size-buffers", "leaky"} <= fc.inspected_properties(queue)
    with pytest.raises(fc.CheckFailed) as failed:
        fc.check_elements(config)
    problems = str(failed.value).split("; ")
    assert "no element nvstreammux" in problems
    assert not [p for p in problems if "lacks" in p], problems  # fakesink, capsfilter, queue: all found
