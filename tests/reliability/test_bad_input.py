"""Bad input is refused clearly: fuzzed config files (never a traceback, always a ConfigError naming file,
line and field, or a valid config), fuzzed alert records (valid or invalid, never a crash), damaged ONNX
engines given to ``zsad run`` (exit 2 naming the file)."""

from __future__ import annotations

import copy
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.config import ConfigError, ZsadConfig, load_config, parse_config
from pipeline.outputs.alert_schema import AlertSchemaError, alert_problems, example_record, validate_alert
from tests.conftest import REPO
from tests.fixtures.run_world import site_config, write_site

DEFAULT_YAML = (REPO / "configs" / "default.yaml").read_text(encoding="utf-8")
DEFAULT = yaml.safe_load(DEFAULT_YAML)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
_values = st.recursive(
    _scalars,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=12,
)


def _parse(text: str, path: str = "site.yaml") -> ZsadConfig | ConfigError:
    """Parse; return the config or the ConfigError. Any other exception fails the test (a traceback)."""
    try:
        return parse_config(text, path)
    except ConfigError as exc:
        error = exc
    assert error.problems, "a ConfigError without problems"
    assert str(error).startswith(path)
    return error


# ------------------------------------------------------------------------------------ config fuzzing


@FUZZ
@given(text=st.text(max_size=300))
def test_any_text_is_a_config_or_a_config_error(text: str) -> None:
    _parse(text)


@FUZZ
@given(text=st.text(alphabet=":-[]{}!&*?|>'\"#%@`, \n\tabc0129.~", max_size=200))
def test_yaml_punctuation_soup_is_a_config_or_a_config_error(text: str) -> None:
    _parse(text)


@FUZZ
@given(doc=st.dictionaries(st.sampled_from([*DEFAULT, "extra", "cameras"]), _values, max_size=6))
def test_random_documents_are_refused_with_file_line_and_field(doc: dict[str, Any]) -> None:
    result = _parse(yaml.safe_dump(doc, allow_unicode=True))
    if isinstance(result, ConfigError):
        for line, field, message in result.problems:
            assert line is not None, (field, message)
            assert message


def _paths(node: Any, prefix: str = "") -> list[str]:
    """Every dotted field path of a YAML value, formatted as ConfigError formats them (``a.b[0].c``)."""
    out = []
    if isinstance(node, dict):
        for key, value in node.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            out += [path, *_paths(value, path)]
    elif isinstance(node, list):
        for i, value in enumerate(node):
            path = f"{prefix}[{i}]"
            out += [path, *_paths(value, path)]
    return out


_TOKEN = re.compile(r"\.?([^.\[\]]+)|\[(\d+)\]")


def _split(path: str) -> list[str | int]:
    return [int(i) if i else k for k, i in _TOKEN.findall(path)]


def _parent(path: str) -> str:
    cut = max(path.rfind("."), path.rfind("["))
    return path[:cut] if cut > 0 else ""


@FUZZ
@given(
    target=st.sampled_from(_paths(DEFAULT)),
    action=st.sampled_from(["replace", "delete", "add-key"]),
    value=_values,
)
def test_mutations_of_the_default_config_name_the_field(target: str, action: str, value: Any) -> None:
    doc = copy.deepcopy(DEFAULT)
    *head, last = _split(target)
    parent = doc
    for key in head:
        parent = parent[key]
    if action == "replace":
        parent[last] = value
    elif action == "delete":
        del parent[last]
    elif isinstance(parent[last], dict):
        parent[last]["no_such_field"] = value
    else:
        parent[last] = {"no_such_field": value}
    result = _parse(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    if isinstance(result, ZsadConfig):
        return
    fields = [field for _, field, _ in result.problems]
    for line, field, message in result.problems:
        assert line is not None, (field, message)
    # At least one problem points at the mutated field, one of its ancestors, or a sibling (a model-level
    # check such as on_threshold >= off_threshold, or a discriminated sink whose kind changed).
    near = _parent(target)
    assert any(target.startswith(f) or f.startswith(near) for f in fields), (target, result.problems)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[" * 5000 + "]" * 5000, "nested too deeply"),
        ("!!python/object/apply:os.system ['true']", "could not determine a constructor"),
        ("version: 1\x00", "unacceptable character"),
        ("? [a, b]\n: 1\n", "unhashable key"),
        ("- 1", "top level must be a mapping"),
    ],
)
def test_hostile_yaml_is_a_config_error(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        parse_config(text, "site.yaml")


def test_unreadable_files_are_config_errors(tmp_path: Path) -> None:
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00\x01 not text")
    with pytest.raises(ConfigError, match=r"binary\.yaml: not UTF-8 text"):
        load_config(binary)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path)  # a folder
    # And through the CLI: exit 2 with the message, no traceback.
    r = subprocess.run(
        [sys.executable, "-m", "pipeline.cli.main", "validate", str(binary)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert r.returncode == 2
    assert "not UTF-8 text" in r.stdout + r.stderr
    assert "Traceback" not in r.stderr


# ------------------------------------------------------------------------------------ alert records


_record_keys = st.sampled_from([*sorted(example_record()), "surprise", ""])


@settings(max_examples=300, deadline=None)
@given(
    drop=st.sets(_record_keys, max_size=4),
    changes=st.dictionaries(_record_keys, _values, max_size=4),
)
def test_alert_validator_never_crashes_on_random_records(drop: set[str], changes: dict[str, Any]) -> None:
    record = {k: v for k, v in example_record().items() if k not in drop}
    record.update(changes)
    problems = alert_problems(record)
    assert isinstance(problems, list)
    assert all(isinstance(p, str) and p for p in problems)
    if problems:
        with pytest.raises(AlertSchemaError):
            validate_alert(record)
    else:
        validate_alert(record)
        json.dumps(record, allow_nan=False)  # a valid record is always publishable


@settings(max_examples=100, deadline=None)
@given(value=_values)
def test_alert_validator_refuses_non_records(value: Any) -> None:
    problems = alert_problems(value)
    assert problems, f"{value!r} passed as an alert record"
    with pytest.raises(AlertSchemaError):
        validate_alert(value)


def test_non_finite_scores_are_invalid() -> None:
    for bad in (math.nan, math.inf, -math.inf):
        record = example_record()
        record["peak_score"] = bad
        assert alert_problems(record)


# ------------------------------------------------------------------------------------ damaged engines


def _zsad(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli.main", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=False,
    )


def _zsad_run(site: Path) -> subprocess.CompletedProcess[str]:
    return _zsad("run", str(site), "--duration", "1")


def test_truncated_onnx_engines_refuse_to_start(world: dict[str, Path], tmp_path: Path) -> None:
    from engines.manifest import file_sha256

    engines = tmp_path / "engines"
    shutil.copytree(world["engines"], engines)
    manifest_path = engines / "backbone.manifest.json"
    manifest = json.loads(manifest_path.read_text())
    onnx = engines / manifest["onnx"]["path"]
    onnx.write_bytes(onnx.read_bytes()[: onnx.stat().st_size // 2])
    site = write_site({**world, "engines": engines}, tmp_path / "out", [{"id": "a", "uri": "file:///x.mp4"}])

    # 1. The manifest's hash no longer matches: refused before ONNX Runtime even opens it.
    r = _zsad_run(site)
    assert r.returncode == 2, r.stdout + r.stderr[-2000:]
    assert "refusing to start" in r.stderr
    assert onnx.name in r.stderr
    assert "Traceback" not in r.stderr

    # 2. A manifest that matches the damaged file (rebuilt from it): ONNX Runtime's refusal, file named.
    manifest["onnx"]["sha256"] = file_sha256(onnx)
    manifest_path.write_text(json.dumps(manifest))
    r = _zsad_run(site)
    assert r.returncode == 2, r.stdout + r.stderr[-2000:]
    assert f"onnxruntime cannot load {onnx}" in r.stderr
    assert "Traceback" not in r.stderr


def test_calibrating_on_unreadable_footage_names_the_footage(world: dict[str, Path], tmp_path: Path) -> None:
    site = write_site(world, tmp_path / "out", [{"id": "a", "uri": "file:///x.mp4"}])
    footage = f"file://{world['corrupt']}"
    r = _zsad(
        "calibrate", str(site), "--camera", "a", "--footage", footage, "--out", str(tmp_path / "a.json")
    )
    assert r.returncode == 1, r.stdout + r.stderr[-2000:]
    assert f"calibration failed: camera a: footage could not be read: {footage}\n" in r.stderr
    # The twin with pasted events is ours, not the user's: neither the output nor the message names it (the
    # log on stderr may).
    message = [line for line in r.stderr.splitlines() if line.startswith("calibration failed:")]
    assert message
    assert not any(".pseudo" in line for line in [*message, *r.stdout.splitlines()])
    assert not (tmp_path / "a.json").exists()


def test_validate_warns_about_engines_the_run_would_refuse(world: dict[str, Path], tmp_path: Path) -> None:
    """`zsad validate` says before a run what `zsad run` would refuse: damaged engines, engines of another
    model, and a folder without engines that a first run cannot build. Warnings, not errors (the engines
    may be built elsewhere and copied in), and none for engines the run opens."""
    from pipeline.cli.validate import config_warnings
    from pipeline.inference import load_engines

    engines = tmp_path / "engines"
    shutil.copytree(world["engines"], engines)

    def warned(**extra: Any) -> list[str]:
        site = site_config({**world, "engines": engines}, tmp_path / "out", [], **extra)
        cfg = ZsadConfig.model_validate(site)
        return [w for w in config_warnings(cfg) if w.startswith("engines:")]

    assert warned() == []
    load_engines(
        ZsadConfig.model_validate(site_config({**world, "engines": engines}, tmp_path / "o", []))
    ).close()
    other = site_config(world, tmp_path / "out", [])["model"]
    other = {**other, "dpc": {**other["dpc"], "hidden_size": other["dpc"]["hidden_size"] * 2}}
    (problem,) = warned(model=other)
    assert problem.startswith("engines: a run would refuse to start: ")
    assert "dpc.hidden_size" in problem
    manifest = json.loads((engines / "backbone.manifest.json").read_text())
    onnx = engines / manifest["onnx"]["path"]
    onnx.write_bytes(onnx.read_bytes()[:-10])
    (problem,) = warned()
    assert f"file {onnx} changed since the build" in problem
    empty = tmp_path / "none"
    (problem,) = warned(engines={"dir": str(empty)})
    assert "set engines.checkpoint in the config so that the first run builds the engines" in problem
    (problem,) = warned(engines={"dir": str(empty), "checkpoint": str(tmp_path / "gone.safetensors")})
    assert "gone.safetensors does not exist: the first run cannot build the engines from it" in problem
    assert warned(engines={"dir": str(empty), "checkpoint": str(world["checkpoint"])}) == []


def test_a_stream_gate_that_does_not_fit_refuses_to_start_and_says_why(
    world: dict[str, Path], tmp_path: Path
) -> None:
    """The gate is checked as the engines are: a gate of another model (its context width), a changed or
    missing file, or a file without its manifest each refuse to start naming it, instead of failing every
    clip or falling back to equal weights without a word."""
    import numpy as np

    from engines.manifest import file_sha256
    from pipeline.inference import EngineError, load_engines
    from plugins.fusion import STREAMS, StreamGate

    engines = tmp_path / "engines"
    shutil.copytree(world["engines"], engines)
    cfg = load_config(write_site({**world, "engines": engines}, tmp_path / "out", []))
    gate, manifest_path = engines / "stream_gate.npz", engines / "stream_gate.manifest.json"
    assert load_engines(cfg).gate_path == gate  # as built: used
    manifest = json.loads(manifest_path.read_text())

    rows = len(STREAMS)
    StreamGate(np.zeros((rows, 50), np.float32), np.zeros(rows, np.float32), STREAMS).save(gate)
    with pytest.raises(EngineError, match=r"stream_gate\.npz"):  # the manifest's hash no longer matches
        load_engines(cfg)
    manifest["files"][0]["sha256"] = file_sha256(gate)
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(EngineError, match=r"takes a context of 50 values, the backbone's embedding has \d+"):
        load_engines(cfg)
    gate.write_bytes(b"not a gate")
    manifest["files"][0]["sha256"] = file_sha256(gate)
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(EngineError, match="cannot read gate"):
        load_engines(cfg)
    gate.unlink()
    with pytest.raises(EngineError, match=r"stream_gate\.npz"):
        load_engines(cfg)
    manifest_path.unlink()
    assert load_engines(cfg).gate_path is None  # neither: equal weights (said in the log)
    gate.write_bytes(b"x")
    with pytest.raises(EngineError, match="has no manifest"):
        load_engines(cfg)


def test_engines_of_other_weights_than_the_configs_checkpoint_refuse_to_start(
    world: dict[str, Path], tmp_path: Path
) -> None:
    """A retrained checkpoint of the same model: the old engines are refused, naming both weights, instead of
    running without a word. A checkpoint that is not here (engines copied to a device) is not compared."""
    from pipeline.inference import EngineError, load_engines

    site = write_site(world, tmp_path / "out", [])
    cfg = load_config(site)
    cfg.engines.checkpoint = str(world["checkpoint"])
    load_engines(cfg)  # the checkpoint the engines were built from: fine
    retrained = tmp_path / "retrained.safetensors"
    retrained.write_bytes(b"weights")
    (tmp_path / "retrained.safetensors.json").write_text(json.dumps({"sha256": "ab" * 32}))
    cfg.engines.checkpoint = str(retrained)
    with pytest.raises(EngineError, match=r"weights_sha256: built from weights \w{12} .*has abababababab"):
        load_engines(cfg)
    cfg.engines.checkpoint = str(tmp_path / "not-on-this-machine.safetensors")
    load_engines(cfg)
