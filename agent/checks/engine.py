"""The in-process check engine: evaluates the catalogue over the history of sampled-step snapshots.

Pure Python over host scalars (no torch). A finding fires once per (check, module) when its condition
has held for the check's ``hold`` consecutive samples, stays on ``Monitor.findings`` while it holds, and
resolves when it clears. Firing and resolving go to the notifier (log line, optional webhook).
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

from ..assets import runbooks_url
from ..snapshot import Snapshot
from .catalogue import BY_NAME, CHECKS, Check
from .conditions import CONDITIONS, Condition
from .findings import Finding
from .incidents import Incidents
from .watcher import start_watcher, stall_condition

if TYPE_CHECKING:
    from .delivery import Notifier


STICKY = frozenset({"loss_at_init", "constant_init"})
"""Facts about the run's start: once fired they stay (the condition cannot change)."""
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
        self.loss_negative = False  # a logged loss went below 0: relative progress means nothing
        self.samples = 0
        self._tracks: dict[tuple[str, str | None], _Track] = {}
        self._causes_since: dict[str, int] = {}
        self._skipped = frozenset(getattr(options, "skipped_checks", ()))
        self._runbooks = getattr(options, "runbook_base_url", None) or runbooks_url()
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
        if snap.loss_min is not None and snap.loss_min < 0:
            self.loss_negative = True
        if snap.loss is not None and math.isfinite(snap.loss):
            self.losses.append((snap.step, snap.loss))
            if len(self.loss_start) < int(self.th(BY_NAME["loss_not_decreasing"], "window")):
                self.loss_start.append(snap.loss)
        current: dict[tuple[str, str | None], Condition] = {}
        causes: set[str] = set()  # checks whose condition holds now as a cause, warm-up or not
        for check in CHECKS:
            if check.name == "training_stalled" or check.name in self._skipped:
                continue
            for module, value, fields in CONDITIONS[check.name](self, check, snap, monitor):
                if fields.get("cause", True):
                    causes.add(check.name)
                if self.samples >= check.warmup:
                    current[(check.name, module)] = (module, value, fields)
        self.samples += 1
        with self._eval_lock:
            self._apply(current, snap.step, only=set(BY_NAME) - {"training_stalled"}, causes=causes)
        self._ensure_watcher(monitor)

    def _apply(self, current: Mapping[tuple[str, str | None], Condition], step: int, only: set[str],
               causes: set[str] | None = None) -> None:
        """``causes``: the checks whose condition holds now and can explain others (default: those in current)."""
        """Advance tracks for the conditions that hold; hand what is ready and what cleared to the incidents."""
        ready: dict[tuple[str, str | None], Finding] = {}
        if causes is not None:  # the step since which each cause's condition holds, warm-up included
            for name in list(self._causes_since):
                if name not in causes:
                    del self._causes_since[name]
            for name in causes:
                self._causes_since.setdefault(name, step)
        for key, (module, value, fields) in current.items():
            check = BY_NAME[key[0]]
            track = self._tracks.get(key)
            if track is None:  # a condition may know it started before this sample ("started")
                track = self._tracks[key] = _Track(since=min(step, int(fields.get("started", step))))
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
        holding = self._causes_since if causes is not None else {k[0]: self._tracks[k].since for k in current}
        self.incidents.update(ready, cleared, holding, step)

    def _finding(self, check: Check, module: str | None, track: _Track) -> Finding:
        fields = {"module": module or "the model", "value": track.value, "since": track.since, **track.fields}
        try:  # a condition that saw something the template cannot say words it itself ("what")
            what = track.fields.get("what") or check.description.format(**fields)
        except (KeyError, ValueError, TypeError):
            what = f"{check.summary} value={track.value!r}"
        if track.fields.get("note"):  # what the condition saw that changes the reading (and the advice)
            what = f"{what}; {track.fields['note']}"
        advice = track.fields.get("advice") or check.advice
        return Finding(check=check.name, severity=check.severity, module=module, step=track.since,
                       message=f"{what}. Try: {advice}.", value=track.value, runbook_url=check.runbook_at(self._runbooks),
                       explains=bool(track.fields.get("cause", True)))

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

    def close(self, timeout: float = 1.5) -> None:
        """Stop the watcher thread and flush the notifier, within ``timeout`` seconds in all."""
        end = time.monotonic() + timeout
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=max(0.0, end - time.monotonic()))
        if self.notifier is not None:
            self.notifier.close(max(0.0, end - time.monotonic()))


__all__ = ["CheckEngine", "Finding", "STICKY"]
