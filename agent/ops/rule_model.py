"""Shared pieces of the generated Prometheus rules: one alert (:class:`Rule`), the description fragments and the
expression helpers; agent.ops.rules builds the catalogue's alerts from them, agent.ops.fleet_rules the fleet's.
Expressions are functions of an agent.ops.rules.RulesConfig (the team's settings)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

# -- description fragments (Prometheus alert templates) --------------------------------------------
WHERE = "job {{ $labels.job }} on {{ $labels.instance }}{{ with $labels.rank }} (rank {{ . }}){{ end }}"
"""Where an alert fires: job, instance and, in distributed jobs, the rank."""
LAYER = "layer {{ $labels.module }} of " + WHERE
NUM = '{{ printf "%.3g" $value }}'
"""A measured number (norm, loss, ratio, learning rate) with three significant digits."""
COUNT = "{{ $value | humanize }}"


@dataclass(frozen=True)
class Rule:
    """One generated alert: its expression and texts are built from a RulesConfig."""

    key: str
    alert: str
    severity: str
    summary: str
    default_for: str
    expr: Callable[[Any], str]
    description: Callable[[Any], str]
    source: str
    """Which signal the rule reads, and why (written into the generated file's header)."""
    value: str = NUM
    """Template of the ``value`` annotation (what the notification shows as the number)."""


def _finding(check: str, value_metric: str) -> Callable[[Any], str]:
    """The agent's own evaluation (``nnwatch_finding_active``), joined with a metric that shows the number."""
    def expr(c: Any) -> str:
        return (f"{c.m(value_metric)}\n  and ignoring(check, severity, module)\n"
                f"({c.m('nnwatch_finding_active', f'check={chr(34)}{check}{chr(34)}')} == 1)")
    return expr


def _own(check: str) -> Callable[[Any], str]:
    """The agent's own finding with the number behind it (``nnwatch_finding_value``, present while active)."""
    def expr(c: Any) -> str:
        return f"max without (check, module) ({c.m('nnwatch_finding_value', f'check={chr(34)}{check}{chr(34)}')})"
    return expr
