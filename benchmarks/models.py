"""The benchmark models: three families (MLP/ReLU, CNN/batch norm, transformer/GELU) at chosen sizes.

Each ``Workload`` builds a fresh model from a seed and a small fixed set of batches, so every arm of a
comparison trains the same network on the same data. Sizes are named by their parameter count in
millions. Batch sizes are small (the benchmark machine is a 2-core CPU) but large enough that the step is
dominated by forward/backward compute rather than by the optimizer's pass over the weights, as in real
training; docs/benchmarks.md gives the agent's cost per sampled step so other step times can be judged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

NUM_CLASSES = 10


@dataclass(frozen=True)
class Workload:
    """One model family at one size, with the data it trains on."""

    family: str
    size: str
    """Nominal size, e.g. "1M"."""
    build: Callable[[], nn.Module]
    batches: Callable[[], list[tuple[Tensor, Tensor]]]
    """A few (input, target) batches, cycled through during the run."""
    loss: Callable[[Tensor, Tensor], Tensor]
    device: str = "cpu"
    """Where the model and its batches live ("cpu", "cuda", ...)."""

    @property
    def name(self) -> str:
        return f"{self.family}-{self.size}"

    def params(self) -> int:
        torch.manual_seed(0)
        return sum(p.numel() for p in self.build().parameters())


# -- MLP with ReLU ---------------------------------------------------------------------------------
class MLP(nn.Module):
    """``depth`` square Linear+ReLU layers of ``width`` units, then a 10-way classifier."""

    def __init__(self, width: int, depth: int = 4) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(depth):
            layers += [nn.Linear(width, width), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, NUM_CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


# -- CNN with batch norm -----------------------------------------------------------------------------
def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class CNN(nn.Module):
    """Four VGG-style stages (width c, 2c, 4c, 8c; two conv-BN-ReLU each, stride 2 between stages)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        widths = [c, 2 * c, 4 * c, 8 * c]
        blocks: list[nn.Module] = [_conv_bn(3, c)]
        cin = c
        for k, w in enumerate(widths):
            blocks.append(_conv_bn(cin, w, stride=1 if k == 0 else 2))
            blocks.append(_conv_bn(w, w))
            cin = w
        self.features = nn.Sequential(*blocks)
        self.head = nn.Linear(cin, NUM_CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


# -- Transformer with GELU ---------------------------------------------------------------------------
class Transformer(nn.Module):
    """A pre-norm GPT-style encoder stack (GELU feed-forward, 4x width) with tied-free embedding and head."""

    def __init__(self, d: int, layers: int, vocab: int = 1024, seq: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(seq, d) * 0.02)
        layer = nn.TransformerEncoderLayer(d, max(1, d // 64), 4 * d, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)

    def forward(self, tokens: Tensor) -> Tensor:
        x = self.embed(tokens) + self.pos[: tokens.shape[1]]
        return self.head(self.norm(self.blocks(x)))


def _token_loss(logits: Tensor, target: Tensor) -> Tensor:
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))


def _class_batches(shape: tuple[int, ...], n: int = 4) -> Callable[[], list[tuple[Tensor, Tensor]]]:
    def make() -> list[tuple[Tensor, Tensor]]:
        g = torch.Generator().manual_seed(1)
        return [(torch.randn(shape, generator=g), torch.randint(0, NUM_CLASSES, (shape[0],), generator=g)) for _ in range(n)]
    return make


def _token_batches(batch: int, seq: int, vocab: int = 1024, n: int = 4) -> Callable[[], list[tuple[Tensor, Tensor]]]:
    def make() -> list[tuple[Tensor, Tensor]]:
        g = torch.Generator().manual_seed(1)
        out = []
        for _ in range(n):
            t = torch.randint(0, vocab, (batch, seq + 1), generator=g)
            out.append((t[:, :-1].contiguous(), t[:, 1:].contiguous()))
        return out
    return make


_MLP = {"1M": (512, 1024), "4M": (1024, 512), "16M": (2048, 256), "64M": (4096, 64)}
"""size -> (width, batch); four layers of width x width, ~ 4 * width^2 parameters."""
_CNN = {"1M": (32, 32), "4M": (64, 16), "16M": (128, 8), "64M": (240, 4)}
"""size -> (base channels c, batch) on 16x16 inputs; ~ 1150 * c^2 parameters."""
_TRANSFORMER = {"1M": (128, 4, 16), "4M": (256, 4, 8), "16M": (512, 5, 8), "64M": (768, 9, 4)}
"""size -> (d_model, layers, batch) at sequence length 64; ~ 12 * d^2 per layer + embeddings."""

SIZES = ("1M", "4M", "16M", "64M")
FAMILIES = ("mlp", "cnn", "transformer")


def synchronize(device: str) -> None:
    """Wait for the device's queued work (timings of accelerator steps end here); nothing on CPU."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def workload(family: str, size: str, device: str = "cpu") -> Workload:
    """The benchmark workload of ``family`` (mlp, cnn, transformer) at ``size`` (1M, 4M, 16M, 64M) on ``device``."""
    ce = nn.functional.cross_entropy
    if family == "mlp":
        width, batch = _MLP[size]
        return Workload(family, size, lambda: MLP(width), _class_batches((batch, width)), ce, device)
    if family == "cnn":
        c, batch = _CNN[size]
        return Workload(family, size, lambda: CNN(c), _class_batches((batch, 3, 16, 16)), ce, device)
    if family == "transformer":
        d, layers, batch = _TRANSFORMER[size]
        return Workload(family, size, lambda: Transformer(d, layers), _token_batches(batch, 64), _token_loss, device)
    raise ValueError(f"unknown family {family!r}; choose from {', '.join(FAMILIES)}")
