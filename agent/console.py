"""The agent's own log lines, visible by default: a stderr handler on the ``nnwatch`` logger while the
application has configured no logging of its own."""

from __future__ import annotations

import logging
import sys

_HANDLER_NAME = "nnwatch-console"


class _UnlessConfigured(logging.Filter):
    """Drop records once the application configured the root logger: they reach its handlers instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not logging.getLogger().handlers


def show_agent_logs() -> None:
    """Make INFO lines of the ``nnwatch`` logger visible on stderr unless the application logs already.

    Idempotent. Only touches the ``nnwatch`` logger: a level it has is kept, a handler is added once, and
    records still propagate, so an application that sets up logging later gets them in its own handlers.
    """
    logger = logging.getLogger("nnwatch")
    if any(getattr(h, "name", None) == _HANDLER_NAME for h in logger.handlers):
        return
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.name = _HANDLER_NAME
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler.addFilter(_UnlessConfigured())
    logger.addHandler(handler)


__all__ = ["show_agent_logs"]
