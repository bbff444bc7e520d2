"""Shared fixtures: the provisioned real gateway (`gateway_install`) and a running one (`real_gateway`)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from realgw import RealGateway, cache_dir, provision

from clawsvc.commands.runtime.provision import Installation, ProvisionError

# The modes of everything the tests create (temp dirs, configs, token files) and of what the clawsvc and gateway
# processes they start create: set here, never inherited from the umask of whoever runs the suite. clawsvc's
# trust rules refuse a group-writable config or state dir, so a umask-002 shell must not turn every such test
# into a refusal. Tests that are about a mode set it themselves with chmod.
TEST_UMASK = 0o022


def pytest_configure(config: pytest.Config) -> None:
    os.umask(TEST_UMASK)
    # Run from a background job (`scripts/test.sh &`, nohup), the suite inherits SIGINT ignored, and so would every
    # clawsvc it starts: the tests of Ctrl-C would then test the caller's shell. A handler here is reset to the
    # default at each exec, where an ignored signal stays ignored.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session", autouse=True)
def own_cache_directory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """clawsvc's cache dir (default compile caches) for every clawsvc the tests start, as a unit's
    CacheDirectory=: this session's own, never the machine's /var/cache/clawsvc or ~/.cache/clawsvc."""
    path = tmp_path_factory.mktemp("cache-directory")
    previous = os.environ.get("CACHE_DIRECTORY")
    os.environ["CACHE_DIRECTORY"] = str(path)
    try:
        yield path
    finally:
        if previous is None:
            os.environ.pop("CACHE_DIRECTORY", None)
        else:
            os.environ["CACHE_DIRECTORY"] = previous


@pytest.fixture(scope="session")
def gateway_install() -> Installation:
    """Node + openclaw provisioned by `ensure_installed` into the test cache (reused across runs).
    In CI a provisioning failure fails the test; locally (e.g. offline) it skips with the reason."""
    try:
        return provision()
    except ProvisionError as exc:
        if in_ci():
            pytest.fail(f"provisioning the real gateway into {cache_dir()} failed: {exc}")
        pytest.skip(f"real gateway unavailable (provisioning into {cache_dir()} failed: {exc})")


@pytest.fixture(scope="module")
def real_gateway(gateway_install: Installation) -> Iterator[RealGateway]:
    """A running real gateway on a free loopback port, ready (hello-ok seen); stopped and cleaned up after."""
    with RealGateway(gateway_install) as gateway:
        yield gateway


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that uses the real gateway belongs to the slow tier even if its author forgot the marker,
    so `scripts/test.sh --fast` never provisions or starts it."""
    for item in items:
        if {"gateway_install", "real_gateway"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.realgateway)
