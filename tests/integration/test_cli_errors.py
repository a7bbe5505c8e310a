"""No traceback a person can reach: every ``zsad`` command, run as a real process, with bad arguments,
missing files, a config with a bad field, busy ports and unreadable calibrations ends in a clear message
and exit code 2. (``zsad validate`` only warns about an unreadable calibration, and ``zsad run`` starts
such a camera uncalibrated: tests/integration/test_run.py runs that.)

The commands come from the argparse parser of ``pipeline/cli/main.py``: every command gets the generic
cases (an unknown option, missing required arguments, a non-number where a number goes, a missing, an
invalid and an unreadable config file), so a new command is walked without touching this file. The table
below adds what each command meets beyond them; a command without an entry there fails
``test_every_command_has_its_own_cases``, as a reminder.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from pipeline.cli.main import build_parser
from tests.conftest import REPO
from tests.fixtures.run_world import site_config

BAD_FIELD_CONFIG = "version: 1\nengines:\n  threads: -1\n"  # line 3: engines.threads must be >= 0
DEMO_CHECKPOINT = REPO / "models" / "demo" / "model.safetensors"


def zsad(*args: str, cwd: Path = REPO, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``zsad ARGS`` as a real process (the checkout's code, not an installed copy)."""
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli.main", *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
        timeout=timeout,
    )


def assert_clear(r: subprocess.CompletedProcess[str], code: int, *says: str) -> str:
    """Exit ``code``, no traceback, and every fragment of ``says`` in the output; returns the output."""
    out = r.stdout + r.stderr
    assert "Traceback" not in out, out[-3000:]
    assert r.returncode == code, f"exit {r.returncode}, expected {code}:\n{out[-3000:]}"
    for fragment in says:
        assert fragment in out, f"{fragment!r} not in:\n{out[-3000:]}"
    return out


# ----------------------------------------------------------------------------- the commands, from argparse


def commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


COMMANDS = commands()


def _placeholder(action: argparse.Action, tmp: Path) -> list[str]:
    """Arguments that satisfy ``action`` and name nothing that exists (the config is read first)."""
    value = str(tmp / f"missing-{action.dest}")
    return [value] if not action.option_strings else [action.option_strings[0], value]


def _required(parser: argparse.ArgumentParser, tmp: Path, **given: list[str]) -> list[str]:
    """Every required argument of ``parser``: ``given[dest]`` where given, else a placeholder."""
    argv: list[str] = []
    for action in parser._actions:
        if not action.required and action.option_strings:
            continue
        if isinstance(action, argparse._HelpAction):
            continue
        if action.dest in given:
            value = given[action.dest]
            argv += value if not action.option_strings else [action.option_strings[0], *value]
        else:
            argv += _placeholder(action, tmp)
    return argv


def _numeric_options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and a.type not in (None, str) and a.nargs is None]


def _config_action(parser: argparse.ArgumentParser) -> argparse.Action | None:
    return next((a for a in parser._actions if a.dest == "config"), None)


def test_the_parser_lists_the_commands() -> None:
    """The walk below takes its commands from the parser: it must find them there."""
    assert {"validate", "synth", "train", "eval", "run", "demo", "calibrate", "build-engines"} <= set(
        COMMANDS
    )


def test_no_command_is_a_usage_error() -> None:
    assert_clear(zsad(), 2, "required: COMMAND")
    assert_clear(zsad("no-such-command"), 2, "invalid choice")


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_and_unknown_options(command: str, tmp_path: Path) -> None:
    assert_clear(zsad(command, "--help"), 0, "usage: zsad")
    argv = _required(COMMANDS[command], tmp_path)
    assert_clear(zsad(command, *argv, "--no-such-option"), 2, "unrecognized arguments: --no-such-option")


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_missing_required_arguments(command: str) -> None:
    parser = COMMANDS[command]
    required = [a for a in parser._actions if a.required or not a.option_strings]
    required = [a for a in required if not isinstance(a, argparse._HelpAction)]
    if not required:
        pytest.skip(f"zsad {command} has no required argument (running it bare does its real work)")
    assert_clear(zsad(command), 2, "the following arguments are required")


@pytest.mark.parametrize(
    ("command", "option"),
    [(c, a.option_strings[-1]) for c, p in sorted(COMMANDS.items()) for a in _numeric_options(p)],
)
def test_non_numbers_where_numbers_go(command: str, option: str, tmp_path: Path) -> None:
    argv = _required(COMMANDS[command], tmp_path)
    assert_clear(zsad(command, *argv, option, "many"), 2, option)


@pytest.mark.parametrize("command", sorted(c for c, p in COMMANDS.items() if _config_action(p)))
def test_missing_and_invalid_config_files(command: str, tmp_path: Path) -> None:
    parser = COMMANDS[command]
    missing = tmp_path / "nope.yaml"
    argv = _required(parser, tmp_path, config=[str(missing)])
    if _config_action(parser) not in [a for a in parser._actions if a.required or not a.option_strings]:
        argv += ["--config", str(missing)]  # an optional --config (zsad demo)
    assert_clear(zsad(command, *argv), 2, f"{missing}: cannot read")

    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD_FIELD_CONFIG)
    argv = [str(bad) if a == str(missing) else a for a in argv]
    assert_clear(zsad(command, *argv), 2, f"{bad}:3: engines.threads")

    folder = tmp_path / "a-folder.yaml"
    folder.mkdir()
    argv = [str(folder) if a == str(bad) else a for a in argv]
    assert_clear(zsad(command, *argv), 2, f"{folder}: cannot read")


# ----------------------------------------------------------------------------- what each command meets


@dataclass
class Ctx:
    """What the cases build their arguments from."""

    tmp: Path
    busy_port: int

    def site(self, name: str, cameras: list[dict[str, object]] | None = None, **extra: object) -> Path:
        """A site config (the run tests' tiny model) written to ``<tmp>/<name>.yaml``."""
        world = {"engines": self.tmp / "no-engines"}
        cfg = site_config(world, self.tmp / f"out-{name}", cameras or [{"id": "a", "uri": "file:///x.mp4"}])
        cfg.update(extra)
        path = self.tmp / f"{name}.yaml"
        path.write_text(json.dumps(cfg))
        return path

    def afile(self) -> Path:
        path = self.tmp / "a-file"
        path.write_text("not a folder\n")
        return path


@dataclass(frozen=True)
class Case:
    """``zsad COMMAND ARGV`` exits ``code`` without a traceback and its output holds each of ``says``."""

    command: str
    name: str
    argv: Callable[[Ctx], list[str]]
    says: tuple[str, ...] = ()
    code: int = 2
    marks: tuple[pytest.MarkDecorator, ...] = ()


def _synthetic_with(tmp: Path, **changes: object) -> Path:
    """configs/train/synthetic.yaml with its dataset root (default: a missing folder) and model fields
    (``section__field=value``) changed."""
    cfg = yaml.safe_load((REPO / "configs" / "train" / "synthetic.yaml").read_text())
    cfg["train"]["dataset"]["root"] = str(changes.pop("root", tmp / "no-dataset"))
    for dotted, value in changes.items():
        section, name = dotted.split("__")
        cfg["model"][section][name] = value
    path = tmp / "train.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


DEFAULT = str(REPO / "configs" / "default.yaml")


def _mqtt_tls(ca_file: Path) -> dict[str, object]:
    """An MQTT sink over TLS verified against ``ca_file``."""
    return {"kind": "mqtt", "host": "127.0.0.1", "tls": True, "ca_file": str(ca_file)}


CASES = [
    # validate: what the schema cannot see is a warning, not an error (the run starts such a camera).
    Case(
        "validate",
        "unreadable-calibration-warns",
        lambda c: [
            str(
                c.site(
                    "cal",
                    [
                        {"id": "a", "uri": "file:///x.mp4", "calibration": str(c.tmp)},
                        {"id": "b", "uri": "file:///x.mp4", "calibration": str(c.tmp / "none.json")},
                    ],
                )
            )
        ],
        (
            # a folder: the command to write it names a file in it (zsad calibrate refuses a folder)
            "warning: camera a: calibration ",
            "is a folder, not a calibration file",
            "a.json and set the camera's calibration to ",
            "warning: camera b: calibration file",
            "none.json",
            "OK",
        ),
        code=0,
    ),
    Case(
        "validate",
        "missing-mqtt-ca-file-warns",  # it may be put in place before the run, as the engines may
        lambda c: [str(c.site("ca", sinks=[_mqtt_tls(c.tmp / "no-ca.pem")]))],
        ("warning: sinks[0].ca_file ", "no-ca.pem is not a file", "(a run would refuse to start)", "OK"),
        code=0,
    ),
    # synth
    Case("synth", "too-few-frames", lambda c: ["--out", str(c.tmp / "s"), "--frames", "3"], ("frames",)),
    Case("synth", "out-is-a-file", lambda c: ["--out", str(c.afile())], ("is a file",)),
    Case("synth", "no-contexts", lambda c: ["--out", str(c.tmp / "s"), "--contexts", ","], ("context",)),
    # train
    Case("train", "no-train-section", lambda c: [DEFAULT], ("no 'train' section",)),
    Case("train", "no-dataset", lambda c: [str(_synthetic_with(c.tmp))], ("train.dataset", "does not exist")),
    # a relative root: the folder named is the fallback under $ZSAD_DATA_ROOT, so where it was looked is said
    Case(
        "train",
        "no-dataset-relative",
        lambda c: [str(_synthetic_with(c.tmp, root="no-such-set"))],
        (
            "does not exist",
            "no-such-set is looked for in the working directory",
            "then under $ZSAD_DATA_ROOT (",
        ),
    ),
    Case(
        "train",
        "zero-minutes",
        lambda c: [str(_synthetic_with(c.tmp)), "--max-minutes", "0"],
        ("--max-minutes must be > 0",),
    ),
    Case(
        "train",
        "output-dir-is-a-file",
        lambda c: [str(_synthetic_with(c.tmp)), "--output-dir", str(c.afile())],
        ("is a file",),
    ),
    # eval
    Case(
        "eval",
        "no-train-section",
        lambda c: [DEFAULT, "--checkpoint", str(DEMO_CHECKPOINT), "--out", str(c.tmp / "e")],
        ("no 'train' section",),
    ),
    Case(
        "eval",
        "missing-checkpoint",
        lambda c: [str(_synthetic_with(c.tmp)), "--checkpoint", str(c.tmp / "no.st"), "--out", str(c.tmp)],
        ("does not exist",),
    ),
    Case(
        "eval",
        "out-is-a-file",
        lambda c: [
            str(_synthetic_with(c.tmp)),
            "--checkpoint",
            str(DEMO_CHECKPOINT),
            "--out",
            str(c.afile()),
        ],
        ("is a file",),
    ),
    Case(
        "eval",
        "model-section-differs",
        lambda c: [
            str(_synthetic_with(c.tmp, backbone__hidden_size=64)),
            "--checkpoint",
            str(DEMO_CHECKPOINT),
            "--out",
            str(c.tmp / "e"),
        ],
        ("model.backbone.hidden_size: checkpoint 96, config 64",),
    ),
    Case(
        "eval",
        "no-dataset",
        lambda c: [
            str(_synthetic_with(c.tmp)),
            "--checkpoint",
            str(DEMO_CHECKPOINT),
            "--out",
            str(c.tmp / "e"),
        ],
        ("train.dataset", "does not exist"),
        marks=(pytest.mark.slow,),  # loads the checkpoint first: torch, ~10 s
    ),
    Case(
        "eval",
        "negative-smoothing",  # refused by argparse, before minutes of scoring
        lambda c: [
            DEFAULT,
            "--checkpoint",
            str(DEMO_CHECKPOINT),
            "--out",
            str(c.tmp / "e"),
            "--smooth-sigma=-3",
        ],
        ("--smooth-sigma: must be a number of frames from 0 to 1000, got -3",),
    ),
    Case(
        "eval",
        "checkpoint-is-a-folder",
        lambda c: [str(_synthetic_with(c.tmp)), "--checkpoint", str(c.tmp), "--out", str(c.tmp / "e")],
        ("is a folder: name its .safetensors file",),
    ),
    # run
    Case("run", "deepstream-without-engines", lambda c: [str(c.site("ds")), "--graph", "deepstream"]),
    Case("run", "negative-duration", lambda c: [str(c.site("d")), "--duration", "-1"], ("--duration",)),
    Case(
        "run",
        "no-engines-no-checkpoint",
        lambda c: [str(c.site("noeng"))],
        ("backbone.manifest.json is missing", "engines.checkpoint"),
    ),
    Case(
        "run",
        "checkpoint-missing",
        lambda c: [
            str(c.site("nock", engines={"dir": str(c.tmp / "e"), "checkpoint": str(c.tmp / "no.st")}))
        ],
        ("no.st does not exist",),
    ),
    Case(
        "run",
        "tensorrt-never-built-here",
        lambda c: [
            str(
                c.site(
                    "trt",
                    engines={
                        "dir": str(c.tmp / "e"),
                        "backend": "tensorrt",
                        "checkpoint": str(DEMO_CHECKPOINT),
                    },
                )
            )
        ],
        ("never built by zsad run", "--backend tensorrt"),
    ),
    Case(
        "run",
        "output-dir-is-a-file",
        lambda c: [str(c.site("outfile", output_dir=str(c.afile())))],
        ("output_dir", "a-file"),
    ),
    Case(
        "run",
        "two-sinks-one-file",
        lambda c: [
            str(
                c.site(
                    "sinks",
                    sinks=[{"kind": "jsonl", "path": "x.jsonl"}, {"kind": "jsonl", "path": "x.jsonl"}],
                )
            )
        ],
        ("sinks: two sinks deliver to the same destination",),
    ),
    Case(
        "run",
        "mqtt-ca-file-missing",  # before the engines (none here), as the sink's problem, not output_dir's
        lambda c: [str(c.site("ca", sinks=[_mqtt_tls(c.tmp / "no-ca.pem")]))],
        ("refusing to start: sinks[0].ca_file ", "no-ca.pem is not a file"),
    ),
    # demo: a busy port is found before minutes of scenes, engines and calibration.
    Case("demo", "zero-duration", lambda c: ["--duration", "0"], ("--duration",)),
    Case(
        "demo",
        "a-context-it-cannot-draw",
        lambda c: [
            "--config",
            str(
                c.site(
                    "lobby",
                    [{"id": "a", "uri": "file:///x.mp4", "context": "lobby"}],
                    engines={"checkpoint": str(DEMO_CHECKPOINT)},
                )
            ),
        ],
        ("cameras[0].context: the demo generates scenes of campus, parking, station only, not 'lobby'",),
    ),
    Case(
        "demo",
        "no-cameras",
        lambda c: [
            "--config",
            str(
                c.site(
                    "nocams",
                    [{"id": "a", "uri": "file:///x.mp4", "enabled": False}],
                    engines={"checkpoint": str(DEMO_CHECKPOINT)},
                )
            ),
        ],
        ("the demo needs at least one enabled camera",),
    ),
    # calibrate
    Case(
        "calibrate",
        "unknown-camera",
        lambda c: [DEFAULT, "--camera", "nope", "--footage", "file:///x.mp4", "--out", str(c.tmp / "c.json")],
        ("no camera with id 'nope'",),
    ),
    Case(
        "calibrate",
        "missing-footage",
        lambda c: [
            DEFAULT,
            "--camera",
            "campus-1",
            "--footage",
            f"file://{c.tmp}/none.mp4",
            "--out",
            str(c.tmp / "c.json"),
        ],
        ("no such file", "none.mp4"),
    ),
    Case(
        "calibrate",
        "footage-not-a-uri",
        lambda c: [
            DEFAULT,
            "--camera",
            "campus-1",
            "--footage",
            "videos/a.mp4",
            "--out",
            str(c.tmp / "c.json"),
        ],
        ("is not a URI",),
    ),
    Case(
        "calibrate",
        "footage-of-no-scheme-zsad-reads",
        lambda c: [DEFAULT, "--camera", "campus-1", "--footage", "bogus://x", "--out", str(c.tmp / "c.json")],
        ("footage: unsupported URI scheme 'bogus'",),
    ),
    Case(
        "calibrate",
        "out-is-a-folder",
        lambda c: [DEFAULT, "--camera", "campus-1", "--footage", "rtsp://h/s", "--out", str(c.tmp)],
        ("is a folder",),
    ),
    Case(
        "calibrate",
        "no-engines-no-checkpoint",
        lambda c: [
            str(c.site("caleng")),
            "--camera",
            "a",
            "--footage",
            "rtsp://h/s",
            "--out",
            str(c.tmp / "c.json"),
        ],
        ("backbone.manifest.json is missing",),
    ),
    # build-engines
    Case(
        "build-engines",
        "missing-checkpoint",
        lambda c: ["--config", DEFAULT, "--checkpoint", str(c.tmp / "no.st"), "--out", str(c.tmp / "e")],
        ("does not exist",),
    ),
    Case(
        "build-engines",
        "out-is-a-file",
        lambda c: ["--config", DEFAULT, "--checkpoint", str(DEMO_CHECKPOINT), "--out", str(c.afile())],
        ("is a file",),
    ),
    Case(
        "build-engines",
        "bad-batch-profile",
        lambda c: ["--config", DEFAULT, "--min-batch", "9", "--opt-batch", "1", "--out", str(c.tmp / "e")],
        ("min <= opt <= max",),
    ),
]


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port another process holds (bound and listening on 127.0.0.1)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.fixture
def ctx(tmp_path: Path, busy_port: int) -> Ctx:
    return Ctx(tmp_path, busy_port)


def test_every_command_has_its_own_cases() -> None:
    """The generic walk covers any new command; this table should grow with it."""
    assert {case.command for case in CASES} >= set(COMMANDS)


@pytest.mark.parametrize("case", [pytest.param(c, id=f"{c.command}:{c.name}", marks=c.marks) for c in CASES])
def test_command_cases(case: Case, ctx: Ctx) -> None:
    assert_clear(zsad(case.command, *case.argv(ctx)), case.code, *case.says)


@pytest.mark.parametrize(("command", "section"), [("run", "ui"), ("run", "metrics"), ("demo", "ui")])
def test_busy_ports_are_named_with_what_to_change(command: str, section: str, ctx: Ctx) -> None:
    site = ctx.site(f"busy-{section}", **{section: {"port": ctx.busy_port}})
    argv = [str(site)] if command == "run" else ["--config", str(site)]
    assert_clear(
        zsad(command, *argv),
        2,
        f"{section}.port {ctx.busy_port} on 127.0.0.1 cannot be used: Address already in use",
        f"set {section}.port in the config to a free port",
    )


#: One refusal of each command whose errors were printed on stdout (validate, synth and build-engines always
#: used stderr), and what its message says beyond its case's fragments.
REFUSALS_ON_STDERR = {
    "run": ("no-engines-no-checkpoint", "refusing to start: "),
    "train": ("no-train-section", "default.yaml: the config has no 'train' section"),
    "eval": ("out-is-a-file", "--out "),
    "calibrate": ("footage-not-a-uri", "footage 'videos/a.mp4' is not a URI"),
    "demo": ("no-cameras", "refusing to start: "),
}


@pytest.mark.parametrize("command", sorted(REFUSALS_ON_STDERR))
def test_refusals_are_printed_on_stderr(command: str, ctx: Ctx) -> None:
    """An error goes to stderr, as the other commands' do: stdout holds only what a command produces (a
    script reading "calibration: PATH" or "checkpoint: PATH" from it gets no error text instead)."""
    name, opening = REFUSALS_ON_STDERR[command]
    case = next(c for c in CASES if (c.command, c.name) == (command, name))
    r = zsad(command, *case.argv(ctx))
    assert_clear(r, case.code)
    for fragment in (opening, *case.says):
        assert fragment in r.stderr, f"{fragment!r} not on stderr:\n{r.stderr[-3000:]}"
        assert fragment not in r.stdout, f"{fragment!r} on stdout:\n{r.stdout[-3000:]}"
    assert r.stdout == "", r.stdout[-3000:]  # nothing was produced
