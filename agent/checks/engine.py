"""The in-process check engine: evaluates the catalogue over the history of sampled-step snapshots.

Pure Python over host scalars (no torch). A finding fires once per (check, module) when its condition
has held for the check's ``hold`` consecutive samples, stays on ``Monitor.findings`` while it holds, and
resolves when it clears. Firing and resolving go to the notifier (log line, optional webhook).
"""

from __future__ import annotations

import math
import statistics
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

from ..snapshot import Snapshot
from .catalogue import BY_NAME, CHECKS, Check
from .findings import Finding
from .incidents import Incidents
from .watcher import start_watcher, stall_condition

if TYPE_CHECKING:
    from .delivery import Notifier

Condition = tuple[str | None, float, dict[str, Any]]
"""(module or None, the number that shows it, extra template fields)"""

STICKY = frozenset({"loss_at_init", "constant_init"})
"""Facts about the run's start: once fired they stay (the condition cannot change)."""
FP32_RESOLUTION = 1e-6
"""Relative change of a weight tensor below which fp32 rounding may swallow the update (2**-24 is one ulp)."""
CLEAR_SAMPLES = 2
"""Samples in a row without its condition before a fired finding resolves (no flapping on a borderline value);
a stalled job resolves at its next step."""
RELOG_SAMPLES = 20
"""A finding that resolves and fires again within this many sample intervals is re-activated without a new log line."""


@dataclass
class _Track:
    since: int
    count: int = 0
    missing: int = 0
    value: float = 0.0
    fields: dict[str, Any] = field(default_factory=dict)


class CheckEngine:
    """Evaluates every per-process check on each sampled step; runs the stall watcher thread."""

    def __init__(
        self,
        options: Any,
        *,
        notifier: "Notifier | None" = None,
        thresholds: Mapping[str, float] | None = None,
        wall: Callable[[], float] = time.time,
        watch_interval: float | None = None,
    ) -> None:
        self.options = options
        self.notifier = notifier
        self._wall = wall
        self._thresholds = dict(thresholds or getattr(options, "thresholds", None) or {})
        self.history: deque[Snapshot] = deque(maxlen=64)
        self.losses: deque[tuple[int, float]] = deque(maxlen=512)
        self.loss_start: list[float] = []  # the first window of losses, kept for "still near its start"
        self.samples = 0
        self._tracks: dict[tuple[str, str | None], _Track] = {}
        self.incidents = Incidents(notifier, relog_steps=RELOG_SAMPLES * int(getattr(options, "sample_every", 10) or 10))
        self._eval_lock = threading.RLock()
        self._eval_last_count = 0
        self._eval_last_rise = -10**9
        self._watch_interval = watch_interval
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    # -- thresholds ----------------------------------------------------------------------------
    def th(self, check: Check, name: str) -> float:
        """Threshold ``name`` of ``check``: an override from options, else the catalogue default."""
        return float(self._thresholds.get(f"{check.name}.{name}", check.thresholds[name]))

    # -- results ---------------------------------------------------------------------------------
    def active(self) -> list[Finding]:
        """Findings currently firing, oldest first (causes only: consequences are listed under their cause)."""
        with self.incidents.lock:
            return sorted(self.incidents.active.values(), key=lambda f: f.step)

    @property
    def raised(self) -> Counter[tuple[str, str]]:
        """Times each (check, severity) fired as a finding of its own."""
        return self.incidents.raised

    # -- evaluation -------------------------------------------------------------------------------
    def evaluate(self, snap: Snapshot, monitor: Any) -> None:
        """Evaluate every check on a new sampled-step snapshot (called on the training thread)."""
        self.history.append(snap)
        if snap.loss is not None and math.isfinite(snap.loss):
            self.losses.append((snap.step, snap.loss))
            if len(self.loss_start) < int(self.th(BY_NAME["loss_not_decreasing"], "window")):
                self.loss_start.append(snap.loss)
        current: dict[tuple[str, str | None], Condition] = {}
        for check in CHECKS:
            if check.name == "training_stalled" or self.samples < check.warmup:
                continue
            fn = getattr(self, f"_check_{check.name}")
            for module, value, fields in fn(check, snap, monitor):
                current[(check.name, module)] = (module, value, fields)
        self.samples += 1
        with self._eval_lock:
            self._apply(current, snap.step, only=set(BY_NAME) - {"training_stalled"})
        self._ensure_watcher(monitor)

    def _apply(self, current: Mapping[tuple[str, str | None], Condition], step: int, only: set[str]) -> None:
        """Advance tracks for the conditions that hold; hand what is ready and what cleared to the incidents."""
        ready: dict[tuple[str, str | None], Finding] = {}
        for key, (module, value, fields) in current.items():
            check = BY_NAME[key[0]]
            track = self._tracks.get(key)
            if track is None:
                track = self._tracks[key] = _Track(since=step)
            track.count += 1
            track.missing = 0
            track.value, track.fields = value, fields
            if track.count >= check.hold:
                ready[key] = self._finding(check, module, track)
        cleared = set()
        for key, track in list(self._tracks.items()):
            if key in current or key[0] not in only or key[0] in STICKY:
                continue
            track.missing += 1
            # Hysteresis: a finding that fired resolves only after its condition was gone twice in a row.
            if key[0] == "training_stalled" or track.count < BY_NAME[key[0]].hold or track.missing >= CLEAR_SAMPLES:
                del self._tracks[key]
                cleared.add(key)
        self.incidents.update(ready, cleared, {k[0] for k in current}, step)

    def _finding(self, check: Check, module: str | None, track: _Track) -> Finding:
        fields = {"module": module or "the model", "value": track.value, "since": track.since, **track.fields}
        try:
            what = check.description.format(**fields)
        except (KeyError, ValueError, TypeError):
            what = f"{check.summary} value={track.value!r}"
        return Finding(check=check.name, severity=check.severity, module=module, step=track.since,
                       message=f"{what}. Try: {check.advice}.", value=track.value, runbook_url=check.runbook_url)

    # -- the checks: each yields the conditions that hold on this snapshot --------------------------
    def _check_nonfinite_values(self, c: Check, s: Snapshot, m: Any) -> Iterator[Condition]:
        amp = getattr(m, "amp", None)  # agent.collect.amp.ScalerWatch: skipped steps are expected, a run of them is not
        skips = amp.consecutive_skips if amp is not None else 0
        if skips >= self.th(c, "amp_skipped_steps"):
            scale = f"{amp.scale:.3g}" if amp.scale is not None else "unknown"
            yield None, float(skips), {"tensor": f"gradient (GradScaler skipped every step, loss scale now {scale})",
                                       "module": "the scaled gradients"}
            return
        if s.amp_skipped:
            return
        counts = {t: s.nonfinite(t) for t in ("loss", "gradient", "weight", "activation")}
        total = sum(counts.values())
        if total >= self.th(c, "min_count"):
            kinds = [t for t, n in counts.items() if n]
            first = next((l.module for l in s.layers if l.grad_nonfinite or l.weight_nonfinite), None)
            if first is None:
                first = next((a.key for a in s.activations if a.nonfinite), "the loss")
            yield None, float(total), {"tensor": "/".join(kinds), "module": first}

    def _check_exploding_gradients(self, c: Check, s: Snapshot, m: Any) -> Iterator[Condition]:
        g = s.grad_norm
        if g is None or not math.isfinite(g):
            return
        past = [h.grad_norm for h in list(self.history)[:-1] if h.grad_norm is not None and math.isfinite(h.grad_norm)]
        past = past[-int(self.th(c, "history")):]
        median = statistics.median(past) if len(past) >= self.th(c, "min_history") else None
        factor = g / median if median else 0.0
        if g > self.th(c, "absolute") or (median and factor > self.th(c, "median_factor")):
            worst = max((l for l in s.layers if l.grad_norm is not None), key=lambda l: l.grad_norm or 0.0)
            yield None, g, {"factor": factor, "median": median or 0.0, "module": worst.module}

    def _check_vanishing_gradients(self, c: Check, s: Snapshot, m: Any) -> Iterator[Condition]:
        rel_th, rms_th = self.th(c, "relative"), self.th(c, "rms")
        rows = []
        for l in s.layers:
            if l.grad_norm is None or not math.isfinite(l.grad_norm) or not l.params:
                continue
            ratio = l.grad_norm / l.weight_norm if l.weight_norm else math.inf
            rows.append((l, l.grad_norm / math.sqrt(l.params), ratio))
        # Only when the model as a whole gets a signal: a converged or constant loss is not "vanishing".
        if not rows or max(r for _, _, r in rows) < 100 * rel_th:
            return
        for l, rms, ratio in rows:
            if rms < rms_th or ratio < rel_th:
                yield l.module, rms, {"ratio": ratio}

    def _check_dead_units(self, c: Check, s: Snapshot, m: Any) -> Iterator[Condition]:
        for a in s.activations:
            if a.dead_ratio is not None and a.dead_ratio >= self.th(c, "ratio"):
                yield a.key, a.dead_ratio, {"units": a.units, "window": self.options.dead_window, "kind": a.kind}

    def _check_saturated_activations(self, c: Check, s: Snapshot, m: Any) -> Iterator[Condition]:
        for a in s.activations:
            if a.saturated_ratio is not None and a.saturated_ratio >= self.th(c, "ratio"):
                yield a.key, a.saturated_ratio, {"kind": a.kind}

    def _check_loss_not_decreasing(self, c: Check, s: Snapshot, m: Any) -> Iterator[Condition]:
        w = int(self.th(c, "window"))
        losses = [v for _, v in self.losses][-2 * w:]
        if len(losses) < 2 * w or s.loss is None or len(self.loss_start) < w:
            return
        # While the learning rate is still warming up, a flat loss is expected.
        lrs = [max(h.learning_rates) for h in list(self.history)[-2 * w:] if h.learning_rates]
        if len(lrs) >= 2 * w and max(lrs[w:]) > 1.05 * max(lrs[:w]):
            return
        start = statistics.fmean(self.loss_start[:w])
        prev = statistics.fmean(losses[:w])
        last = statistics.fmean(losses[-w:])
        improvement = (prev - last) / abs(prev) if prev else 0.0
        dropped = (start - last) / abs(start) if start else 0.0
        # Hysteresis: once firing, it takes twice the minimum improvement to resolve (no flapping).
        need = self.th(c, "min_improvement") * (2 if ("loss_not_decreasing", None) in self.incidents.active else 1)
        if improvement < need and dropped < 1 - self.th(c, "near_start"):
            yield None, last, {"window": w, "improvement": improvement, "start_ratio": last / start if start else 1.0}

    def _check_loss_at_init(self, c: Check, s: Snapshot, m: Any) -> Iterator[Condition]:
        expected = self.options.expected_initial_loss
        classes = self.options.num_classes
        if expected is None and classes:
            expected = math.log(classes)
        first = s.first_loss
        if expected is None or first is None or not math.isfinite(first):
            return
        allowed = max(self.th(c, "relative") * abs(expected), self.th(c, "absolute"))
        if abs(first - expected) > allowed:
            yield None, first, {"expected": expected, "classes": classes if classes else "?"}

    def _check_learning_rate_zero(self, c: Check, s: Snapshot, m: Any) -> Iterator[Condition]:
        # Any param group: one group at LR 0 freezes its layers as surely as a model-wide LR of 0.
        lows = [lr for lr in s.learning_rates if math.isfinite(lr) and lr <= self.th(c, "max_lr")]
        if lows:
            yield None, min(lows), {}

    def _check_parameters_without_gradient(self, c: Check, s: Snapshot, m: Any) -> Iterator[Condition]:
        for l in s.layers:
            if l.params_without_grad >= self.th(c, "min_params"):
                yield l.module, float(l.params_without_grad), {}

    def _check_weights_not_updating(self, c: Check, s: Snapshot, m: Any) -> Iterator[Condition]:
        lr = max((x for x in s.learning_rates if math.isfinite(x)), default=None)
        for l in s.layers:
            # A step of lr * gradient below fp32's resolution of the weights rounds to no change at all: that is
            # a vanishing gradient (or an LR near 0), not a layer left out of the optimizer.
            if l.in_optimizer and lr is not None and l.weight_norm and l.grad_norm is not None \
                    and lr * l.grad_norm / l.weight_norm < FP32_RESOLUTION:
                continue
            if l.grad_norm and math.isfinite(l.grad_norm) and l.update_norm is not None and l.update_norm <= self.th(c, "max_update"):
                hint = "" if l.in_optimizer else " (its parameters are not in the optimizer)"
                yield l.module, 0.0, {"grad": l.grad_norm, "hint": hint}

    def _check_update_ratio_out_of_range(self, c: Check, s: Snapshot, m: Any) -> Iterator[Condition]:
        r = s.update_ratio
        if r is None or not math.isfinite(r):
            return
        low, high = self.th(c, "low"), self.th(c, "high")
        if r > high:
            yield None, r, {"direction": "above", "low": low, "high": high}
        elif r < low and s.learning_rates:
            # Too small only while the LR is at its peak: a schedule that decays towards the end of training
            # is intended (and a decay to nothing is learning_rate_zero's finding).
            lr = max(s.learning_rates)
            self._peak_lr = max(getattr(self, "_peak_lr", 0.0), lr)
            if lr >= 0.5 * self._peak_lr and lr > self.th(BY_NAME["learning_rate_zero"], "max_lr"):
                yield None, r, {"direction": "below", "low": low, "high": high}
        if s.learning_rates:
            self._peak_lr = max(getattr(self, "_peak_lr", 0.0), max(s.learning_rates))

    def _check_gradients_not_cleared(self, c: Check, s: Snapshot, m: Any) -> Iterator[Condition]:
        u = s.uncleared_grad_norm
        if u is not None and (u > self.th(c, "min_norm") or not math.isfinite(u)):
            yield None, u, {}

    def _check_eval_in_train_mode(self, c: Check, s: Snapshot, m: Any) -> Iterator[Condition]:
        n = s.eval_in_train_forwards
        if n > self._eval_last_count:
            self._eval_last_rise = self.samples
        self._eval_last_count = n
        if n >= self.th(c, "min_forwards") and self.samples - self._eval_last_rise < self.th(c, "quiet_samples"):
            yield None, float(n), {}

    def _check_overfitting(self, c: Check, s: Snapshot, m: Any) -> Iterator[Condition]:
        rises = int(self.th(c, "rises"))
        vals = list(getattr(m, "val_history", []))[-(rises + 1):]
        if len(vals) < rises + 1 or not all(b[1] > a[1] for a, b in zip(vals, vals[1:])):
            return
        first_train, last_train = self._train_loss_at(vals[0][0]), self._train_loss_at(vals[-1][0])
        if first_train is not None and last_train is not None and last_train < first_train:
            yield None, vals[-1][1], {"rises": rises, "train": last_train}

    def _train_loss_at(self, step: int) -> float | None:
        best = None
        for st, v in self.losses:
            if st <= step:
                best = v
            else:
                break
        return best if best is not None else (self.losses[0][1] if self.losses else None)

    def _check_constant_init(self, c: Check, s: Snapshot, m: Any) -> Iterator[Condition]:
        for module in getattr(m, "constant_weights", ()):
            yield module, 0.0, {}

    def _check_memory_leak(self, c: Check, s: Snapshot, m: Any) -> Iterator[Condition]:
        n = int(self.th(c, "samples"))
        hist = list(self.history)[-n:]
        if len(hist) < n:
            return
        series: dict[str, list[float]] = {}
        for h in hist:
            if h.memory.host_rss is not None:
                series.setdefault("host", []).append(h.memory.host_rss)
            for dev, v in h.memory.cuda_allocated.items():
                series.setdefault(f"cuda:{dev}", []).append(v)
        steps = hist[-1].step - hist[0].step or 1
        for kind, values in series.items():
            if len(values) < n:
                continue
            growth = values[-1] - values[0]
            diffs = [b - a for a, b in zip(values, values[1:])]
            rising = sum(d > 0 for d in diffs) / len(diffs)
            if growth >= self.th(c, "min_growth_bytes") and rising >= self.th(c, "rising_fraction"):
                yield None, growth / steps, {"kind": kind, "rate": _bytes(growth / steps), "growth": _bytes(growth), "samples": n}
                return

    # -- stall watcher ------------------------------------------------------------------------------
    def stall_condition(self, monitor: Any, now: float) -> Condition | None:
        """The training_stalled condition at wall time ``now`` (None when steps are coming)."""
        c = BY_NAME["training_stalled"]
        return stall_condition(monitor.steps.last_step_wall, monitor.steps.recent_step_seconds, now,
                               self.th(c, "min_seconds"), self.th(c, "factor"), self.options.stall_seconds)

    def check_stall(self, monitor: Any, now: float | None = None) -> None:
        """Evaluate training_stalled once (the watcher thread calls this; tests may too)."""
        cond = self.stall_condition(monitor, self._wall() if now is None else now)
        current = {("training_stalled", None): cond} if cond is not None else {}
        with self._eval_lock:
            self._apply(current, monitor.step_index, only={"training_stalled"})

    def _ensure_watcher(self, monitor: Any) -> None:
        if self._watcher is None and not self._stop.is_set():
            hard = self.options.stall_seconds
            interval = self._watch_interval or max(0.05, min(5.0, (hard or 60.0) / 4))
            self._watcher = start_watcher(self.check_stall, monitor, interval, self._stop)

    def close(self) -> None:
        """Stop the watcher thread and flush the notifier."""
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
        if self.notifier is not None:
            self.notifier.close()


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


__all__ = ["CheckEngine", "Finding", "STICKY"]
