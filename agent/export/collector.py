"""The Prometheus collector: every ``nnwatch_*`` family from the monitor's host state.

The collector only reads host values (the latest immutable Snapshot and plain counters); it never
touches a device tensor, so a scrape cannot slow or sync the training step.
"""

from __future__ import annotations

import logging
import os
import math
import platform
import weakref
from typing import Any, Iterator, Sequence

import torch
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .._version import __version__
from .source import MetricsSource

log = logging.getLogger("nnwatch")


def distributed_labels(env: dict[str, str] | None = None) -> dict[str, str]:
    """``rank``/``local_rank`` labels in a multi-process job (WORLD_SIZE > 1), else none."""
    env = dict(os.environ) if env is None else env
    try:
        world = int(env.get("WORLD_SIZE", "1"))
    except ValueError:
        world = 1
    if world <= 1:
        return {}
    return {"rank": env.get("RANK", "0"), "local_rank": env.get("LOCAL_RANK", "0")}


def spread_select(names: Sequence[str], cap: int, keep: set[str]) -> list[str]:
    """Pick at most ``cap`` names: every name in ``keep`` first, then evenly spaced over the model's depth
    (first and last included), so a capped 1,000-layer model still shows its whole depth."""
    if len(names) <= cap:
        return list(names)
    chosen = [n for n in names if n in keep][:cap]
    room = cap - len(chosen)
    rest = [n for n in names if n not in keep]
    if room > 0 and rest:
        if room == 1:
            picks = [rest[0]]
        else:
            picks = [rest[round(k * (len(rest) - 1) / (room - 1))] for k in range(room)]
        chosen.extend(dict.fromkeys(picks))
    order = {n: i for i, n in enumerate(names)}
    return sorted(set(chosen), key=order.__getitem__)


class NNWatchCollector:
    """Yields every ``nnwatch_*`` family from a monitor; holds the monitor weakly."""

    def __init__(self, monitor: MetricsSource, extra_labels: dict[str, str] | None = None) -> None:
        self._monitor = weakref.ref(monitor)
        self._extra = dict(extra_labels if extra_labels is not None else distributed_labels())

    def describe(self) -> list[Metric]:
        return []  # registration must not call collect()

    def collect(self) -> Iterator[Metric]:
        monitor = self._monitor()
        if monitor is None:
            return
        try:
            yield from self._collect(monitor)
        except Exception:  # noqa: BLE001 - a raising collector would fail the whole scrape
            monitor.guard.failed("export")

    # helpers -----------------------------------------------------------------------------------
    def _family(self, kind: str, name: str, doc: str, labels: Sequence[str] = (), unit: str = "") -> Any:
        cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
        return cls(name, doc, labels=[*self._extra, *labels], unit=unit)

    def _one(self, kind: str, name: str, doc: str, value: float | None, **labels: str) -> Iterator[Metric]:
        fam = self._family(kind, name, doc, list(labels))
        if value is not None:
            fam.add_metric([*self._extra.values(), *labels.values()], value)
            yield fam

    def _collect(self, m: MetricsSource) -> Iterator[Metric]:
        ev = list(self._extra.values())
        snap = m.snapshot
        opts = m.options

        info = self._family("gauge", "nnwatch_build_info", "nnwatch agent build: version, torch and Python versions (always 1).",
                            ["version", "torch_version", "python_version"])
        info.add_metric([*ev, __version__, torch.__version__, platform.python_version()], 1)
        yield info

        # Every step.
        yield from self._one("counter", "nnwatch_steps", "Training steps completed in this process.", m.steps.steps_in_process)
        yield from self._one("gauge", "nnwatch_step", "Current global training step (continues across restarts from a checkpoint).", m.step_index)
        yield from self._one("counter", "nnwatch_sampled_steps", "Steps on which the heavy statistics were computed.", m.sampled_steps)
        yield from self._one("gauge", "nnwatch_sample_interval_steps", "Heavy statistics are computed every this many steps (the live value when an overhead budget adapts it).", m.schedule.interval)
        yield from self._one("gauge", "nnwatch_step_duration_seconds", "Wall time of the last training step.", m.steps.last_step_seconds)
        yield from self._one("counter", "nnwatch_step_time_seconds", "Wall time of all training steps; rate() over rate(nnwatch_steps_total) is the mean step time.", m.steps.step_seconds_total)
        yield from self._rank_time(m)
        yield from self._amp(m)
        yield from self._one("gauge", "nnwatch_last_step_timestamp_seconds", "Unix time at which the last step completed.", m.steps.last_step_wall)
        if m.steps.samples_total:
            yield from self._one("counter", "nnwatch_samples", "Training samples processed (first dimension of the model input).", m.steps.samples_total)
            yield from self._one("gauge", "nnwatch_samples_per_second", "Training samples per second over the last step.", m.steps.samples_per_second)
        lr = self._family("gauge", "nnwatch_learning_rate", "Learning rate per optimizer param group.", ["param_group"])
        for k, v in enumerate(m.steps.learning_rates):
            lr.add_metric([*ev, str(k)], v)
        yield lr

        # Agent health.
        err = self._family("counter", "nnwatch_agent_errors", "Failures inside the agent's own probes (training continued).", ["probe"])
        for probe, n in sorted(m.guard.errors.items()):
            err.add_metric([*ev, probe], n)
        yield err
        yield from self._one("counter", "nnwatch_agent_time_seconds", "Time the agent spent on the training thread, including its estimated cost inside sampled forwards.", m.guard.seconds)
        yield from self._one("gauge", "nnwatch_agent_overhead_ratio", "Agent time as a share of step time over the last sample interval (0..1); the overhead budget holds it at overhead_budget.", m.overhead_ratio)
        yield from self._one("counter", "nnwatch_eval_in_train_mode_forwards", "Forward passes without autograd while dropout/batch-norm modules were in training mode, in evaluation bursts (not those in most steps: a GAN's no_grad fakes, a policy acting).", m.eval_in_train_forwards)
        const = self._family("gauge", "nnwatch_constant_weights", "Layers with a >= 2-D weight of zero spread at attach (1 = constant).", ["module"])
        for module in m.constant_weights:
            const.add_metric([*ev, module], 1)
        yield const
        yield from self._findings(m, ev)
        yield from self._deliveries(m, ev)

        if snap is None:
            return
        yield from self._one("gauge", "nnwatch_last_sample_timestamp_seconds", "Unix time of the last sampled step.", snap.time)
        yield from self._one("gauge", "nnwatch_last_sample_step", "Training step the latest norms and ratios were measured at.", snap.step)
        fp = getattr(m, "fingerprint", None)
        if fp is not None and not getattr(m, "sharded", False):
            yield from self._one("gauge", "nnwatch_weight_fingerprint", "Global weight L2 norm taken at the same step on every rank (every fingerprint_every steps, held in between): DDP replicas must agree.", fp[1])
            yield from self._one("gauge", "nnwatch_weight_fingerprint_step", "Training step of nnwatch_weight_fingerprint.", fp[0])
        yield from self._one("gauge", "nnwatch_loss", "Mean training loss logged since the previous sampled step.", snap.loss)
        yield from self._one("gauge", "nnwatch_initial_loss", "First training loss logged (compare with ln(num_classes)).", snap.first_loss)
        if opts.num_classes or opts.expected_initial_loss is not None:
            import math

            expected = opts.expected_initial_loss if opts.expected_initial_loss is not None else math.log(opts.num_classes or 1)
            yield from self._one("gauge", "nnwatch_expected_initial_loss", "Loss expected at initialisation (ln(num_classes) or the configured value).", expected)
        yield from self._one("gauge", "nnwatch_validation_loss", "Last validation loss logged.", snap.val_loss)
        logged = self._family("gauge", "nnwatch_logged_value", "Other scalars passed to monitor.log(), by name.", ["name"])
        for name, v in sorted(m.logged.logged_values.items()):
            logged.add_metric([*ev, name], v)
        yield logged

        # Totals over the whole model.
        sharded = getattr(m, "sharded", False)
        if sharded:  # a shard's norm is no total: squares that add up over ranks instead (docs/setups.md)
            yield from self._squared_totals(snap)
        else:
            yield from self._one("gauge", "nnwatch_global_gradient_norm", "L2 norm of all gradients of the model.", snap.grad_norm)
            yield from self._one("gauge", "nnwatch_global_weight_norm", "L2 norm of all trainable weights of the model.", snap.weight_norm)
            yield from self._one("gauge", "nnwatch_global_update_ratio", "Update L2 norm / weight L2 norm across the last sampled optimizer step (healthy around 1e-3).", snap.update_ratio)
        yield from self._one("gauge", "nnwatch_gradient_clip_factor", "Gradient L2 norm the last sampled optimizer step consumed / norm when backward ended (1 = untouched, < 1 = clipped; gradient norms are read before clipping).", snap.grad_clip_factor)
        yield from self._one("gauge", "nnwatch_gradient_clipped_ratio", "Share of the last 20 sampled steps on which clipping shrank the gradients (0..1).", snap.grad_clipped_fraction)
        yield from self._one("gauge", "nnwatch_uncleared_gradient_norm", "L2 norm of gradients already present when the first backward after an optimizer step began (0 when zero_grad ran).", snap.uncleared_grad_norm)
        yield from self._data(snap)
        yield from self._one("gauge", "nnwatch_model_parameters", "Trainable parameter elements of the model.", sum(l.params for l in snap.layers))
        gnf = self._family("gauge", "nnwatch_global_nonfinite_elements", "NaN/Inf elements on the last sampled step, by tensor kind.", ["tensor"])
        for kind in ("gradient", "weight", "activation", "loss"):
            gnf.add_metric([*ev, kind], snap.nonfinite(kind))
        yield gnf
        yield from self._one("gauge", "nnwatch_global_parameters_without_gradient", "Trainable parameter tensors whose gradient stayed None through backward.", sum(l.params_without_grad for l in snap.layers))

        # Per layer, capped.
        firing = {f.module for f in m.findings if f.module}
        names = [l.module for l in snap.layers]
        keep = set(spread_select(names, opts.max_modules, firing))
        layers = [l for l in snap.layers if l.module in keep]
        acts_names = [a.key for a in snap.activations]
        keep_acts = set(spread_select(acts_names, opts.max_modules, firing))
        acts = [a for a in snap.activations if a.key in keep_acts]
        capped = self._family("gauge", "nnwatch_series_capped_modules", "Modules left out of per-module series by the max_modules cap (totals still include them).", ["kind"])
        capped.add_metric([*ev, "layer"], len(names) - len(layers))
        capped.add_metric([*ev, "activation"], len(acts_names) - len(acts) + len(m.probe.dropped_sites))
        yield capped
        if not getattr(m, "per_module", True):  # DDP: the per_module_ranks export the (identical) layers
            layers, acts = [], []
        if sharded:
            yield from self._squared_layers(layers)

        gn = self._family("gauge", "nnwatch_gradient_norm", "L2 norm of a layer's gradients.", ["module"])
        wn = self._family("gauge", "nnwatch_weight_norm", "L2 norm of a layer's trainable weights.", ["module"])
        ur = self._family("gauge", "nnwatch_update_ratio", "A layer's update L2 norm / weight L2 norm across the last sampled optimizer step.", ["module"])
        nograd = self._family("gauge", "nnwatch_parameters_without_gradient", "A layer's trainable parameter tensors whose gradient stayed None through backward.", ["module"])
        nf = self._family("gauge", "nnwatch_nonfinite_elements", "NaN/Inf elements on the last sampled step, by tensor kind and module.", ["tensor", "module"])
        for l in layers:
            lv = [*ev, l.module]
            if l.grad_norm is not None and not sharded:
                gn.add_metric(lv, l.grad_norm)
            if not sharded:
                wn.add_metric(lv, l.weight_norm)
            if l.update_ratio is not None and not sharded:
                ur.add_metric(lv, l.update_ratio)
            nograd.add_metric(lv, l.params_without_grad)
            nf.add_metric([*ev, "gradient", l.module], l.grad_nonfinite)
            nf.add_metric([*ev, "weight", l.module], l.weight_nonfinite)
        dead = self._family("gauge", "nnwatch_activation_dead_ratio", "Fraction of an activation's units never positive over the dead window (ReLU family).", ["module", "activation"])
        sat = self._family("gauge", "nnwatch_activation_saturated_ratio", "Fraction of an activation's outputs in its flat region (tanh/sigmoid family).", ["module", "activation"])
        for a in acts:
            av = [*ev, a.key, a.kind]
            if a.dead_ratio is not None:
                dead.add_metric(av, a.dead_ratio)
            if a.saturated_ratio is not None:
                sat.add_metric(av, a.saturated_ratio)
            nf.add_metric([*ev, "activation", a.key], a.nonfinite)
        yield from (gn, wn, ur, nograd, nf, dead, sat)

        # Memory at the step boundary.
        mem = snap.memory
        yield from self._one("gauge", "nnwatch_host_resident_memory_bytes", "Resident set size of the training process at the last sampled step boundary.", mem.host_rss)
        for name, values, doc in (
            ("nnwatch_cuda_memory_allocated_bytes", mem.cuda_allocated, "Bytes held by tensors in the CUDA caching allocator at the step boundary."),
            ("nnwatch_cuda_memory_reserved_bytes", mem.cuda_reserved, "Bytes reserved by the CUDA caching allocator at the step boundary."),
            ("nnwatch_cuda_memory_peak_allocated_bytes", mem.cuda_peak, "Peak bytes held by tensors since the process started."),
        ):
            fam = self._family("gauge", name, doc, ["device"])
            for dev, v in values.items():
                fam.add_metric([*ev, dev], v)
            yield fam
        nvml = m.memory_reader.nvml()
        used = self._family("gauge", "nnwatch_gpu_memory_used_bytes", "Device memory in use on the GPU (NVML), read at scrape time.", ["device"])
        total = self._family("gauge", "nnwatch_gpu_memory_total_bytes", "Device memory of the GPU (NVML).", ["device"])
        for dev, (u, t) in nvml.items():
            used.add_metric([*ev, dev], u)
            total.add_metric([*ev, dev], t)
        yield used
        yield total

    def _data(self, snap: Any) -> Iterator[Metric]:
        """What the model and its loss received on the last sampled step (agent.collect.inputs, .lossinputs)."""
        yield from self._one("gauge", "nnwatch_input_rms", "RMS of the model input's leading samples on the last sampled step (normalised data is about 1).", snap.input_rms)
        yield from self._one("gauge", "nnwatch_input_feature_scale_ratio", "2-D inputs: largest per-feature RMS / median per-feature RMS on the last sampled step.", snap.input_feature_ratio)
        if snap.input_constant is not None:
            yield from self._one("gauge", "nnwatch_input_constant", "1 when every inspected element of the model input was equal on the last sampled step.", float(snap.input_constant))
        if snap.loss_input_misuse is not None or snap.class_counts is not None:
            yield from self._one("gauge", "nnwatch_loss_input_probabilities", "1 when the classification loss received probabilities where it expects logits on the last sampled step.", float(snap.loss_input_misuse is not None))
        if snap.class_counts is not None:
            yield from self._one("gauge", "nnwatch_batch_distinct_labels", "Distinct class labels in the last sampled batch the classification loss received.", float(sum(1 for v in snap.class_counts if v)))
        yield from self._one("gauge", "nnwatch_retained_graphs", "Autograd graphs of earlier sampled steps (3+ steps back) still alive: 0 unless something keeps losses or outputs with their graphs.", float(snap.retained_graphs))

    def _rank_time(self, m: MetricsSource) -> Iterator[Metric]:
        """Where this rank's step time goes; in DDP the gradient all-reduce makes every rank's step equally
        long, so a straggler shows only in the time spent on its own work."""
        yield from self._one("counter", "nnwatch_forward_time_seconds", "Wall time inside training forward passes of the model (this rank's own work, never waiting on other ranks' gradients).", m.steps.forward_seconds_total)
        yield from self._one("counter", "nnwatch_input_wait_seconds", "Wall time from each step boundary to the step's first training forward (data loading, host-to-device copies).", m.steps.input_wait_seconds_total)

    def _amp(self, m: MetricsSource) -> Iterator[Metric]:
        """GradScaler state, when the monitor watches one (Monitor.watch_scaler)."""
        amp = getattr(m, "amp", None)
        if amp is None:
            return
        yield from self._one("counter", "nnwatch_amp_skipped_steps", "Optimizer steps the AMP GradScaler skipped because gradients held inf/NaN.", amp.skipped_total)
        yield from self._one("gauge", "nnwatch_amp_consecutive_skipped_steps", "Steps skipped in a row by the GradScaler (0 after an applied step); a growing run means the loss scale is collapsing.", amp.consecutive_skips)
        yield from self._one("gauge", "nnwatch_amp_loss_scale", "Loss scale of the GradScaler at the last sampled step.", amp.scale)
        snap = m.snapshot
        if snap is not None:
            yield from self._one("gauge", "nnwatch_amp_last_sample_skipped", "1 when the GradScaler skipped a step since the previous sample (its inf/NaN counts are expected).", float(snap.amp_skipped))

    def _squared_totals(self, snap: Any) -> Iterator[Metric]:
        """Sharded models: this rank's share of the model's squared norms; sum over ranks, then sqrt."""
        for name, attr, doc in (
            ("nnwatch_global_gradient_squared_norm", "grad_norm", "Sum of squares of this rank's shard of all gradients; sqrt(sum over ranks) is the model's gradient L2 norm."),
            ("nnwatch_global_weight_squared_norm", "weight_norm", "Sum of squares of this rank's shard of all trainable weights; sqrt(sum over ranks) is the model's weight L2 norm."),
            ("nnwatch_global_update_squared_norm", "update_norm", "Sum of squares of this rank's shard of the last sampled update; sqrt(sum over ranks) is the update L2 norm."),
        ):
            values = [getattr(l, attr) for l in snap.layers if getattr(l, attr) is not None]
            yield from self._one("gauge", name, doc, sum(v * v for v in values) if values else None)

    def _squared_layers(self, layers: Sequence[Any]) -> Iterator[Metric]:
        """Sharded models: per-layer squared norms of this rank's shard (sum by module over ranks, then sqrt)."""
        ev = list(self._extra.values())
        for name, attr, doc in (
            ("nnwatch_gradient_squared_norm", "grad_norm", "Sum of squares of this rank's shard of a layer's gradients (sum over ranks, then sqrt, for the layer's norm)."),
            ("nnwatch_weight_squared_norm", "weight_norm", "Sum of squares of this rank's shard of a layer's weights (sum over ranks, then sqrt, for the layer's norm)."),
            ("nnwatch_update_squared_norm", "update_norm", "Sum of squares of this rank's shard of a layer's last sampled update (sum over ranks, then sqrt)."),
        ):
            fam = self._family("gauge", name, doc, ["module"])
            for l in layers:
                v = getattr(l, attr)
                if v is not None:
                    fam.add_metric([*ev, l.module], v * v)
            yield fam

    def _deliveries(self, m: MetricsSource, ev: list[str]) -> Iterator[Metric]:
        """Per sink (webhook, pushgateway, history, tensorboard): delivered, given up, dropped (queue full or close())."""
        counts = m.delivery_counts() if hasattr(m, "delivery_counts") else {}
        if not counts:
            return
        families = [self._family("counter", name, doc, ["sink"]) for name, doc in (
            ("nnwatch_deliveries", "Webhook posts and Pushgateway pushes the receiver accepted; history and TensorBoard records written."),
            ("nnwatch_delivery_failures", "Webhook posts and Pushgateway pushes given up after their retries or deadline; 1 once the history or TensorBoard writer gave up."),
            ("nnwatch_delivery_dropped", "Webhook messages, history and TensorBoard records dropped unsent: the queue was full or close() could not wait."))]
        for sink, values in sorted(counts.items()):
            for fam, value in zip(families, values):
                fam.add_metric([*ev, sink], value)
        yield from families

    def _findings(self, m: MetricsSource, ev: list[str]) -> Iterator[Metric]:
        active = self._family("gauge", "nnwatch_finding_active", "1 while a check is firing for a module (module is empty for model-wide checks).", ["check", "severity", "module"])
        value = self._family("gauge", "nnwatch_finding_value", "The number behind an active finding, as its log line shows it (module is empty for model-wide checks).", ["check", "module"])
        for f in m.findings:
            active.add_metric([*ev, f.check, f.severity, f.module or ""], 1)
            if isinstance(f.value, (int, float)) and math.isfinite(f.value):
                value.add_metric([*ev, f.check, f.module or ""], float(f.value))
        yield active
        yield value
        engine = m.engine
        if engine is not None:
            total = self._family("counter", "nnwatch_findings", "Findings raised since the process started, by check and severity.", ["check", "severity"])
            for (check, severity), n in sorted(engine.raised.items()):
                total.add_metric([*ev, check, severity], n)
            yield total


__all__ = ["NNWatchCollector", "distributed_labels", "spread_select"]
