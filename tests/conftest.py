"""Shared test fixtures: the golden files of the original code, tiny components, offline hub."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("ANYGPT_FIXTURES", ROOT.parent / "shared" / "fixtures"))


@pytest.fixture(autouse=True, scope="session")
def _offline():
    """Tests never download: the hub is offline for the whole session."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    yield


def fixture_path(*parts: str) -> Path:
    """Path under ``../shared/fixtures``; skips the test with a clear reason where it is absent."""
    path = FIXTURES.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"golden fixture {path} is absent (set ANYGPT_FIXTURES to the shared/fixtures folder)")
    return path
