"""Reading a small data file (manifest, calibration, labels: JSON; prompt sets: YAML) with a named error.

Every reader in the project reports the same problems the same way, in the caller's own exception class,
so a command line can print them without a traceback: the file cannot be read, it is not UTF-8 text, or
it does not parse. ``label`` says what the file is (``"manifest path/x.json"``); it defaults to the path.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import yaml

__all__ = ["file_sha256", "parse_yaml", "read_bytes", "read_json", "write_atomic"]


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB blocks (checkpoints and weights are large)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_bytes(path: str | Path, error: type[Exception], *, label: str | None = None) -> bytes:
    """The file's bytes. Raises ``error`` when it cannot be read (missing, a folder, no permission)."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise error(f"{label or path} cannot be read: {exc.strerror or exc}") from exc


def read_json(path: str | Path, error: type[Exception], *, label: str | None = None) -> Any:
    """The parsed JSON document. Raises ``error`` when the file cannot be read, is not UTF-8 or is not
    valid JSON (with its line)."""
    what = label or str(path)
    raw = read_bytes(path, error, label=what)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{what} is not UTF-8 text (byte {exc.start}): {exc.reason}") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{what} is not valid JSON (line {exc.lineno}): {exc.msg}") from exc


def parse_yaml(raw: bytes, error: type[Exception], *, label: str) -> Any:
    """A YAML document read with :func:`read_bytes` (safe loader; the caller may also hash ``raw``).
    Raises ``error`` when it is not valid YAML."""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise error(f"{label} is not valid YAML: {exc}") from exc


def write_atomic(path: str | Path, write: Callable[[IO[bytes]], object]) -> None:
    """Write ``path`` through ``write(binary file)`` atomically: into a temporary ``.<name>.*.part`` file
    beside it, flushed and fsynced, then renamed over it, so a reader sees the old file or the new one,
    never half of one. The folder is created if needed; on any failure the temporary file is removed."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".part", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        Path(tmp).replace(p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
