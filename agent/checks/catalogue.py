"""The check catalogue: one source of truth for names, thresholds, durations, severities, texts and runbooks.

The in-process check engine (agent.checks.engine), the generated Prometheus rules (alerts/) and the runbooks
(docs/runbooks.md) all read this table. Check names are a contract; the alert name is ``NNWatch`` +
PascalCase(name). Thresholds were calibrated on the healthy and broken scenarios in tests/scenarios.
No torch import here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

from .thresholds import THRESHOLD_DOCS

SEVERITIES = ("critical", "warning", "info")
RUNBOOK_BASE = "https://github.com/nnwatch/nnwatch/blob/main/docs/runbooks.md"
"""Where the committed rule files and the Helm chart link by default (docs/runbooks.md of the project's source
repository); the agent, ``nnwatch rules`` and ``nnwatch stack`` link the installed copy (agent.assets)."""


@dataclass(frozen=True)
class Check:
    """One entry of the catalogue."""

    name: str
    """snake_case check name (a contract)."""
    severity: str
    """critical pages (PagerDuty), warning goes to Slack, info is a hint."""
    scope: str
    """``module`` (one finding per layer/activation) or ``model`` (one per job)."""
    catches: str
    """The silent failure this check catches."""
    signal: str
    """The measured signal."""
    summary: str
    """Static one-sentence summary (ends with a period)."""
    description: str
    """In-process message template: ``{module}``, ``{value}``, ``{since}`` and check-specific fields."""
    advice: str
    """What to try first, appended to the log line."""
    thresholds: Mapping[str, float] = field(default_factory=dict)
    """Named thresholds, each documented in THRESHOLD_DOCS."""
    hold: int = 1
    """Consecutive sampled steps the condition must hold before the finding fires in-process."""
    warmup: int = 0
    """Sampled steps ignored at the start of the run."""
    prometheus_for: str = "5m"
    """``for:`` of the generated Prometheus alert."""
    seed: str = ""
    """Where the failure is described in shared/seeds."""

    @property
    def alert(self) -> str:
        """Prometheus alert name: NNWatch + PascalCase(name)."""
        return alert_name(self.name)

    @property
    def runbook_url(self) -> str:
        return self.runbook_at(RUNBOOK_BASE)

    def runbook_at(self, base: str) -> str:
        """This check's runbook section under ``base`` (the URL of a copy of docs/runbooks.md)."""
        return f"{base}#{self.alert.lower()}"


def alert_name(check: str) -> str:
    """``dead_units`` -> ``NNWatchDeadUnits``."""
    return "NNWatch" + "".join(part.capitalize() for part in check.split("_"))


def _c(**kw: object) -> Check:
    th = kw.pop("thresholds", {})
    return Check(thresholds=MappingProxyType(dict(th)), **kw)  # type: ignore[arg-type]


CHECKS: tuple[Check, ...] = (
    _c(
        name="nonfinite_values", severity="critical", scope="model",
        catches="NaN or Inf in the loss, gradients, weights or activations",
        signal="non-finite element counts by tensor kind and module (AMP-skipped steps excluded)",
        summary="Training produced NaN or Inf values.",
        description="{value:.0f} non-finite {tensor} values (first in {module}) since step {since}",
        advice="lower the learning rate or clip gradients, look for log/div of zero or sqrt of negatives; "
               "with fp16 use a GradScaler",
        thresholds={"min_count": 1, "amp_skipped_steps": 20}, hold=1, prometheus_for="1m",
        seed="003 (large gradients lead to NaN)",
    ),
    _c(
        name="exploding_gradients", severity="warning", scope="model",
        catches="gradient blow-up",
        signal="global gradient L2 norm against its own rolling median, and an absolute ceiling",
        summary="Gradient norm is far above its usual level.",
        description="global gradient norm {value:.3g} is {why} (largest in {module}) since step {since}",
        advice="clip gradients (torch.nn.utils.clip_grad_norm_), lower the learning rate, check for a bad batch "
               "or a missing normalisation",
        thresholds={"median_factor": 20.0, "absolute": 1e4, "history": 20, "min_history": 5},
        hold=2, warmup=3, prometheus_for="5m", seed="003 (monitor gradient norms per layer)",
    ),
    _c(
        name="vanishing_gradients", severity="warning", scope="module",
        catches="no learning signal reaches a layer (deep sigmoid/tanh stacks)",
        signal="per-layer RMS gradient and gradient norm relative to weight norm",
        summary="Gradients reaching a layer are vanishingly small.",
        description="layer {module}: RMS gradient {value:.2e}, gradient/weight norm ratio {ratio:.2e} since step {since}",
        advice="use ReLU-family activations or residual connections, normalisation layers, a proper init "
               "(Kaiming/Xavier), or a higher learning rate for early layers",
        thresholds={"rms": 1e-9, "relative": 1e-7}, hold=5, warmup=5, prometheus_for="15m",
        seed="003 (very small gradients lead to vanishing gradients)",
    ),
    _c(
        name="dead_units", severity="warning", scope="module",
        catches="dead ReLUs: units that never activate",
        signal="fraction of units never positive across a window of sampled steps (at least 256 observed positions)",
        summary="Many units of an activation layer never activate.",
        description="activation {module}: {value:.0%} of {units} units never positive over the last "
                    "{window} sampled steps, since step {since}",
        advice="check the init and biases of the layer before it (large negative biases kill units), lower the "
               "learning rate, or use LeakyReLU/GELU",
        thresholds={"ratio": 0.5}, hold=3, warmup=0, prometheus_for="15m", seed="003 (number of dead units)",
    ),
    _c(
        name="saturated_activations", severity="warning", scope="module",
        catches="tanh/sigmoid outputs stuck in their flat regions",
        signal="fraction of outputs with |tanh| > 0.97 or sigmoid outside 0.03..0.97",
        summary="An activation layer is saturated.",
        description="activation {module} ({kind}): {value:.0%} of outputs saturated since step {since}",
        advice="scale the init down (Xavier for tanh/sigmoid), normalise inputs, add normalisation layers, "
               "lower the learning rate",
        thresholds={"ratio": 0.5}, hold=3, warmup=0, prometheus_for="15m", seed="003 (-1/+1 for tanh, 0/1 for sigmoid)",
    ),
    _c(
        name="loss_not_decreasing", severity="warning", scope="model",
        catches="no progress: the loss stays where it started",
        signal="mean loss of the last window against the window before it and against the start",
        summary="The training loss is not decreasing.",
        description="mean loss {value:.4g} over the last {window} samples improved {improvement:.1%} on the "
                    "window before and is still {start_ratio:.0%} of its start, since step {since}",
        advice="overfit a single batch first; check that the loss gets logits and the right targets, that "
               "gradients reach the weights and that the learning rate is not tiny",
        thresholds={"window": 10, "min_improvement": 0.01, "near_start": 0.9}, hold=1, warmup=0,
        prometheus_for="30m", seed="002 (overfit one batch), 000",
    ),
    _c(
        name="loss_at_init", severity="warning", scope="model",
        catches="a bad final-layer init or loss inputs: the first loss is far from ln(num_classes)",
        signal="first logged loss against ln(num_classes) or the configured expected value",
        summary="The initial loss is far from its expected value.",
        description="first loss {value:.4g} vs expected {expected:.4g} (ln of {classes} classes)",
        advice="initialise the final layer small (and its bias to the class prior), pass raw logits to "
               "cross-entropy (not probabilities), check the number of classes",
        thresholds={"relative": 0.25, "absolute": 0.5}, hold=1, prometheus_for="0m",
        seed="002 (verify loss at init), 003, 004",
    ),
    _c(
        name="learning_rate_zero", severity="warning", scope="model",
        catches="a learning rate stuck at 0 or decayed to nothing",
        signal="learning rate of every param group",
        summary="The learning rate is (close to) zero.",
        description="learning rate {value:.3g} (max over param groups) since step {since}",
        advice="check the scheduler (warmup steps, decay milestones, step() called per step or per epoch) "
               "and the lr passed to the optimizer",
        thresholds={"max_lr": 1e-8}, hold=5, warmup=1, prometheus_for="15m", seed="000, 002 (do not trust LR decay defaults)",
    ),
    _c(
        name="parameters_without_gradient", severity="warning", scope="module",
        catches="trainable parameters never used in forward",
        signal="trainable parameters whose .grad stays None after backward",
        summary="Trainable parameters never receive a gradient.",
        description="layer {module}: {value:.0f} trainable parameter tensor(s) without a gradient since step {since}",
        advice="check that forward() uses the layer (a layer built but never called, a branch never taken, a "
               "detach() in the path); freeze deliberately unused ones with requires_grad_(False)",
        thresholds={"min_params": 1}, hold=3, prometheus_for="15m", seed="000 (no gradients for some parameters)",
    ),
    _c(
        name="weights_not_updating", severity="warning", scope="module",
        catches="parameters left out of the optimizer, or frozen by mistake",
        signal="update norm 0 across the optimizer step while the gradient is non-zero",
        summary="A layer has gradients but its weights do not change.",
        description="layer {module}: gradient norm {grad:.3g} but the weights did not change{hint} since step {since}",
        advice="build the optimizer from model.parameters() after all layers exist, and check param groups "
               "and lr of 0",
        thresholds={"max_update": 0.0}, hold=3, prometheus_for="15m", seed="000",
    ),
    _c(
        name="update_ratio_out_of_range", severity="warning", scope="model",
        catches="a learning rate far too high or too low",
        signal="update L2 norm / weight L2 norm across the optimizer step (healthy ~1e-3)",
        summary="Weight updates are orders of magnitude off their healthy size.",
        description="update/weight ratio {value:.2e} is {direction} the healthy range "
                    "[{low:.0e}, {high:.0e}] since step {since}",
        advice="too high: lower the learning rate or warm it up; too low: raise it, check weight decay and "
               "the scheduler",
        thresholds={"low": 1e-6, "high": 0.1}, hold=8, warmup=3, prometheus_for="15m",
        seed="003, 002 (update/weight ratio around 1e-3)",
    ),
    _c(
        name="gradients_not_cleared", severity="warning", scope="model",
        catches="a forgotten optimizer.zero_grad()",
        signal="gradient left over when the first backward after a sampled optimizer step starts, equal to the "
               "gradient that step consumed",
        summary="Gradients are not cleared between optimizer steps.",
        description="gradients of norm {value:.3g} were left over when backward started, since step {since}",
        advice="call optimizer.zero_grad() once per optimizer step (accumulating over micro-batches between "
               "steps is fine)",
        thresholds={"min_norm": 0.0, "match": 1e-3}, hold=2, prometheus_for="5m", seed="000 (forgetting zero_grad)",
    ),
    _c(
        name="eval_in_train_mode", severity="warning", scope="model",
        catches="a forgotten model.eval() for evaluation",
        signal="forward passes without autograd while dropout/batch-norm modules are in training mode",
        summary="Evaluation runs with dropout/batch norm in training mode.",
        description="{value:.0f} forward passes under no_grad with dropout/batch-norm in training mode "
                    "(last since step {since})",
        advice="call model.eval() before evaluating and model.train() after",
        thresholds={"min_forwards": 2, "quiet_samples": 5}, hold=1, prometheus_for="0m",
        seed="000 (forgetting eval mode)",
    ),
    _c(
        name="overfitting", severity="info", scope="model",
        catches="validation loss rising while the training loss falls",
        signal="logged val_loss against the training loss",
        summary="Validation loss rises while training loss falls.",
        description="validation loss {value:.4g} stayed above its best {best:.4g} (step {best_step}) for {rises} "
                    "evaluations while the training loss fell from {train_then:.4g} to {train:.4g}, since step {since}",
        advice="add regularisation or data augmentation, get more data, or stop early (keep the best "
               "checkpoint)",
        thresholds={"rises": 3, "min_rise": 0.05}, hold=1, prometheus_for="0m", seed="002 (regularise)",
    ),
    _c(
        name="loss_spike", severity="warning", scope="model",
        catches="a sudden jump of the training loss (an LR peak too high, a bad batch, numerical trouble ahead)",
        signal="mean training loss of a sample against the median and spread of the previous samples",
        summary="The training loss jumped far above its recent level.",
        description="mean loss {value:.4g} is {why}, since step {since}",
        advice="look at the batches of that step, lower the peak learning rate or lengthen the warm-up, clip "
               "gradients",
        thresholds={"factor": 3.0, "mads": 10.0, "history": 20, "min_history": 5}, hold=1, warmup=3,
        prometheus_for="0m", seed="003 (watch the loss curve: spikes come before divergence)",
    ),
    _c(
        name="divergence", severity="warning", scope="model",
        catches="training running away before it turns into NaN (a learning rate, warm-up peak or momentum far "
                "too high)",
        signal="global weight norm rising at every sample while the loss climbs away from its best (or several-"
               "fold weight growth while the loss jumps above where it stood)",
        summary="Training is diverging: the weights grow fast while the loss rises.",
        description="global weight norm grew {growth:.1f}x over the last {window} samples to {value:.3g} while the "
                    "mean loss rose from its best {best:.4g} to {loss:.4g}, since step {since}",
        advice="lower the learning rate (or its warm-up peak) or the momentum, clip gradients, check the data "
               "for outliers",
        thresholds={"growth": 1.5, "window": 3, "min_step_growth": 0.0, "loss_rise": 1.5,
                    "strong_growth": 3.0, "strong_loss_rise": 1.05}, hold=1, warmup=2,
        prometheus_for="0m",
        seed="003 (a learning rate too high makes the loss explode)",
    ),
    _c(
        name="constant_init", severity="warning", scope="module",
        catches="a symmetric (constant) init that never breaks",
        signal="a >= 2-D weight with zero spread at attach",
        summary="A weight matrix was initialised to a constant.",
        description="layer {module}: weight has zero spread at attach (all units identical)",
        advice="use a random init (the default nn.init of the layer, Kaiming or Xavier) instead of a constant",
        hold=1, prometheus_for="0m", seed="000 (symmetric init)",
    ),
    _c(
        name="memory_leak", severity="warning", scope="model",
        catches="memory that grows every step (e.g. loss tensors kept with their graph)",
        signal="CUDA allocated bytes and host RSS at the same point of every sampled step",
        summary="Memory grows steadily every step.",
        description="{kind} memory grows {rate} per step ({growth} over the last {samples} samples), since step {since}",
        advice="log loss.item() (or detach()) instead of keeping loss tensors, clear caches and lists that "
               "grow per step, avoid keeping graph-holding tensors",
        thresholds={"samples": 10, "min_growth_bytes": 32 * 2**20, "rising_fraction": 0.7}, hold=1, warmup=3,
        prometheus_for="30m", seed="003 (PyTorch: free your memory)",
    ),
    _c(
        name="probabilities_as_logits", severity="warning", scope="model",
        catches="a loss that expects logits fed probabilities: softmax before cross_entropy / CrossEntropyLoss or "
                "nll_loss, sigmoid before BCEWithLogitsLoss",
        signal="the input of the loss call on sampled steps: every row in [0, 1] summing to 1 (cross_entropy, "
               "nll_loss), every value in [0, 1] (binary_cross_entropy_with_logits)",
        summary="The loss receives probabilities where it expects logits.",
        description="{function} received probabilities ({what}) on consecutive sampled steps, since step {since}",
        advice="pass the raw scores: drop the softmax/sigmoid before cross_entropy or BCEWithLogitsLoss (they "
               "apply their own); for nll_loss take log_softmax, not softmax",
        hold=2, prometheus_for="0m",
        seed="003 (use log_softmax, not softmax), 002 (verify loss at init)",
    ),
    _c(
        name="unshuffled_batches", severity="warning", scope="model",
        catches="batches that each hold one class (or a few): a dataset sorted by label and not shuffled",
        signal="distinct labels per sampled batch against the number a shuffled batch of that size would hold, "
               "with the dominant label changing between batches",
        summary="Batches are not shuffled: each holds one class or a few.",
        description="the last {samples} sampled batches held {distinct} distinct label(s) each where a shuffled "
                    "batch of {batch} would hold about {expected:.0f} of {classes}, and the dominant label moves "
                    "from batch to batch, since step {since}",
        advice="shuffle the training data (DataLoader(..., shuffle=True) or a sampler that mixes classes)",
        thresholds={"samples": 3, "fraction": 0.125}, hold=1, prometheus_for="0m",
        seed="002 (become one with the data), 004",
    ),
    _c(
        name="class_imbalance", severity="info", scope="model",
        catches="labels far from balanced, or classes of the output that never appear in the targets",
        signal="label counts of the classification loss accumulated over sampled batches",
        summary="The class labels are far from balanced.",
        description="{detail} over {labels} labels of {samples} sampled batches, since step {since}",
        advice="if unintended, check the data and labels; otherwise weight the loss (weight=...), resample, or "
               "set the final layer's bias to the class prior",
        thresholds={"ratio": 20.0, "min_labels_per_class": 20.0, "min_samples": 5}, hold=1, prometheus_for="0m",
        seed="002 (look for data imbalances; init the final bias to the prior)",
    ),
    _c(
        name="inputs_not_normalized", severity="warning", scope="model",
        catches="inputs far from normalised: raw 0-255 pixels, one feature orders of magnitude larger than the "
                "others, a constant or all-zero input",
        signal="RMS of the model's first input tensor, its largest per-feature RMS against the median one (2-D "
               "inputs), whether every element is equal",
        summary="The model's input is far from normalised.",
        description="{detail} on consecutive sampled steps, since step {since}",
        advice="standardise the inputs (per channel or per feature: subtract the training mean, divide by the "
               "standard deviation; pixels: scale to [0, 1] then normalise); a constant input is a pipeline bug",
        thresholds={"rms": 10.0, "feature_ratio": 100.0}, hold=3, prometheus_for="15m",
        seed="002 (normalise the data; inspect it), 004",
    ),
    _c(
        name="repeated_batches", severity="warning", scope="model",
        catches="the same batch fed again and again (a data loader stuck on one batch)",
        signal="an exact fingerprint of the model input, equal on consecutive sampled steps",
        summary="The same input batch is fed again and again.",
        description="the model received the identical input batch on the last {value:.0f} sampled steps (steps "
                    "{first} to {last}), since step {since}",
        advice="check the data loader (an iterator re-created every step, a cached batch, a sampler that "
               "returns the same indices); if the run trains full-batch on purpose, skip this check "
               "(skip_checks='repeated_batches')",
        thresholds={"samples": 3}, hold=1, prometheus_for="0m",
        seed="002 (overfit one batch is a test, not the training run)",
    ),
    _c(
        name="graph_retained", severity="warning", scope="model",
        catches="loss or output tensors kept with their autograd graphs across steps (total_loss += loss, a "
                "list of losses): memory grows, whatever the size per step",
        signal="whether the autograd graphs of earlier sampled steps are still alive (a token held only by a "
               "graph node), at least 3 steps later",
        summary="Autograd graphs of earlier steps are kept alive.",
        description="the autograd graphs of {value:.0f} earlier sampled steps are still alive (the oldest from "
                    "step {oldest}): something keeps the loss or the model outputs with their graphs, since step "
                    "{since}",
        advice="accumulate and log loss.item() (or loss.detach()), not the loss tensor; keep detached outputs "
               "in lists",
        thresholds={"graphs": 3}, hold=1, prometheus_for="0m",
        seed="003 (PyTorch: free your memory, use loss.item())",
    ),
    _c(
        name="training_stalled", severity="critical", scope="model",
        catches="a hung job (NCCL deadlock, stuck data loader)",
        signal="seconds since the last completed step",
        summary="Training has stopped making steps.",
        description="no step for {value:.1f} s (usual step {usual:.3g} s), last step at {since}",
        advice="dump the stacks (py-spy dump --pid), check data loader workers, NCCL (NCCL_DEBUG=INFO) and the "
               "other ranks",
        thresholds={"factor": 20.0, "min_seconds": 120.0}, hold=1, prometheus_for="10m",
        seed="(hung jobs raise nothing)",
    ),
)

BY_NAME: Mapping[str, Check] = MappingProxyType({c.name: c for c in CHECKS})

_EXPLAINS: dict[str, tuple[str, ...]] = {
    # A NaN/Inf poisons everything computed after it: units look dead or saturated, norms and the loss are junk.
    "nonfinite_values": ("exploding_gradients", "vanishing_gradients", "dead_units", "saturated_activations",
                         "loss_not_decreasing", "weights_not_updating", "update_ratio_out_of_range",
                         "gradients_not_cleared", "overfitting", "loss_spike", "divergence"),
    # Kept graphs keep every saved tensor of each step: memory grows.
    "graph_retained": ("memory_leak",),
    # A loss applying its own softmax/sigmoid to probabilities: gradients are squashed, the loss barely moves
    # from its start (and starts where it should not).
    "probabilities_as_logits": ("loss_at_init", "loss_not_decreasing", "vanishing_gradients",
                                "saturated_activations"),
    # One class per batch: each batch pulls the model to its class; the loss jumps at every class change.
    "unshuffled_batches": ("class_imbalance", "loss_spike", "loss_not_decreasing"),
    # Inputs orders of magnitude off: pre-activations saturate or explode, steps are far too large.
    "inputs_not_normalized": ("exploding_gradients", "saturated_activations", "dead_units", "divergence",
                              "loss_spike", "vanishing_gradients", "update_ratio_out_of_range", "loss_at_init"),
    # The same batch again and again: the model memorises it, the validation loss rises.
    "repeated_batches": ("overfitting",),
    # Gradients that pile up step after step act like an ever larger learning rate: units die, the loss stalls.
    "gradients_not_cleared": ("dead_units", "saturated_activations", "loss_not_decreasing", "exploding_gradients",
                              "update_ratio_out_of_range", "loss_spike", "divergence"),
    # A run leaving its basin: gradients and loss jump, units die or saturate, clipped gradients look tiny
    # next to the grown weights (never advise a higher learning rate then).
    "divergence": ("exploding_gradients", "loss_spike", "loss_not_decreasing", "vanishing_gradients", "dead_units",
                   "saturated_activations", "update_ratio_out_of_range", "overfitting"),
    # Gradients far above their usual size make updates far above theirs; a sudden jump of the gradient can
    # start a runaway (which of the two started first is the cause).
    "exploding_gradients": ("loss_spike", "update_ratio_out_of_range", "divergence", "dead_units",
                            "saturated_activations"),
    # Updates that rewrite the weights each step (only when too large) kill and saturate units.
    "update_ratio_out_of_range": ("dead_units", "saturated_activations", "loss_not_decreasing", "loss_spike"),
    # No learning rate, no update: weights stand still and the loss stays flat.
    "learning_rate_zero": ("weights_not_updating", "loss_not_decreasing", "update_ratio_out_of_range"),
    # Units of a layer that start identical stay identical: the model cannot learn past a point.
    "constant_init": ("loss_not_decreasing",),
    # Layers left out of the optimizer are never zeroed by optimizer.zero_grad(): their gradients pile up.
    "weights_not_updating": ("gradients_not_cleared",),
    # Units that never fire pass no gradient back: the layers before them starve.
    "dead_units": ("vanishing_gradients", "weights_not_updating", "loss_not_decreasing"),
    # A gradient too small to move fp32 weights looks like a layer that is not updated.
    "vanishing_gradients": ("weights_not_updating", "loss_not_decreasing"),
}
EXPLAINED_BY: Mapping[str, tuple[str, ...]] = MappingProxyType({
    effect: tuple(cause for cause, effects in _EXPLAINS.items() if effect in effects)
    for effect in {e for effects in _EXPLAINS.values() for e in effects}
})
"""Check -> the checks that explain it, most basic first. While a cause holds, its consequences are listed
under it instead of being logged with their own advice (the in-process twin of Alertmanager inhibition)."""
_RANK = {cause: i for i, cause in enumerate(_EXPLAINS)}


def explains(cause: str, effect: str, cause_since: int, effect_since: int) -> bool:
    """Whether ``cause`` (holding since step ``cause_since``) explains ``effect`` (since ``effect_since``): a
    cause explains what started with it or after it, never what was there before; when each can explain the
    other and both started at the same step, the more basic one (earlier in the table) is the cause."""
    if effect not in _EXPLAINS.get(cause, ()) or cause_since > effect_since:
        return False
    if cause_since == effect_since and cause in _EXPLAINS.get(effect, ()):
        return _RANK[cause] < _RANK[effect]
    return True



def validate_catalogue() -> None:
    """Raise AssertionError when an entry breaks the contract (used by tests and generators)."""
    seen = set()
    for c in CHECKS:
        assert c.name not in seen, c.name
        seen.add(c.name)
        assert c.severity in SEVERITIES, c
        assert c.scope in ("module", "model"), c
        assert c.summary.endswith("."), c.name
        for t in c.thresholds:
            assert f"{c.name}.{t}" in THRESHOLD_DOCS, f"{c.name}.{t} undocumented"


__all__ = ["Check", "CHECKS", "BY_NAME", "EXPLAINED_BY", "explains", "THRESHOLD_DOCS", "alert_name", "validate_catalogue", "SEVERITIES"]
