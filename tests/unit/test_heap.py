"""pipeline.heap: the glibc arena cap and heap trimming that keep a long run's RSS flat."""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

import pytest

from pipeline import heap

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="needs glibc")


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


@glibc
def test_trim_hands_a_fragmented_heap_back_to_the_system() -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    blocks = []
    for _ in range(40_000):  # 80 MB of 2 KB blocks, touched so they are resident
        p = libc.malloc(2048)
        ctypes.memset(p, 1, 2048)
        blocks.append(p)
    pinned = blocks[::64]  # a live block every 128 KB: free() alone cannot shrink the heap
    for i, p in enumerate(blocks):
        if i % 64:
            libc.free(p)
    before = rss_mb()
    try:
        assert heap.trim() is True
        assert before - rss_mb() > 40
    finally:
        for p in pinned:
            libc.free(p)


@glibc
def test_arena_cap_is_set_unless_the_environment_chose_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert heap.limit_arenas(2) is True
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert heap.limit_arenas(2) is False
    with pytest.raises(ValueError, match="arena count must be >= 1"):
        heap.limit_arenas(0)


def test_keeper_trims_once_per_interval() -> None:
    now = [100.0]
    keeper = heap.HeapKeeper(interval_s=60.0, clock=lambda: now[0])
    ticks = []
    for t in (100.0, 130.0, 159.9, 160.0, 170.0, 220.5, 221.0):
        now[0] = t
        ticks.append(keeper.tick())
    assert ticks == [False, False, False, True, False, True, False]
    assert keeper.trims == 2
    with pytest.raises(ValueError, match="interval_s must be > 0"):
        heap.HeapKeeper(interval_s=0)
