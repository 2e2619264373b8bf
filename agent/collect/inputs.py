"""What enters the model on sampled steps: its scale (normalised or not) and a fingerprint of the batch.

Read at the root module's forward pre-hook of a sampled training forward, from the first tensor argument:
device reductions only, fetched with the sample's one batched copy.

- scale: RMS over the inspected slice; for a 2-D (samples x features) input also the largest per-feature RMS
  against the median one (a feature in raw units next to standardised ones); whether every element is equal
  (a constant or all-zero input).
- fingerprint: exact sums of the first FINGERPRINT_ELEMENTS elements in float64 (plain and position-weighted):
  the same batch fed again gives the same three numbers, another batch practically never.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import Tensor

from .transfer import DeviceBatch

ROWS = 64
"""Leading samples whose values feed the scale statistics."""
FINGERPRINT_ELEMENTS = 65536


def first_tensor(args: tuple, kwargs: dict) -> Tensor | None:
    """The model's first tensor input (positional first, then keyword), or None."""
    for v in (*args, *kwargs.values()):
        if isinstance(v, Tensor):
            return v
        if isinstance(v, (list, tuple)) and v and isinstance(v[0], Tensor):
            return v[0]
        if isinstance(v, dict):
            for w in v.values():
                if isinstance(w, Tensor):
                    return w
    return None


class InputWatch:
    """Scale and fingerprint of the model input of the current sampled step (device values until queued)."""

    def __init__(self) -> None:
        self._pending: dict[str, Tensor] = {}
        self.shape: tuple[int, ...] = ()
        self._weights: dict[tuple[int, torch.device], Tensor] = {}

    def observe(self, args: tuple, kwargs: dict) -> None:
        """Queue device statistics of the first training forward's input of a sampled step."""
        if self._pending:
            return  # the first forward of the step (micro-batches of an accumulation look alike)
        x = first_tensor(args, kwargs)
        if x is None or x.numel() == 0 or x.is_complex():
            return
        with torch.no_grad():
            x = x.detach()
            flat = x.reshape(-1)[:FINGERPRINT_ELEMENTS].double()
            n = flat.numel()
            key = (n, flat.device)
            w = self._weights.get(key)
            if w is None:
                w = self._weights[key] = torch.arange(1, n + 1, dtype=torch.float64, device=flat.device)
            self._pending = {"fp_sum": flat.sum(), "fp_weighted": (flat * w).sum(), "fp_sq": (flat * flat).sum()}
            self.shape = tuple(x.shape)
            if not x.is_floating_point():
                return  # token ids, masks: their scale means nothing
            rows = x[:ROWS].float() if x.ndim >= 1 else x.float().reshape(1)
            self._pending["rms"] = rows.square().mean().sqrt()
            self._pending["spread"] = rows.amax() - rows.amin()
            if rows.ndim == 2 and rows.shape[1] >= 2:
                per_feature = rows.square().mean(0).sqrt()
                self._pending["feature_ratio"] = per_feature.amax() / per_feature.median().clamp_min(1e-30)

    def queue(self, batch: DeviceBatch) -> None:
        for k, v in self._pending.items():
            batch.add(("input", k), v)
        self._pending = {}

    @staticmethod
    def read(host: dict) -> dict[str, Any]:
        """The fetched values: rms, feature_ratio, constant (bool), fingerprint (tuple), when measured."""
        get = lambda k: host.get(("input", k))  # noqa: E731
        out: dict[str, Any] = {}
        if get("fp_sum") is not None:
            out["fingerprint"] = (get("fp_sum"), get("fp_weighted"), get("fp_sq"))
        if get("rms") is not None:
            out["rms"] = get("rms")
            out["constant"] = get("spread") == 0.0
        if get("feature_ratio") is not None:
            out["feature_ratio"] = get("feature_ratio")
        return out


class GraphTokens:
    """Detects autograd graphs kept alive across steps (``total_loss += loss``, a list of losses).

    On sampled steps a tiny callable is registered as a pre-hook on the model output's ``grad_fn``: the graph
    node holds it, and only it, so it lives exactly as long as that part of the graph. A weak reference says
    whether the graph of an earlier sampled step is still alive, whatever its size in bytes.
    """

    KEEP = 8

    def __init__(self) -> None:
        self._tokens: list[tuple[int, Any]] = []  # (step, weakref to a token)

    def plant(self, output: Any, step: int) -> None:
        """Register a token on the graph of this sampled step's output (the first tensor with a grad_fn)."""
        t = output if isinstance(output, Tensor) else first_tensor(tuple(output) if isinstance(output, (list, tuple)) else (output,), {})
        fn = getattr(t, "grad_fn", None) if isinstance(t, Tensor) else None
        if fn is None or (self._tokens and self._tokens[-1][0] == step):
            return
        token = _Token()
        fn.register_prehook(token)
        self._tokens.append((step, weakref.ref(token)))
        del self._tokens[:-self.KEEP]

    def retained(self, step: int, min_age: int) -> tuple[int, int | None]:
        """(graphs of sampled steps at least ``min_age`` steps before ``step`` still alive, oldest such step)."""
        alive = [s for s, ref in self._tokens if ref() is not None and step - s >= min_age]
        self._tokens = [(s, ref) for s, ref in self._tokens if ref() is not None or step - s < min_age]
        return len(alive), (min(alive) if alive else None)

    def clear(self) -> None:
        self._tokens = []


class _Token:
    """Held only by a graph node's pre-hooks; does nothing when backward runs through the node."""

    __slots__ = ("__weakref__",)

    def __call__(self, grad_outputs: Any) -> None:
        return None


__all__ = ["InputWatch", "GraphTokens", "first_tensor"]
