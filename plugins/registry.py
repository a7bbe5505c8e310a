"""Per-camera values the scorer reads while the main thread replaces them (a camera added, recalibrated or
removed): the cameras' appearance memories and stationary models. Pure Python; no state shared otherwise."""

from __future__ import annotations

import threading
from typing import Generic, TypeVar

__all__ = ["CameraTable"]

T = TypeVar("T")


class CameraTable(Generic[T]):
    """camera id -> value, each value replaced whole: set and removed from the main thread, read from the
    scoring thread. Reads take no lock: a dict lookup is atomic in CPython, and a reader sees either the old
    value or the new one, never a half-written one."""

    def __init__(self) -> None:
        self._values: dict[str, T] = {}
        self._lock = threading.Lock()

    def set(self, camera: str, value: T) -> None:
        with self._lock:
            self._values[camera] = value

    def get(self, camera: str) -> T | None:
        return self._values.get(camera)

    def remove(self, camera: str) -> None:
        with self._lock:
            self._values.pop(camera, None)

    def cameras(self) -> list[str]:
        with self._lock:
            return sorted(self._values)

    def __len__(self) -> int:
        return len(self._values)
