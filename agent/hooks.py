"""The hooks the monitor installs: the root module's forward pre/post hooks, one tensor hook on a sampled step's
output (backward start), and the optimizer's step pre/post hooks. Each is guarded, timed and returns None."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .collect.inputs import GraphTokens, InputWatch
from .collect.lossinputs import LossWatch
from .collect import scripting
from .collect.params import optimizer_param_ids
from .collect.steps import batch_size
from .collect.weakhook import WeakHook

DATA_CHECKS = ("probabilities_as_logits", "unshuffled_batches", "class_imbalance")
"""The checks that read the loss calls: when all are skipped, the loss functions are left unwrapped."""


class ModelHooks:
    """The hook methods of :class:`agent.monitor.Monitor` (a mixin: the state they touch is the monitor's).

    Non-sampled steps run only host bookkeeping here; sampled steps add the probe, the gradient capture and the
    transient weight copy. ``_end_step`` closes a step through the monitor's ``_boundary``.
    """

    def _install_hooks(self, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> None:
        self.inputs = InputWatch()  # what enters the model on sampled steps
        self.graphs = GraphTokens()  # graphs of earlier sampled steps still alive
        skipped = set(self.options.skipped_checks)
        self.loss_watch = LossWatch(self.guard.call) if not set(DATA_CHECKS) <= skipped else None
        # Weak hook objects, not bound methods: a copy of the model (pickle, deepcopy, torch.save, EMA/SWA) then
        # carries no monitor and is an unwatched model (agent.collect.weakhook).
        self._handles.append(model.register_forward_pre_hook(WeakHook(self, "_on_forward_pre"), with_kwargs=True))
        self._handles.append(model.register_forward_hook(WeakHook(self, "_on_forward"), always_call=True))
        scripting.acquire(self)  # torch.jit.script(model) compiles without them (agent.collect.scripting)
        if optimizer is not None:
            self._handles.append(optimizer.register_step_pre_hook(WeakHook(self, "_on_optimizer_pre")))
            self._handles.append(optimizer.register_step_post_hook(WeakHook(self, "_on_optimizer_post")))

    def _on_forward_pre(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if torch.compiler.is_compiling() or torch.jit.is_tracing():  # traced into a graph: observe nothing, break nothing
            return None
        if torch._C._current_graph_task_id() != -1:  # inside backward: activation checkpointing recomputes
            return None
        t0 = self.guard.enter(self._clock())  # guarded calls inside are timed once, here
        training = False
        try:
            self.probe.end_if_interrupted()  # a KeyboardInterrupt skipped the last forward's hook
            if torch.is_grad_enabled():
                training = True
                self.steps.forwards += 1
                batch = batch_size(args, kwargs)
                if batch:
                    self.steps.samples_this_step += batch
                if self.steps.first_forward_pending:
                    self.steps.input_wait_seconds_total += max(0.0, t0 - self.steps.started)
                # The probe's TorchFunctionMode would be traced by dynamo: off for compiled models.
                if self._sampled and self.options.activations and not self.compiled and "activations" not in self.guard.disabled:
                    self.guard.call("activations", self.probe.begin)
                if self._sampled:
                    if not self.params.fp16_autocast_seen:
                        self.params.fp16_autocast_seen = _fp16_autocast()
                    self.guard.call("inputs", self.inputs.observe, args, kwargs)
            elif any(m.training for m in self._train_sensitive):
                self.nograd_forwards.seen()  # counted at the step's end unless part of the loop (collect.nograd)
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
        if torch.compiler.is_compiling() or torch.jit.is_tracing() or torch._C._current_graph_task_id() != -1:
            return None
        t0 = self.guard.enter(self._clock())  # guarded calls inside are timed once, here
        try:
            probed = self.probe.active
            if self._forward_started is not None:
                seconds = t0 - self._forward_started
                self.steps.forward_seconds_total += seconds
                self._forward_started = None
                # Charge what the probe cost inside the forward beyond its timed statistics.
                own = seconds - (self.guard.seconds - self._forward_agent0)
                self.guard.charge(self.forward_cost.observe(own, probed))
            if probed:
                # The primary output only (a returned hidden state, `return logits, h`, stays judged).
                self.guard.call("activations", self.probe.mark_model_output, _grad_tensors(output, 1, grad_only=False))
                self.probe.end()
            if self._sampled and torch.is_grad_enabled():  # read the gradients when this output's backward ends
                for out in _grad_tensors(output):
                    out.register_hook(self._on_sampled_backward)
                if self.loss_watch is not None:
                    self.loss_watch.arm()  # the next loss call is this model's
                self.guard.call("retained_graphs", self.graphs.plant, output, self.steps.step_index)
            if self.steps.first_forward_pending and torch.is_grad_enabled():
                self.steps.first_forward_pending = False
                self._uncleared_armed = self._uncleared_due
            if self._uncleared_armed and torch.is_grad_enabled():
                # The step after a sampled one: is its consumed gradient still there when backward starts? Every
                # output of every forward of the step gets a hook until one fires. A parameter's gradient
                # accumulates only after every path to it is done, and each path leaves the model through an
                # output, so the first hook runs before any accumulation, however many forwards (an RL
                # episode's actions) and heads (a policy and a value) the loss sums.
                for out in _grad_tensors(output):
                    out.register_hook(self._on_backward_start)
        except Exception:  # noqa: BLE001
            self.guard.failed("forward")
        finally:
            self.guard.leave(self._clock() - t0)
        return None

    def _on_backward_start(self, grad: Tensor) -> None:
        """Fires when backward reaches a model output: gradients present at the first such moment of the step's
        first backward were not cleared (later outputs of that backward, and later backwards, are ignored)."""
        if self._uncleared_armed:
            self._uncleared_armed = False
            self.guard.call("uncleared_gradients", self.params.measure_uncleared)
        return None

    def _on_sampled_backward(self, grad: Tensor) -> None:
        """Backward reached a sampled forward's output: read the gradients once this backward has finished."""
        task = torch._C._current_graph_task_id()
        if task != self._backward_task:  # once per backward, whatever number of outputs it runs through
            self._backward_task = task
            engine = torch.autograd.Variable._execution_engine  # type: ignore[attr-defined]
            # Queued from a final callback, it runs after the callbacks queued during backward (DDP's
            # gradient averaging): the gradients as they stand before the user's code touches them.
            engine.queue_callback(lambda: engine.queue_callback(self._on_backward_end))
        return None

    def _on_backward_end(self) -> None:
        self.guard.call("gradients", self.params.capture_backward_end)

    def _on_optimizer_pre(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self.params.leftover_refs:  # a left-over gradient was measured this step: is it still what steps?
            self.guard.call("uncleared_gradients", self.params.check_leftover_consumed)
        if self._sampled:
            t0 = self.guard.enter(self._clock())  # guarded calls inside are timed once, here
            # With a closure (LBFGS, Lightning) backward runs inside step(): read gradients after it.
            self._grads_after_step = bool(args and args[0] is not None) or (kwargs or {}).get("closure") is not None
            if not self._grads_after_step:
                self.guard.call("gradients", self.params.capture_gradients)
            if self.options.update_ratios:
                self.guard.call("update_ratio", self.params.copy_weights, optimizer_param_ids(optimizer))
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
                self.guard.call("gradients", self.params.capture_gradients)
            self._boundary()
        except Exception:  # noqa: BLE001
            self.guard.failed("step")
        finally:
            self.guard.leave(self._clock() - t0)

    def _on_amp_skip(self, optimizer: Any) -> None:
        """A GradScaler skipped ``optimizer``'s step: it still ends a step (a run of skips gets sampled)."""
        if self._opt_ref is None or optimizer is not self._opt_ref():
            return
        self._end_step(capture_gradients=self._sampled)


def _fp16_autocast() -> bool:
    """float16 autocast is on (gradients are then usually loss-scaled between backward and the step)."""
    for device in ("cuda", "cpu"):
        if torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) == torch.float16:
            return True
    return False


def _grad_tensors(output: Any, limit: int = 4, grad_only: bool = True) -> list[Tensor]:
    """Up to ``limit`` tensors of a forward's output (tensor, tuple, list, dict) that require grad (any tensor
    with ``grad_only`` False)."""
    found: list[Tensor] = []
    stack = [output]
    while stack and len(found) < limit:
        v = stack.pop(0)
        if isinstance(v, Tensor):
            if v.requires_grad or not grad_only:
                found.append(v)
        elif isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, (list, tuple)):
            stack.extend(v)
    return found


__all__ = ["ModelHooks"]
