"""Fixtures for the reward-model tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from rm_support import build_tiny_bert


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))
