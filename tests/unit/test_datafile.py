"""core.datafile: every data-file problem comes back in the caller's own exception class, naming the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.datafile import parse_yaml, read_bytes, read_json


class ReaderError(ValueError):
    """Stands in for ManifestError, CalibrationError, PromptError, DatasetError."""


def test_read_json_returns_the_document(tmp_path: Path) -> None:
    path = tmp_path / "ok.json"
    path.write_text('{"a": [1, 2]}\r\n')
    assert read_json(path, ReaderError) == {"a": [1, 2]}


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b'{"a": 1,\n  oops}', r"bad\.json is not valid JSON \(line 2\)"),
        (b'{"a": "\xff"}', r"thing .*bad\.json is not UTF-8 text \(byte 7\)"),
    ],
)
def test_read_json_names_the_problem_and_the_file(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    label = f"thing {path}" if b"\xff" in content else None
    with pytest.raises(ReaderError, match=match):
        read_json(path, ReaderError, label=label)


def test_unreadable_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(ReaderError, match=r"manifest .*missing\.json cannot be read: No such file"):
        read_json(tmp_path / "missing.json", ReaderError, label=f"manifest {tmp_path / 'missing.json'}")
    with pytest.raises(ReaderError, match="cannot be read"):
        read_bytes(tmp_path, ReaderError)  # a folder


def test_parse_yaml(tmp_path: Path) -> None:
    assert parse_yaml(b"a: [1, 2]\n", ReaderError, label="x") == {"a": [1, 2]}
    with pytest.raises(ReaderError, match=r"prompt file p\.yaml is not valid YAML"):
        parse_yaml(b"a: [1, 2\n", ReaderError, label="prompt file p.yaml")
