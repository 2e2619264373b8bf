"""Hooks that hold their owner weakly and copy as no-ops, so a watched model still pickles and deep-copies.

A bound method of the monitor in a module's hook dict drags the monitor (locks, threads, weak references)
into ``pickle``, ``copy.deepcopy``, ``torch.save(model)`` and ``AveragedModel(model)``, which then fail.
A :class:`WeakHook` holds only a weak reference and the method's name; pickled or deep-copied it becomes
:data:`UNWATCHED`, a no-op built from the standard library alone (``functools.partial(sys.audit, ...)``),
so the copy is an unwatched model that loads in a process without nnwatch installed.
"""

from __future__ import annotations

import functools
import sys
import weakref
from typing import Any

UNWATCHED_EVENT = "nnwatch.unwatched_copy"
"""The audit event a copied hook raises (ignored unless the process installed an audit hook)."""

UNWATCHED: Any = functools.partial(sys.audit, UNWATCHED_EVENT)
"""What a hook becomes in a copy of a watched model: accepts any arguments, returns None, watches nothing."""


class WeakHook:
    """Calls ``owner.<method>(*args)`` while the owner lives (None afterwards); copies as :data:`UNWATCHED`."""

    __slots__ = ("_owner", "_function", "__weakref__")

    def __init__(self, owner: Any, method: str) -> None:
        self._owner = weakref.ref(owner)
        self._function = getattr(type(owner), method)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        owner = self._owner()
        if owner is None:
            return None
        return self._function(owner, *args, **kwargs)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return functools.partial, (sys.audit, UNWATCHED_EVENT)

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        return UNWATCHED

    def __copy__(self) -> Any:
        return UNWATCHED

    def __repr__(self) -> str:
        return f"<nnwatch hook {self._function.__name__}{'' if self._owner() is not None else ' (owner gone)'}>"


__all__ = ["WeakHook", "UNWATCHED", "UNWATCHED_EVENT"]
