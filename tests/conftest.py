"""Shared fixtures (helpers live in tests/helpers.py)."""

from __future__ import annotations

import logging

import pytest


@pytest.fixture(autouse=True)
def _nnwatch_logs(caplog):
    caplog.set_level(logging.INFO, logger="nnwatch")
    yield
