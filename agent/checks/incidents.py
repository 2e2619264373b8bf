"""Incidents: the cause first, its consequences under it, one log line each, and every finding kept in history.

The engine hands over, at each evaluation, the findings whose condition has held long enough and the ones that
cleared. Here a finding whose cause (``EXPLAINED_BY`` in the catalogue) holds is not logged on its own: it
waits while the cause is still building up, and is listed under the cause once the cause fires (as the shipped
Alertmanager inhibit rules do for the job's alerts). A finding that clears and comes back within the re-log
window is re-activated silently, so a flapping condition cannot flood the log or the webhook.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import TYPE_CHECKING, Mapping

from .catalogue import explains
from .findings import Finding, FindingRecord

if TYPE_CHECKING:
    from .delivery import Notifier

Key = tuple[str, "str | None"]


class Incidents:
    """Active findings (the causes), their consequences, and the record of every finding ever raised."""

    def __init__(self, notifier: "Notifier | None", relog_steps: int) -> None:
        self.notifier = notifier
        self.relog_steps = relog_steps
        """A finding that clears and fires again within this many steps of its last log line is not logged again."""
        self.active: dict[Key, Finding] = {}
        self.consequences: dict[Key, Key] = {}  # consequence -> the active cause that explains it
        self.records: dict[Key, FindingRecord] = {}
        self.raised: Counter[tuple[str, str]] = Counter()
        self._silent: set[Key] = set()  # re-activated without a log line: resolve without one too
        self.lock = threading.Lock()

    def update(self, ready: Mapping[Key, Finding], cleared: set[Key], holding: Mapping[str, int], step: int) -> None:
        """``ready``: findings whose condition held for their check's hold; ``cleared``: keys whose condition is
        gone; ``holding``: checks whose condition holds now (fired or not) as a cause, with the step since which
        they hold: the candidate causes."""
        fired: list[Finding] = []
        resolved: list[Finding] = []
        waiting: list[tuple[Key, Finding]] = []
        recent = self._recent_causes(step)
        for key, finding in ready.items():
            record = self.records.get(key)
            if record is not None:
                record.seen(finding, step)
            if key in self.active:
                with self.lock:
                    self.active[key] = finding  # keep the number current while it holds
                continue
            if key in self.consequences:
                continue
            if self._attach(key, finding, step, recent, holding):
                continue
            if any(explains(c, key[0], since, finding.step) for c, since in holding.items()):
                waiting.append((key, finding))  # its cause is still building up: wait for it
                continue
            fired_record = self._record(key, finding, step)
            silent = record is not None and record.last_logged is not None and step - record.last_logged < self.relog_steps
            with self.lock:
                self.active[key] = finding
            fired_record.fire(finding, step, logged=not silent)
            self.raised[(finding.check, finding.severity)] += 1
            if silent:
                self._silent.add(key)
            else:
                self._silent.discard(key)
                fired.append(finding)
            # Findings it explains that fired before it (their cause was not visible yet) move under it.
            for other in [k for k in self.active
                          if explains(key[0], k[0], finding.step, self.records[k].first_step)]:
                with self.lock:
                    self.active.pop(other)
                self.consequences[other] = key
                self.records[other].explained_by = key
                fired_record.add_consequence(other)
        if waiting:  # a cause that fired just now lists what waited for it in its own line
            recent = self._recent_causes(step)
            for key, finding in waiting:
                self._attach(key, finding, step, recent, holding)
        for key in cleared:
            self.consequences.pop(key, None)
            with self.lock:
                finding = self.active.pop(key, None)
            if key in self.records:
                self.records[key].resolve(step)
            if finding is not None and key not in self._silent:
                resolved.append(finding)
            self._silent.discard(key)
        if self.notifier is not None:
            by_check: dict[str, list[Finding]] = {}
            for f in fired:  # one line per check and evaluation, however many layers it names
                by_check.setdefault(f.check, []).append(f)
            for same in by_check.values():
                self.notifier.fired(same[0], self.consequence_text(same[0]), also=[f.module or "" for f in same[1:]])
                for f in same[1:]:
                    self.records[(f.check, f.module)].logged -= 1  # named in the first one's line
            for f in resolved:
                self.notifier.resolved(f, step)

    def _attach(self, key: Key, finding: Finding, step: int, recent: list[Key], holding: Mapping[str, int]) -> bool:
        """List ``finding`` under the root of a recent cause that explains it; False when none does. A cause
        counts from the first step its condition held, warm-up included (``holding``)."""
        def since(k: Key) -> int:
            return min(self.records[k].first_step, holding.get(k[0], self.records[k].first_step))

        cause = next((k for k in recent if explains(k[0], key[0], since(k), finding.step)), None)
        if cause is None:
            return False
        cause = self._root(cause)
        self.consequences[key] = cause
        self._record(key, finding, step, explained_by=cause).seen(finding, step)
        self.records[cause].add_consequence(key)
        return True

    def _recent_causes(self, step: int) -> list[Key]:
        """Findings that can explain new ones: active causes, their active consequences (a chain: dead units
        after a divergence starve earlier layers of gradient), and causes resolved within the re-log window (the
        damage of a NaN or a divergence outlives it); active ones first, then the most recent."""
        live = set(self.active) | set(self.consequences)
        recent = [(k, r) for k, r in self.records.items() if r.explains and (k in live or (
            r.explained_by is None and r.fired and r.resolved_step is not None
            and step - r.resolved_step <= self.relog_steps))]
        return [k for k, r in sorted(recent, key=lambda kr: (kr[0] not in live, -kr[1].last_step))]

    def _root(self, key: Key) -> Key:
        seen = {key}
        while key in self.consequences and self.consequences[key] not in seen:
            key = self.consequences[key]
            seen.add(key)
        return key

    def consequence_text(self, f: Finding) -> str:
        record = self.records.get((f.check, f.module))
        return record.consequence_text() if record is not None else ""

    def _record(self, key: Key, finding: Finding, step: int, explained_by: Key | None = None) -> FindingRecord:
        record = self.records.get(key)
        if record is None:
            record = self.records[key] = FindingRecord(check=finding.check, severity=finding.severity,
                                                       module=finding.module, first_step=finding.step,
                                                       last_step=step, message=finding.message)
        record.explained_by = explained_by
        return record

    def history(self) -> list[FindingRecord]:
        """Every finding raised so far (causes and consequences), in order of first step."""
        return sorted((r.copy() for r in self.records.values()), key=lambda r: (r.first_step, r.check))

    def summary(self, steps: int) -> str:
        """One paragraph: what was found over ``steps`` steps, one clause per check with the layers it named and
        the checks it explains."""
        causes = [r for r in self.history() if r.explained_by is None]
        if not causes:
            return f"nnwatch: no findings in {steps} steps."
        by_check: dict[str, list[FindingRecord]] = {}
        for r in causes:
            by_check.setdefault(r.check, []).append(r)
        parts = []
        for check, records in by_check.items():
            modules = [r.module for r in records if r.module]
            where = f" in {_few(modules)}" if modules else ""
            active = [r for r in records if r.resolved_step is None]
            until = "still active" if active else f"resolved at step {max(r.resolved_step or 0 for r in records)}"
            explained = sorted({c for r in records for c, _ in r.consequences})
            extra = f"; explains {', '.join(explained)}" if explained else ""
            parts.append(f"{check} [{records[0].severity}]{where} from step {min(r.first_step for r in records)} "
                         f"({until}, peak {max(r.peak for r in records):.3g}{extra})")
        return f"nnwatch: {len(parts)} finding(s) in {steps} steps: " + "; ".join(parts) + "."


def _few(names: list[str | None], shown: int = 4) -> str:
    names = [n for n in names if n]
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


__all__ = ["Incidents"]
