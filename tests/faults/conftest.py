"""Fixtures for the fault matrix: services and background CLI callers that are always cleaned up."""

from __future__ import annotations

import shutil
import tempfile
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


@pytest.fixture
def open_services() -> Iterator[Services]:
    """Services rooted in a directory other users may traverse, so that uid 65534 can read the config file."""
    root = Path(tempfile.mkdtemp(prefix="clawsvc-faults-"))
    root.chmod(0o711)
    started = Services(root)
    try:
        yield started
    finally:
        started.close()
        shutil.rmtree(root)
