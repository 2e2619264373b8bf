"""What preflight returns: one PreflightResult per check, the report that prints them as a table, the CI error."""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass, field
from typing import Iterator, NamedTuple

CHECK_NAMES = ("loss_at_init", "gradient_reachability", "overfit_one_batch", "batch_independence",
               "input_independent_baseline")
"""Result names, in the order the checks run and print (a contract)."""

_MESSAGE_WIDTH = 78


class PreflightResult(NamedTuple):
    """One check: ``ok`` is False only when the check ran and failed (a check that could not be judged is ok
    and listed in ``PreflightReport.skipped``); ``value`` is the number the verdict rests on (None when there
    is none); ``message`` says what was measured and, on failure, what to try."""

    name: str
    ok: bool
    value: float | None
    message: str


class SkippedResult(PreflightResult):
    """A check that could not be judged on this model and batch: ok, and its message says why."""

    __slots__ = ()


class PreflightError(AssertionError):
    """Raised by :meth:`PreflightReport.raise_if_failed`; the message lists every failed check. An
    AssertionError, so pytest and unittest count a failed preflight as a test failure."""

    def __init__(self, report: "PreflightReport") -> None:
        self.report = report
        self.failures = report.failures
        lines = [f"nnwatch preflight: {len(self.failures)} of {len(report.results)} checks failed "
                 f"({', '.join(r.name for r in self.failures)})"]
        lines += [f"- {r.name} ({_number(r.value)}): {r.message}" for r in self.failures]
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class PreflightReport:
    """The verdicts of :func:`agent.preflight`. ``print(report)`` shows a table with the total time."""

    results: list[PreflightResult]
    seconds: float
    """Wall time of the whole preflight."""
    examples: int = 0
    """Examples the overfit, batch-independence and baseline checks used."""
    batch_size: int = 0
    """Examples in the batch given (loss at init and gradient reachability use all of them)."""
    notes: tuple[str, ...] = field(default=())
    """Choices preflight made for this model (an inferred number of classes, how the loss was called)."""

    @property
    def ok(self) -> bool:
        """Every check passed (or could not be judged)."""
        return all(r.ok for r in self.results)

    @property
    def skipped(self) -> list[str]:
        """Checks that could not be judged on this model and batch (their message says why); they count as ok."""
        return [r.name for r in self.results if isinstance(r, SkippedResult)]

    @property
    def failures(self) -> list[PreflightResult]:
        return [r for r in self.results if not r.ok]

    def __getitem__(self, name: str) -> PreflightResult:
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(f"no preflight check named {name!r}; checks: {', '.join(CHECK_NAMES)}")

    def __iter__(self) -> Iterator[PreflightResult]:
        return iter(self.results)

    def raise_if_failed(self) -> None:
        """For CI: raise :class:`PreflightError` listing the failed checks; return quietly when all passed."""
        if not self.ok:
            raise PreflightError(self)

    def verdict(self, result: PreflightResult) -> str:
        if not result.ok:
            return "FAIL"
        return "skip" if result.name in self.skipped else "pass"

    def __str__(self) -> str:
        passed = sum(1 for r in self.results if r.ok and r.name not in self.skipped)
        failed = len(self.failures)
        head = (f"nnwatch preflight: {passed} passed, {failed} failed, {len(self.skipped)} skipped "
                f"in {self.seconds:.2f} s ({self.examples} of {self.batch_size} examples for the overfit, "
                f"batch and baseline checks)")
        width = max(len("check"), *(len(r.name) for r in self.results)) if self.results else len("check")
        rows = [f"{'check':<{width}}  verdict  {'value':>9}  what it found, what to try"]
        indent = " " * (width + 2 + 7 + 2 + 9 + 2)
        for r in self.results:
            wrapped = textwrap.wrap(r.message, _MESSAGE_WIDTH) or [""]
            rows.append(f"{r.name:<{width}}  {self.verdict(r):<7}  {_number(r.value):>9}  {wrapped[0]}")
            rows += [indent + line for line in wrapped[1:]]
        tail = [line for n in self.notes for line in textwrap.wrap(f"note: {n}", width + 26 + _MESSAGE_WIDTH,
                                                                     subsequent_indent="      ")]
        verdict = "preflight passed" if self.ok else "preflight FAILED: fix the failures before the long run"
        return "\n".join([head, *rows, *tail, verdict])

    def __repr__(self) -> str:
        verdicts = ", ".join(f"{r.name}={self.verdict(r)}" for r in self.results)
        return f"PreflightReport(ok={self.ok}, {verdicts}, seconds={self.seconds:.2f})"


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if float(value).is_integer() and abs(value) < 1e6:
        return str(int(value))
    return f"{value:.4g}"


__all__ = ["PreflightResult", "SkippedResult", "PreflightReport", "PreflightError", "CHECK_NAMES"]
