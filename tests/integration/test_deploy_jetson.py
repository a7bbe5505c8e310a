"""deploy/jetson: shell scripts pass shellcheck, Dockerfiles pass hadolint (each skipped if the tool is
missing), versions are pinned in versions.env only, compose/systemd files say what the docs promise, the
example site config validates, and the engine cache check decides build vs skip per TensorRT and GPU."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
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
ORIN = DeviceIdentity("10.3.0.30", "Orin", "8.7")


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
    assert set(device["capabilities"]) == {"gpu", "video"}
    for service in (jetson, x86):
        assert "engines:/var/lib/zsad/engines" in service["volumes"]
        assert service["network_mode"] == "host"
        dockerfile_args = set(
            re.findall(r"^ARG (\w+)", (REPO / service["build"]["dockerfile"]).read_text(), re.M)
        )
        assert dockerfile_args <= set(service["build"]["args"]) <= set(versions())


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
    for component in ("backbone", "dpc_head"):
        engine_manifest(cfg, component, directory=engines, write_files=True, **kwargs)  # type: ignore[arg-type]
    return engines, cfg


def test_engines_current_for_this_device(tmp_path: Path) -> None:
    _, cfg = built(tmp_path)
    assert engines_current(cfg, ORIN) is None  # type: ignore[arg-type]


def test_other_tensorrt_or_gpu_needs_a_build(tmp_path: Path) -> None:
    _, cfg = built(tmp_path)
    reason = engines_current(cfg, DeviceIdentity("10.3.0.26", "Orin", "8.7"))  # type: ignore[arg-type]
    assert reason is not None
    assert "tensorrt_version" in reason
    reason = engines_current(cfg, DeviceIdentity("10.3.0.30", "NVIDIA RTX A2000", "8.6"))  # type: ignore[arg-type]
    assert reason is not None
    assert "gpu_name" in reason


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
