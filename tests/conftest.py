"""Shared fixtures (helpers live in tests/helpers.py)."""

from __future__ import annotations

import logging

import pytest


@pytest.fixture(autouse=True)
def _nnwatch_logs(caplog):
    caplog.set_level(logging.INFO, logger="nnwatch")
    yield


def pytest_sessionstart(session):
    """Build (or load from the cache) the native CPU kernels before any test, so that every test sees the
    same statistics path instead of whichever a background build reached first. Without a compiler the
    torch-op path is used and tests/test_native.py says why (failing in CI)."""
    from agent.collect import native

    native.build()
