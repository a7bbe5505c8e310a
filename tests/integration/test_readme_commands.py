"""The README's everyday commands, as written, in order, on a fresh clone: each exits 0.

The commands are read from the README's "Everyday commands" block, so the README and this test cannot
drift apart. Only sizes shrink, through the commands' own documented flags (fewer and shorter scenes, a
training budget of seconds, files played as fast as possible); nothing else is changed or added. The clone
is of the repository's HEAD (commit what you want tested), run with this interpreter and no engines,
checkpoints or scenes of its own: the first `zsad calibrate` has to build the engines.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

README = REPO / "README.md"

# Smaller sizes through documented flags: {command: {flag: value}} replaces a flag's value or adds the flag.
SHRINK: dict[str, dict[str, str | None]] = {
    "synth": {"--train-per-context": "1", "--test-per-context": "1", "--frames": "200"},
    "train": {"--max-minutes": "0.25"},
    "run": {"--fast": None, "--duration": "120"},
}


def everyday_commands(readme: str) -> list[list[str]]:
    """Each ``zsad ...`` line of the first ```sh block under "## Everyday commands", split like a shell
    would (comments dropped)."""
    section = readme.split("## Everyday commands", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "no ```sh block under '## Everyday commands' in README.md"
    lines = [shlex.split(line, comments=True) for line in block.group(1).splitlines()]
    return [argv for argv in lines if argv]


def shrink(argv: list[str]) -> list[str]:
    """``argv`` with :data:`SHRINK`'s values for its command (an option's value replaced, or appended)."""
    out = list(argv)
    for flag, value in SHRINK.get(argv[1], {}).items():
        if flag in out:
            if value is not None:
                out[out.index(flag) + 1] = value
        else:
            out += [flag] if value is None else [flag, value]
    return out


def test_the_block_is_found_and_starts_from_nothing() -> None:
    commands = everyday_commands(README.read_text(encoding="utf-8"))
    assert all(argv[0] == "zsad" for argv in commands), commands
    order = [argv[1] for argv in commands]
    # synth -> train -> eval -> run: each step uses what the previous ones made.
    assert [c for c in order if c in {"synth", "train", "eval", "run"}] == ["synth", "train", "eval", "run"]
    assert "build-engines" not in order, "zsad run builds missing engines itself; the block must not need it"


@pytest.mark.slow
def test_readme_everyday_commands_run_top_to_bottom_on_a_fresh_clone(tmp_path: Path) -> None:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs git and a git checkout to clone")
    clone = tmp_path / "zsad"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True, timeout=120)
    env = {**os.environ, "PYTHONPATH": str(clone), "OMP_NUM_THREADS": "2"}
    env.pop("ZSAD_DATA_ROOT", None)  # the everyday commands need no benchmark data
    for argv in everyday_commands((clone / "README.md").read_text(encoding="utf-8")):
        cmd = [sys.executable, "-m", "pipeline.cli.main", *shrink(argv)[1:]]
        r = subprocess.run(cmd, cwd=clone, env=env, capture_output=True, text=True, timeout=900, check=False)
        out = r.stdout + r.stderr
        assert r.returncode == 0, f"{shlex.join(argv)} exited {r.returncode}:\n{out[-4000:]}"
        assert "Traceback" not in out, out[-4000:]
    # What the block promises to leave behind.
    assert (clone / "runs" / "synthetic" / "model.safetensors").is_file()
    assert (clone / "runs" / "synthetic" / "eval" / "metrics.json").is_file()
    assert (clone / "calib" / "campus-1.json").is_file()
    assert (clone / "out" / "engines" / "site" / "backbone.manifest.json").is_file()
    scores = [json.loads(line) for line in (clone / "out" / "site" / "scores.jsonl").read_text().splitlines()]
    assert {row["camera"] for row in scores} == {"campus-1", "parking-1", "station-1"}
    assert (clone / "out" / "site" / "alerts.jsonl").is_file()
