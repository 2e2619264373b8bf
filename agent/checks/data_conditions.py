"""The conditions of the data checks: what the loss received (probabilities, labels), what entered the model
(scale, repeats) and the graphs kept alive. Same form as agent.checks.conditions; host values only."""

from __future__ import annotations

from collections import deque
from typing import Any, Iterator

from ..snapshot import Snapshot
from .catalogue import Check

Condition = tuple["str | None", float, dict[str, Any]]

_PROBABILITY_FIX = {
    "cross_entropy": ("every row in [0, 1] summing to 1: softmax outputs",
                      "pass the logits: drop the softmax before cross_entropy / CrossEntropyLoss, which applies "
                      "log_softmax itself"),
    "nll_loss": ("every row in [0, 1] summing to 1: softmax outputs, where log-probabilities are expected",
                 "take log_softmax instead of softmax before nll_loss (or call cross_entropy on the logits)"),
    "binary_cross_entropy_with_logits": ("every value in [0, 1]: sigmoid outputs",
                                         "pass the logits: drop the sigmoid before BCEWithLogitsLoss / "
                                         "binary_cross_entropy_with_logits, which applies it itself"),
}


def probabilities_as_logits(e: Any, c: Check, s: Snapshot, m: Any) -> Iterator[Condition]:
    f = s.loss_input_misuse
    if f in _PROBABILITY_FIX:
        what, fix = _PROBABILITY_FIX[f]
        yield None, 1.0, {"function": f, "what": what, "advice": fix}


def _batch_shape(counts: tuple[int, ...]) -> tuple[int, int, float, int]:
    """(labels, distinct labels, distinct labels a shuffled batch of that size holds under uniform classes,
    dominant label)."""
    labels = sum(counts)
    k = len(counts)
    expected = k * (1 - (1 - 1 / k) ** labels) if k else 0.0
    return labels, sum(1 for v in counts if v), expected, max(range(k), key=counts.__getitem__)


def unshuffled_batches(e: Any, c: Check, s: Snapshot, m: Any) -> Iterator[Condition]:
    # A batch of B labels drawn from a shuffled dataset holds about k(1 - (1 - 1/k)^B) distinct ones (fewer when
    # the classes are imbalanced, so the test is loose: an eighth of that). Batches that each hold one class,
    # with the class changing from batch to batch, are a dataset read in label order. The same class every
    # time is an imbalance (class_imbalance), not an order.
    recent = e.__dict__.setdefault("_label_batches", deque(maxlen=16))
    e._unordered = True
    if s.class_counts is None or len(s.class_counts) < 2:
        return
    recent.append(_batch_shape(s.class_counts))
    n = int(e.th(c, "samples"))
    window = list(recent)[-(n + 1):]
    narrow = [b for b in window if b[0] >= 2 and b[1] <= max(1.0, e.th(c, "fraction") * b[2])]
    if len(narrow) < n or not (narrow[-1] is window[-1]):  # one batch may straddle two classes
        return
    window = narrow
    e._unordered = False  # batches are narrow: class_imbalance cannot judge the distribution now
    moving = len({b[3] for b in window}) > 1 or ("unshuffled_batches", None) in e.incidents.active
    if moving:
        labels, distinct, expected, _ = window[-1]
        yield None, float(max(b[1] for b in window)), {"samples": n, "distinct": max(b[1] for b in window),
                                                       "batch": labels, "expected": expected,
                                                       "classes": len(s.class_counts)}


def class_imbalance(e: Any, c: Check, s: Snapshot, m: Any) -> Iterator[Condition]:
    # Counted over every sampled batch the loss received (ignore_index padding left out). A class-weighted loss
    # says the imbalance is known; batches read in label order (unshuffled_batches) say nothing about it yet.
    counts = s.class_counts
    if counts is None:
        return
    total = e.__dict__.setdefault("_label_totals", [0] * len(counts))
    if len(total) != len(counts):
        total[:] = [0] * len(counts)
        e._label_samples = 0
    for k, v in enumerate(counts):
        total[k] += v
    e._label_samples = getattr(e, "_label_samples", 0) + 1
    labels, classes = sum(total), len(total)
    if s.loss_weighted or not getattr(e, "_unordered", True) or e._label_samples < e.th(c, "min_samples") \
            or labels < e.th(c, "min_labels_per_class") * classes:
        return
    missing = [k for k, v in enumerate(total) if v == 0]
    present = [(v, k) for k, v in enumerate(total) if v > 0]
    (most, kmax), (least, kmin) = max(present), min(present)
    fields = {"labels": labels, "samples": e._label_samples}
    if missing:
        shown = ", ".join(map(str, missing[:8])) + (" ..." if len(missing) > 8 else "")
        yield None, float(len(missing)), {**fields, "detail": f"{len(missing)} of the {classes} output classes "
                                                                f"never appear in the targets (class {shown})"}
    elif most / least >= e.th(c, "ratio"):
        yield None, most / least, {**fields, "detail": f"class {kmax} has {most / least:.0f}x the labels of class "
                                                        f"{kmin} ({most / labels:.1%} against {least / labels:.2%})"}


def inputs_not_normalized(e: Any, c: Check, s: Snapshot, m: Any) -> Iterator[Condition]:
    if s.input_constant:
        yield None, 0.0, {"detail": "every element of the model input is equal (a constant or all-zero input)",
                          "advice": "a constant input carries no information: check the data pipeline (a failed "
                                    "load, a mask or transform that zeroes it, the wrong tensor passed)"}
    elif s.input_rms is not None and s.input_rms > e.th(c, "rms"):
        yield None, s.input_rms, {"detail": f"the model input has RMS {s.input_rms:.3g} (normalised data is "
                                            f"about 1; raw 0-255 pixels are about 100)"}
    elif s.input_feature_ratio is not None and s.input_feature_ratio > e.th(c, "feature_ratio"):
        yield None, s.input_feature_ratio, {"detail": f"one input feature is {s.input_feature_ratio:.0f}x the scale "
                                                      f"(RMS) of the median feature"}


def repeated_batches(e: Any, c: Check, s: Snapshot, m: Any) -> Iterator[Condition]:
    fp = s.input_fingerprint
    if fp is None or s.input_constant:  # a constant input repeats trivially: inputs_not_normalized says it
        return
    last = getattr(e, "_input_fingerprint", None)
    if last is not None and last[1] == fp:
        e._same_input = (e._same_input[0], e._same_input[1] + 1)
    else:
        e._same_input = (s.step, 1)
    e._input_fingerprint = (s.step, fp)
    first, run = e._same_input
    opt = m._opt_ref() if getattr(m, "_opt_ref", None) is not None else None
    if run >= e.th(c, "samples") and type(opt).__name__ != "LBFGS":  # LBFGS runs are full-batch by design
        yield None, float(run), {"first": first, "last": s.step, "started": first}


def graph_retained(e: Any, c: Check, s: Snapshot, m: Any) -> Iterator[Condition]:
    if s.retained_graphs >= e.th(c, "graphs"):
        yield None, float(s.retained_graphs), {"oldest": s.retained_since}


DATA_CONDITIONS = {fn.__name__: fn for fn in (probabilities_as_logits, unshuffled_batches, class_imbalance,
                                               inputs_not_normalized, repeated_batches, graph_retained)}
"""Check name -> its condition function, for agent.checks.conditions.CONDITIONS."""
