"""Fixtures of the end-to-end tests: a pool of real servers that is torn down after each test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.servers import ServerPool


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[ServerPool]:
    """Start Prometheus/Alertmanager/receivers with ``servers.start_prometheus(...)`` etc.; all stop at teardown."""
    pool = ServerPool(tmp_path / "servers")
    try:
        yield pool
    finally:
        pool.close()
