"""Gradient clipping: gradients as backward left them versus the gradients the optimizer step consumed.

On sampled steps the agent reads the per-parameter gradient norms twice: when backward finishes (an
autograd final callback, before any ``clip_grad_norm_`` or ``GradScaler.unscale_``) and when the optimizer
step starts. ``judge`` compares the two totals:

- consumed < backward-end (beyond 0.1%): something shrank the gradients in place, i.e. clipping. The layer
  norms reported are then the backward-end ones, so an exploding gradient stays visible behind the clip.
- a GradScaler between the two divides by its loss scale: with the scaler watched the scale is known and
  divided out first; an unwatched scaler shows as a factor that is exactly a power of two (not clipping).
- anything else (equal, larger: a manual all-reduce or accumulation after our read; non-finite values):
  not clipping; the consumed norms are reported, as they are what the step used.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

TOLERANCE = 1e-3
"""Relative change of the total gradient norm below which nothing is said to have changed it."""

WINDOW = 20
"""Sampled steps over which the clipped fraction is counted."""


@dataclass(frozen=True)
class ClipJudgement:
    """What happened to the gradients between the end of backward and the optimizer step."""

    factor: float
    """Consumed norm / backward-end norm (loss scale divided out): 1 unchanged, < 1 clipped."""
    clipped: bool
    use_backward_end: bool
    """Report the backward-end layer norms (divided by ``loss_scale``) instead of the consumed ones."""
    loss_scale: float = 1.0


def judge(backward_end_sq: float, consumed_sq: float, loss_scale: float | None, fp16_unwatched: bool) -> ClipJudgement | None:
    """Compare squared total norms; ``loss_scale`` is the watched GradScaler's scale at this step (None: no
    scaler watched), ``fp16_unwatched`` says float16 autocast ran without a watched scaler (a scale may
    sit between the two reads that no power-of-two test can separate from clipping). None: not judged."""
    if not (math.isfinite(backward_end_sq) and math.isfinite(consumed_sq)) or backward_end_sq <= 0 or consumed_sq <= 0:
        return None
    s = loss_scale if loss_scale and math.isfinite(loss_scale) and loss_scale > 0 else 1.0
    ratio = math.sqrt(consumed_sq / backward_end_sq) * s
    if ratio >= 1.0 - TOLERANCE:
        return ClipJudgement(factor=ratio, clipped=False, use_backward_end=False)
    if loss_scale is None and _power_of_two(ratio):  # an unwatched GradScaler unscaled them: not clipping
        return ClipJudgement(factor=1.0, clipped=False, use_backward_end=False)
    if loss_scale is None and fp16_unwatched:  # clipping and an unknown scale cannot be told apart
        return None
    return ClipJudgement(factor=ratio, clipped=True, use_backward_end=True, loss_scale=s)


def _power_of_two(ratio: float) -> bool:
    k = -math.log2(ratio)
    return k >= 0.5 and abs(k - round(k)) < 1e-4


class ClipRate:
    """The clipped share of the last ``WINDOW`` judged samples."""

    def __init__(self) -> None:
        self._recent: deque[bool] = deque(maxlen=WINDOW)
        self.last: ClipJudgement | None = None

    def add(self, judgement: ClipJudgement | None) -> None:
        self.last = judgement
        if judgement is not None:
            self._recent.append(judgement.clipped)

    @property
    def fraction(self) -> float | None:
        """Share of recent judged samples on which clipping shrank the gradients (None: none judged)."""
        return sum(self._recent) / len(self._recent) if self._recent else None


__all__ = ["ClipJudgement", "ClipRate", "judge", "TOLERANCE", "WINDOW"]
