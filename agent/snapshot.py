"""Immutable host-side records of what the agent measured. Plain floats only: no tensors, no torch."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property

ROOT = "(root)"
"""Module label of parameters owned directly by the model's root module."""


@dataclass(frozen=True)
class LayerStats:
    """One module that owns parameters, on a sampled step. Norms are L2 over all its trainable params."""

    module: str
    params: int
    """Number of trainable elements."""
    grad_norm: float | None
    """L2 norm of the gradients present (None when no parameter of the layer had a gradient)."""
    weight_norm: float
    update_norm: float | None
    """L2 norm of the weight change across the optimizer step (None when not measured)."""
    grad_nonfinite: int
    weight_nonfinite: int
    params_without_grad: int
    """Trainable parameters (tensors) of this layer whose .grad was None after backward."""
    in_optimizer: bool = True
    """False when none of the layer's parameters is held by the attached optimizer."""

    @property
    def update_ratio(self) -> float | None:
        """update norm / weight norm (healthy around 1e-3); None when unknown or the weight norm is 0."""
        if self.update_norm is None or not self.weight_norm:
            return None
        return self.update_norm / self.weight_norm


@dataclass(frozen=True)
class ActivationStats:
    """One activation call site (module or functional), over the sampled forward passes of one step."""

    key: str
    """Label: the activation module's path, or ``<module>:<function>`` for a functional call."""
    kind: str
    """Function name: relu, gelu, tanh, sigmoid, ..."""
    units: int
    dead_ratio: float | None
    """Fraction of units never positive over the dead window (ReLU family), else None."""
    saturated_ratio: float | None
    """Fraction of outputs in the flat region (tanh/sigmoid family), else None."""
    nonfinite: int


@dataclass(frozen=True)
class MemoryStats:
    """Memory read at the same point of a step (the step boundary). Bytes."""

    host_rss: float | None = None
    cuda_allocated: dict[str, float] = field(default_factory=dict)
    cuda_reserved: dict[str, float] = field(default_factory=dict)
    cuda_peak: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Snapshot:
    """Everything measured on one sampled step; swapped in whole under a lock, never mutated."""

    step: int
    time: float
    """Unix time of the step boundary, seconds."""
    loss: float | None = None
    """Mean of the losses logged since the previous sample."""
    loss_min: float | None = None
    """Smallest loss logged since the previous sample (a loss below 0 is a surrogate objective, not a distance
    to a perfect fit: the checks that compare losses as ratios then stand aside)."""
    samples_per_step: float | None = None
    """Mean samples (batch rows of the training forwards) per step since the previous sample. A loss summed over
    a varying amount of data (an RL episode's steps) changes with it, not with training."""
    loss_nonfinite: int = 0
    loss_nonfinite_step: int | None = None
    """Training step of the first non-finite loss logged since the previous sample (None: none seen)."""
    first_loss: float | None = None
    val_loss: float | None = None
    learning_rates: tuple[float, ...] = ()
    layers: tuple[LayerStats, ...] = ()
    activations: tuple[ActivationStats, ...] = ()
    memory: MemoryStats = field(default_factory=MemoryStats)
    uncleared_grad_norm: float | None = None
    """L2 norm of gradients already present when the first backward after an optimizer step started."""
    eval_in_train_forwards: int = 0
    """Cumulative forward passes without autograd while dropout/batch-norm modules were in training mode."""
    step_seconds: float | None = None
    """Median step duration over the last interval, seconds."""
    amp_skipped: bool = False
    """An AMP GradScaler skipped this step's optimizer update (non-finite gradients are expected)."""
    grad_clip_factor: float | None = None
    """Gradient norm the optimizer step consumed / norm when backward ended (loss scale divided out): 1 when
    nothing shrank the gradients, < 1 when clipping did (the layer norms are then the pre-clip ones)."""
    grad_clipped_fraction: float | None = None
    """Share of the recent sampled steps (agent.collect.clipping.WINDOW) on which clipping shrank the gradients."""
    input_rms: float | None = None
    """RMS of the model input's leading samples (float inputs only)."""
    input_feature_ratio: float | None = None
    """For a 2-D input: the largest per-feature RMS / the median per-feature RMS."""
    input_constant: bool | None = None
    """Every inspected element of the (float) model input is equal (constant or all-zero input)."""
    input_fingerprint: tuple[float, float, float] | None = None
    """Exact float64 sums of the input's first elements: equal fingerprints mean the same batch."""
    loss_input_misuse: str | None = None
    """The loss function that received probabilities where it expects logits or log-probabilities."""
    class_counts: tuple[int, ...] | None = None
    """Labels per class in this sampled batch, as the classification loss received them (padding left out)."""
    loss_weighted: bool = False
    """The classification loss was given per-class weights."""
    retained_graphs: int = 0
    """Autograd graphs of earlier sampled steps (at least 3 steps back) still alive."""
    retained_since: int | None = None
    """Step of the oldest of those graphs."""

    def _total(self, attr: str) -> float | None:
        values = [getattr(layer, attr) for layer in self.layers if getattr(layer, attr) is not None]
        if not values:
            return None
        return math.sqrt(math.fsum(v * v for v in values))

    @cached_property  # computed once: the check engine reads it for every snapshot in its history
    def grad_norm(self) -> float | None:
        """Global gradient L2 norm over every layer."""
        return self._total("grad_norm")

    @cached_property  # computed once: the check engine reads it for every snapshot in its history
    def weight_norm(self) -> float | None:
        """Global weight L2 norm over every layer."""
        return self._total("weight_norm")

    @cached_property  # computed once: the check engine reads it for every snapshot in its history
    def update_ratio(self) -> float | None:
        """Global update norm / weight norm."""
        upd = self._total("update_norm")
        w = math.sqrt(math.fsum(l.weight_norm ** 2 for l in self.layers if l.update_norm is not None)) if upd is not None else 0.0
        return upd / w if upd is not None and w else None

    def nonfinite(self, tensor: str) -> int:
        """Total non-finite elements of a tensor kind: gradient, weight, activation or loss."""
        if tensor == "gradient":
            return sum(l.grad_nonfinite for l in self.layers)
        if tensor == "weight":
            return sum(l.weight_nonfinite for l in self.layers)
        if tensor == "activation":
            return sum(a.nonfinite for a in self.activations)
        if tensor == "loss":
            return self.loss_nonfinite
        raise ValueError(f"unknown tensor kind {tensor!r}")
