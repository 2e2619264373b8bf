"""Resume from a checkpoint: the monitor state that must survive a restart so that checks do not false-fire.

What is kept, and why:
- the global step (``nnwatch_step`` continues; sampling stays on the same steps);
- the first loss (loss_at_init would otherwise compare the resumed, much lower loss with ln(num_classes));
- the loss history of the check engine (loss_not_decreasing would otherwise take a converged plateau
  for "no progress since the start");
- the validation history (overfitting), recent step times (the stall watcher's "usual" step),
  the learning rates, a short history of global gradient norms (the exploding_gradients median), the
  number of samples the checks have seen (their warm-up is not repeated), AMP skip counts.
What is not kept: memory readings (a new process has a new footprint), dead-unit windows (device state; the
window refills in ``dead_window`` samples), findings in progress (they re-fire if the condition still holds).
The state is plain JSON (numbers and lists), so it fits torch.save, Lightning and HF checkpoints alike.
"""

from __future__ import annotations

import math
from typing import Any

from .snapshot import LayerStats, Snapshot

VERSION = 1
_GRAD_HISTORY = 64


def monitor_state(m: Any) -> dict[str, Any]:
    """The resumable state of monitor ``m`` (an agent.monitor.Monitor) as a JSON-serialisable dict."""
    engine = m.engine
    history = list(engine.history)[-_GRAD_HISTORY:] if engine is not None else []
    return {
        "version": VERSION,
        "step": m.steps.step_index,
        "first_loss": _num(m.logged.first_loss),
        "val_history": [[int(s), _num(v)] for s, v in m.logged.val_history],
        "recent_step_seconds": [float(x) for x in m.steps.recent_step_seconds],
        "learning_rates": [_num(x) for x in m.steps.learning_rates],
        "samples_total": m.steps.samples_total,
        "losses": [[int(s), _num(v)] for s, v in engine.losses] if engine is not None else [],
        "loss_start": [_num(v) for v in getattr(engine, "loss_start", [])] if engine is not None else [],
        "check_samples": engine.samples if engine is not None else 0,
        "grad_norms": [[h.step, _num(h.grad_norm), [_num(x) for x in h.learning_rates]] for h in history],
        "amp": m.amp.state_dict() if m.amp is not None else None,
    }


def load_monitor_state(m: Any, state: dict[str, Any]) -> None:
    """Restore ``monitor_state`` output into a freshly attached monitor (before or after its first step)."""
    if not isinstance(state, dict) or "step" not in state:
        raise ValueError("load_state_dict() needs the dict returned by Monitor.state_dict()")
    if int(state.get("version", 0)) > VERSION:
        raise ValueError(f"monitor state version {state.get('version')} is newer than this agent understands ({VERSION})")
    steps = m.steps
    steps.step_index = int(state["step"])
    m._sampled = steps.step_index % m.options.sample_every == 0
    first = _float(state.get("first_loss"))
    if first is not None:
        m.logged.restore_first_loss(first)  # log() keeps the first loss it sees; the resumed run's is not the first
    m.logged.val_history = [(int(s), v) for s, v in _pairs(state.get("val_history"))]
    steps.recent_step_seconds.extend(float(x) for x in state.get("recent_step_seconds") or [])
    lrs = tuple(v for v in (_float(x) for x in state.get("learning_rates") or []) if v is not None)
    if lrs and not steps.learning_rates:
        steps.learning_rates = lrs
    steps.samples_total = int(state.get("samples_total") or 0)
    engine = m.engine
    if engine is not None:
        current_losses = list(engine.losses)
        engine.losses.clear()
        engine.losses.extend([(int(s), v) for s, v in _pairs(state.get("losses"))] + current_losses)
        start = [float(v) for v in state.get("loss_start") or [] if v is not None]
        if start and hasattr(engine, "loss_start"):
            engine.loss_start = start  # the run's start, not the restart's
        engine.samples = max(engine.samples, int(state.get("check_samples") or 0))
        restored = []
        for step, norm, lrs_h in state.get("grad_norms") or []:
            g = _float(norm)
            layer = LayerStats(module="(restored)", params=0, grad_norm=g, weight_norm=0.0, update_norm=None,
                               grad_nonfinite=0, weight_nonfinite=0, params_without_grad=0)
            # Only the gradient norm and learning rates of these records are read (exploding_gradients,
            # the loss check's warm-up test); memory is left empty so that memory_leak starts afresh.
            restored.append(Snapshot(step=int(step), time=0.0, layers=(layer,) if g is not None else (),
                                     learning_rates=tuple(x for x in lrs_h if x is not None)))
        current = list(engine.history)
        engine.history.clear()
        engine.history.extend(restored + current)
    if m.amp is not None and state.get("amp"):
        m.amp.load_state_dict(state["amp"])
    elif state.get("amp"):
        m._pending_amp_state = state["amp"]


def _num(v: Any) -> float | None:
    """A float JSON can carry: None for missing, NaN and infinities as None."""
    if v is None:
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def _float(v: Any) -> float | None:
    return None if v is None else float(v)


def _pairs(rows: Any) -> list[tuple[int, float]]:
    return [(int(s), float(v)) for s, v in rows or [] if v is not None]


__all__ = ["monitor_state", "load_monitor_state", "VERSION"]
