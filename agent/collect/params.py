"""Per-parameter statistics of sampled steps: gradient, weight and update norms per layer, on the device until
the one batched copy, then folded into LayerStats on the host."""

from __future__ import annotations

import math
import weakref
from typing import Any

import torch
from torch import Tensor, nn

from ..snapshot import ROOT, LayerStats
from . import stats
from .clipping import ClipJudgement, ClipRate, judge
from .transfer import DeviceBatch
from .updates import WeightCopies


class _Param:
    """A tracked parameter and the layer (module label) that owns it."""

    __slots__ = ("module", "name", "ref")

    def __init__(self, module: str, name: str, param: nn.Parameter) -> None:
        self.module = module
        self.name = name
        self.ref = param


class ParamTracker:
    """The model's parameters by layer; gradient norms, the transient weight copy behind update norms, and
    the per-layer statistics of a sampled step. Device work only on sampled steps; no host sync but the
    caller's one ``DeviceBatch.fetch()``."""

    def __init__(self, model: nn.Module, update_copy_max_bytes: int) -> None:
        self.params: list[_Param] = []
        for pname, p in model.named_parameters():
            self.params.append(_Param(pname.rpartition(".")[0] or ROOT, pname, p))
        self.update_copy_max_bytes = update_copy_max_bytes
        self.grad_sq: list[tuple[list[int], Tensor]] = []  # (parameter indices, squared norms) per device
        self.params_without_grad: dict[str, int] = {}
        self.weight_copy: list[tuple[int, Tensor]] = []
        self.copies = WeightCopies()  # scratch buffers for the update copy (kept on CPU, see agent.collect.updates)
        self._update_cursor = 0
        self.leftover_refs: list[weakref.ref[Tensor]] = []  # the left-over gradients, until the next step
        self.uncleared_sq: Tensor | None = None
        """Squared norm of the gradients already present when backward reached the output (forgotten zero_grad)."""
        self.backward_end_sq: list[tuple[list[int], Tensor]] = []  # as backward left them (before any clipping)
        self.fp16_autocast_seen = False  # float16 autocast ran in a sampled forward (a loss scale is likely)
        self.clip_rate = ClipRate()
        self.initial_weight_norm: float | None = None
        """Global L2 norm of the trainable weights at attach (before the first update), read by constant_layers."""

    def any_on_cpu(self) -> bool:
        return any(p.ref.is_cpu for p in self.params)

    def trainable(self) -> list[tuple[int, _Param]]:
        return [(i, p) for i, p in enumerate(self.params) if p.ref.requires_grad]

    # -- during a sampled step ------------------------------------------------------------------------
    def capture_gradients(self) -> None:
        """Squared gradient norms (device) and parameters without a gradient (host), after backward."""
        with torch.no_grad():
            trainable = self.trainable()
            with_grad = [(i, p.ref.grad) for i, p in trainable if p.ref.grad is not None]
            self.grad_sq = norm_vectors([i for i, _ in with_grad], [g for _, g in with_grad])
            missing: dict[str, int] = {}
            for i, p in trainable:
                if p.ref.grad is None:
                    missing[p.module] = missing.get(p.module, 0) + 1
            self.params_without_grad = missing

    def capture_backward_end(self) -> None:
        """Squared gradient norms when a backward ends (an autograd final callback on sampled steps): before
        clipping or unscaling. The last backward of the step wins (gradient accumulation)."""
        with torch.no_grad():
            with_grad = [(i, p.ref.grad) for i, p in self.trainable() if p.ref.grad is not None]
            self.backward_end_sq = norm_vectors([i for i, _ in with_grad], [g for _, g in with_grad])

    def judge_clipping(self, host: dict, loss_scale: float | None, scaler_watched: bool) -> ClipJudgement | None:
        """Compare the backward-end and consumed gradient norms (agent.collect.clipping); when clipping shrank
        them, put the backward-end layer norms (loss scale divided out) in ``host`` in place of the consumed."""
        ends = {k[1]: v for k, v in host.items() if isinstance(k, tuple) and k[0] == "gb"}
        if not ends:
            return None
        both = [i for i in ends if ("g", i) in host]
        verdict = judge(math.fsum(ends[i] for i in both), math.fsum(host[("g", i)] for i in both),
                        loss_scale if scaler_watched else None, self.fp16_autocast_seen and not scaler_watched)
        self.clip_rate.add(verdict)
        if verdict is not None and verdict.use_backward_end:
            divide = verdict.loss_scale ** 2
            for i, v in ends.items():
                host[("g", i)] = v / divide
        return verdict

    def measure_uncleared(self) -> None:
        """Gradients present when backward reaches the model's output were not cleared since the last step."""
        grads = [p.ref.grad for p in self.params if p.ref.grad is not None and p.ref.requires_grad]
        if not grads:
            self.uncleared_sq = torch.zeros(())  # measured: nothing left over
            return
        with torch.no_grad():
            self.uncleared_sq = stats.squared_norm_vector(grads).sum()
        self.leftover_refs = [weakref.ref(g) for g in grads]

    def check_leftover_consumed(self) -> None:
        """At the next optimizer step: the left-over gradient tensors are still the ones it will consume, or
        ``zero_grad()`` replaced them since (a GAN clears its discriminator after the generator's backward)."""
        refs, self.leftover_refs = self.leftover_refs, []
        current = {id(p.ref.grad) for p in self.params if p.ref.grad is not None}
        if any(r() is None or id(r()) not in current for r in refs):
            self.uncleared_sq = torch.zeros(())  # cleared before the step consumed it

    def copy_weights(self, in_optimizer: set[int] | None) -> None:
        """Transient copy of (a rotating slice of) the weights, to measure the coming update exactly."""
        candidates = [(i, p) for i, p in self.trainable() if in_optimizer is None or id(p.ref) in in_optimizer]
        if not candidates:
            self.weight_copy = []
            return
        cap = self.update_copy_max_bytes
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
            copies = self.copies.copy([p.ref for _, p in chosen])
        self.weight_copy = [(i, c) for (i, _), c in zip(chosen, copies)]

    # -- at the end of a sampled step -----------------------------------------------------------------
    def queue(self, batch: DeviceBatch, trainable: list[tuple[int, _Param]]) -> None:
        """Queue weight, update and gradient norms (one vector per list and device) and the uncleared norm."""
        # Weights with a copy from before the step get their norm and their update's norm from one fused
        # pass (stats.update_squared_norm_vectors); the others just their norm. One vector per list: a
        # sampled step costs a few tensor ops, not Python work per parameter. Each vector holds one
        # device's tensors: no value moves between devices before the one copy.
        idx = [i for i, _ in self.weight_copy]
        weights = [self.params[i].ref for i in idx]
        for group in stats.device_groups(weights):
            upd, w_copied = stats.update_squared_norm_vectors(
                [weights[k] for k in group], [self.weight_copy[k][1] for k in group],
                overwrite_old=True)  # the copies are our scratch buffers
            batch.add_vector([("w", idx[k]) for k in group], w_copied)
            batch.add_vector([("u", idx[k]) for k in group], upd)
        copied = set(idx)
        rest = [i for i, _ in trainable if i not in copied]
        for keys, vector in norm_vectors(rest, [self.params[i].ref for i in rest]):
            batch.add_vector([("w", i) for i in keys], vector)
        for keys, vector in self.grad_sq:
            batch.add_vector([("g", i) for i in keys], vector)
        for keys, vector in self.backward_end_sq:
            batch.add_vector([("gb", i) for i in keys], vector)
        if self.uncleared_sq is not None:
            batch.add("uncleared", self.uncleared_sq)
        self.weight_copy = []

    def reset_step(self) -> None:
        """Drop this step's device values (after a sample, or after a failed one)."""
        self.weight_copy = []
        self.grad_sq = []
        self.backward_end_sq = []
        self.uncleared_sq = None
        self.leftover_refs = []

    def exact_nonfinite(self, host: dict, trainable: list[tuple[int, _Param]]) -> dict[tuple[str, int], int]:
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

    def layer_stats(self, host: dict, trainable: list[tuple[int, _Param]], nonfinite: dict,
                    in_opt: set[int] | None) -> tuple[LayerStats, ...]:
        """Fold the fetched per-parameter squares into one LayerStats per module."""
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
                params_without_grad=self.params_without_grad.get(module, 0),
                in_optimizer=held_any,
            ))
        return tuple(layers)

    def constant_layers(self) -> tuple[str, ...]:
        """Layers with a >= 2-D weight of zero spread (a symmetric init that never breaks); read once, at attach,
        with the global weight norm before training (``initial_weight_norm``)."""
        found = []
        with torch.no_grad():
            # Frozen weights are left out: a fixed constant filter is deliberate.
            candidates = [p for p in self.params if p.ref.requires_grad and p.ref.ndim >= 2 and p.ref.numel() > 1
                          and p.ref.is_floating_point()]
            locals_ = [stats.local_values(p.ref.detach()) for p in candidates]  # a shard's own elements (FSDP)
            candidates = [p for p, t in zip(candidates, locals_) if t.numel() > 1]
            spreads = [(t.amax() - t.amin()).float() for t in locals_ if t.numel() > 1]
            host = DeviceBatch()
            for k, s in enumerate(spreads):
                host.add(k, s)
            trainable = [p.ref for _, p in self.trainable()]
            for keys, vector in norm_vectors(list(range(len(trainable))), trainable):
                host.add_vector([("w0", i) for i in keys], vector)
            values = host.fetch()  # once, at attach
            found = [f"{p.module}" for k, p in enumerate(candidates) if spreads and values[k] == 0.0]
            squares = [v for k, v in values.items() if isinstance(k, tuple)]
            self.initial_weight_norm = _root_sum(squares)
        return tuple(dict.fromkeys(found))

    def clear(self) -> None:
        """Release every tensor reference (close())."""
        self.reset_step()
        self.copies.clear()
        self.params = []


def optimizer_param_ids(optimizer: Any) -> set[int]:
    return {id(p) for g in optimizer.param_groups for p in g["params"]}


def norm_vectors(keys: list[int], tensors: list[Tensor]) -> list[tuple[list[int], Tensor]]:
    """``(keys, squared norms)`` per device of ``tensors`` (stats.squared_norm_vector on each group)."""
    return [([keys[k] for k in group], stats.squared_norm_vector([tensors[k] for k in group]))
            for group in stats.device_groups(tensors)]


def _root_sum(squares: list[float]) -> float | None:
    if not squares:
        return None
    total = math.fsum(squares)
    return math.sqrt(total) if total >= 0 else total  # NaN stays NaN


__all__ = ["ParamTracker", "optimizer_param_ids", "norm_vectors"]
