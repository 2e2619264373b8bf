"""A sampled step's end: queue every device statistic, copy them to the host at once, build the Snapshot."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch

from ..snapshot import Snapshot
from .inputs import GraphTokens, InputWatch
from .lossinputs import LossWatch
from .logged import LoggedValues
from .memory import MemoryReader
from .params import ParamTracker
from .probes import ActivationProbe
from .steps import StepClock
from .transfer import DeviceBatch


class DataWatches(NamedTuple):
    """What the model and its loss received on the sampled step, and the graphs still alive."""

    inputs: InputWatch
    loss: LossWatch | None
    graphs: GraphTokens


RETAINED_MIN_AGE = 3
"""Steps after which a sampled step's graph still being alive means someone keeps it."""


def take_sample(params: ParamTracker, logged: LoggedValues, probe: ActivationProbe, amp: Any,
                memory: MemoryReader, steps: StepClock, in_optimizer: set[int] | None, *,
                eval_in_train_forwards: int, wall: float, data: DataWatches | None = None) -> Snapshot:
    """The immutable host record of the step now ending (``wall``: its Unix time); one host-device sync,
    plus one more only when a norm came back non-finite (exact NaN/Inf counts)."""
    batch = DeviceBatch()
    trainable = params.trainable()
    with torch.no_grad():
        params.queue(batch, trainable)
        logged.queue(batch)
        sites = probe.queue(batch)
        if amp is not None:
            amp.queue(batch)
        if data is not None:
            data.inputs.queue(batch)
            if data.loss is not None:
                data.loss.queue(batch)
        host = batch.fetch()  # the one host-device sync of this sampled step
        scale = host.get("amp_scale")
        clip = params.judge_clipping(host, float(scale) if scale is not None else None, amp is not None)
        nonfinite = params.exact_nonfinite(host, trainable)
    nonfinite_step = logged.tripwire.first_step  # read() resets the tripwire
    loss, loss_nonfinite = logged.read(host)
    uncleared = host.get("uncleared")
    seen = InputWatch.read(host) if data is not None else {}
    batch_rows = data.inputs.shape[0] if data is not None and data.inputs.shape else None
    misuse, counts, weighted = data.loss.read(host, batch_rows) if data is not None and data.loss is not None \
        else (None, None, False)
    retained, retained_since = data.graphs.retained(steps.step_index, RETAINED_MIN_AGE) if data is not None else (0, None)
    return Snapshot(
        step=steps.step_index,
        time=wall,
        loss=loss,
        loss_min=host.get("loss_min"),
        samples_per_step=steps.samples_per_step_since_sample(),
        loss_nonfinite=loss_nonfinite,
        loss_nonfinite_step=nonfinite_step,
        first_loss=logged.first_loss,
        val_loss=logged.val_loss_last,
        learning_rates=steps.learning_rates,
        layers=params.layer_stats(host, trainable, nonfinite, in_optimizer),
        activations=probe.results(sites, host),
        memory=memory.read(),
        uncleared_grad_norm=math.sqrt(uncleared) if uncleared is not None and uncleared >= 0 else uncleared,
        eval_in_train_forwards=eval_in_train_forwards,
        step_seconds=steps.median_step_seconds(),
        amp_skipped=amp.read(host, steps.step_index) if amp is not None else False,
        grad_clip_factor=clip.factor if clip is not None else None,
        grad_clipped_fraction=params.clip_rate.fraction,
        input_rms=seen.get("rms"),
        input_feature_ratio=seen.get("feature_ratio"),
        input_constant=seen.get("constant"),
        input_fingerprint=seen.get("fingerprint"),
        loss_input_misuse=misuse,
        class_counts=counts,
        loss_weighted=weighted,
        retained_graphs=retained,
        retained_since=retained_since,
    )


__all__ = ["take_sample"]
