"""Distributed and wrapped models: which rank this is, which ranks export per-module series, what to hook.

No collective is ever issued by the agent (see docs/setups.md#distributed-data-parallel for why): every
rank measures itself and Prometheus compares ranks (NNWatchRankDesync, NNWatchStragglerRank).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

from torch import nn

from ..config import parse_ranks


@dataclass(frozen=True)
class RankInfo:
    """Where this process sits in a multi-process job; ``world_size`` 1 means a single process."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "RankInfo":
        """Read RANK / LOCAL_RANK / WORLD_SIZE (set by torchrun, Lightning, accelerate, Slurm launchers)."""
        env = os.environ if env is None else env
        return cls(rank=_int(env.get("RANK"), 0), local_rank=_int(env.get("LOCAL_RANK"), 0),
                   world_size=max(1, _int(env.get("WORLD_SIZE"), 1)))


def _int(raw: str | None, default: int) -> int:
    try:
        return int(raw) if raw is not None else default
    except ValueError:
        return default


def exports_per_module(spec: str, info: RankInfo, sharded: bool) -> bool:
    """Whether this rank exports per-module series.

    Replicated data parallelism (DDP) makes every rank's layers identical after the all-reduce, so one
    rank's per-module series describe all of them. Sharded models (FSDP) hold a different slice on each
    rank: every rank exports its per-module squared norms so that Prometheus can add them up.
    """
    if not info.distributed or sharded:
        return True
    ranks = parse_ranks(spec)
    return ranks is None or info.rank in ranks


def next_fingerprint(previous: tuple[int, float] | None, step: int, every: int,
                     weight_norm: float | None) -> tuple[int, float] | None:
    """The weight fingerprint to export after a sample at ``step``: (step, global weight norm).

    Replicas of a DDP job hold identical weights at the same step, but Prometheus scrapes ranks at
    different moments; comparing each rank's latest norm would compare different steps (false desync when
    steps are faster than scrapes). So the fingerprint is taken at steps that are multiples of ``every``
    (the monitor always samples those, whatever its schedule), the same step on every rank, and held until
    the next one: ranks differ only briefly after a new one, while a real desync differs all the time.
    """
    if weight_norm is None or step % every != 0:
        return previous
    return (step, weight_norm)


def is_sharded(model: nn.Module) -> bool:
    """True when parameters are sharded across ranks: FSDP2 (DTensor parameters) or FSDP1 wrappers."""
    for p in model.parameters():
        if hasattr(p, "to_local") and hasattr(p, "placements"):
            return True
    return any(type(m).__name__ == "FullyShardedDataParallel" for m in model.modules())


def unwrap(model: nn.Module) -> tuple[nn.Module, nn.Module, bool]:
    """(module to name layers from, module to hook, compiled) for a possibly wrapped model.

    DistributedDataParallel / DataParallel: both are the inner module (clean layer names, and the hooks
    run after DDP's buffer broadcast, so forward timing is this rank's own work). ``torch.compile``'s
    OptimizedModule: names from the original module, hooks on the wrapper, which runs eagerly outside
    the compiled region (no graph break), and ``compiled`` is True.
    """
    hook_target = model
    compiled = False
    inner = model
    for _ in range(8):  # OptimizedModule(DDP(model)) and similar stacks
        if hasattr(inner, "_orig_mod") and type(inner).__name__ == "OptimizedModule":
            compiled = True
            inner = inner._orig_mod  # type: ignore[assignment]
        elif type(inner).__name__ in ("DistributedDataParallel", "DataParallel") and isinstance(getattr(inner, "module", None), nn.Module):
            inner = inner.module  # type: ignore[assignment]
            if not compiled:
                hook_target = inner
        else:
            break
    return inner, hook_target, compiled


__all__ = ["RankInfo", "parse_ranks", "exports_per_module", "is_sharded", "unwrap", "next_fingerprint"]
