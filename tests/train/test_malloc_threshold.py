"""glibc's mmap threshold: fixed when a config asks, left alone by default, for 0 and when the user set it."""

from __future__ import annotations

import os

from prefalign.config import LoopConfig
from prefalign.recipes.setup import set_malloc_mmap_threshold


def test_default_leaves_glibc_alone():
    # 1 MiB cost the benchmark fixture 33% wall time in page faults (README, Benchmarks)
    assert LoopConfig().malloc_mmap_threshold_mib == 0.0


def test_zero_and_a_user_setting_change_nothing(monkeypatch):
    assert set_malloc_mmap_threshold(0) is False
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert set_malloc_mmap_threshold(1.0) is False


def test_glibc_accepts_the_threshold_and_other_systems_are_left_alone(monkeypatch):
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    # mallopt is glibc's: on Linux (this project's CI) it must take; elsewhere nothing is changed
    assert set_malloc_mmap_threshold(1.0) is (os.uname().sysname == "Linux")
