"""Credentials never reach the logs: URIs and free text are redacted."""

from __future__ import annotations

import pytest

from core.redact import redact_text, redact_uri


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("rtsp://admin:s3cret@10.0.0.5:554/stream1", "rtsp://***@10.0.0.5:554/stream1"),
        ("rtsp://admin@10.0.0.5/live", "rtsp://***@10.0.0.5/live"),
        ("rtsp://admin:p@ss@cam.local/live", "rtsp://***@cam.local/live"),
        ("rtsp://admin:pa/ss@cam.local/live", "rtsp://***@cam.local/live"),
        ("rtsps://u:p@host", "rtsps://***@host"),
        ("http://cam/snap.jpg?user=admin&pwd=1234&fps=5", "http://cam/snap.jpg?user=admin&pwd=***&fps=5"),
        ("https://h/x?token=abc#frag", "https://h/x?token=***#frag"),
        ("http://host:8080/a@b", "http://host:8080/a@b"),
        ("file:///videos/a.mp4", "file:///videos/a.mp4"),
        ("rtsp://10.0.0.5/stream", "rtsp://10.0.0.5/stream"),
        ("v4l2:///dev/video0", "v4l2:///dev/video0"),
        ("not a uri", "not a uri"),
    ],
)
def test_redact_uri(uri: str, expected: str) -> None:
    assert redact_uri(uri) == expected


def test_redacted_uri_never_contains_the_password() -> None:
    for password in ["hunter2", "p@ss:w/rd", "x%40y"]:
        out = redact_uri(f"rtsp://admin:{password}@192.168.1.10:554/h264")
        assert password not in out
        assert out.endswith("192.168.1.10:554/h264")


def test_redact_text_finds_uris_in_messages() -> None:
    msg = "Could not open resource rtsp://u:secret@cam/a for reading; also 'http://x/?key=k1'."
    out = redact_text(msg)
    assert "secret" not in out
    assert "k1" not in out
    assert out.startswith("Could not open resource rtsp://***@cam/a for reading")
