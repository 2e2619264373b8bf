"""The Monitor: owns every hook, does the step bookkeeping, turns sampled steps into host snapshots.

Data flow: hooks on the root module and the optimizer -> device tensors (no host sync) -> on a sampled
step boundary, one batched device-to-host copy (transfer.DeviceBatch) -> an immutable Snapshot swapped
in under a lock -> read by the Prometheus collector at scrape time and by the check engine.
"""

from __future__ import annotations

import logging
import math
import statistics
import threading
import time
import weakref
from collections import deque
from numbers import Real
from typing import Any, Callable, Iterable

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from . import native, stats
from ._version import __version__
from .checks import CheckEngine, Finding
from .config import Options
from .distributed import RankInfo, exports_per_module, is_sharded, next_fingerprint, unwrap
from .guard import Guard
from .memory import MemoryReader
from .notify import Notifier
from .probes import ActivationProbe
from .snapshot import ROOT, LayerStats, MemoryStats, Snapshot
from .budget import ForwardCost, SampleSchedule
from .transfer import DeviceBatch
from .updates import WeightCopies

log = logging.getLogger("nnwatch")

_TRAIN_MODE_SENSITIVE = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._NormBase)


class _Param:
    """A tracked parameter and the layer (module label) that owns it."""

    __slots__ = ("module", "name", "ref")

    def __init__(self, module: str, name: str, param: nn.Parameter) -> None:
        self.module = module
        self.name = name
        self.ref = param


class Monitor:
    """Watches one model (and optionally its optimizer). Create it with :func:`agent.attach`.

    Holds the model weakly; ``close()`` (idempotent, also on garbage collection of the model and on
    leaving a ``with`` block) removes every hook and stops every thread.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        options: Options,
        *,
        registry: Any = None,
        clock: Callable[[], float] = time.perf_counter,
        wall: Callable[[], float] = time.time,
        serve: bool = True,
    ) -> None:
        self.options = options
        self._clock = clock
        self._wall = wall
        # DDP / torch.compile wrappers: layer names from the inner module, hooks where they run eagerly.
        model, hook_target, self.compiled = unwrap(model)
        self.rank = RankInfo.from_env()
        self.sharded = is_sharded(model)
        self.per_module = exports_per_module(options.per_module_ranks, self.rank, self.sharded)
        """Whether this rank exports per-module series (see agent.distributed.exports_per_module)."""
        self.amp: Any = None  # agent.amp.ScalerWatch once watch_scaler() was called
        self.fingerprint: tuple[int, float] | None = None
        """(step, global weight norm) on a coarse grid of steps shared by every rank (rank desync)."""
        self._model_ref = weakref.ref(model)
        self._opt_ref = weakref.ref(optimizer) if optimizer is not None else None
        self.guard = Guard()
        self._lock = threading.Lock()
        self._closed = False
        self._handles: list[RemovableHandle] = []

        # Step bookkeeping (cheap, every step).
        self.step_index = 0  # global training step; resumable
        self.steps_in_process = 0
        self._sampled = True
        # Which steps are sampled: every sample_every steps, less often when the overhead budget needs it.
        self.schedule = SampleSchedule(options.sample_every, options.overhead_budget, min_interval=options.sample_every)
        self._step_started = clock()
        self.last_step_seconds: float | None = None
        self.step_seconds_total = 0.0
        self.last_step_wall: float | None = None
        self._recent_step_seconds: deque[float] = deque(maxlen=64)
        self.samples_total = 0
        self._samples_this_step = 0
        self.samples_per_second: float | None = None
        self.learning_rates: tuple[float, ...] = ()
        self.sampled_steps = 0
        self._first_forward_pending = True
        self._explicit_step_warned = False
        self._grads_after_step = False
        self._forward_started: float | None = None
        self._forward_agent0 = 0.0  # agent seconds when the running forward started
        self.forward_cost = ForwardCost()
        """Estimates the probe's cost inside sampled forwards that no agent timer sees (charged as agent time)."""
        self.forward_seconds_total = 0.0
        """Seconds inside training forwards (root module), summed over steps: this rank's own work."""
        self.input_wait_seconds_total = 0.0
        """Seconds from each step boundary to the step's first training forward (data loading, transfers)."""

        # Logged values, kept as device tensors until the next sampled step (no sync in log()).
        self._pending_losses: list[Tensor | float] = []
        self._first_loss: Tensor | float | None = None
        self.first_loss: float | None = None
        self._pending_val: list[tuple[int, Tensor | float]] = []
        self.val_history: list[tuple[int, float]] = []
        self._pending_scalars: dict[str, Tensor | float] = {}
        self.logged_values: dict[str, float] = {}

        # Parameters and layers.
        self._params: list[_Param] = []
        for pname, p in model.named_parameters():
            module = pname.rpartition(".")[0] or ROOT
            self._params.append(_Param(module, pname, p))
        self._train_sensitive = [m for m in model.modules() if isinstance(m, _TRAIN_MODE_SENSITIVE)]
        if options.native and any(p.ref.is_cpu for p in self._params):
            native.start()  # background build/load; CPU statistics use torch ops until it is ready
        self.eval_in_train_forwards = 0
        self._grad_sq: list[tuple[list[int], Tensor]] = []  # (parameter indices, squared norms) per device
        self._params_without_grad: dict[str, int] = {}
        self._weight_copy: list[tuple[int, Tensor]] = []
        self._copies = WeightCopies()  # scratch buffers for the update copy (kept on CPU, see agent.updates)
        self._update_cursor = 0
        self._uncleared_sq: Tensor | None = None
        self.constant_weights: tuple[str, ...] = ()
        self.memory_reader = MemoryReader()
        self.overhead_ratio: float | None = None
        self._overhead_mark = (0.0, 0.0)
        self._snapshot: Snapshot | None = None

        self.probe = ActivationProbe(model, self.guard.call, options.dead_window, options.max_modules)
        self.engine = None
        if options.checks:
            notifier = Notifier(log_findings=options.log_findings, webhook_url=options.webhook_url,
                                job=options.job or _script_name())
            self.engine = CheckEngine(options, notifier=notifier)

        self._install_hooks(hook_target, optimizer)
        self.guard.call("constant_init", self._scan_constant_init)
        self._finalizer = weakref.finalize(model, _close_ref, weakref.ref(self))

        self.exporter = None
        if serve and options.port is not None:
            from .export import Exporter

            self.exporter = Exporter(self, options, registry=registry)
        self.pusher = None
        if serve and options.pushgateway_url:
            from .pushgateway import Pusher

            self.pusher = Pusher(self, options)

    # -- public API --------------------------------------------------------------------------------
    @property
    def url(self) -> str | None:
        """The /metrics URL when serving, else None."""
        return self.exporter.url if self.exporter is not None else None

    @property
    def findings(self) -> list[Finding]:
        """Findings currently firing, oldest first (see agent.checks for the catalogue)."""
        return self.engine.active() if self.engine is not None else []

    @property
    def snapshot(self) -> Snapshot | None:
        """The latest sampled-step snapshot (immutable), or None before the first sample."""
        with self._lock:
            return self._snapshot

    def log(self, loss: Any = None, val_loss: Any = None, **scalars: Any) -> None:
        """Record the training loss (tensor or number, no host sync), a validation loss, or other scalars.

        ``lr=`` sets the learning rate when no optimizer is attached; ``batch_size=`` counts samples
        when the model's input does not show them. Other names are exported as
        ``nnwatch_logged_value{name=...}`` on the next sampled step.
        """
        if self._closed:
            return
        if loss is not None:
            value = _scalar(loss, "loss")
            if self._first_loss is None:
                self._first_loss = value
            if len(self._pending_losses) >= 4096:  # never grows without bound when steps are not seen
                del self._pending_losses[: len(self._pending_losses) // 2]
            self._pending_losses.append(value)
        if val_loss is not None:
            self._pending_val.append((self.step_index, _scalar(val_loss, "val_loss")))
        for name, raw in scalars.items():
            if not name.isidentifier():
                raise ValueError(f"log() scalar names must be identifiers, got {name!r}")
            value = _scalar(raw, name)
            if name in ("lr", "learning_rate"):
                if isinstance(value, Tensor):
                    raise TypeError("pass the learning rate as a float (e.g. scheduler.get_last_lr()[0])")
                self.learning_rates = (float(value),)
            elif name == "batch_size":
                if isinstance(value, Tensor) or value < 0 or value != int(value):
                    raise TypeError("batch_size must be a non-negative int")
                self._samples_this_step += int(value)
            else:
                self._pending_scalars[name] = value

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
        collapses (``nonfinite_values.amp_skipped_steps`` skips in a row). See agent.amp."""
        from .amp import ScalerWatch

        if self.amp is not None:
            self.amp.close()
        self.amp = ScalerWatch(self, scaler)

    def state_dict(self) -> dict[str, Any]:
        """Resumable state (JSON-serialisable): save it with the training checkpoint (see agent.state)."""
        from .state import monitor_state

        return monitor_state(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state_dict()`` of a previous run: step counter, first loss, loss and validation
        history, step times, AMP skip counts (see agent.state)."""
        from .state import load_monitor_state

        load_monitor_state(self, state)

    def close(self) -> None:
        """Remove every hook, stop the server and threads. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.probe.end()
        for h in self._handles:
            h.remove()
        self._handles = []
        if self.amp is not None:
            self.amp.close()
        if self.pusher is not None:
            self.pusher.close()  # the final push, while the last snapshot is still here
        if self.exporter is not None:
            self.exporter.close()
        if self.engine is not None:
            self.engine.close()
        self._finalizer.detach()
        self._weight_copy = []
        self._copies.clear()
        self._grad_sq = []
        self._pending_losses = []
        self._params = []
        self._train_sensitive = []

    def __enter__(self) -> "Monitor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"step={self.step_index}"
        return f"<nnwatch.Monitor {state} url={self.url}>"

    # -- hooks -----------------------------------------------------------------------------------
    def _install_hooks(self, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> None:
        self._handles.append(model.register_forward_pre_hook(self._on_forward_pre, with_kwargs=True))
        self._handles.append(model.register_forward_hook(self._on_forward, always_call=True))
        if optimizer is not None:
            self._handles.append(optimizer.register_step_pre_hook(self._on_optimizer_pre))
            self._handles.append(optimizer.register_step_post_hook(self._on_optimizer_post))

    def _on_forward_pre(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if torch.compiler.is_compiling():  # traced into a compiled graph: observe nothing, break nothing
            return None
        if torch._C._current_graph_task_id() != -1:  # inside backward: activation checkpointing recomputes
            return None
        t0 = self.guard.enter(self._clock())  # guarded calls inside are timed once, here
        training = False
        try:
            if torch.is_grad_enabled():
                training = True
                batch = _batch_size(args, kwargs)
                if batch:
                    self._samples_this_step += batch
                if self._first_forward_pending:
                    self.input_wait_seconds_total += max(0.0, t0 - self._step_started)
                # The probe's TorchFunctionMode would be traced by dynamo: off for compiled models.
                if self._sampled and self.options.activations and not self.compiled and "activations" not in self.guard.disabled:
                    self.guard.call("activations", self.probe.begin)
            elif any(m.training for m in self._train_sensitive):
                self.eval_in_train_forwards += 1
        except Exception:  # noqa: BLE001
            self.guard.failed("forward")
        finally:
            t1 = self._clock()
            self.guard.leave(t1 - t0)
            if training:  # the model's own forward starts now
                self._forward_started = t1
                self._forward_agent0 = self.guard.seconds
        return None

    def _on_forward(self, module: nn.Module, args: tuple, output: Any) -> None:
        if torch.compiler.is_compiling() or torch._C._current_graph_task_id() != -1:
            return None
        t0 = self.guard.enter(self._clock())  # guarded calls inside are timed once, here
        try:
            probed = self.probe.active
            if self._forward_started is not None:
                seconds = t0 - self._forward_started
                self.forward_seconds_total += seconds
                self._forward_started = None
                # Charge what the probe cost inside the forward beyond its timed statistics.
                own = seconds - (self.guard.seconds - self._forward_agent0)
                self.guard.charge(self.forward_cost.observe(own, probed))
            if probed:
                self.probe.end()
            if self._first_forward_pending and torch.is_grad_enabled():
                self._first_forward_pending = False
                if self._sampled:
                    out = _first_grad_tensor(output)
                    if out is not None:
                        out.register_hook(self._on_backward_start)
        except Exception:  # noqa: BLE001
            self.guard.failed("forward")
        finally:
            self.guard.leave(self._clock() - t0)
        return None

    def _on_backward_start(self, grad: Tensor) -> None:
        """Fires when backward reaches the model's output: gradients present now were not cleared."""
        self.guard.call("uncleared_gradients", self._measure_uncleared)
        return None

    def _measure_uncleared(self) -> None:
        grads = [p.ref.grad for p in self._params if p.ref.grad is not None and p.ref.requires_grad]
        if not grads:
            self._uncleared_sq = torch.zeros(())  # measured: nothing left over
            return
        with torch.no_grad():
            self._uncleared_sq = stats.squared_norm_vector(grads).sum()

    def _on_optimizer_pre(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self._sampled:
            t0 = self.guard.enter(self._clock())  # guarded calls inside are timed once, here
            # With a closure (LBFGS, Lightning) backward runs inside step(): read gradients after it.
            self._grads_after_step = bool(args and args[0] is not None) or (kwargs or {}).get("closure") is not None
            if not self._grads_after_step:
                self.guard.call("gradients", self._capture_gradients)
            if self.options.update_ratios:
                self.guard.call("update_ratio", self._copy_weights, self._optimizer_param_ids(optimizer))
            self.guard.leave(self._clock() - t0)
        return None

    def _on_optimizer_post(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        capture, self._grads_after_step = self._grads_after_step, False
        self._end_step(capture_gradients=capture)
        return None

    def _end_step(self, capture_gradients: bool) -> None:
        """Close a step, guarded and timed once: read the gradients first when asked, then the boundary."""
        t0 = self.guard.enter(self._clock())  # guarded calls inside are timed once, here
        try:
            if capture_gradients:
                self.guard.call("gradients", self._capture_gradients)
            self._boundary()
        except Exception:  # noqa: BLE001
            self.guard.failed("step")
        finally:
            self.guard.leave(self._clock() - t0)

    def _on_amp_skip(self, optimizer: Any) -> None:
        """A GradScaler skipped ``optimizer``'s step (agent.amp): it still ends a step, so that a run of
        skips is sampled and checked. Without an attached optimizer, boundaries come from step()."""
        if self._opt_ref is None or optimizer is not self._opt_ref():
            return
        self._end_step(capture_gradients=self._sampled)

    # -- sampled-step work -------------------------------------------------------------------------
    def _trainable(self) -> list[tuple[int, _Param]]:
        return [(i, p) for i, p in enumerate(self._params) if p.ref.requires_grad]

    def _optimizer_param_ids(self, optimizer: Any) -> set[int]:
        return {id(p) for g in optimizer.param_groups for p in g["params"]}

    def _capture_gradients(self) -> None:
        """Squared gradient norms (device) and parameters without a gradient (host), after backward."""
        with torch.no_grad():
            trainable = self._trainable()
            with_grad = [(i, p.ref.grad) for i, p in trainable if p.ref.grad is not None]
            self._grad_sq = _norm_vectors([i for i, _ in with_grad], [g for _, g in with_grad])
            missing: dict[str, int] = {}
            for i, p in trainable:
                if p.ref.grad is None:
                    missing[p.module] = missing.get(p.module, 0) + 1
            self._params_without_grad = missing

    def _copy_weights(self, in_optimizer: set[int] | None) -> None:
        """Transient copy of (a rotating slice of) the weights, to measure the coming update exactly."""
        candidates = [(i, p) for i, p in self._trainable() if in_optimizer is None or id(p.ref) in in_optimizer]
        if not candidates:
            self._weight_copy = []
            return
        cap = self.options.update_copy_max_bytes
        total = sum(p.ref.numel() * p.ref.element_size() for _, p in candidates)
        if total <= cap:
            chosen = candidates
        else:  # rotate through the layers so that the copy never exceeds the cap
            chosen, used = [], 0
            n = len(candidates)
            for k in range(n):
                i, p = candidates[(self._update_cursor + k) % n]
                size = p.ref.numel() * p.ref.element_size()
                if chosen and used + size > cap:
                    break
                chosen.append((i, p))
                used += size
            self._update_cursor = (self._update_cursor + len(chosen)) % n
        with torch.no_grad():
            copies = self._copies.copy([p.ref for _, p in chosen])
        self._weight_copy = [(i, c) for (i, _), c in zip(chosen, copies)]

    def _finish_sample(self) -> None:
        """End of a sampled step: queue every statistic, copy once to the host, build the snapshot."""
        opt = self._opt_ref() if self._opt_ref is not None else None
        in_opt = self._optimizer_param_ids(opt) if opt is not None else None
        batch = DeviceBatch()
        trainable = self._trainable()
        with torch.no_grad():
            # Weights with a copy from before the step get their norm and their update's norm from one
            # fused pass (stats.update_squared_norm_vectors); the others just their norm. One vector per
            # list: a sampled step costs a few tensor ops, not Python work per parameter.
            # Each vector holds one device's tensors: no value moves between devices before the one copy.
            idx = [i for i, _ in self._weight_copy]
            weights = [self._params[i].ref for i in idx]
            for group in stats.device_groups(weights):
                upd, w_copied = stats.update_squared_norm_vectors(
                    [weights[k] for k in group], [self._weight_copy[k][1] for k in group],
                    overwrite_old=True)  # the copies are our scratch buffers
                batch.add_vector([("w", idx[k]) for k in group], w_copied)
                batch.add_vector([("u", idx[k]) for k in group], upd)
            copied = set(idx)
            rest = [i for i, _ in trainable if i not in copied]
            for keys, vector in _norm_vectors(rest, [self._params[i].ref for i in rest]):
                batch.add_vector([("w", i) for i in keys], vector)
            for keys, vector in self._grad_sq:
                batch.add_vector([("g", i) for i in keys], vector)
            self._weight_copy = []
            if self._pending_losses:
                losses = _stack_scalars(self._pending_losses)
                batch.add("loss", losses.mean())
                batch.add("loss_nonfinite", stats.nonfinite_count(losses))
            if self._first_loss is not None and self.first_loss is None:
                batch.add("first_loss", self._first_loss)
            for k, (step, v) in enumerate(self._pending_val):
                batch.add(("val", k), v if isinstance(v, Tensor) else float(v))
            for name, v in self._pending_scalars.items():
                batch.add(("scalar", name), v if isinstance(v, Tensor) else float(v))
            if self._uncleared_sq is not None:
                batch.add("uncleared", self._uncleared_sq)
            sites = self.probe.queue(batch)
            if self.amp is not None:
                self.amp.queue(batch)
            host = batch.fetch()  # the one host-device sync of this sampled step
            nonfinite = self._exact_nonfinite(host, trainable)

        layers = self._layer_stats(host, trainable, nonfinite, in_opt)
        activations = self.probe.results(sites, host)
        loss = host.get("loss")
        if "first_loss" in host:
            self.first_loss = host["first_loss"]
        for k, (step, _) in enumerate(self._pending_val):
            self.val_history.append((step, host[("val", k)]))
        del self.val_history[:-1000]
        for name in self._pending_scalars:
            self.logged_values[name] = host[("scalar", name)]
        uncleared = host.get("uncleared")
        amp_skipped = self.amp.read(host, self.step_index) if self.amp is not None else False
        snap = Snapshot(
            step=self.step_index,
            time=self._wall(),
            loss=loss,
            loss_nonfinite=int(host.get("loss_nonfinite", 0)),
            first_loss=self.first_loss,
            val_loss=self.val_history[-1][1] if self.val_history else None,
            learning_rates=self.learning_rates,
            layers=layers,
            activations=activations,
            memory=self.memory_reader.read(),
            uncleared_grad_norm=math.sqrt(uncleared) if uncleared is not None and uncleared >= 0 else uncleared,
            eval_in_train_forwards=self.eval_in_train_forwards,
            step_seconds=statistics.median(self._recent_step_seconds) if self._recent_step_seconds else None,
            amp_skipped=amp_skipped,
        )
        self._pending_losses = []
        self._pending_val = []
        self._pending_scalars = {}
        self._grad_sq = []
        self._uncleared_sq = None
        with self._lock:
            self._snapshot = snap
        self.sampled_steps += 1
        self.fingerprint = next_fingerprint(self.fingerprint, snap.step, self.options.fingerprint_every,
                                            snap.weight_norm)
        agent_s, step_s = self.guard.seconds, self.step_seconds_total
        d_step = step_s - self._overhead_mark[1]
        if d_step > 0:
            self.overhead_ratio = min(1.0, (agent_s - self._overhead_mark[0]) / d_step)
        self._overhead_mark = (agent_s, step_s)
        if self.engine is not None:
            self.guard.call("checks", self.engine.evaluate, snap, self)

    def _exact_nonfinite(self, host: dict, trainable: list[tuple[int, _Param]]) -> dict[tuple[str, int], int]:
        """Exact NaN/Inf element counts, only for tensors whose norm came back non-finite.

        A finite norm proves every element finite, so the healthy path costs nothing here; a broken
        run pays one more copy.
        """
        batch = DeviceBatch()
        for i, p in trainable:
            w = host.get(("w", i))
            if w is not None and not math.isfinite(w):
                batch.add(("w", i), stats.nonfinite_count(p.ref))
            g = host.get(("g", i))
            if g is not None and not math.isfinite(g) and p.ref.grad is not None:
                batch.add(("g", i), stats.nonfinite_count(p.ref.grad))
        if not len(batch):
            return {}
        counts = batch.fetch()  # only when something is already non-finite
        # A norm can overflow to inf with every element finite (huge values): count at least 1 anyway,
        # the tensor is unusable for training either way.
        return {k: max(1, int(v)) for k, v in counts.items()}  # type: ignore[misc]

    def _layer_stats(self, host: dict, trainable: list[tuple[int, _Param]], nonfinite: dict,
                     in_opt: set[int] | None) -> tuple[LayerStats, ...]:
        members: dict[str, list[tuple[int, _Param]]] = {}
        for i, p in trainable:
            members.setdefault(p.module, []).append((i, p))
        layers = []
        get = host.get
        for module, group in members.items():
            g: list[float] = []
            w: list[float] = []
            u: list[float] = []
            params = gn = wn = 0
            held_any = False
            for i, p in group:
                params += p.ref.numel()
                w.append(host[("w", i)])
                gi = get(("g", i))
                if gi is not None:
                    g.append(gi)
                ui = get(("u", i))
                if ui is not None:
                    u.append(ui)
                if nonfinite:
                    wn += nonfinite.get(("w", i), 0)
                    gn += nonfinite.get(("g", i), 0)
                held = in_opt is None or id(p.ref) in in_opt
                held_any = held_any or held
                if not held and gi is not None:
                    u.append(0.0)  # not in the optimizer: its update is exactly zero
            layers.append(LayerStats(
                module=module,
                params=params,
                grad_norm=_root_sum(g),
                weight_norm=_root_sum(w) or 0.0,
                update_norm=_root_sum(u),
                grad_nonfinite=gn,
                weight_nonfinite=wn,
                params_without_grad=self._params_without_grad.get(module, 0),
                in_optimizer=held_any,
            ))
        return tuple(layers)

    def _scan_constant_init(self) -> None:
        """Find >= 2-D weights with zero spread at attach (a symmetric init that never breaks)."""
        found = []
        with torch.no_grad():
            # Frozen weights are left out: a fixed constant filter is deliberate.
            candidates = [p for p in self._params if p.ref.requires_grad and p.ref.ndim >= 2 and p.ref.numel() > 1
                          and p.ref.is_floating_point()]
            locals_ = [stats.local_values(p.ref.detach()) for p in candidates]  # a shard's own elements (FSDP)
            candidates = [p for p, t in zip(candidates, locals_) if t.numel() > 1]
            spreads = [(t.amax() - t.amin()).float() for t in locals_ if t.numel() > 1]
            if spreads:
                host = DeviceBatch()
                for k, s in enumerate(spreads):
                    host.add(k, s)
                values = host.fetch()  # once, at attach
                found = [f"{p.module}" for k, p in enumerate(candidates) if values[k] == 0.0]
        self.constant_weights = tuple(dict.fromkeys(found))

    # -- step boundary (every step) ------------------------------------------------------------------
    def _boundary(self) -> None:
        now = self._clock()
        dt = now - self._step_started
        self._step_started = now
        self.last_step_seconds = dt
        self.step_seconds_total += dt
        self._recent_step_seconds.append(dt)
        self.last_step_wall = self._wall()
        if self._samples_this_step:
            self.samples_total += self._samples_this_step
            self.samples_per_second = self._samples_this_step / dt if dt > 0 else None
            self._samples_this_step = 0
        opt = self._opt_ref() if self._opt_ref is not None else None
        if opt is not None:
            self.learning_rates = _learning_rates(opt, self.learning_rates)
        if self._sampled:
            try:
                self._finish_sample()
            except Exception:  # noqa: BLE001
                self.guard.failed("sample")
                self.probe.reset_step()
                self._weight_copy = []
        self.step_index += 1
        self.steps_in_process += 1
        self._first_forward_pending = True
        self._sampled = self.schedule.next_sampled(self.step_index, self.guard.seconds, self.step_seconds_total)
        # Weight fingerprints are compared across ranks: sample the grid step on every rank, whatever the
        # (possibly adaptive, per-rank) schedule says.
        self._sampled = self._sampled or self.step_index % self.options.fingerprint_every == 0
        if self._sampled and opt is None and self.options.update_ratios:
            # Without an optimizer the update is measured between two step() calls.
            self.guard.call("update_ratio", self._copy_weights, None)


def _script_name() -> str | None:
    import sys

    argv0 = sys.argv[0] if sys.argv and sys.argv[0] else None
    return argv0.rsplit("/", 1)[-1] if argv0 else None


def _close_ref(ref: "weakref.ref[Monitor]") -> None:
    monitor = ref()
    if monitor is not None:
        monitor.close()


def _scalar(value: Any, name: str) -> Tensor | float:
    """Validate a logged scalar: a one-element floating tensor (kept on its device) or a real number."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise TypeError(f"{name} must be a scalar; got a tensor of shape {tuple(value.shape)} (reduce it, e.g. {name}.mean())")
        if not (value.is_floating_point() or value.dtype in (torch.int32, torch.int64)):
            raise TypeError(f"{name} must be a floating-point tensor or a number, got dtype {value.dtype}")
        return value.detach().reshape(())
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a number or a one-element tensor, got {type(value).__name__}")
    return float(value)


def _stack_scalars(values: list[Tensor | float]) -> Tensor:
    tensors = [v for v in values if isinstance(v, Tensor)]
    device = tensors[0].device if tensors else torch.device("cpu")
    return torch.stack([
        v.to(device=device, dtype=torch.float32) if isinstance(v, Tensor) else torch.tensor(v, dtype=torch.float32, device=device)
        for v in values
    ])


def _root_sum(squares: list[float]) -> float | None:
    if not squares:
        return None
    total = math.fsum(squares)
    return math.sqrt(total) if total >= 0 else total  # NaN stays NaN


def _learning_rates(opt: Any, previous: tuple[float, ...]) -> tuple[float, ...]:
    out = []
    for k, g in enumerate(opt.param_groups):
        lr = g.get("lr")
        if isinstance(lr, Tensor):
            if lr.device.type != "cpu":  # reading a device tensor would sync: keep the last known value
                out.append(previous[k] if k < len(previous) else math.nan)
                continue
            lr = lr.item()
        out.append(float(lr) if lr is not None else math.nan)
    return tuple(out)


def _batch_size(args: tuple, kwargs: dict) -> int:
    for v in _iter_values(args, kwargs):
        if isinstance(v, Tensor) and v.ndim >= 1:
            return int(v.shape[0])
    return 0


def _iter_values(args: tuple, kwargs: dict) -> Iterable[Any]:
    yield from args
    yield from kwargs.values()


def _norm_vectors(keys: list[int], tensors: list[Tensor]) -> list[tuple[list[int], Tensor]]:
    """``(keys, squared norms)`` per device of ``tensors`` (stats.squared_norm_vector on each group)."""
    return [([keys[k] for k in group], stats.squared_norm_vector([tensors[k] for k in group]))
            for group in stats.device_groups(tensors)]


def _first_grad_tensor(output: Any) -> Tensor | None:
    if isinstance(output, Tensor):
        return output if output.requires_grad else None
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (list, tuple)):
        for v in output:
            t = _first_grad_tensor(v)
            if t is not None:
                return t
    return None
