"""Forward passes without autograd while dropout/batch-norm modules are in training mode: an evaluation that
forgot ``model.eval()``, or part of the training loop itself.

A GAN makes its fakes under ``no_grad`` for the discriminator's step, a policy acts under ``no_grad`` between
updates: such forwards come in (nearly) every step, with batch-norm in training mode on purpose. A forgotten
``model.eval()`` shows in evaluation bursts: a minority of steps. So the forwards of a step are counted when it
ends, and only when fewer than half of the recent steps had any; until ``MIN_STEPS`` steps are known they wait.
"""

from __future__ import annotations

from collections import deque

WINDOW = 20
"""Steps whose no-grad forwards are remembered (had any or not)."""
MIN_STEPS = 10
"""Steps needed before the first verdict; the forwards seen until then wait for it."""
INTERLEAVED = 0.5
"""Share of recent steps with no-grad forwards from which they are part of the training loop."""


class NoGradForwards:
    """Counts the no-grad training-mode forwards that look like evaluations (``counted``)."""

    def __init__(self) -> None:
        self.counted = 0
        self.this_step = 0
        self._waiting = 0
        self._steps: deque[bool] = deque(maxlen=WINDOW)

    def seen(self) -> None:
        """A forward without autograd ran while a dropout/batch-norm module was in training mode."""
        self.this_step += 1

    def end_step(self) -> None:
        """At a step boundary: count this step's forwards unless they belong to the training loop."""
        n, self.this_step = self.this_step, 0
        self._steps.append(n > 0)
        self._waiting += n
        if len(self._steps) < MIN_STEPS:
            return
        interleaved = sum(self._steps) >= INTERLEAVED * len(self._steps)
        if not interleaved:
            self.counted += self._waiting
        self._waiting = 0


__all__ = ["NoGradForwards"]
