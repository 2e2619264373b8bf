"""``torch.jit.script`` of a watched model: the agent's hooks are hidden while TorchScript compiles it.

TorchScript compiles every forward hook and pre-hook found in a module's hook dicts, and a Python hook object
cannot be compiled, so scripting a watched model would fail. While at least one monitor is open,
``torch.jit.script`` is wrapped: for the duration of the call, the agent's hooks (:class:`WeakHook` and the
:data:`UNWATCHED` no-ops copies carry) are taken out of every submodule's hook dicts and put back afterwards,
in their order. The scripted module is an unwatched model, like any other copy. The wrapper is removed when the
last monitor closes. A ``script`` bound by name before ``attach()`` (``from torch.jit import script``) is not
wrapped; scripting before attach() or after close() needs nothing.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import torch
from torch import nn

from .weakhook import UNWATCHED, WeakHook

_DICTS = ("_forward_hooks", "_forward_pre_hooks")
"""The hook dicts TorchScript compiles (the kwargs/always-called flags are keyed by the same handle ids)."""

_owners: set[int] = set()
_original: Callable[..., Any] | None = None


def _ours(hook: Any) -> bool:
    return isinstance(hook, WeakHook) or hook is UNWATCHED


def _hide(obj: Any) -> list[tuple[dict, dict]]:
    """Remove the agent's hooks from every submodule of ``obj``; returns what :func:`_restore` puts back."""
    saved: list[tuple[dict, dict]] = []
    if not isinstance(obj, nn.Module):
        return saved
    for module in obj.modules():
        for name in _DICTS:
            hooks = getattr(module, name, None)
            if hooks and any(_ours(h) for h in hooks.values()):
                saved.append((hooks, dict(hooks)))
                for key in [k for k, h in hooks.items() if _ours(h)]:
                    del hooks[key]
    return saved


def _restore(saved: list[tuple[dict, dict]]) -> None:
    for hooks, before in saved:
        added = {k: h for k, h in hooks.items() if k not in before}  # hooks registered meanwhile stay, last
        hooks.clear()
        hooks.update(before)
        hooks.update(added)


def _wrap(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def script(obj: Any, *args: Any, **kwargs: Any) -> Any:
        saved = _hide(obj)
        try:
            return original(obj, *args, **kwargs)
        finally:
            _restore(saved)

    script.__nnwatch_original__ = original  # type: ignore[attr-defined]
    return script


def acquire(owner: object) -> None:
    """Wrap ``torch.jit.script`` (once) while ``owner`` is open."""
    global _original
    _owners.add(id(owner))
    current = torch.jit.script
    if getattr(current, "__nnwatch_original__", None) is None:
        _original = current
        torch.jit.script = _wrap(current)  # type: ignore[assignment]


def release(owner: object) -> None:
    """Undo :func:`acquire`; the last owner restores the original ``torch.jit.script``."""
    global _original
    _owners.discard(id(owner))
    if _owners or _original is None:
        return
    if getattr(torch.jit.script, "__nnwatch_original__", None) is _original:
        torch.jit.script = _original  # type: ignore[assignment]
    _original = None


__all__ = ["acquire", "release"]
