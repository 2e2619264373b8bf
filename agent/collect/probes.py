"""Activation probes: see every activation function a model calls, as a module or functionally.

On sampled forward passes only, a ``TorchFunctionMode`` is entered for the duration of the model's
forward. It sees ``F.relu(x)``, ``torch.tanh(x)``, ``x.sigmoid()`` and the functional call inside
``nn.ReLU.forward`` alike, so one mechanism covers both kinds of models. Global module hooks, also
registered only for that forward, keep a stack of the running module so each call is named after the
module it happens in. On other steps nothing of this exists, so it costs nothing.

The mode runs Python around every torch call of the forward (about 10% of a small CNN's forward). When a
sampled forward shows that every activation call is the single call inside an activation module
(``nn.ReLU``, ``nn.Tanh``, ...), later samples hook just those modules for the forward instead, with the
same names and statistics; every ``REDISCOVER_EVERY``-th sampled forward uses the mode again, so a
functional call that appears later is still found.
"""

from __future__ import annotations

import math
import sys
import threading
import weakref
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils.hooks import RemovableHandle

from . import stats
from ..snapshot import ActivationStats
from .sites import SiteState as _SiteState, dead_window as _dead_window
from .transfer import DeviceBatch
from .weakhook import WeakHook


@dataclass(frozen=True)
class ActivationSpec:
    """How to read one activation function: dead units (ReLU family) and/or a saturated region."""

    dead: bool = False
    center: float | None = None
    half_width: float | None = None


_DEAD = ActivationSpec(dead=True)
_TANH = ActivationSpec(center=0.0, half_width=0.97)
_SIGMOID = ActivationSpec(center=0.5, half_width=0.47)
_BOUNDED01 = ActivationSpec(center=0.5, half_width=0.5 * (1 - 1e-6))

ACTIVATIONS: dict[str, ActivationSpec] = {
    **{n: _DEAD for n in ("relu", "relu6", "leaky_relu", "elu", "selu", "celu", "gelu", "silu", "mish",
                         "hardswish", "rrelu", "prelu", "threshold")},
    **{n: _TANH for n in ("tanh", "softsign")},
    "sigmoid": _SIGMOID,
    "hardsigmoid": _BOUNDED01,
    "hardtanh": ActivationSpec(center=0.0, half_width=1 - 1e-6),  # bounds read from the call
}
"""Function name (without a trailing ``_`` for in-place variants) -> how it is measured."""

ACTIVATION_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish,
    nn.RReLU, nn.PReLU, nn.Threshold, nn.Tanh, nn.Softsign, nn.Sigmoid, nn.Hardsigmoid, nn.Hardtanh,
)
"""Modules whose forward is one activation call: their calls are labelled with the module's own path."""


def _spec_for(name: str, args: tuple, kwargs: dict) -> ActivationSpec | None:
    base = name[:-1] if name.endswith("_") else name
    spec = ACTIVATIONS.get(base)
    if base == "hardtanh" and spec is not None:
        lo = kwargs.get("min_val", args[1] if len(args) > 1 else -1.0)
        hi = kwargs.get("max_val", args[2] if len(args) > 2 else 1.0)
        spec = ActivationSpec(center=(lo + hi) / 2, half_width=(hi - lo) / 2 * (1 - 1e-6))
    return spec


class _Mode(TorchFunctionMode):
    def __init__(self, probe: "ActivationProbe") -> None:
        super().__init__()
        self.probe = probe

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if kwargs is None:
            kwargs = {}
        out = func(*args, **kwargs)
        # Every torch call of the forward lands here (attribute reads included): the common answer,
        # "not an activation", must be one dict lookup.
        try:
            name = _ACTIVATION_NAME.get(func, _UNKNOWN)
        except TypeError:  # an unhashable callable: never an activation we know
            return out
        if name is _UNKNOWN:
            name = _activation_name(func)
        if name is not None and isinstance(out, Tensor):
            spec = _spec_for(name, args, kwargs)
            if spec is not None and self.probe.running():
                # The mode is popped while this runs, so our own tensor ops are not intercepted.
                self.probe.guard_call("activations", self.probe.observe, name.rstrip("_"), spec, out)
        return out


_UNKNOWN = object()
_ACTIVATION_NAME: dict[Any, str | None] = {}
"""Callable seen by the mode -> its name when it is an activation function, else None (memoised)."""


def _activation_name(func: Any) -> str | None:
    name = getattr(func, "__name__", None)
    base = name[:-1] if isinstance(name, str) and name.endswith("_") else name
    found = name if isinstance(name, str) and base in ACTIVATIONS else None
    if len(_ACTIVATION_NAME) < 4096:  # bounded, though the set of torch callables is small
        _ACTIVATION_NAME[func] = found
    return found


_CALL_IMPL = nn.Module._call_impl.__code__


def _calling_module_frame() -> Any:
    """The frame of the innermost ``nn.Module`` call on this thread's stack (the root module whose pre-hook is
    running), or None when torch calls modules some other way."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_code is not _CALL_IMPL:
        frame = frame.f_back
    return frame


REDISCOVER_EVERY = 16

"""On the module-hook path, every this many sampled forwards run under the function mode again."""


class ActivationProbe:
    """Owns the per-call-site state and the short-lived mode and hooks of one sampled forward pass."""

    def __init__(
        self,
        model: nn.Module,
        guard_call: Callable[..., Any],
        dead_window: int,
        max_sites: int,
    ) -> None:
        self.guard_call = guard_call
        self.dead_window = dead_window
        self.max_sites = max_sites
        self.names: dict[int, str] = {}
        self.activation_modules: set[str] = set()
        self._modules: dict[str, weakref.ref[nn.Module]] = {}
        for name, module in model.named_modules():
            label = name or "(root)"
            self.names[id(module)] = label
            if isinstance(module, ACTIVATION_MODULES):
                self.activation_modules.add(label)
                self._modules[label] = weakref.ref(module)
        self.sites: dict[str, _SiteState] = {}
        self.dropped_sites: set[str] = set()
        self._stack: list[str | None] = []
        self._calls: dict[str, int] = {}
        self._flat_outs: dict[str, Any] = {}  # site -> weakref to its tanh/sigmoid output in this forward
        self._mode: _Mode | None = None
        self._handles: list[RemovableHandle] = []
        self._observed: set[str] = set()
        self.module_calls: dict[str, tuple[str, ActivationSpec]] | None = None
        """Activation module label -> (function, spec) while the module-hook path is on, else None."""
        self._hooked = False
        self._forwards = 0
        self._invoked: dict[str, int] = {}  # activation-module calls in the running mode forward
        self._seen: dict[str, list[tuple[str, ActivationSpec]]] = {}  # their activation calls
        self._functional = False  # an activation call outside an activation module was seen
        self._root_frame: Any = None  # the root module's running call (nn.Module._call_impl) while active
        self._thread = 0  # the thread running the sampled forward

    def unseen_modules(self) -> list[str]:
        """Activation modules of the model that no sampled forward of the root module ran (called from outside
        ``model(...)``, e.g. ``model.decoder(z)`` directly, or not used at all)."""
        seen = {key.split("#", 1)[0] for key in (*self.sites, *self.dropped_sites)}
        return sorted(label for label in self.activation_modules if label not in seen)

    # -- lifetime of one forward pass -------------------------------------------------------------
    @property
    def active(self) -> bool:
        return self._mode is not None or self._hooked

    def running(self) -> bool:
        """Whether the sampled forward that began the probe is still running in this thread.

        torch runs ``always_call`` forward hooks for an ``Exception`` only: a KeyboardInterrupt (any
        BaseException) leaves the forward without the root's forward hook, so ``end()`` never comes. Every
        entry point of the probe asks this first (a walk up the calling frames to the root module's call, a few
        dozen frames at most, on sampled forwards only); the module hooks then end the probe, before the next
        module call or activation of any model is observed (the mode cannot leave the stack from inside its own
        handler: there it only stops recording).
        """
        root = self._root_frame
        if root is None or threading.get_ident() != self._thread:
            return True  # no frame to follow (or another thread's module call): as before
        frame = sys._getframe(1)
        while frame is not None:
            if frame is root:
                return True
            frame = frame.f_back
        return False

    def end_if_interrupted(self) -> bool:
        """End the probe when its forward was left by a BaseException (see ``running``); True when it did."""
        if self.active and not self.running():
            self.end(complete=False)
            return True
        return False

    def begin(self) -> None:
        """Called from the root module's forward pre-hook of a sampled, training forward pass."""
        self.end()
        self._root_frame, self._thread = _calling_module_frame(), threading.get_ident()
        self._calls = {}
        self._forwards += 1
        if self.module_calls is not None and self._forwards % REDISCOVER_EVERY:
            for label in self.module_calls:
                module = self._modules[label]()
                if module is not None:
                    self._handles.append(module.register_forward_hook(WeakHook(self, "_module_hook")))
            self._hooked = True
            return
        self._stack = ["(root)"]
        self._invoked, self._seen, self._functional = {}, {}, False
        reg_pre = torch.nn.modules.module.register_module_forward_pre_hook
        reg_post = torch.nn.modules.module.register_module_forward_hook
        self._handles = [reg_pre(self._push), reg_post(self._pop, always_call=True)]
        self._mode = _Mode(self)
        self._mode.__enter__()

    def mark_model_output(self, outputs: list[Tensor]) -> None:
        """Before ``end()``: a tanh/sigmoid whose result the model returns as its (first) output, itself or a
        view of it, is the model's output. Saturated there means confident, and the loss's gradient (p - y for BCE on a sigmoid)
        does not vanish with it: its saturation is not judged."""
        for key, ref in self._flat_outs.items():
            o = ref()
            if o is None:
                continue
            for t in outputs:
                if t is o or t._base is o or (t.data_ptr() == o.data_ptr() and t.numel() == o.numel()):
                    self.sites[key].is_output = True
        self._flat_outs = {}

    def end(self, complete: bool = True) -> None:
        """Called from the root module's forward hook (also when the forward raised an Exception); ``complete``
        False: the forward was interrupted, so what it saw does not choose the path of later samples."""
        self._flat_outs = {}
        mode, self._mode = self._mode, None
        if mode is not None:
            mode.__exit__(None, None, None)
            if complete:
                self._choose_path()
        for h in self._handles:
            h.remove()
        self._handles = []
        self._stack = []
        self._hooked = False
        self._root_frame = None  # holds the forward's locals: let them go

    def _choose_path(self) -> None:
        """After a forward under the mode: hook activation modules from now on if that sees the same calls."""
        single = (not self._functional and bool(self._seen)
                  and all(len(self._seen.get(label, ())) == n for label, n in self._invoked.items())
                  and all(len({fn for fn, _ in calls}) == 1 for calls in self._seen.values()))
        self.module_calls = {label: calls[0] for label, calls in self._seen.items()} if single else None

    def _module_hook(self, module: nn.Module, args: Any, output: Any) -> None:
        entry = self.module_calls.get(self.names.get(id(module), "")) if self.module_calls else None
        if self.end_if_interrupted():
            return None
        if entry is not None and isinstance(output, Tensor):
            self.guard_call("activations", self._record, self.names[id(module)], entry[0], entry[1], output)
        return None

    def _push(self, module: nn.Module, args: Any) -> None:
        if self.end_if_interrupted():  # the sampled forward was interrupted: this call belongs to someone else
            return None
        label = self.names.get(id(module))
        if label in self._modules:
            self._invoked[label] = self._invoked.get(label, 0) + 1  # type: ignore[index]
        self._stack.append(label)

    def _pop(self, module: nn.Module, args: Any, output: Any) -> None:
        if self._stack:
            self._stack.pop()

    def _context(self) -> str:
        for name in reversed(self._stack):
            if name is not None:
                return name
        return "(root)"

    # -- per call -------------------------------------------------------------------------------
    def observe(self, fn: str, spec: ActivationSpec, out: Tensor) -> None:
        """Record one activation output seen by the mode (device work only)."""
        ctx = self._context()
        if ctx in self.activation_modules:
            self._seen.setdefault(ctx, []).append((fn, spec))
            base = ctx
        else:
            self._functional = True
            base = f"{ctx}:{fn}"
        self._record(base, fn, spec, out)

    def _record(self, base: str, fn: str, spec: ActivationSpec, out: Tensor) -> None:
        """Statistics of one activation output at site ``base`` (``#k`` added for repeated calls). An empty
        output (a batch of zero, an expert that got no tokens) tells nothing about its units: skipped."""
        if out.numel() == 0:
            return
        n = self._calls.get(base, 0)
        self._calls[base] = n + 1
        key = base if n == 0 else f"{base}#{n}"
        site = self.sites.get(key)
        if site is None:
            if len(self.sites) >= self.max_sites:
                self.dropped_sites.add(key)
                return
            site = self.sites[key] = _SiteState(fn, spec, self.dead_window)
        self._observed.add(key)
        x = out.detach()  # every op below reads a detached tensor: nothing is recorded for autograd
        peak = None
        if spec.dead:
            peak = stats.unit_peaks(x)
            alive = peak > 0
            if site.last_alive is None or site.last_alive.shape != alive.shape or site.last_alive.device != alive.device:
                site.last_alive = torch.full(alive.shape, -1, dtype=torch.int64, device=alive.device)
                site.seen = site.calls = site.rows = 0
                site.steps.clear()
            site.units = alive.numel()
            site.last_alive = torch.where(alive, site.seen, site.last_alive)
            site.seen += 1
            site.calls += 1
            site.rows += x.numel() // max(1, site.units)
        else:
            site.units = x.shape[stats.unit_axis(x.ndim)] if x.ndim else 1
        if spec.half_width is not None:
            self._flat_outs[key] = weakref.ref(out)  # is it what the model returns? (mark_model_output)
            site.sat.append(stats.saturated_count(x, spec.center or 0.0, spec.half_width))
            site.numel += x.numel()
        site.nonfinite.append(_nonfinite(site, fn, x, peak))
        site.counted.append(site.exact)

    # -- per sampled step -----------------------------------------------------------------------
    def queue(self, batch: DeviceBatch) -> list[str]:
        """Queue this step's activation statistics for the batched copy; returns the sites queued.

        Per-call values of every site go into one stacked vector each (saturated counts, non-finite
        counts), so a sample costs a few tensor ops however many call sites the model has.
        """
        keys = sorted(self._observed)
        sat: list[Tensor] = []
        nonfinite: list[Tensor] = []
        for key in keys:
            site = self.sites[key]
            if site.calls:
                site.steps.append((site.calls, site.rows))
                site.calls = site.rows = 0
            window = _dead_window(site.steps, self.dead_window) if site.spec.dead and site.last_alive is not None else None
            if window is not None:
                threshold = site.seen - window
                batch.add(("act_dead", key), (site.last_alive < threshold).sum())  # units; ratio on the host
            sat.extend(site.sat)
            nonfinite.extend(site.nonfinite)
        _add_stacked(batch, "act_sat", sat)
        _add_stacked(batch, "act_nonfinite", nonfinite)
        return keys

    def results(self, keys: list[str], host: dict) -> tuple[ActivationStats, ...]:
        """Turn fetched host values into ActivationStats and reset the per-step accumulators."""
        out = []
        sat_all = _gather(host, "act_sat")
        nonfinite_all = _gather(host, "act_nonfinite")
        sat_pos = nonfinite_pos = 0
        for key in keys:
            site = self.sites[key]
            dead_units = host.get(("act_dead", key))
            dead = dead_units / site.units if dead_units is not None and site.units else None
            sat_ratio = None
            if site.sat:
                sat = math.fsum(sat_all[sat_pos : sat_pos + len(site.sat)])
                sat_pos += len(site.sat)
                if site.numel and not site.is_output:
                    sat_ratio = sat / site.numel if sat == sat else None  # NaN input: unknown
            values = nonfinite_all[nonfinite_pos : nonfinite_pos + len(site.nonfinite)]
            nonfinite_pos += len(site.nonfinite)
            # An exact count, or a detector sum that is finite exactly when the output was: then at least one.
            nonfinite = sum(round(v) if counted else (0 if math.isfinite(v) else 1) for v, counted in zip(values, site.counted))
            site.exact = nonfinite > 0  # count every element from the next sample on, until clean again
            out.append(ActivationStats(key=key, kind=site.kind, units=site.units, dead_ratio=dead,
                                       saturated_ratio=sat_ratio, nonfinite=nonfinite))
            site.sat, site.numel, site.nonfinite, site.counted = [], 0, [], []
        self._observed = set()
        return tuple(out)

    def reset_step(self) -> None:
        """Drop accumulators of a sampled step that produced no sample (e.g. a skipped optimizer step)."""
        for key in self._observed:
            site = self.sites[key]
            site.sat, site.numel, site.nonfinite, site.counted = [], 0, [], []
        self._observed = set()


_PASS_NEG_INF = frozenset({"leaky_relu", "prelu", "rrelu"})
"""ReLU-family functions that map -inf to -inf (the others give NaN, 0 or a constant): their peaks miss it."""


def _nonfinite(site: _SiteState, fn: str, x: Tensor, peak: Tensor | None) -> Tensor:
    """Non-finite elements of one activation output: an exact count, or a cheap detector.

    Healthy runs pay almost nothing: for the ReLU family the per-unit peaks already computed carry NaN
    and +inf (amax propagates both), so their sum is finite exactly when the output is (a -inf, which
    only the leaky variants pass through, shows in the minimum); bounded activations use one float sum.
    Once a sample finds non-finite values at a site, later samples count its elements exactly
    (stats.nonfinite_float_count, three passes) until one comes back clean. The reported count is thus
    exact except on the first sample that goes non-finite, which reports at least one.
    """
    if site.exact or not x.is_floating_point():
        return stats.nonfinite_float_count(x)
    if peak is not None:
        if fn in _PASS_NEG_INF:
            return peak.sum(dtype=torch.float32) + x.amin().float()
        return peak.sum(dtype=torch.float32)
    return x.sum(dtype=torch.float32)  # bounded outputs: finite unless an element is NaN


def _add_stacked(batch: DeviceBatch, key: str, values: list[Tensor]) -> None:
    """Queue 0-d values as one vector per device, in order (``key``, ``(key, k)``, ... for more devices)."""
    if not values:
        return
    devices = list(dict.fromkeys(t.device for t in values))
    if len(devices) == 1:
        batch.add(key, torch.stack(values))  # promotes to the widest dtype (float64 counts stay exact)
        return
    for k, t in enumerate(values):  # a model spread over devices: no cross-device copy, one value each
        batch.add((key, k), t.reshape(1))


def _gather(host: dict, key: str) -> list[float]:
    """The host values queued by ``_add_stacked`` under ``key``, in order."""
    value = host.get(key)
    if value is not None:
        return value if isinstance(value, list) else [value]
    out: list[float] = []
    k = 0
    while (key, k) in host:
        v = host[(key, k)]
        out.extend(v if isinstance(v, list) else [v])
        k += 1
    return out
