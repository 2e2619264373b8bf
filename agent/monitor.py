"""The Monitor: owns every hook and the step loop; turns sampled steps into host snapshots for checks and export.

Data flow: hooks on the root module and the optimizer -> device tensors (agent.collect; no host sync) -> on a
sampled step boundary, one batched device-to-host copy -> an immutable Snapshot swapped in under a lock ->
read by the Prometheus collector at scrape time (agent.export) and by the check engine (agent.checks).
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from . import state
from .checks.delivery import Notifier
from .checks.engine import CheckEngine
from .checks.findings import Finding, FindingRecord
from .collect import native, scripting
from .collect.budget import ForwardCost, SampleSchedule
from .collect.distributed import RankInfo, exports_per_module, is_sharded, next_fingerprint, unwrap
from .collect.logged import LoggedValues
from .collect.memory import MemoryReader
from .collect.nograd import NoGradForwards
from .collect.params import ParamTracker, optimizer_param_ids
from .collect.probes import ActivationProbe
from .collect.steps import StepClock
from .collect.sample import DataWatches, take_sample
from .config import Options
from .console import show_agent_logs
from .notices import (BLIND_SPOT_STEPS, LIVE, log_summary, name_when_several, say_what_is_not_watched,
                      unique_name)
from .guard import Guard
from .hooks import ModelHooks
from .snapshot import Snapshot

log = logging.getLogger("nnwatch")

CLOSE_SECONDS = 2.0
"""close() returns within this many seconds, however a webhook receiver or Pushgateway behaves."""
SINK_CLOSE_SECONDS = 0.25
"""Of CLOSE_SECONDS, what each file sink (history, TensorBoard) may take to write what is still queued."""

_TRAIN_MODE_SENSITIVE = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._NormBase)


class Monitor(ModelHooks):
    """Watches one model (and optionally its optimizer). Create it with :func:`agent.attach`.

    Holds the model weakly; ``close()`` (idempotent, also on garbage collection of the model and on
    leaving a ``with`` block) removes every hook and stops every thread.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None, options: Options, *,
                 registry: Any = None, clock: Callable[[], float] = time.perf_counter,
                 wall: Callable[[], float] = time.time, serve: bool = True) -> None:
        self.options = options
        self._clock = clock
        self._wall = wall
        # DDP / torch.compile wrappers: layer names from the inner module, hooks where they run eagerly.
        model, hook_target, self.compiled = unwrap(model)
        _refuse_second_monitor(model)
        self.rank = RankInfo.from_env()
        self.sharded = is_sharded(model)
        self.per_module = exports_per_module(options.per_module_ranks, self.rank, self.sharded)
        """Whether this rank exports per-module series (see agent.collect.distributed.exports_per_module)."""
        self.amp: Any = None  # agent.collect.amp.ScalerWatch once watch_scaler() was called
        self.fingerprint: tuple[int, float] | None = None
        """(step, global weight norm) on a coarse grid of steps shared by every rank (rank desync)."""
        self._model_ref = weakref.ref(model)
        self._opt_ref = weakref.ref(optimizer) if optimizer is not None else None
        self.guard = Guard()
        self.sinks = _sinks(options, self.guard)  # first: a history that cannot be written fails before any hook
        self._lock = threading.Lock()
        self._closed = False
        self._handles: list[RemovableHandle] = []
        self._snapshot: Snapshot | None = None

        self.steps = StepClock(clock())  # every step: counters, times, learning rates
        self.logged = LoggedValues()  # log(): device values until the next sample
        self.params = ParamTracker(model, options.update_copy_max_bytes)  # sampled steps: norms per layer
        self.probe = ActivationProbe(model, self.guard.call, options.dead_window, options.max_modules)
        self.memory_reader = MemoryReader()
        # Which steps are sampled: every sample_every steps, less often when the overhead budget needs it.
        self.schedule = SampleSchedule(options.sample_every, options.overhead_budget, min_interval=options.sample_every)
        self.forward_cost = ForwardCost()
        """Estimates the probe's cost inside sampled forwards that no agent timer sees (charged as agent time)."""
        self._sampled = True
        self._uncleared_due = False
        self._uncleared_armed = False  # the step after a sampled one, until its first backward reads the gradients
        self.sampled_steps = 0
        self.overhead_ratio: float | None = None
        self._overhead_mark = (0.0, 0.0)
        self._explicit_step_warned = False
        self._grads_after_step = False
        self._backward_task = -1  # the backward whose end already reads the gradients
        self._forward_started: float | None = None
        self._forward_agent0 = 0.0  # agent seconds when the running forward started
        self._train_sensitive = [m for m in model.modules() if isinstance(m, _TRAIN_MODE_SENSITIVE)]
        self.nograd_forwards = NoGradForwards()
        if options.native and self.params.any_on_cpu():
            native.start()  # background build/load; CPU statistics use torch ops until it is ready

        if options.console_log:
            show_agent_logs()
        self.several = bool(LIVE)  # other models watched in this process: lines name this one
        self.name = unique_name(options.name or type(model).__name__)
        LIVE.add(self)
        self.engine = _check_engine(self, options)
        self._install_hooks(hook_target, optimizer)
        self.constant_weights: tuple[str, ...] = self.guard.call("constant_init", self.params.constant_layers) or ()
        self._finalizer = weakref.finalize(model, _close_ref, weakref.ref(self))

        self.exporter, self.pusher = _exporters(self, options, registry) if serve else (None, None)

    # -- public API --------------------------------------------------------------------------------
    @property
    def url(self) -> str | None:
        """The /metrics URL when serving, else None."""
        return self.exporter.url if self.exporter is not None else None

    @property
    def findings(self) -> list[Finding]:
        """Findings currently firing, oldest first (see agent.checks.catalogue for the checks)."""
        return self.engine.active() if self.engine is not None else []

    @property
    def snapshot(self) -> Snapshot | None:
        """The latest sampled-step snapshot (immutable), or None before the first sample."""
        with self._lock:
            return self._snapshot

    @property
    def history(self) -> list[FindingRecord]:
        """Every finding raised so far, resolved or not (first, last and resolved step, peak, consequences)."""
        return self.engine.incidents.history() if self.engine is not None else []

    @property
    def step_index(self) -> int:
        """The global training step (continues across restarts; integrations may set it)."""
        return self.steps.step_index

    @step_index.setter
    def step_index(self, value: int) -> None:
        self.steps.step_index = int(value)

    @property
    def first_loss(self) -> float | None:
        """The first training loss logged, once a sampled step has read it."""
        return self.logged.first_loss

    @property
    def val_history(self) -> list[tuple[int, float]]:
        """(step, validation loss) pairs logged so far, oldest first."""
        return self.logged.val_history

    def log(self, loss: Any = None, val_loss: Any = None, **scalars: Any) -> None:
        """Record the training loss (tensor or number, no host sync), a validation loss, or other scalars.

        ``lr=`` sets the learning rate when no optimizer is attached; ``batch_size=`` counts samples
        when the model's input does not show them. Other names are exported as
        ``nnwatch_logged_value{name=...}`` on the next sampled step.
        """
        if self._closed:
            return
        self.logged.log(self.steps, loss, val_loss, scalars)

    def step(self) -> None:
        """Mark a step boundary. Only needed without an optimizer; call it after optimizer.step()."""
        if self._closed:
            return
        if self._opt_ref is not None:
            if not self._explicit_step_warned:
                self._explicit_step_warned = True
                log.info("nnwatch: step() ignored: step boundaries come from the attached optimizer")
            return
        self._end_step(capture_gradients=self._sampled)

    def watch_scaler(self, scaler: Any) -> None:
        """Follow a ``torch.amp.GradScaler``: the steps it skips count as steps, and the inf/NaN gradients of
        a skipped step are expected (no nonfinite_values finding) until skips persist, i.e. the loss scale
        collapses (``nonfinite_values.amp_skipped_steps`` skips in a row). See agent.collect.amp."""
        from .collect.amp import ScalerWatch

        if self.amp is not None:
            self.amp.close()
        me = weakref.ref(self)  # the scaler may outlive the monitor: hold it weakly
        self.amp = ScalerWatch(scaler, self.guard, lambda: self.steps.step_index,
                               lambda opt: (m := me()) is not None and m._on_amp_skip(opt),
                               pending_state=self.__dict__.pop("_pending_amp_state", None))

    def state_dict(self) -> dict[str, Any]:
        """Resumable state (JSON-serialisable): save it with the training checkpoint (see agent.state)."""
        return state.monitor_state(self)

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        """Continue from ``state_dict()`` of a previous run: step counter, first loss, loss and validation
        history, step times, AMP skip counts (see agent.state)."""
        state.load_monitor_state(self, saved)

    def delivery_counts(self) -> dict[str, tuple[int, int, int]]:
        """Per sink (``webhook``, ``pushgateway``): (delivered, failed, dropped) since attach."""
        counts: dict[str, tuple[int, int, int]] = {}
        notifier = self.engine.notifier if self.engine is not None else None
        if notifier is not None and notifier.thread is not None:
            counts["webhook"] = (notifier.delivered, notifier.failed, notifier.dropped)
        if self.pusher is not None:
            counts["pushgateway"] = (self.pusher.pushes, self.pusher.failures, 0)
        for sink in self.sinks:
            counts[sink.probe] = (sink.written, int(sink.failed), sink.dropped)
        return counts

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until the history and TensorBoard writers wrote every queued sample and finding (a report can then
        read the history while training goes on); True when they caught up within ``timeout`` seconds."""
        end = time.monotonic() + timeout
        return all([sink.flush(max(0.0, end - time.monotonic())) for sink in self.sinks])

    @property
    def eval_in_train_forwards(self) -> int:
        """Forwards without autograd, with dropout/batch-norm in training mode, that look like evaluations
        (counted at step ends; those in most steps are part of the loop: agent.collect.nograd)."""
        return self.nograd_forwards.counted

    def close(self) -> None:
        """Remove every hook, stop the server and threads (within CLOSE_SECONDS whatever receivers do). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.probe.end()
        for h in self._handles:
            h.remove()
        self._handles = []
        scripting.release(self)
        # Within CLOSE_SECONDS whatever the receivers do: the final push first, then the server, then the
        # webhook's queue gets what is left.
        end = time.monotonic() + CLOSE_SECONDS
        if self.amp is not None:
            self.amp.close()
        for sink in self.sinks:  # what is queued is written in milliseconds; a stuck disk costs SINK_CLOSE_SECONDS
            sink.close(timeout=SINK_CLOSE_SECONDS)
        if self.pusher is not None:
            self.pusher.close(timeout=CLOSE_SECONDS / 2)
        if self.exporter is not None:
            self.exporter.close()
        if self.engine is not None:
            self.engine.close(timeout=max(0.0, end - time.monotonic() - 0.05))
        self._finalizer.detach()
        log_summary(self)
        self.params.clear()
        self.logged.clear_pending()
        self.graphs.clear()
        if self.loss_watch is not None:
            self.loss_watch.close()
        self._train_sensitive = []

    def __enter__(self) -> "Monitor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<nnwatch.Monitor {'closed' if self._closed else f'step={self.steps.step_index}'} url={self.url}>"

    # -- the step loop ----------------------------------------------------------------------------
    def _boundary(self) -> None:
        opt = self._opt_ref() if self._opt_ref is not None else None
        self.steps.boundary(self._clock(), self._wall(), opt)
        self.nograd_forwards.end_step()
        if self._sampled:
            try:
                self._finish_sample(opt)
            except Exception:  # noqa: BLE001
                self.guard.failed("sample")
                self.probe.reset_step()
                self.params.reset_step()
        self.steps.advance()
        if self.steps.steps_in_process == BLIND_SPOT_STEPS:
            say_what_is_not_watched(self)
        self._uncleared_due = self._sampled
        step = self.steps.step_index
        self._sampled = self.schedule.next_sampled(step, self.guard.seconds, self.steps.step_seconds_total)
        # Weight fingerprints are compared across ranks: sample the grid step on every rank, whatever the
        # (possibly adaptive, per-rank) schedule says.
        self._sampled = self._sampled or step % self.options.fingerprint_every == 0
        # A non-finite loss since the last sample: sample the next step instead of waiting for the schedule.
        self._sampled = self._sampled or self.logged.tripwire.due(step, self.options.sample_every)
        if self._sampled and opt is None and self.options.update_ratios:
            # Without an optimizer the update is measured between two step() calls.
            self.guard.call("update_ratio", self.params.copy_weights, None)

    def _finish_sample(self, opt: Any) -> None:
        """End of a sampled step: queue every statistic, copy once to the host, build and publish the snapshot."""
        snap = take_sample(self.params, self.logged, self.probe, self.amp, self.memory_reader, self.steps,
                           optimizer_param_ids(opt) if opt is not None else None,
                           eval_in_train_forwards=self.eval_in_train_forwards, wall=self._wall(),
                           data=DataWatches(self.inputs, self.loss_watch, self.graphs))
        self.params.reset_step()
        with self._lock:
            self._snapshot = snap
        for sink in self.sinks:
            sink.record(snap)  # a queue put: the sink writes on its own thread
        self.sampled_steps += 1
        self.fingerprint = next_fingerprint(self.fingerprint, snap.step, self.options.fingerprint_every,
                                            snap.weight_norm)
        agent_s, step_s = self.guard.seconds, self.steps.step_seconds_total
        if step_s > self._overhead_mark[1]:
            self.overhead_ratio = min(1.0, (agent_s - self._overhead_mark[0]) / (step_s - self._overhead_mark[1]))
        self._overhead_mark = (agent_s, step_s)
        if self.engine is not None:
            self.guard.call("checks", self.engine.evaluate, snap, self)


def _refuse_second_monitor(model: nn.Module) -> None:
    """Two monitors on one model would hook it twice and count every step twice: name the first one."""
    for other in list(LIVE):
        if not other._closed and other._model_ref() is model:
            raise ValueError(f"this {type(model).__name__} is already watched by {other!r} (name {other.name!r}); "
                             "use that monitor, or call its close() before attaching again")


def _check_engine(monitor: Monitor, options: Options) -> CheckEngine | None:
    """The check engine with its notifier (log lines name the model when the process watches several)."""
    if not options.checks:
        return None
    notifier = Notifier(log_findings=options.log_findings, webhook_url=options.webhook_url,
                        digest_seconds=options.webhook_digest_seconds,
                        job=options.job or _script_name())
    notifier.model = name_when_several(weakref.ref(monitor))
    notifier.listeners.extend(sink.finding for sink in monitor.sinks)
    return CheckEngine(options, notifier=notifier)


def _sinks(options: Options, guard: Guard) -> list[Any]:
    """The local history and the TensorBoard writer, each when configured (each opens its file here, so a bad
    path fails at attach())."""
    sinks: list[Any] = []
    if options.history is not None:
        from .export.history import HistoryWriter

        sinks.append(HistoryWriter(options.history, guard, max_modules=options.max_modules))
    if options.tensorboard_dir is not None:
        from .export.tensorboard import TensorBoardWriter

        try:
            sinks.append(TensorBoardWriter(options.tensorboard_dir, guard, max_modules=options.max_modules))
        except BaseException:
            for sink in sinks:
                sink.close()
            raise
    return sinks


def _exporters(monitor: Monitor, options: Options, registry: Any) -> tuple[Any, Any]:
    """The /metrics server and the Pushgateway pusher, each when configured."""
    exporter = pusher = None
    if options.port is not None:
        from .export.server import Exporter

        exporter = Exporter(monitor, options, registry=registry)
    if options.pushgateway_url:
        from .export.pushgateway import Pusher

        pusher = Pusher(monitor, options)
    return exporter, pusher


def _script_name() -> str | None:
    import sys

    argv0 = sys.argv[0] if sys.argv and sys.argv[0] else None
    return argv0.rsplit("/", 1)[-1] if argv0 else None


def _close_ref(ref: "weakref.ref[Monitor]") -> None:
    monitor = ref()
    if monitor is not None:
        monitor.close()


__all__ = ["Monitor"]
