"""Fixtures for the fault matrix: services and background CLI callers that are always cleaned up."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from faultkit import Callers, Services


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    started = Services(tmp_path)
    yield started
    started.close()


@pytest.fixture
def callers() -> Iterator[Callers]:
    started = Callers()
    yield started
    started.close()
