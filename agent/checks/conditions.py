"""The checks' conditions: one function per catalogue check, each yielding what holds on a new snapshot.

Each function is called as ``fn(engine, check, snapshot, monitor)`` and yields ``(module or None, value,
template fields)``; it reads thresholds with ``engine.th(check, name)`` and the engine's histories. Host
values only, no torch.
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Iterator

from ..snapshot import Snapshot
from .catalogue import BY_NAME, Check
from .data_conditions import DATA_CONDITIONS

Condition = tuple["str | None", float, dict[str, Any]]
"""(module or None, the number that shows it, extra template fields)"""
FP32_RESOLUTION = 1e-6
"""Relative change of a weight tensor below which fp32 rounding may swallow the update (2**-24 is one ulp)."""


def nonfinite_values(e: Any, c: Check, s: Snapshot, m: Any) -> Iterator[Condition]:
    amp = getattr(m, "amp", None)  # agent.collect.amp.ScalerWatch: skipped steps are expected, a run of them is not
    skips = amp.consecutive_skips if amp is not None else 0
    if skips >= e.th(c, "amp_skipped_steps"):
        scale = f"{amp.scale:.3g}" if amp.scale is not None else "unknown"
        yield None, float(skips), {"tensor": f"gradient (GradScaler skipped every step, loss scale now {scale})",
                                   "module": "the scaled gradients"}
        return
    if s.amp_skipped:
        return
    counts = {t: s.nonfinite(t) for t in ("loss", "gradient", "weight", "activation")}
    total = sum(counts.values())
    if total >= e.th(c, "min_count"):
        kinds = [t for t, n in counts.items() if n]
        first = next((l.module for l in s.layers if l.grad_nonfinite or l.weight_nonfinite), None)
        if first is None:
            first = next((a.key for a in s.activations if a.nonfinite), "the loss")
        fields: dict[str, Any] = {"tensor": "/".join(kinds), "module": first}
        if s.loss_nonfinite_step is not None:  # the step of the first NaN loss, whichever sample saw it
            fields["started"] = min(s.loss_nonfinite_step, s.step)
        yield None, float(total), fields


def exploding_gradients(e: Any, c: Check, s: Snapshot, m: Any) -> Iterator[Condition]:
    g = s.grad_norm
    if g is None or not math.isfinite(g):
        return
    past = [h.grad_norm for h in list(e.history)[:-1] if h.grad_norm is not None and math.isfinite(h.grad_norm)]
    past = past[-int(e.th(c, "history")):]
    median = statistics.median(past) if len(past) >= e.th(c, "min_history") else None
    absolute = e.th(c, "absolute")
    if median and g / median > e.th(c, "median_factor"):
        why = f"{g / median:.0f}x its rolling median {median:.3g}"
    elif g > absolute:
        why = f"above the absolute limit {absolute:.3g}"
    else:
        return
    worst = max((l for l in s.layers if l.grad_norm is not None), key=lambda l: l.grad_norm or 0.0)
    yield None, g, {"why": why, "module": worst.module}


def vanishing_gradients(e: Any, c: Check, s: Snapshot, m: Any) -> Iterator[Condition]:
    rel_th, rms_th = e.th(c, "relative"), e.th(c, "rms")
    rows = []
    for l in s.layers:
        # No gradient at all is not a vanishing one: units downstream that never fire, or a cut graph.
        if l.grad_norm is None or not math.isfinite(l.grad_norm) or not l.params or l.grad_norm == 0:
            continue
        ratio = l.grad_norm / l.weight_norm if l.weight_norm else math.inf
        rows.append((l, l.grad_norm / math.sqrt(l.params), ratio))
    # Only when the model as a whole gets a signal: a converged or constant loss is not "vanishing".
    if not rows or max(r for _, _, r in rows) < 100 * rel_th:
        return
    for l, rms, ratio in rows:
        if rms < rms_th or ratio < rel_th:
            yield l.module, rms, {"ratio": ratio}


def dead_units(e: Any, c: Check, s: Snapshot, m: Any) -> Iterator[Condition]:
    for a in s.activations:
        if a.dead_ratio is not None and a.dead_ratio >= e.th(c, "ratio"):
            yield a.key, a.dead_ratio, {"units": a.units, "window": e.options.dead_window, "kind": a.kind}


def saturated_activations(e: Any, c: Check, s: Snapshot, m: Any) -> Iterator[Condition]:
    for a in s.activations:
        if a.saturated_ratio is not None and a.saturated_ratio >= e.th(c, "ratio"):
            yield a.key, a.saturated_ratio, {"kind": a.kind}


def loss_not_decreasing(e: Any, c: Check, s: Snapshot, m: Any) -> Iterator[Condition]:
    w = int(e.th(c, "window"))
    losses = [v for _, v in e.losses][-2 * w:]
    if len(losses) < 2 * w or s.loss is None or len(e.loss_start) < w:
        return
    # Progress is measured as a share of the distance to 0: a loss that goes negative (a policy-gradient or
    # other surrogate objective, a log-likelihood of continuous data) has no such distance.
    if getattr(e, "loss_negative", False) or _more_data(e, s):
        return
    # While the learning rate is still warming up, a flat loss is expected.
    lrs = [max(h.learning_rates) for h in list(e.history)[-2 * w:] if h.learning_rates]
    if len(lrs) >= 2 * w and max(lrs[w:]) > 1.05 * max(lrs[:w]):
        return
    # Nor once the schedule has decayed the learning rate to a thousandth of its peak (the end of a cosine, or
    # a decay stepped per batch: learning_rate_zero names that one when it reaches zero).
    if lrs and lrs[-1] < 1e-3 * getattr(e, "_peak_lr", 0.0):
        return
    start = statistics.fmean(e.loss_start[:w])
    prev = statistics.fmean(losses[:w])
    last = statistics.fmean(losses[-w:])
    improvement = (prev - last) / abs(prev) if prev else 0.0
    dropped = (start - last) / abs(start) if start else 0.0
    # Hysteresis: once firing, it takes twice the minimum improvement to resolve (no flapping).
    need = e.th(c, "min_improvement") * (2 if ("loss_not_decreasing", None) in e.incidents.active else 1)
    if improvement < need and dropped < 1 - e.th(c, "near_start"):
        yield None, last, {"window": w, "improvement": improvement, "start_ratio": last / start if start else 1.0,
                           **_tight_clipping(s)}


TIGHT_CLIP_FACTOR = 0.01
"""A clip that leaves under 1% of the gradient's norm makes every step 100x shorter than the learning rate says."""


def _tight_clipping(s: Snapshot) -> dict[str, str]:
    """A note and advice when clipping, not the learning rate, is what keeps the steps small."""
    factor, share = s.grad_clip_factor, s.grad_clipped_fraction
    if factor is None or share is None or share < 0.8 or factor >= TIGHT_CLIP_FACTOR:
        return {}
    return {"note": f"gradients were clipped on {share:.0%} of the recent sampled steps, to {factor:.2g} of their "
                    f"norm ({s.grad_norm or 0:.3g} before the clip)",
            "advice": "raise the clipping threshold (max_norm of clip_grad_norm_) or drop the clip: it shrinks "
                      "every step far below what the learning rate asks for"}


def loss_at_init(e: Any, c: Check, s: Snapshot, m: Any) -> Iterator[Condition]:
    expected = e.options.expected_initial_loss
    classes = e.options.num_classes
    if expected is None and classes:
        expected = math.log(classes)
    first = s.first_loss
    if expected is None or first is None or not math.isfinite(first):
        return
    watch = getattr(m, "loss_watch", None)
    if e.options.expected_initial_loss is None and getattr(watch, "init_shifted", False):
        return  # class weights with label smoothing: ln(classes) is not where this loss starts
    allowed = max(e.th(c, "relative") * abs(expected), e.th(c, "absolute"))
    if abs(first - expected) > allowed:
        yield None, first, {"expected": expected, "classes": classes if classes else "?"}


def learning_rate_zero(e: Any, c: Check, s: Snapshot, m: Any) -> Iterator[Condition]:
    # Any param group: one group at LR 0 freezes its layers as surely as a model-wide LR of 0.
    lows = [lr for lr in s.learning_rates if math.isfinite(lr) and lr <= e.th(c, "max_lr")]
    if lows:
        yield None, min(lows), {}


def parameters_without_gradient(e: Any, c: Check, s: Snapshot, m: Any) -> Iterator[Condition]:
    for l in s.layers:
        if l.params_without_grad >= e.th(c, "min_params"):
            yield l.module, float(l.params_without_grad), {}


def weights_not_updating(e: Any, c: Check, s: Snapshot, m: Any) -> Iterator[Condition]:
    lr = max((x for x in s.learning_rates if math.isfinite(x)), default=None)
    for l in s.layers:
        # A step of lr * gradient below fp32's resolution of the weights rounds to no change at all: that is
        # a vanishing gradient (or an LR near 0), not a layer left out of the optimizer.
        if l.in_optimizer and lr is not None and l.weight_norm and l.grad_norm is not None \
                and lr * l.grad_norm / l.weight_norm < FP32_RESOLUTION:
            continue
        if l.grad_norm and math.isfinite(l.grad_norm) and l.update_norm is not None and l.update_norm <= e.th(c, "max_update"):
            hint = "" if l.in_optimizer else " (its parameters are not in the optimizer)"
            yield l.module, 0.0, {"grad": l.grad_norm, "hint": hint}


def update_ratio_out_of_range(e: Any, c: Check, s: Snapshot, m: Any) -> Iterator[Condition]:
    r = s.update_ratio
    if r is None or not math.isfinite(r):
        return
    low, high = e.th(c, "low"), e.th(c, "high")
    if r > high:
        yield None, r, {"direction": "above", "low": low, "high": high}
    elif r < low and s.learning_rates:
        # Too small only while the LR is at its peak: a schedule that decays towards the end of training
        # is intended (and a decay to nothing is learning_rate_zero's finding).
        lr = max(s.learning_rates)
        e._peak_lr = max(getattr(e, "_peak_lr", 0.0), lr)
        if lr >= 0.5 * e._peak_lr and lr > e.th(BY_NAME["learning_rate_zero"], "max_lr"):
            yield None, r, {"direction": "below", "low": low, "high": high, "cause": False}
    if s.learning_rates:
        e._peak_lr = max(getattr(e, "_peak_lr", 0.0), max(s.learning_rates))


def gradients_not_cleared(e: Any, c: Check, s: Snapshot, m: Any) -> Iterator[Condition]:
    # The gradient left over when the next step's backward starts is exactly the one the previous sampled
    # step consumed: nobody cleared it. Left-overs that differ are legitimate (a GAN's generator backward runs
    # through the discriminator after its step; layers outside the optimizer keep their own gradients).
    u = s.uncleared_grad_norm
    history = list(e.history)
    consumed = history[-2].grad_norm if len(history) >= 2 else None
    if u is None or consumed is None or not math.isfinite(u) or not math.isfinite(consumed) or consumed <= 0:
        return
    if u > e.th(c, "min_norm") and abs(u - consumed) <= e.th(c, "match") * consumed:
        yield None, u, {}


def eval_in_train_mode(e: Any, c: Check, s: Snapshot, m: Any) -> Iterator[Condition]:
    n = s.eval_in_train_forwards
    if n > e._eval_last_count:
        e._eval_last_rise = e.samples
    e._eval_last_count = n
    if n >= e.th(c, "min_forwards") and e.samples - e._eval_last_rise < e.th(c, "quiet_samples"):
        yield None, float(n), {}


def overfitting(e: Any, c: Check, s: Snapshot, m: Any) -> Iterator[Condition]:
    # The validation loss stays clearly above its best for several evaluations while the training loss fell
    # since that best: a noisy plateau dips back to its best, a real divergence does not.
    vals = list(getattr(m, "val_history", []))
    rises = int(e.th(c, "rises"))
    if len(vals) < rises + 1:
        return
    best_i = min(range(len(vals)), key=lambda i: vals[i][1])
    after = vals[best_i + 1:]
    best_step, best = vals[best_i]
    if len(after) < rises or not math.isfinite(best) or best <= 0:
        return
    if not all(v > best * (1 + e.th(c, "min_rise")) for _, v in after[-rises:]):
        return
    train_then, train_now = _train_loss_at(e, best_step), _train_loss_at(e, after[-1][0])
    if train_then is not None and train_now is not None and train_now < train_then:
        yield None, after[-1][1], {"rises": len(after), "best": best, "best_step": best_step, "train": train_now,
                                   "train_then": train_then}


DATA_GROWTH = 1.5
"""A loss now against losses of samples that saw under 1/1.5 of the samples per step: a loss summed over the
data of a step (an RL episode's time steps, a variable number of sequences) rises with the data, not because
training went wrong, so the checks that read a rising loss stand aside."""


def _more_data(e: Any, s: Snapshot, last: int | None = None) -> bool:
    """Whether ``s`` saw over DATA_GROWTH x the median samples per step of the earlier samples (the last
    ``last`` of them, or all kept)."""
    now = s.samples_per_step
    earlier = [h.samples_per_step for h in list(e.history)[:-1]][-(last or len(e.history)):]  # the last is s
    earlier = [n for n in earlier if n]
    return bool(now and earlier) and now > DATA_GROWTH * statistics.median(earlier)


def loss_spike(e: Any, c: Check, s: Snapshot, m: Any) -> Iterator[Condition]:
    # Far above the recent median and far outside the recent spread: one noisy batch is neither. Before there
    # is a history, far above the first loss (measured before any update) is a spike too.
    if s.loss is None or not math.isfinite(s.loss):
        return
    if _more_data(e, s, int(e.th(c, "history"))) or getattr(e, "loss_negative", False):
        return
    past = [v for _, v in list(e.losses)[:-1]][-int(e.th(c, "history")):]
    factor = e.th(c, "factor")
    if len(past) < e.th(c, "min_history"):
        first = s.first_loss
        if first is not None and math.isfinite(first) and first > 0 and s.loss > factor * factor * first:
            yield None, s.loss, {"why": f"{s.loss / first:.3g}x the first loss {first:.4g}"}
        return
    median = statistics.median(past)
    mad = statistics.median(abs(v - median) for v in past) * 1.4826
    if median > 0 and s.loss > factor * median and s.loss > median + e.th(c, "mads") * mad:
        yield None, s.loss, {"why": f"{s.loss / median:.1f}x its median {median:.4g} over the previous {len(past)} samples"}


def divergence(e: Any, c: Check, s: Snapshot, m: Any) -> Iterator[Condition]:
    # Weights that grow at every sample, fast, while the loss climbs away from its best (or from the first
    # loss, measured before any update): the run is leaving its basin before anything is NaN. Once found, it
    # holds while the loss stays that far from its best, even when the weights have stopped growing.
    if s.loss is None or not math.isfinite(s.loss) or not e.losses:
        return
    best = min(v for _, v in e.losses)
    if s.first_loss is not None and math.isfinite(s.first_loss):
        best = min(best, s.first_loss)
    window = int(e.th(c, "window"))
    history = list(e.history)
    norms = [h.weight_norm for h in history[-(window + 1):]]
    start = getattr(getattr(m, "params", None), "initial_weight_norm", None)  # at attach, before any update
    # The loss rose with the data of a step, not away from its basin: stand aside. A surrogate loss (it went
    # below 0: a policy gradient) has ratios to its best that mean nothing: only the weights speak then.
    surrogate = bool(getattr(e, "loss_negative", False))
    if _more_data(e, s) and not surrogate:
        return
    far = not surrogate and best > 0 and s.loss >= e.th(c, "loss_rise") * best
    if not norms or norms[-1] is None:
        return
    fields = {"window": window, "best": best, "loss": s.loss}
    if ("divergence", None) in e.incidents.active:
        # It holds while the loss stays far from its best, or the weights stay several-fold above the smallest
        # norm seen (the runaway has not been undone).
        low = min([h.weight_norm for h in e.history if h.weight_norm] + ([start] if start else []), default=0.0)
        thrown = low > 0 and norms[-1] >= e.th(c, "strong_growth") * low
        if far or thrown:
            held = {"what": f"global weight norm stands at {norms[-1]:.3g}, {norms[-1] / low:.1f}x its smallest, "
                            "thrown out by the optimizer's updates (the loss went below 0, a surrogate objective "
                            "whose rise shows nothing)"} if surrogate else {}
            yield None, norms[-1], {**fields, "growth": norms[-1] / norms[0] if norms[0] else math.inf, **held}
        return
    if any(n is None or not math.isfinite(n) or n <= 0 for n in norms):
        return
    if len(norms) == window + 1 and not surrogate:
        rising = all(b > a * (1 + e.th(c, "min_step_growth")) for a, b in zip(norms, norms[1:]))  # a runaway
        growth = norms[-1] / norms[0]
        if far and rising and growth >= e.th(c, "growth") and _trained(norms, history[-len(norms) + 1:]):
            yield None, norms[-1], {**fields, "growth": growth}
            return
    # A runaway that the loss survives: an LR far too high throws the weights out several-fold within a few
    # samples while the loss jumps above where it stood, then settles on a plateau (a collapsed model) instead
    # of climbing on; the norm need not rise at every sample. Early in the run the norm at attach, before any
    # update, is the reference. Healthy growth that large (a tiny init filling out) comes with a falling loss.
    early = len(history) <= window + 1 and bool(start)
    if not early and len(history) < window + 1:
        return
    ref_norm = start if early else norms[0]
    ref_step = -1 if early else history[-(window + 1)].step
    series = ([start] if early else []) + norms
    if not ref_norm:
        return
    growth = norms[-1] / ref_norm  # where the weights stand now: thrown out, not merely passing through
    if not _trained(series, history[-len(norms):] if early else history[-len(norms) + 1:]):
        return
    before = [v for st, v in e.losses if st <= ref_step]
    if s.first_loss is not None and math.isfinite(s.first_loss):
        before.append(s.first_loss)
    ref = min(before, default=None)
    peak = max((v for st, v in e.losses if st > ref_step), default=None)
    if growth >= e.th(c, "strong_growth") and surrogate:
        yield None, norms[-1], {**fields, "growth": growth, "window": len(series) - 1,
                                "what": f"global weight norm grew {growth:.1f}x over {len(series) - 1} samples to "
                                        f"{norms[-1]:.3g} through the optimizer's updates (the loss went below 0, a "
                                        "surrogate objective whose rise shows nothing)"}
    elif growth >= e.th(c, "strong_growth") and ref and ref > 0 and peak is not None \
            and peak >= e.th(c, "strong_loss_rise") * ref:
        yield None, norms[-1], {**fields, "growth": growth, "best": ref, "loss": peak, "window": len(series) - 1}



def _trained(norms: list[float], after: list[Snapshot]) -> bool:
    """Whether weight norms (``after[k]`` is the sample that ended at ``norms[k + 1]``) grew through training:
    over at least two samples, or in one sampled optimizer step whose measured update accounts for the jump.
    One jump between two samples that no update explains is an edit of the weights from outside the optimizer
    (a reset, a load, a planted bias), not a runaway."""
    jumps = [(a, b, h) for (a, b), h in zip(zip(norms, norms[1:]), after) if b > 1.1 * a]
    by_update = any(h.update_ratio is not None and h.update_ratio * b >= 0.5 * (b - a) for a, b, h in jumps)
    return len(jumps) >= 2 or by_update


def _train_loss_at(e: Any, step: int) -> float | None:
    best = None
    for st, v in e.losses:
        if st <= step:
            best = v
        else:
            break
    return best if best is not None else (e.losses[0][1] if e.losses else None)


def constant_init(e: Any, c: Check, s: Snapshot, m: Any) -> Iterator[Condition]:
    for module in getattr(m, "constant_weights", ()):
        yield module, 0.0, {}


def memory_leak(e: Any, c: Check, s: Snapshot, m: Any) -> Iterator[Condition]:
    n = int(e.th(c, "samples"))
    hist = list(e.history)[-n:]
    if len(hist) < n:
        return
    series: dict[str, list[float]] = {}
    for h in hist:
        if h.memory.host_rss is not None:
            series.setdefault("host", []).append(h.memory.host_rss)
        for dev, v in h.memory.cuda_allocated.items():
            series.setdefault(f"cuda:{dev}", []).append(v)
    steps = hist[-1].step - hist[0].step or 1
    for kind, values in series.items():
        if len(values) < n:
            continue
        growth = values[-1] - values[0]
        diffs = [b - a for a, b in zip(values, values[1:])]
        rising = sum(d > 0 for d in diffs) / len(diffs)
        if growth >= e.th(c, "min_growth_bytes") and rising >= e.th(c, "rising_fraction"):
            yield None, growth / steps, {"kind": kind, "rate": _bytes(growth / steps), "growth": _bytes(growth), "samples": n}
            return


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


CONDITIONS = {**{name: fn for name, fn in list(globals().items()) if name in BY_NAME}, **DATA_CONDITIONS}
"""Check name -> its condition function."""
