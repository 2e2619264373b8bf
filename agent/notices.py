"""What the monitor says about itself: the summary at close, what it cannot see, and the names of several
watched models in one process."""

from __future__ import annotations

import logging
import weakref
from typing import Any, Callable

log = logging.getLogger("nnwatch")


def log_summary(monitor: Any) -> None:
    """One paragraph at close: what was found, or that nothing was watched."""
    who = f" ({monitor.name})" if monitor.several else ""
    LIVE.discard(monitor)
    if not monitor.steps.steps_in_process:
        log.warning("nnwatch%s: watched 0 steps: attach the optimizer (agent.attach(model, optimizer)) or call "
                    "monitor.step() after each update", who)
    elif monitor.engine is not None:
        summary = monitor.engine.incidents.summary(monitor.steps.steps_in_process)
        log.info(_one_line(summary.replace("nnwatch:", f"nnwatch{who}:", 1)))


def _one_line(text: str) -> str:
    """Module names come from the user's model: a newline in one must not split a log line."""
    return text.replace("\r", " ").replace("\n", " ")


BLIND_SPOT_STEPS = 20
"""After this many steps the monitor says once what it cannot see (no forward of the model, no activations)."""


def say_what_is_not_watched(monitor: Any) -> None:
    """One line when the agent watches less than the user may think, after BLIND_SPOT_STEPS steps."""
    who = f" ({monitor.name})" if monitor.several else ""
    if not monitor.steps.forwards:
        log.warning("nnwatch%s: %d steps but no training forward of the attached model: activations, batch sizes "
                    "and the eval-mode check see nothing. Attach the module whose forward the training step calls "
                    "(e.g. agent.attach(self.net) when training_step calls self.net(x)).", who, BLIND_SPOT_STEPS)
    elif monitor.options.activations and not monitor.compiled and not monitor.probe.sites:
        log.info("nnwatch%s: no activation function (ReLU family, GELU, SiLU, tanh, sigmoid) seen in %d sampled "
                 "forwards: the dead-unit and saturation checks have nothing to watch.", who, monitor.sampled_steps)
    elif monitor.options.activations and not monitor.compiled and (unseen := monitor.probe.unseen_modules()):
        shown = _one_line(", ".join(unseen[:5])) + (f" and {len(unseen) - 5} more" if len(unseen) > 5 else "")
        log.info("nnwatch%s: %d activation module(s) never ran inside a sampled model(...) forward: %s. They are "
                 "called from outside the attached module's forward (or not used), so their dead and saturated "
                 "units are not watched; attach the module whose forward calls them.", who, len(unseen), shown)


LIVE: "weakref.WeakSet[Any]" = weakref.WeakSet()
"""Open monitors of this process: log lines name the model when there are several."""


def unique_name(name: str) -> str:
    """``name``, or ``name#2``... when another open monitor has it; marks every open monitor as one of several
    (their lines name their model from then on)."""
    others = list(LIVE)
    for m in others:
        m.several = True
    taken = {m.name for m in others}
    unique, n = name, 2
    while unique in taken:
        unique, n = f"{name}#{n}", n + 1
    return unique


def name_when_several(ref: "weakref.ref[Any]") -> Callable[[], str | None]:
    def name() -> str | None:
        m = ref()
        return m.name if m is not None and m.several else None
    return name


__all__ = ["BLIND_SPOT_STEPS", "LIVE", "log_summary", "say_what_is_not_watched", "unique_name", "name_when_several"]
