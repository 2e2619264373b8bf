"""Calibration scenarios: healthy and broken CPU training runs watched by the agent.

Every broken scenario must raise its check; no healthy scenario may raise a warning or critical finding.
Architectures, optimizers, schedules and data vary so thresholds are not tuned to one model. Real data:
scikit-learn's digits (shipped with the package); synthetic token sequences for the transformer.

``python -m tests.scenarios`` runs them all and writes the detection table to docs/detection.md.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

import agent


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    run: Callable[[], "agent.Monitor"]
    expect: frozenset[str] = field(default_factory=frozenset)
    """Checks that must fire (empty: a healthy scenario, which must raise no warning or critical finding)."""

    @property
    def healthy(self) -> bool:
        return not self.expect


SCENARIOS: dict[str, Scenario] = {}


def scenario(description: str, expect: tuple[str, ...] = ()):
    def deco(fn: Callable[[], "agent.Monitor"]):
        SCENARIOS[fn.__name__] = Scenario(fn.__name__, description, fn, frozenset(expect))
        return fn
    return deco


def observed(mon: "agent.Monitor") -> dict[str, str]:
    """{check: severity} of everything raised during the run (fired, whether or not still active)."""
    return {check: sev for (check, sev) in mon.engine.raised}


def first_cause(mon: "agent.Monitor") -> str | None:
    """The first warning or critical finding logged on its own (not as a consequence), if any."""
    loud = [r for r in mon.history if r.logged and r.explained_by is None and r.severity != "info"]
    return min(loud, key=lambda r: r.first_step).check if loud else None


# -- data --------------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(x), generator=g)
    x, y = x[perm], y[perm]
    return x[:1500], y[:1500], x[1500:], y[1500:]


def batches(n: int, batch: int = 64, seed: int = 0, image: bool = False, size: int | None = None):
    x, y, _, _ = digits()
    if size is not None:
        x, y = x[:size], y[:size]
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        idx = torch.randint(0, len(x), (batch,), generator=g)
        xb = x[idx]
        yield (xb.view(-1, 1, 8, 8) if image else xb), y[idx]


def mlp(hidden: int = 128, act: type[nn.Module] = nn.ReLU, depth: int = 2, d_in: int = 64, d_out: int = 10) -> nn.Sequential:
    layers: list[nn.Module] = []
    d = d_in
    for _ in range(depth):
        layers += [nn.Linear(d, hidden), act()]
        d = hidden
    layers.append(nn.Linear(d, d_out))
    return nn.Sequential(*layers)


def attach(model: nn.Module, opt: torch.optim.Optimizer | None, **kw) -> "agent.Monitor":
    kw.setdefault("sample_every", 2)
    kw.setdefault("num_classes", 10)
    return agent.attach(model, opt, port=None, **kw)


def fit(model: nn.Module, opt: torch.optim.Optimizer, mon: "agent.Monitor", steps: int, *, sched=None,
        image: bool = False, transform: Callable | None = None, loss_fn: Callable | None = None,
        seed: int = 0, batch: int = 64, size: int | None = None,
        relabel: Callable | None = None, data: Iterable | None = None) -> "agent.Monitor":
    """Train for ``steps`` batches of digits (or over ``data``, an iterable of (inputs, targets))."""
    loss_fn = loss_fn or F.cross_entropy
    for step, (x, y) in enumerate(batches(steps, batch, seed, image, size) if data is None else data):
        if transform is not None:
            x = transform(step, x)
        if relabel is not None:
            y = relabel(step, y)
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        mon.log(loss=loss)
    return mon


# -- healthy ----------------------------------------------------------------------------------------------
@scenario("MLP with ReLU on digits, SGD with momentum")
def healthy_mlp_sgd():
    torch.manual_seed(0)
    m = mlp()
    opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
    return fit(m, opt, attach(m, opt), 300)


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Linear(32 * 16, 10)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


@scenario("CNN with batch norm on digits images, Adam")
def healthy_cnn_batchnorm_adam():
    torch.manual_seed(0)
    m = SmallCNN()
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    return fit(m, opt, attach(m, opt), 200, image=True)


class TinyTransformer(nn.Module):
    """Encoder-only classifier; GELU is called functionally inside TransformerEncoderLayer."""

    def __init__(self, vocab: int = 16, d: int = 32, classes: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(12, d) * 0.02)
        layer = nn.TransformerEncoderLayer(d, 4, 64, dropout=0.0, activation="gelu", batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(d, classes)

    def forward(self, tokens):
        h = self.encoder(self.embed(tokens) + self.pos[: tokens.shape[1]])
        return self.head(h.mean(1))


def token_batches(n: int, seed: int = 0, batch: int = 32):
    """Task: which quarter of the vocabulary is most frequent in the sequence (learnable, 4 classes)."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        tokens = torch.randint(0, 16, (batch, 12), generator=g)
        y = torch.stack([(tokens // 4 == k).sum(1) for k in range(4)], 1).argmax(1)
        yield tokens, y


@scenario("small transformer with GELU, AdamW, linear LR warmup from 0 then cosine decay")
def healthy_transformer_warmup():
    torch.manual_seed(0)
    m = TinyTransformer()
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3, weight_decay=0.01)
    total, warm = 300, 60
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: s / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / (total - warm))))
    mon = attach(m, opt, num_classes=4)
    for tokens, y in token_batches(total):
        opt.zero_grad()
        loss = F.cross_entropy(m(tokens), y)
        loss.backward()
        opt.step()
        sched.step()
        mon.log(loss=loss)
    return mon


@scenario("tanh MLP with Xavier init on digits, SGD")
def healthy_tanh_xavier():
    torch.manual_seed(0)
    m = mlp(act=nn.Tanh, depth=3)
    for mod in m:
        if isinstance(mod, nn.Linear):
            nn.init.xavier_uniform_(mod.weight)
            nn.init.zeros_(mod.bias)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    return fit(m, opt, attach(m, opt), 300)


@scenario("pretrained-style frozen backbone (requires_grad False), only the head trains, Adam")
def healthy_frozen_backbone():
    torch.manual_seed(0)
    m = mlp()
    for p in list(m.parameters())[:4]:
        p.requires_grad_(False)
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=3e-3)
    return fit(m, opt, attach(m, opt), 200)


@scenario("gradient accumulation over 4 micro-batches, zero_grad once per optimizer step, RMSprop")
def healthy_grad_accumulation():
    torch.manual_seed(0)
    m = mlp(hidden=64)
    opt = torch.optim.RMSprop(m.parameters(), lr=1e-3)
    mon = attach(m, opt)
    data = batches(800, batch=16)
    for _ in range(200):
        opt.zero_grad()
        for _ in range(4):
            x, y = next(data)
            (F.cross_entropy(m(x), y) / 4).backward()
        opt.step()
        mon.log(loss=F.cross_entropy(m(x), y).detach())
    return mon


@scenario("correct evaluation loop: model.eval() + no_grad every 25 steps, val_loss logged; dropout net")
def healthy_eval_loop():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Dropout(0.2), nn.Linear(128, 10))
    opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
    mon = attach(m, opt)
    _, _, xv, yv = digits()
    for step, (x, y) in enumerate(batches(300)):
        opt.zero_grad()
        loss = F.cross_entropy(m(x), y)
        loss.backward()
        opt.step()
        mon.log(loss=loss)
        if step % 25 == 0:
            m.eval()
            with torch.no_grad():
                mon.log(val_loss=F.cross_entropy(m(xv), yv))
            m.train()
    return mon


@scenario("SiLU MLP with step LR decay (x0.5 every 100 steps), Adagrad, weight decay")
def healthy_silu_step_decay():
    torch.manual_seed(1)
    m = mlp(act=nn.SiLU, hidden=96, depth=3)
    opt = torch.optim.Adagrad(m.parameters(), lr=0.05, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.StepLR(opt, 100, gamma=0.5)
    return fit(m, opt, attach(m, opt), 300, sched=sched)


class LSTMLanguageModel(nn.Module):
    """Embedding -> 2-layer LSTM -> tied-size decoder, as in the PyTorch word language model example."""

    def __init__(self, vocab: int = 50, d: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.rnn = nn.LSTM(d, d, 2, batch_first=True)
        self.decoder = nn.Linear(d, vocab)

    def forward(self, tokens):
        out, _ = self.rnn(self.embed(tokens))
        return self.decoder(out)


def token_stream(steps: int, vocab: int = 50, batch: int = 16, length: int = 20, seed: int = 0):
    """A learnable sequence: each token is the previous one plus a small step drawn from a fixed distribution."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        start = torch.randint(0, vocab, (batch, 1), generator=g)
        jumps = torch.multinomial(torch.tensor([0.6, 0.3, 0.1]), batch * length, replacement=True, generator=g)
        seq = (start + jumps.view(batch, length).cumsum(1)) % vocab
        yield seq[:, :-1], seq[:, 1:]


@scenario("LSTM language model, SGD lr 20 with gradient clipping at 0.25 (the PyTorch word LM recipe)")
def healthy_lstm_language_model():
    torch.manual_seed(0)
    m = LSTMLanguageModel()
    opt = torch.optim.SGD(m.parameters(), lr=20.0)
    mon = attach(m, opt, num_classes=50)
    for x, y in token_stream(250):
        opt.zero_grad()
        loss = F.cross_entropy(m(x).reshape(-1, 50), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 0.25)
        opt.step()
        mon.log(loss=loss)
    return mon


class DigitsVAE(nn.Module):
    def __init__(self, latent: int = 8) -> None:
        super().__init__()
        self.enc = nn.Linear(64, 128)
        self.mu = nn.Linear(128, latent)
        self.logvar = nn.Linear(128, latent)
        self.dec1 = nn.Linear(latent, 128)
        self.dec2 = nn.Linear(128, 64)

    def forward(self, x):
        h = F.relu(self.enc(x))
        mu, logvar = self.mu(h), self.logvar(h)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return torch.sigmoid(self.dec2(F.relu(self.dec1(z)))), mu, logvar


@scenario("VAE on digits (the PyTorch VAE example's loss: BCE + KL), Adam; the model returns a tuple")
def healthy_vae():
    torch.manual_seed(0)
    m = DigitsVAE()
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    mon = attach(m, opt, num_classes=None)
    for x, _ in batches(300):
        opt.zero_grad()
        recon, mu, logvar = m(x)
        loss = (F.binary_cross_entropy(recon, x, reduction="sum")
                - 0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())) / len(x)
        loss.backward()
        opt.step()
        mon.log(loss=loss)
    return mon


@scenario("GAN on digits in the DCGAN example's order (the generator's backward runs through the "
          "discriminator after its step); one monitor per network, Adam(2e-4, betas 0.5)")
def healthy_gan():
    torch.manual_seed(0)
    netd = nn.Sequential(nn.Linear(64, 128), nn.LeakyReLU(0.2), nn.Linear(128, 1))
    netg = nn.Sequential(nn.Linear(16, 128), nn.ReLU(), nn.Linear(128, 64), nn.Sigmoid())
    optd = torch.optim.Adam(netd.parameters(), lr=2e-4, betas=(0.5, 0.999))
    optg = torch.optim.Adam(netg.parameters(), lr=2e-4, betas=(0.5, 0.999))
    # A GAN's losses are a game, not a descent: loss_not_decreasing is switched off, as its docs advise.
    mond = attach(netd, optd, num_classes=None, name="netD", skip_checks="loss_not_decreasing")
    mong = attach(netg, optg, num_classes=None, name="netG", skip_checks="loss_not_decreasing")
    bce = nn.BCEWithLogitsLoss()
    for x, _ in batches(300):
        netd.zero_grad()
        real = bce(netd(x), torch.ones(len(x), 1))
        real.backward()
        fake = netg(torch.randn(len(x), 16))
        err_fake = bce(netd(fake.detach()), torch.zeros(len(x), 1))
        err_fake.backward()
        optd.step()
        netg.zero_grad()
        err_g = bce(netd(fake), torch.ones(len(x), 1))
        err_g.backward()
        optg.step()
        mond.log(loss=real + err_fake)
        mong.log(loss=err_g)
    loud = {c for (c, sev) in mong.engine.raised if sev != "info"}
    mong.close()
    assert not loud, f"the generator's monitor raised {loud}"
    return mond


@scenario("seq2seq transformer (encoder-decoder) on a copy task, AdamW, warm-up and decay stepped per batch")
def healthy_seq2seq_transformer():
    torch.manual_seed(0)
    vocab, d = 12, 32
    embed = nn.Embedding(vocab, d)
    core = nn.Transformer(d, 4, 1, 1, 64, dropout=0.0, batch_first=True)
    head = nn.Linear(d, vocab)
    m = nn.ModuleDict({"embed": embed, "core": core, "head": head})
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 30) * 0.99 ** max(0, s - 30))
    mon = attach(m, opt, num_classes=vocab)
    g = torch.Generator().manual_seed(0)
    mask = nn.Transformer.generate_square_subsequent_mask(7)
    for _ in range(200):
        src = torch.randint(1, vocab, (16, 8), generator=g)
        tgt_in, tgt_out = torch.cat([torch.zeros(16, 1, dtype=torch.long), src[:, :-2]], 1), src[:, :-1]
        opt.zero_grad()
        out = head(core(embed(src), embed(tgt_in), tgt_mask=mask))
        loss = F.cross_entropy(out.reshape(-1, vocab), tgt_out.reshape(-1))
        loss.backward()
        opt.step()
        sched.step()
        mon.log(loss=loss)
    return mon


@scenario("label smoothing and class weights on a skewed dataset (90% one digit), CrossEntropyLoss module")
def healthy_label_smoothing_class_weights():
    torch.manual_seed(0)
    x, y = imbalanced_digits()
    weight = torch.bincount(y, minlength=10).float().rsqrt()  # inverse square-root frequency, mean 1
    loss_fn = nn.CrossEntropyLoss(weight=weight / weight.mean(), label_smoothing=0.1)
    m = mlp()
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    return fit(m, opt, attach(m, opt), 0, loss_fn=loss_fn, data=random_batches(x, y, 200))


@scenario("a balanced sampler (WeightedRandomSampler) over a skewed dataset")
def healthy_balanced_sampler():
    torch.manual_seed(0)
    x, y = imbalanced_digits()
    weights = (1.0 / torch.bincount(y, minlength=10).float())[y]
    sampler = torch.utils.data.WeightedRandomSampler(weights, num_samples=64 * 200, replacement=True,
                                                     generator=torch.Generator().manual_seed(0))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64, sampler=sampler)
    m = mlp()
    opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
    return fit(m, opt, attach(m, opt), 0, data=loader)


@scenario("sequence tagging with padded batches: cross_entropy(ignore_index=-100) over every token")
def healthy_padded_sequences():
    torch.manual_seed(0)
    vocab = 20
    m = nn.Sequential(nn.Embedding(vocab, 32), nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, vocab))
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    mon = attach(m, opt, num_classes=vocab)
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        tokens = torch.randint(1, vocab, (16, 12), generator=g)
        lengths = torch.randint(4, 13, (16,), generator=g)
        pad = torch.arange(12)[None, :] >= lengths[:, None]
        tokens = tokens.masked_fill(pad, 0)
        target = ((tokens * 7) % vocab).masked_fill(pad, -100)  # a per-token mapping to learn
        opt.zero_grad()
        loss = F.cross_entropy(m(tokens).reshape(-1, vocab), target.reshape(-1), ignore_index=-100)
        loss.backward()
        opt.step()
        mon.log(loss=loss)
    return mon


@scenario("multi-label classification: BCEWithLogitsLoss on the logits (the sigmoid is inside the loss)")
def healthy_multilabel_bce():
    torch.manual_seed(0)
    m = mlp(d_out=3)
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    return fit(m, opt, attach(m, opt, num_classes=None), 0, loss_fn=nn.BCEWithLogitsLoss(),
               data=multilabel_batches(200))


@scenario("MSE regression on standardised tabular features (digit value from its pixels)")
def healthy_mse_regression():
    torch.manual_seed(0)
    m = mlp(d_out=1)
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    return fit(m, opt, attach(m, opt, num_classes=None), 200, loss_fn=F.mse_loss,
               transform=lambda step, x: (x - 0.3) / 0.4, relabel=lambda step, y: y.float()[:, None] / 10)


@scenario("CNN on images normalised per channel (mean/std of the training set)")
def healthy_cnn_normalised_per_channel():
    torch.manual_seed(0)
    m = SmallCNN()
    opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
    x, _, _, _ = digits()
    mean, std = float(x.mean()), float(x.std())
    return fit(m, opt, attach(m, opt), 150, image=True, transform=lambda step, xb: (xb - mean) / std)


@scenario("MLP, SGD with momentum, StepLR stepped once per epoch (x0.1 every 5 epochs of 25 steps)")
def healthy_epoch_scheduler():
    torch.manual_seed(0)
    m = mlp(hidden=64)
    opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, 5, gamma=0.1)
    mon = attach(m, opt)
    for step, (x, y) in enumerate(batches(300)):
        opt.zero_grad()
        loss = F.cross_entropy(m(x), y)
        loss.backward()
        opt.step()
        mon.log(loss=loss)
        if step % 25 == 24:
            sched.step()
    return mon


# -- broken -------------------------------------------------------------------------------------------------
@scenario("hidden layer biases start at -10: its ReLUs never fire (seeds/003)", ("dead_units",))
def broken_dead_relu_bias():
    torch.manual_seed(0)
    m = mlp()
    with torch.no_grad():
        m[2].bias.fill_(-10.0)
    opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
    return fit(m, opt, attach(m, opt), 200)


@scenario("tanh network with weights scaled x8 at init: outputs pinned at +-1 (seeds/003)", ("saturated_activations",))
def broken_tanh_large_init():
    torch.manual_seed(0)
    m = mlp(act=nn.Tanh, depth=3)
    with torch.no_grad():
        for mod in m:
            if isinstance(mod, nn.Linear):
                mod.weight.mul_(8.0)
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    return fit(m, opt, attach(m, opt), 200)


@scenario("12-layer sigmoid stack: no signal reaches the first layers", ("vanishing_gradients",))
def broken_deep_sigmoid():
    torch.manual_seed(0)
    m = mlp(act=nn.Sigmoid, depth=12, hidden=64)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    return fit(m, opt, attach(m, opt), 200)


@scenario("learning rate 0 (seeds/000)", ("learning_rate_zero",))
def broken_lr_zero():
    torch.manual_seed(0)
    m = mlp()
    opt = torch.optim.SGD(m.parameters(), lr=0.0, momentum=0.9)
    return fit(m, opt, attach(m, opt), 200)


@scenario("exponential LR decay per step instead of per epoch: LR ~0 after 100 steps (seeds/002)", ("learning_rate_zero",))
def broken_lr_decays_to_zero():
    torch.manual_seed(0)
    m = mlp()
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.8)
    return fit(m, opt, attach(m, opt), 250, sched=sched)


class WithUnusedLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = mlp(hidden=64)
        self.aux_head = nn.Linear(64, 10)  # built, never called

    def forward(self, x):
        return self.body(x)


@scenario("a layer is built but never called in forward (seeds/000)", ("parameters_without_gradient",))
def broken_unused_layer():
    torch.manual_seed(0)
    m = WithUnusedLayer()
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    return fit(m, opt, attach(m, opt), 150)


@scenario("optimizer built from the first layer's parameters only", ("weights_not_updating",))
def broken_missing_from_optimizer():
    torch.manual_seed(0)
    m = mlp()
    opt = torch.optim.SGD(m[0].parameters(), lr=0.05)
    return fit(m, opt, attach(m, opt), 150)


@scenario("optimizer.zero_grad() forgotten (seeds/000)", ("gradients_not_cleared",))
def broken_no_zero_grad():
    torch.manual_seed(0)
    m = mlp()
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    mon = attach(m, opt)
    for x, y in batches(150):
        loss = F.cross_entropy(m(x), y)
        loss.backward()
        opt.step()
        mon.log(loss=loss)
    return mon


@scenario("predictions kept for an epoch metric without detach(): every step's graph survives (seeds/003)",
          ("graph_retained",))
def broken_kept_graph_tensors():
    torch.manual_seed(0)
    m = mlp(hidden=1024, depth=2)
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    mon = attach(m, opt)
    kept = []
    for x, y in batches(100, batch=256):
        opt.zero_grad()
        loss = F.cross_entropy(m(x), y)
        loss.backward()
        opt.step()
        kept.append(m(x))  # the bug: a metric pass with autograd on, kept with its saved activations
        mon.log(loss=loss)
    mon._kept = kept
    return mon


@scenario("validation under no_grad without model.eval(): dropout still on (seeds/000)", ("eval_in_train_mode",))
def broken_eval_in_train_mode():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Dropout(0.3), nn.Linear(128, 10))
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    mon = attach(m, opt)
    _, _, xv, yv = digits()
    for step, (x, y) in enumerate(batches(200)):
        opt.zero_grad()
        loss = F.cross_entropy(m(x), y)
        loss.backward()
        opt.step()
        mon.log(loss=loss)
        if step % 10 == 0:
            with torch.no_grad():
                mon.log(val_loss=F.cross_entropy(m(xv), yv))
    return mon


@scenario("60 training samples, wide MLP, Adam: validation loss rises while training loss falls", ("overfitting",))
def broken_overfitting_tiny_train_set():
    torch.manual_seed(0)
    m = mlp(hidden=512)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    mon = attach(m, opt)
    _, _, xv, yv = digits()
    for step, (x, y) in enumerate(batches(400, batch=60, size=60)):
        opt.zero_grad()
        loss = F.cross_entropy(m(x), y)
        loss.backward()
        opt.step()
        mon.log(loss=loss)
        if step % 20 == 0:
            with torch.no_grad():
                m.eval()
                mon.log(val_loss=F.cross_entropy(m(xv), yv))
                m.train()
    return mon


@scenario("hidden weights initialised to a constant: symmetric units never break (seeds/000)", ("constant_init",))
def broken_constant_init():
    torch.manual_seed(0)
    m = mlp()
    with torch.no_grad():
        m[2].weight.fill_(0.01)
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    return fit(m, opt, attach(m, opt), 100)


@scenario("final layer scaled x50: confident wrong predictions at init (seeds/002)", ("loss_at_init",))
def broken_final_layer_scaled():
    torch.manual_seed(0)
    m = mlp()
    with torch.no_grad():
        m[-1].weight.mul_(50.0)
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    return fit(m, opt, attach(m, opt), 60)


@scenario("softmax probabilities passed to cross_entropy, which expects logits (seeds/000)", ("probabilities_as_logits",))
def broken_probabilities_into_cross_entropy():
    torch.manual_seed(0)
    m = nn.Sequential(mlp(), nn.Softmax(dim=1))
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    return fit(m, opt, attach(m, opt), 300)


@scenario("a NaN in the input batch from step 100 on (data pipeline bug)", ("nonfinite_values",))
def broken_nan_input():
    torch.manual_seed(0)
    m = mlp()
    opt = torch.optim.SGD(m.parameters(), lr=0.05)

    def poison(step, x):
        if step >= 100:
            x = x.clone()
            x[0, 0] = math.nan
        return x

    return fit(m, opt, attach(m, opt), 120, transform=poison)


@scenario("inputs no longer normalised from step 150 on (x500): gradients blow up", ("inputs_not_normalized",))
def broken_unnormalised_inputs():
    torch.manual_seed(0)
    m = mlp()
    opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
    return fit(m, opt, attach(m, opt), 200, transform=lambda step, x: x * 500 if step >= 150 else x)


@scenario("regression whose targets switch units at step 150 (metres to millimetres, x1000): the gradients jump "
          "a thousandfold", ("exploding_gradients",))
def broken_targets_change_units():
    torch.manual_seed(0)
    m = mlp(d_out=1)
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    return fit(m, opt, attach(m, opt, num_classes=None), 200, loss_fn=F.mse_loss,
               relabel=lambda step, y: (y.float()[:, None] / 10) * (1000 if step >= 150 else 1))


@scenario("the labels are drawn independently of the inputs (a pipeline bug decouples them): nothing to learn",
          ("loss_not_decreasing",))
def broken_labels_decoupled():
    torch.manual_seed(0)
    m = mlp()
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    return fit(m, opt, attach(m, opt), 400, relabel=lambda step, y: torch.randint(0, 10, y.shape, generator=g))


@scenario("a cache that grows every step (detached features appended to a list): memory, not graphs",
          ("memory_leak",))
def broken_growing_cache():
    torch.manual_seed(0)
    m = mlp()
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    mon = attach(m, opt)
    cache = []
    for x, y in batches(120):
        opt.zero_grad()
        loss = F.cross_entropy(m(x), y)
        loss.backward()
        opt.step()
        cache.append(torch.ones(1 << 20))  # 4 MiB a step, no graph
        mon.log(loss=loss)
    mon._kept = cache
    return mon


@scenario("softmax outputs passed to nll_loss, which expects log-probabilities", ("probabilities_as_logits",))
def broken_softmax_into_nll_loss():
    torch.manual_seed(0)
    m = nn.Sequential(mlp(), nn.Softmax(dim=1))
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    return fit(m, opt, attach(m, opt), 200, loss_fn=F.nll_loss)


def multilabel_batches(n: int, batch: int = 64, seed: int = 0):
    """Multi-label task on digits: is the digit even / at least 5 / one of 0, 3, 6, 9."""
    for x, y in batches(n, batch, seed):
        yield x, torch.stack([y % 2 == 0, y >= 5, y % 3 == 0], 1).float()


@scenario("multi-label model ending in a sigmoid, trained with BCEWithLogitsLoss", ("probabilities_as_logits",))
def broken_sigmoid_into_bce_with_logits():
    torch.manual_seed(0)
    m = nn.Sequential(mlp(d_out=3), nn.Sigmoid())
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    return fit(m, opt, attach(m, opt, num_classes=None), 0, loss_fn=nn.BCEWithLogitsLoss(),
               data=multilabel_batches(200))


def sorted_batches(n: int, batch: int = 64, per_class: int = 640):
    """Digits sorted by label, each class repeated to ``per_class`` examples, read in order without shuffling."""
    x, y, _, _ = digits()
    order = torch.argsort(y, stable=True)
    xs, ys = [], []
    for k in range(10):
        idx = order[y[order] == k]
        reps = idx.repeat(per_class // len(idx) + 1)[:per_class]
        xs.append(x[reps])
        ys.append(y[reps])
    x, y = torch.cat(xs), torch.cat(ys)
    for i in range(n):
        start = (i * batch) % len(x)
        yield x[start:start + batch], y[start:start + batch]


@scenario("a dataset sorted by label and read without shuffling: every batch is one digit", ("unshuffled_batches",))
def broken_sorted_by_label():
    torch.manual_seed(0)
    m = mlp()
    opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
    return fit(m, opt, attach(m, opt), 0, data=sorted_batches(200))


def random_batches(x: torch.Tensor, y: torch.Tensor, n: int, batch: int = 64):
    """``n`` batches drawn at random (with replacement) from ``(x, y)``."""
    g = torch.Generator().manual_seed(0)
    for _ in range(n):
        idx = torch.randint(0, len(x), (batch,), generator=g)
        yield x[idx], y[idx]


def imbalanced_digits(share: float = 0.9) -> tuple[torch.Tensor, torch.Tensor]:
    """Digits where class 0 makes up ``share`` of the examples (its examples repeated)."""
    x, y, _, _ = digits()
    zero, rest = (y == 0).nonzero().flatten(), (y != 0).nonzero().flatten()
    need = int(share * len(rest) / (1 - share))
    idx = torch.cat([zero.repeat(need // len(zero) + 1)[:need], rest])
    return x[idx], y[idx]


@scenario("90% of the training labels are one digit (a skewed dataset)", ("class_imbalance",))
def broken_imbalanced_labels():
    torch.manual_seed(0)
    x, y = imbalanced_digits()
    m = mlp()
    opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
    return fit(m, opt, attach(m, opt), 0, data=random_batches(x, y, 200))


@scenario("raw 0-255 pixel values fed to a CNN (the normalisation transform was left out)",
          ("inputs_not_normalized",))
def broken_raw_pixels():
    torch.manual_seed(0)
    m = SmallCNN()
    opt = torch.optim.SGD(m.parameters(), lr=1e-4, momentum=0.9)
    return fit(m, opt, attach(m, opt), 120, image=True, transform=lambda step, x: x * 255)


@scenario("an all-zero input (a transform that blanks the image)", ("inputs_not_normalized",))
def broken_zero_inputs():
    torch.manual_seed(0)
    m = mlp()
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    return fit(m, opt, attach(m, opt), 120, transform=lambda step, x: torch.zeros_like(x))


@scenario("tabular features where one column is in raw units, thousands of times the others' scale",
          ("inputs_not_normalized",))
def broken_one_raw_feature():
    torch.manual_seed(0)
    m = mlp()
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)

    def raw(step, x):
        x = (x - 0.3) / 0.4
        x[:, 5] = x[:, 5] * 4000 + 30000  # e.g. an income column next to standardised ones
        return x

    return fit(m, opt, attach(m, opt), 120, transform=raw)


@scenario("a data loader stuck on its first batch (the iterator re-created every step)", ("repeated_batches",))
def broken_repeated_batch():
    torch.manual_seed(0)
    m = mlp()
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    # the bug: a fresh iterator every step, so always the first batch
    return fit(m, opt, attach(m, opt), 0, data=(next(iter(batches(1))) for _ in range(120)))


# The first updates throw the weight norm out several-fold and the loss jumps: divergence, whose line lists the
# dead units and the out-of-range update ratio that follow as its consequences.
@scenario("AdamW with lr=1.0 and weight_decay=1.0 (meant 1e-3): every update rewrites the weights",
          ("divergence",))
def broken_lr_far_too_high():
    torch.manual_seed(0)
    m = mlp()
    opt = torch.optim.AdamW(m.parameters(), lr=1.0, weight_decay=1.0)
    return fit(m, opt, attach(m, opt), 100)


@scenario("Adam with lr=3e-8 (meant 3e-4): updates are a millionth of the weights", ("update_ratio_out_of_range",))
def broken_lr_far_too_low():
    torch.manual_seed(0)
    m = mlp(act=nn.GELU)
    opt = torch.optim.Adam(m.parameters(), lr=3e-8)
    return fit(m, opt, attach(m, opt), 100)


@scenario("linear regression on raw (unnormalised) pixel features, SGD with momentum 0.9: the weights run away",
          ("divergence",))
def broken_momentum_regression_diverges():
    torch.manual_seed(0)
    m = nn.Linear(64, 1)
    opt = torch.optim.SGD(m.parameters(), lr=8e-4, momentum=0.9)
    mon = attach(m, opt, num_classes=None)
    x_all, y_all, _, _ = digits()
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        idx = torch.randint(0, len(x_all), (64,), generator=g)
        x, y = x_all[idx] * 16.0, y_all[idx].float().unsqueeze(1)  # raw 0..16 pixel values
        opt.zero_grad()
        loss = F.mse_loss(m(x), y)
        loss.backward()
        opt.step()
        mon.log(loss=loss)
    return mon


@scenario("linear LR warm-up to a peak 100x too high (SGD to 5.0 instead of 0.05): the run diverges, units die",
          ("divergence",))
def broken_warmup_peak_too_high():
    torch.manual_seed(0)
    m = mlp()
    opt = torch.optim.SGD(m.parameters(), lr=5.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 100))
    return fit(m, opt, attach(m, opt), 200, sched=sched)


@scenario("small transformer, AdamW warmed up in 5 steps to 0.3 (100x its healthy peak): the weights are thrown "
          "out several-fold and the loss settles on a plateau above its start", ("divergence",))
def broken_adamw_peak_collapses():
    torch.manual_seed(0)
    m = TinyTransformer()
    opt = torch.optim.AdamW(m.parameters(), lr=0.3, weight_decay=0.1)
    total, warm = 300, 5
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / (total - warm))))
    mon = attach(m, opt, num_classes=4)
    for tokens, y in token_batches(total):
        opt.zero_grad()
        loss = F.cross_entropy(m(tokens), y)
        loss.backward()
        opt.step()
        sched.step()
        mon.log(loss=loss)
    return mon


@scenario("Adam, a data pipeline bug scrambles the labels of four batches at step 150: the loss jumps",
          ("loss_spike",))
def broken_bad_batches():
    torch.manual_seed(0)
    m = mlp()
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    scramble = lambda step, y: (y + 1 + step) % 10 if 150 <= step < 154 else y  # noqa: E731 - every label wrong
    return fit(m, opt, attach(m, opt), 200, relabel=scramble)


@scenario("a step that hangs (stuck data loader) longer than the stall limit", ("training_stalled",))
def broken_stalled_step():
    torch.manual_seed(0)
    m = mlp(hidden=32)
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    mon = attach(m, opt, stall_seconds=0.3)
    fit(m, opt, mon, 10)
    deadline = time.monotonic() + 5  # the loader hangs: no step for a while
    while time.monotonic() < deadline and not any(f.check == "training_stalled" for f in mon.findings):
        time.sleep(0.05)
    return fit(m, opt, mon, 5)


# -- runner ---------------------------------------------------------------------------------------------------
def run(name: str) -> dict[str, str]:
    """Run one scenario; returns {check: severity} of what fired."""
    return run_full(name).fired


@dataclass(frozen=True)
class Outcome:
    fired: dict[str, str]
    """{check: severity} of the findings raised on their own."""
    consequences: frozenset[str]
    """Checks that only appeared listed under a cause."""
    first: str | None
    """The first warning or critical finding logged."""
    lines: int
    """Log lines of findings (one per incident)."""
    first_step: int | None
    """Step since which the first cause held."""


def run_full(name: str) -> Outcome:
    """Run one scenario and summarise what the agent said."""
    mon = SCENARIOS[name].run()
    try:
        fired = observed(mon)
        under = frozenset(r.check for r in mon.history if r.explained_by is not None) - set(fired)
        first = first_cause(mon)
        step = min((r.first_step for r in mon.history if r.check == first and r.explained_by is None), default=None)
        return Outcome(fired, under, first, sum(r.logged for r in mon.history), step)
    finally:
        mon.close()


def table(results: dict[str, Outcome]) -> str:
    from agent.checks.catalogue import CHECKS

    checks = [c.name for c in CHECKS]
    head = "| scenario | expected | first cause (step) | lines | " + " | ".join(f"`{c}`" for c in checks) + " |"
    lines = [head, "|" + "---|" * (len(checks) + 4)]
    for name, out in results.items():
        sc = SCENARIOS[name]
        cells = []
        for c in checks:
            if c in out.fired:
                mark = "**X**" if c in sc.expect else out.fired[c][0].upper()  # W/C/I for other findings
            elif c in out.consequences:
                mark = "c"
            else:
                mark = "MISSED" if c in sc.expect else ""
            cells.append(mark)
        expected = ", ".join(sorted(sc.expect)) or "healthy"
        first = f"{out.first} ({out.first_step})" if out.first else ""
        lines.append(f"| {name} | {expected} | {first} | {out.lines} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    logging.basicConfig(level=logging.ERROR)
    results = {}
    for name in SCENARIOS:
        t0 = time.perf_counter()
        results[name] = run_full(name)
        print(f"{name}: {sorted(results[name].fired)} ({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
    doc = Path(__file__).resolve().parent.parent / "docs" / "detection.md"
    text = doc.read_text() if doc.exists() else "# Detection table\n\n<!-- table -->\n<!-- /table -->\n"
    start, end = text.index("<!-- table -->"), text.index("<!-- /table -->")
    doc.write_text(text[: start + len("<!-- table -->")] + "\n" + table(results) + "\n" + text[end:])
    print(f"wrote {doc}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
