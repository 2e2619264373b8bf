"""Prometheus alerting and recording rules, generated from the check catalogue (agent.checks.catalogue).

Every catalogue check becomes an alert (``dead_units`` -> ``NNWatchDeadUnits``) with its ``for``, ``severity``,
a static ``summary``, a templated ``description``, the ``value`` and a ``runbook_url``; fleet alerts only
Prometheus can evaluate (target down, rank desync, straggler, throughput drop, GPU memory) follow. What a team
may change lives in :class:`RulesConfig`; values may be strings inserted verbatim (Helm ``{{ .Values }}``).
``nnwatch generate`` writes the committed ``alerts/nnwatch.rules.yml``; ``nnwatch rules`` prints variants.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping

from ..checks.catalogue import BY_NAME, CHECKS, RUNBOOK_BASE
from .fleet_rules import _fleet_rules
from .rule_model import COUNT, LAYER, NUM, WHERE, Rule, _finding, _own

Value = float | int | str
"""A threshold or duration: numbers are formatted for PromQL, strings are inserted verbatim."""

PROMETHEUS_PARAMS: Mapping[str, tuple[Value, str]] = MappingProxyType({
    "exploding_gradients.window": ("30m", "range over which the rolling median of the global gradient norm is taken"),
    "eval_in_train_mode.window": ("15m", "range over which no-grad forwards in training mode are counted"),
})
"""Parameters of catalogue checks that only the Prometheus rules use (the agent counts samples, PromQL time)."""

FLEET_PARAMS: Mapping[str, tuple[Value, str]] = MappingProxyType({
    "rank_desync.tolerance": (1e-3, "relative deviation of a rank's weight fingerprint from the median of its ranks"),
    "straggler_rank.factor": (1.5, "a rank's mean step time above this multiple of the median of its ranks"),
    "throughput_drop.ratio": (0.5, "steps or samples per second below this share of their own median"),
    "throughput_drop.window": ("1h", "range of the median that throughput is compared with"),
    "gpu_memory_near_capacity.warning_ratio": (0.9, "GPU memory used / total above which a warning fires"),
    "gpu_memory_near_capacity.critical_ratio": (0.97, "GPU memory used / total above which a page fires"),
})
"""Thresholds of the fleet alerts, same ``name.param`` keys as catalogue thresholds."""


def default_params() -> dict[str, Value]:
    """Every threshold key and its default: catalogue thresholds, Prometheus-only and fleet parameters."""
    out: dict[str, Value] = {f"{c.name}.{k}": v for c in CHECKS for k, v in c.thresholds.items()}
    out.update({k: v for k, (v, _) in PROMETHEUS_PARAMS.items()})
    out.update({k: v for k, (v, _) in FLEET_PARAMS.items()})
    return out


@dataclass(frozen=True)
class RulesConfig:
    """The one place to configure the rules (a monitoring mixin's ``_config``).

    Strings are inserted verbatim into expressions and ``for:`` fields, numbers are formatted for PromQL.
    """

    selector: str = 'job=~".+"'
    """Label matchers added to every ``nnwatch_*`` selector: which jobs the rules apply to."""
    target_selector: str = 'job=~".*nnwatch.*"'
    """Matchers on ``up`` for NNWatchExporterDown: the scrape jobs that are nnwatch training jobs (``up``
    covers every target of a Prometheus, so ``selector`` alone would page for other exporters)."""
    expected_jobs: tuple[str, ...] = ()
    """Jobs that must always have a target; NNWatchExporterDown also fires when ``up{job=...}`` is absent.
    Empty by default: training jobs come and go, and an absent batch job is usually a finished one."""
    run_labels: str = "job"
    """Labels that identify one training run across its ranks (compared by the rank alerts), e.g.
    ``namespace, job``."""
    thresholds: Mapping[str, Value] = field(default_factory=dict)
    """Overrides keyed ``check.threshold`` (see :func:`default_params`)."""
    for_durations: Mapping[str, str] = field(default_factory=dict)
    """``for:`` overrides keyed by rule key (the alert name; ``NNWatchGPUMemoryNearCapacityCritical`` for
    the paging tier of GPU memory)."""
    runbook_base_url: str = RUNBOOK_BASE
    """Base URL of docs/runbooks.md; each alert links to ``<base>#<alert name lowercased>``."""
    extra_labels: Mapping[str, str] = field(default_factory=dict)
    """Labels added to every alert (e.g. ``team``)."""
    interval: str | None = None
    """Evaluation interval of the rule groups (None: the Prometheus global one)."""

    def __post_init__(self) -> None:
        params = default_params()
        unknown = sorted(set(self.thresholds) - set(params))
        if unknown:
            raise ValueError(f"unknown threshold(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(params))}")
        keys = {r.key for r in RULES}
        unknown = sorted(set(self.for_durations) - keys)
        if unknown:
            raise ValueError(f"unknown rule key(s) in for_durations {', '.join(unknown)}; valid keys: {', '.join(sorted(keys))}")
        for k, v in self.thresholds.items():
            if isinstance(v, bool) or not isinstance(v, (int, float, str)):
                raise TypeError(f"threshold {k} must be a number or a string, got {v!r}")

    def param(self, key: str) -> str:
        """A threshold as PromQL text."""
        value = self.thresholds.get(key, default_params()[key])
        return value if isinstance(value, str) else _number(value)

    def duration(self, rule: "Rule") -> str:
        return self.for_durations.get(rule.key, rule.default_for)

    def m(self, metric: str, *matchers: str) -> str:
        """``metric{matchers, selector}``."""
        parts = [*matchers, self.selector] if self.selector else list(matchers)
        return f"{metric}{{{', '.join(parts)}}}" if parts else metric


def _number(v: float | int) -> str:
    f = float(v)
    if f.is_integer() and abs(f) < 1e15:
        return str(int(f))
    return repr(f)


def _catalogue_rules() -> list[Rule]:
    def rule(name: str, expr: Callable[[RulesConfig], str], desc: Callable[[RulesConfig], str], source: str,
             value: str = NUM) -> Rule:
        c = BY_NAME[name]
        return Rule(key=c.alert, alert=c.alert, severity=c.severity, summary=c.summary, default_for=c.prometheus_for,
                    expr=expr, description=desc, source=source, value=value)

    pct = "{{ $value | humanizePercentage }}"
    return [
        rule("nonfinite_values",
             lambda c: (f"(\n  sum without (tensor) ({c.m('nnwatch_global_nonfinite_elements')}) >= "
                        f"{c.param('nonfinite_values.min_count')}\n"
                        f"  unless\n  {c.m('nnwatch_amp_last_sample_skipped')} == 1\n)\nor\n"
                        f"{c.m('nnwatch_amp_consecutive_skipped_steps')} >= {c.param('nonfinite_values.amp_skipped_steps')}"),
             lambda c: "{{ $value | humanize }} NaN/Inf values (loss, gradients, weights or activations), or optimizer "
                       f"steps skipped in a row by the AMP GradScaler, on the last sampled step of {WHERE}; the job log "
                       "names the first layer.",
             "raw: nnwatch_global_nonfinite_elements, except on samples where a watched AMP GradScaler skipped the "
             "step (nnwatch_amp_last_sample_skipped, its inf/NaN is expected), or a GradScaler skipping many steps "
             "in a row (nnwatch_amp_consecutive_skipped_steps: the loss scale is collapsing).", value=COUNT),
        rule("exploding_gradients",
             lambda c: (f"{c.m('nnwatch_global_gradient_norm')} > {c.param('exploding_gradients.absolute')}\nor\n"
                        f"{c.m('nnwatch_global_gradient_norm')}\n  > {c.param('exploding_gradients.median_factor')} * "
                        f"quantile_over_time(0.5, {c.m('nnwatch_global_gradient_norm')}[{c.param('exploding_gradients.window')}])"),
             lambda c: f"global gradient norm {NUM} of {WHERE} is above "
                       f"{c.param('exploding_gradients.median_factor')}x its median over "
                       f"{c.param('exploding_gradients.window')} or above {c.param('exploding_gradients.absolute')}.",
             "raw: nnwatch_global_gradient_norm against its own median over a time window."),
        rule("vanishing_gradients",
             lambda c: (f"{c.m('nnwatch_gradient_norm')} / {c.m('nnwatch_weight_norm')} < {c.param('vanishing_gradients.relative')}\n"
                        f"  and ignoring(module)\n"
                        f"max without (module) ({c.m('nnwatch_gradient_norm')} / {c.m('nnwatch_weight_norm')}) "
                        f">= 100 * {c.param('vanishing_gradients.relative')}"),
             lambda c: f"{LAYER}: gradient norm / weight norm is {NUM}, below "
                       f"{c.param('vanishing_gradients.relative')}, while other layers still get a signal.",
             "raw: nnwatch_gradient_norm / nnwatch_weight_norm per layer, only while some layer of the model gets "
             "a signal (a converged model is not vanishing). The agent's RMS test needs per-layer sizes it does "
             "not export."),
        rule("dead_units",
             lambda c: f"{c.m('nnwatch_activation_dead_ratio')} >= {c.param('dead_units.ratio')}",
             lambda c: f"{pct} of the units of activation {{{{ $labels.module }}}} ({{{{ $labels.activation }}}}) in "
                       f"{WHERE} never activated over the agent's dead-unit window.",
             "raw: nnwatch_activation_dead_ratio (the window is kept by the agent).", value=pct),
        rule("saturated_activations",
             lambda c: f"{c.m('nnwatch_activation_saturated_ratio')} >= {c.param('saturated_activations.ratio')}",
             lambda c: f"{pct} of the outputs of activation {{{{ $labels.module }}}} ({{{{ $labels.activation }}}}) in "
                       f"{WHERE} are in its flat region.",
             "raw: nnwatch_activation_saturated_ratio.", value=pct),
        rule("loss_not_decreasing", _finding("loss_not_decreasing", "nnwatch_loss"),
             lambda c: f"the training loss of {WHERE} is stuck at {NUM}, close to where it started.",
             "agent finding: nnwatch_finding_active. Windows of samples compared with the start of the run need "
             "the whole history, which PromQL expresses poorly; the value shown is nnwatch_loss."),
        rule("loss_at_init",
             lambda c: (f"{c.m('nnwatch_initial_loss')}\n  and\n"
                        f"abs({c.m('nnwatch_initial_loss')} - {c.m('nnwatch_expected_initial_loss')})\n"
                        f"  > clamp_min({c.param('loss_at_init.relative')} * abs({c.m('nnwatch_expected_initial_loss')}), "
                        f"{c.param('loss_at_init.absolute')})"),
             lambda c: f"the first loss of {WHERE} was {NUM}, far from the loss expected at "
                       "initialisation (ln of the number of classes).",
             "raw: nnwatch_initial_loss against nnwatch_expected_initial_loss (exported when num_classes or "
             "expected_initial_loss is set)."),
        rule("learning_rate_zero",
             lambda c: f"max without (param_group) ({c.m('nnwatch_learning_rate')}) <= {c.param('learning_rate_zero.max_lr')}",
             lambda c: f"the largest learning rate of {WHERE} is {NUM}.",
             "raw: nnwatch_learning_rate (largest over the param groups)."),
        rule("parameters_without_gradient",
             lambda c: f"{c.m('nnwatch_parameters_without_gradient')} >= {c.param('parameters_without_gradient.min_params')}",
             lambda c: f"{LAYER}: {{{{ $value | humanize }}}} trainable parameter tensor(s) get no gradient in backward.",
             "raw: nnwatch_parameters_without_gradient per layer.", value=COUNT),
        rule("weights_not_updating",
             lambda c: (f"{c.m('nnwatch_gradient_norm')} > 0\n  and\n"
                        f"{c.m('nnwatch_update_ratio')} <= {c.param('weights_not_updating.max_update')}"),
             lambda c: f"{LAYER} has gradient norm {NUM} but its weights did not change across "
                       "the optimizer step.",
             "raw: nnwatch_update_ratio (update norm / weight norm, 0 exactly when the update norm is 0) while "
             "nnwatch_gradient_norm > 0."),
        rule("update_ratio_out_of_range",
             lambda c: (f"{c.m('nnwatch_global_update_ratio')} > {c.param('update_ratio_out_of_range.high')}\nor\n"
                        f"(\n  {c.m('nnwatch_global_update_ratio')} < {c.param('update_ratio_out_of_range.low')}\n"
                        f"  unless\n  max without (param_group) ({c.m('nnwatch_learning_rate')}) <= "
                        f"{c.param('learning_rate_zero.max_lr')}\n)"),
             lambda c: f"update/weight ratio {NUM} of {WHERE} is outside "
                       f"[{c.param('update_ratio_out_of_range.low')}, {c.param('update_ratio_out_of_range.high')}] "
                       "(healthy is around 1e-3).",
             "raw: nnwatch_global_update_ratio; a learning rate of 0 is left to NNWatchLearningRateZero."),
        rule("gradients_not_cleared", _finding("gradients_not_cleared", "nnwatch_uncleared_gradient_norm"),
             lambda c: f"gradients of norm {NUM} were left over when backward started in {WHERE}.",
             "agent finding: the left-over gradient must equal the one the previous sampled step consumed (a GAN's "
             "legitimate left-overs differ), which needs both at one step; the value shown is "
             "nnwatch_uncleared_gradient_norm."),
        rule("eval_in_train_mode",
             lambda c: (f"increase({c.m('nnwatch_eval_in_train_mode_forwards_total')}[{c.param('eval_in_train_mode.window')}]) "
                        f">= {c.param('eval_in_train_mode.min_forwards')}"),
             lambda c: f"{{{{ $value | humanize }}}} forward passes without autograd ran with dropout/batch norm in training "
                       f"mode in {WHERE} over the last {c.param('eval_in_train_mode.window')}.",
             "raw: increase of nnwatch_eval_in_train_mode_forwards_total over a time window (the agent's "
             "quiet_samples becomes the window).", value=COUNT),
        rule("overfitting", _finding("overfitting", "nnwatch_validation_loss"),
             lambda c: f"the validation loss of {WHERE} stayed above its best for several evaluations, now {NUM}, "
                       "while the training loss fell.",
             "agent finding: validation losses after their best against the training loss at the same steps need "
             "the history of both; the value shown is nnwatch_validation_loss."),
        rule("loss_spike", _finding("loss_spike", "nnwatch_loss"),
             lambda c: f"the training loss of {WHERE} jumped to {NUM}, far above its recent median.",
             "agent finding: the sample's mean loss against the median and spread of the previous samples; the "
             "value shown is nnwatch_loss."),
        rule("divergence", _finding("divergence", "nnwatch_global_weight_norm"),
             lambda c: f"the weights of {WHERE} grow fast (global weight norm {NUM}) while the loss climbs away "
                       "from its best: training is diverging.",
             "agent finding: the global weight norm rising at every sample while the loss rises from its best; "
             "the value shown is nnwatch_global_weight_norm."),
        rule("constant_init",
             lambda c: f"{c.m('nnwatch_constant_weights')} == 1",
             lambda c: f"{LAYER} was initialised with a constant weight (zero spread).",
             "raw: nnwatch_constant_weights (measured once at attach)."),
        rule("probabilities_as_logits", _own("probabilities_as_logits"),
             lambda c: f"the classification loss of {WHERE} receives probabilities (softmax or sigmoid outputs) "
                       "where it expects logits; the job log names the loss function.",
             "agent finding: the input of the loss call on sampled steps looks like probabilities "
             "(nnwatch_loss_input_probabilities); the value is 1.", value=COUNT),
        rule("unshuffled_batches", _own("unshuffled_batches"),
             lambda c: f"the training batches of {WHERE} each hold only {NUM} distinct label(s): the data is read "
                       "in label order, not shuffled.",
             "agent finding: distinct labels per sampled batch against a shuffled batch of that size, with the "
             "dominant label moving (nnwatch_batch_distinct_labels); the value is the distinct labels per batch."),
        rule("class_imbalance", _own("class_imbalance"),
             lambda c: f"the class labels of {WHERE} are far from balanced (ratio or missing classes {NUM}); the "
                       "job log gives the classes.",
             "agent finding: label counts accumulated over sampled batches; the value is the most/least frequent "
             "ratio, or the number of classes that never appear."),
        rule("inputs_not_normalized", _own("inputs_not_normalized"),
             lambda c: f"the model input of {WHERE} is far from normalised (value {NUM}: RMS, feature scale ratio, "
                       "or 0 for a constant input).",
             "agent finding: nnwatch_input_rms, nnwatch_input_feature_scale_ratio and nnwatch_input_constant held "
             "over 3 sampled steps; the value is the one that is off."),
        rule("repeated_batches", _own("repeated_batches"),
             lambda c: f"{WHERE} received the identical input batch on the last {NUM} sampled steps.",
             "agent finding: an exact fingerprint of the model input, equal on consecutive sampled steps; the "
             "value is the number of such samples."),
        rule("graph_retained", _own("graph_retained"),
             lambda c: f"{WHERE} keeps the autograd graphs of {NUM} earlier sampled steps alive (loss tensors kept "
                       "instead of loss.item()).",
             "agent finding: nnwatch_retained_graphs, graphs of earlier sampled steps still alive 3+ steps later; "
             "the value is their number."),
        rule("memory_leak", _finding("memory_leak", "nnwatch_host_resident_memory_bytes"),
             lambda c: f"memory of {WHERE} grows steadily every step (host RSS now {{{{ $value | humanize1024 }}}}B); "
                       "the job log says which memory and how fast.",
             "agent finding: the agent compares memory at the same point of every step and requires most steps "
             "to grow, which separates a leak from a one-off allocation; the value shown is host RSS.",
             value="{{ $value | humanize1024 }}B"),
        rule("training_stalled",
             lambda c: (f"time() - {c.m('nnwatch_last_step_timestamp_seconds')}\n"
                        f"  > clamp_min({c.param('training_stalled.factor')} * {c.m('nnwatch_step_duration_seconds')}, "
                        f"{c.param('training_stalled.min_seconds')})"),
             lambda c: f"{WHERE} completed no training step for {{{{ $value | humanizeDuration }}}}.",
             "raw: time() - nnwatch_last_step_timestamp_seconds against the last step's duration; the /metrics "
             "thread keeps answering while the training thread hangs.",
             value="{{ $value | humanizeDuration }}"),
    ]



RULES: tuple[Rule, ...] = (*_catalogue_rules(), *_fleet_rules())
"""Every generated alert rule, catalogue first."""

ALERTS: tuple[str, ...] = tuple(dict.fromkeys(r.alert for r in RULES))
"""Every alert name (each needs a runbook section and a promtool test)."""


def _recording(c: RulesConfig) -> list[dict[str, Any]]:
    # Every rank's counters are read once per evaluation: steps/s is recorded first and the per-step means
    # divide by it (rules of one group run in order), instead of each recomputing rate(steps) over every rank.
    steps = "nnwatch:steps_per_second:rate5m"
    return [
        {"record": steps, "expr": f"rate({c.m('nnwatch_steps_total')}[5m])"},
        {"record": "nnwatch:samples_per_second:rate5m", "expr": f"rate({c.m('nnwatch_samples_total')}[5m])"},
        {"record": "nnwatch:step_seconds:mean5m",
         "expr": f"rate({c.m('nnwatch_step_time_seconds_total')}[5m]) / {steps}"},
        {"record": "nnwatch:rank_work_seconds:mean5m",
         "expr": (f"(rate({c.m('nnwatch_forward_time_seconds_total')}[5m]) + "
                  f"rate({c.m('nnwatch_input_wait_seconds_total')}[5m]))\n/ {steps}")},
        # One throughput series per rank (samples/s where the agent counts samples, else steps/s), so that
        # NNWatchThroughputDrop takes its 1h median over one series per rank, not over both.
        {"record": "nnwatch:throughput:rate5m", "expr": f"nnwatch:samples_per_second:rate5m\nor\n{steps}"},
    ]


def _alert(rule: Rule, c: RulesConfig) -> dict[str, Any]:
    return {
        "alert": rule.alert,
        "expr": rule.expr(c),
        "for": c.duration(rule),
        "labels": {"severity": rule.severity, **c.extra_labels},
        "annotations": {
            "summary": rule.summary,
            "description": _sentence(rule.description(c)),
            "value": rule.value,
            "runbook_url": f"{c.runbook_base_url}#{rule.alert.lower()}",
        },
    }


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def render_groups(config: RulesConfig | None = None) -> list[dict[str, Any]]:
    """The ``groups:`` list of a Prometheus rule file (or a PrometheusRule spec), as plain dicts."""
    c = config or RulesConfig()
    catalogue = {r.alert for r in _catalogue_rules()}
    # Recording rules share the fleet group and come first: rules of one group run in order, so the alerts
    # read this evaluation's recorded values (groups run independently, one would lag the other).
    groups = [
        {"name": "nnwatch.checks", "rules": [_alert(r, c) for r in RULES if r.alert in catalogue]},
        {"name": "nnwatch.fleet", "rules": [*_recording(c), *(_alert(r, c) for r in RULES if r.alert not in catalogue)]},
    ]
    if c.interval:
        for g in groups:
            g["interval"] = c.interval
    return groups


def header(config: RulesConfig | None = None, command: str | None = None) -> str:
    """The comment block of the generated file: how it was made (``command``: the command line that made a
    custom file, which regenerates it) and which signal each alert reads."""
    if command is None:
        lines = ["Generated by `nnwatch generate` (agent/ops/rules.py) from agent/checks/catalogue.py. Do not edit by hand:",
                 "change RulesConfig (selectors, thresholds, for durations) and regenerate, or run `nnwatch rules`."]
    else:
        from .._version import __version__

        lines = [f"Generated by nnwatch {__version__} with:", f"    {command}",
                 "Do not edit by hand: to change it, run that command again with other options (`nnwatch rules --help`)."]
    lines += ["",
             "Signal of each alert: 'raw' rules evaluate exported metrics; 'agent finding' rules read the",
             "agent's own evaluation (nnwatch_finding_active) where the check needs history PromQL expresses poorly.",
             ""]
    for r in RULES:
        lines.append(f"{r.key} ({r.severity}, for {(config or RulesConfig()).duration(r)}): {r.source}")
    out = []
    for line in lines:
        wrapped = textwrap.wrap(line, 108, subsequent_indent="    ") or [""]
        out += [f"# {w}".rstrip() for w in wrapped]
    return "\n".join(out) + "\n"


def render_yaml(config: RulesConfig | None = None, command: str | None = None) -> str:
    """A complete Prometheus rule file; ``command`` is the command line that made it (see :func:`header`)."""
    import yaml

    class _Dumper(yaml.SafeDumper):
        pass

    def _str(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
        style = "|" if "\n" in data else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)

    _Dumper.add_representer(str, _str)
    body = yaml.dump({"groups": render_groups(config)}, Dumper=_Dumper, sort_keys=False, width=1000,
                     default_flow_style=False, allow_unicode=True)
    return header(config, command) + body


RULES_FILE = Path("alerts") / "nnwatch.rules.yml"


def generate(root: Path) -> list[Path]:
    """Write the committed rule file under ``root``."""
    path = root / RULES_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_yaml(RulesConfig()))
    return [path]


__all__ = ["RulesConfig", "RULES", "ALERTS", "render_groups", "render_yaml", "generate", "default_params"]
