"""agent.preflight: healthy models pass every check; each broken model fails its check; the caller's state is kept."""

from __future__ import annotations

import copy
import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import agent
from agent.preflight import CHECK_NAMES

LN10 = math.log(10)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models on 2 cores shared by 2 xdist workers: one intra-op thread each is ~10x faster than two
    threads waiting on each other (the verdicts are the same either way)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits():
    """64 real 8x8 digit images (shipped inside scikit-learn) and their labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data[:64], dtype=torch.float32) / 16.0
    return x, torch.tensor(data.target[:64])


def mlp(hidden: int = 128) -> nn.Sequential:
    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Dropout(0.3), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, 10))


class CNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.drop = nn.Dropout2d(0.2)
        self.fc = nn.Linear(32 * 4 * 4, 10)

    def forward(self, x):
        x = F.relu(self.bn(self.conv1(x.view(-1, 1, 8, 8))))
        x = F.max_pool2d(self.drop(F.relu(self.conv2(x))), 2)
        return self.fc(x.flatten(1))


class TinyTransformer(nn.Module):
    """Token ids in, per-sequence class logits out, as a dict or a tuple (logits second)."""

    def __init__(self, vocab: int = 24, dim: int = 32, classes: int = 6, output: str = "dict") -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(8, dim) * 0.02)
        self.block = nn.TransformerEncoderLayer(dim, 4, 64, dropout=0.1, batch_first=True)
        self.head = nn.Linear(dim, classes)
        self.output = output

    def forward(self, tokens):
        hidden = self.block(self.tok(tokens) + self.pos)
        logits = self.head(hidden.mean(1))
        return {"hidden": hidden, "logits": logits} if self.output == "dict" else (hidden, logits)


def tokens(n: int = 32, vocab: int = 24, classes: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, vocab, (n, 8), generator=g), torch.randint(0, classes, (n,), generator=g)


def verdicts(report) -> dict[str, str]:
    return {r.name: report.verdict(r) for r in report.results}


# --- healthy models -------------------------------------------------------------------------------------------


def test_healthy_mlp_passes_every_check(digits):
    torch.manual_seed(0)
    report = agent.preflight(mlp(), digits, F.cross_entropy, num_classes=10)
    assert [r.name for r in report.results] == list(CHECK_NAMES)
    assert report.ok and report.skipped == [], str(report)
    assert report["loss_at_init"].value == pytest.approx(LN10, abs=0.5)
    assert report["gradient_reachability"].value == 0
    assert report["overfit_one_batch"].value <= 0.1 * LN10
    assert report["batch_independence"].value == 0
    assert report["input_independent_baseline"].value > 2 * report["overfit_one_batch"].value
    assert report.examples == 16 and report.batch_size == 64
    report.raise_if_failed()  # does not raise


def test_healthy_cnn_passes_and_the_number_of_classes_is_inferred(digits):
    torch.manual_seed(0)
    report = agent.preflight(CNN(), digits, F.cross_entropy)
    assert report.ok and report.skipped == [], str(report)
    assert "expected ln(10)" in report["loss_at_init"].message
    assert any("num_classes=10 inferred" in n for n in report.notes)


def test_classes_are_inferred_only_for_a_cross_entropy_and_the_inputs_get_no_gradient(digits):
    torch.manual_seed(0)
    hinge = agent.preflight(mlp(), digits, F.multi_margin_loss, steps=1)  # (N, C) logits, class targets, not a CE
    assert hinge.skipped[0] == "loss_at_init" and hinge.notes == ()
    assert "0.1 x the initial loss" in hinge["overfit_one_batch"].message
    x = digits[0].clone().requires_grad_()
    agent.preflight(mlp(), (x, digits[1]), F.cross_entropy, steps=1)
    assert x.grad is None


@pytest.mark.parametrize("output", ["dict", "tuple"])
def test_healthy_transformer_on_tokens_passes(output):
    torch.manual_seed(0)
    x, y = tokens()
    pick = (lambda out: out["logits"]) if output == "dict" else (lambda out: out[1])
    if output == "dict":  # loss_fn written for the logits: it raises on the dict, then gets output_fn(output)
        report = agent.preflight(TinyTransformer(output=output), (x, y), F.cross_entropy, num_classes=6, output_fn=pick)
        assert any("it gets output_fn(output)" in n for n in report.notes)
    else:  # loss_fn written for the raw tuple output
        report = agent.preflight(TinyTransformer(output=output), (x, y), lambda out, t: F.cross_entropy(out[1], t),
                                 num_classes=6, output_fn=pick)
        assert report.notes == ()
    assert report.ok and report.skipped == [], str(report)
    # Integer tokens carry no gradient: the embedding's output stands in for them, and zeroed inputs are pad tokens.
    assert "output of tok (Embedding)" in report["batch_independence"].message


def test_healthy_regression_judges_the_overfit_by_its_relative_drop():
    torch.manual_seed(0)
    x = torch.randn(32, 8)
    y = torch.sin(x @ torch.randn(8, 2))
    model = nn.Sequential(nn.Linear(8, 64), nn.Tanh(), nn.Linear(64, 2))
    report = agent.preflight(model, (x, y), F.mse_loss, optimizer=lambda p: torch.optim.Adam(p, lr=1e-2))
    assert report.ok, str(report)
    assert report.skipped == ["loss_at_init"]  # no expected value for an MSE without expected_initial_loss
    assert "0.1 x the initial loss" in report["overfit_one_batch"].message
    with_expected = agent.preflight(model, (x, y), F.mse_loss, expected_initial_loss=100.0)
    assert not with_expected["loss_at_init"].ok


# --- one broken model per check -------------------------------------------------------------------------------


class DetachedBody(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(64, 128)
        self.head = nn.Linear(128, 10)

    def forward(self, x):
        return self.head(F.relu(self.body(x)).detach())  # the bug: the body never learns


class UnusedLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = mlp()
        self.extra = nn.Linear(10, 10)  # built, never called: frozen by accident

    def forward(self, x):
        return self.net(x)


def test_gradient_reachability_fails_for_a_detached_body(digits):
    torch.manual_seed(0)
    report = agent.preflight(DetachedBody(), digits, F.cross_entropy, num_classes=10)
    r = report["gradient_reachability"]
    assert not r.ok and r.value == 2
    assert "body.weight, body.bias" in r.message and "head" not in r.message
    assert report["loss_at_init"].ok
    assert "batch_independence" in report.skipped  # no gradient path to the input: nothing to compare


def test_gradient_reachability_fails_for_a_layer_never_called(digits):
    torch.manual_seed(0)
    report = agent.preflight(UnusedLayer(), digits, F.cross_entropy, num_classes=10)
    assert verdicts(report) == {"loss_at_init": "pass", "gradient_reachability": "FAIL", "overfit_one_batch": "pass",
                                "batch_independence": "pass", "input_independent_baseline": "pass"}
    assert "2 got no gradient (extra.weight, extra.bias)" in report["gradient_reachability"].message


class DetachedHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = mlp()

    def forward(self, x):
        return self.net(x).detach()  # the bug: nothing reaches the loss's graph


def test_overfit_fails_for_a_detached_head(digits):
    torch.manual_seed(0)
    report = agent.preflight(DetachedHead(), digits, F.cross_entropy, num_classes=10)
    r = report["overfit_one_batch"]
    assert not r.ok and "The loss has no gradient" in r.message
    assert r.value == pytest.approx(report["loss_at_init"].value, rel=0.1)
    assert report["gradient_reachability"].value == 6 and "no graph at all" in report["gradient_reachability"].message
    assert report.skipped == ["batch_independence", "input_independent_baseline"]


class SoftmaxOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = mlp()

    def forward(self, x):
        return self.net(x).softmax(-1)  # the bug: probabilities into F.cross_entropy, which applies its own softmax


def test_overfit_fails_for_softmax_fed_to_cross_entropy(digits):
    torch.manual_seed(0)
    report = agent.preflight(SoftmaxOut(), digits, F.cross_entropy, num_classes=10)
    r = report["overfit_one_batch"]
    assert not r.ok
    # Logits squeezed into [0, 1] cannot go below ln(e + 9) - 1 = 1.46 for 10 classes.
    assert r.value > math.log(math.e + 9) - 1 - 1e-3
    assert "softmax" in r.message
    assert report["loss_at_init"].ok  # near-uniform probabilities look like a perfect init: only the overfit shows it
    assert report["gradient_reachability"].ok and report["batch_independence"].ok


@pytest.mark.parametrize("case", ["lr_zero", "too_small"])
def test_overfit_fails_for_a_learning_rate_of_zero_and_a_model_too_small(digits, case):
    torch.manual_seed(0)
    if case == "lr_zero":
        report = agent.preflight(mlp(), digits, F.cross_entropy, num_classes=10,
                                 optimizer=lambda p: torch.optim.SGD(p, lr=0.0))
        assert "did not move" in report["overfit_one_batch"].message
        assert report["overfit_one_batch"].value == pytest.approx(report["loss_at_init"].value, rel=0.2)
        assert "input_independent_baseline" in report.skipped  # nothing learned, nothing to take away
    else:
        tiny = nn.Sequential(nn.Linear(64, 1), nn.Linear(1, 10))  # a one-unit bottleneck cannot tell 16 examples apart
        report = agent.preflight(tiny, digits, F.cross_entropy, num_classes=10,
                                 optimizer=lambda p: torch.optim.Adam(p, lr=1e-2))
    assert not report["overfit_one_batch"].ok
    assert report["overfit_one_batch"].value > 0.1 * LN10
    assert report["loss_at_init"].ok and report["gradient_reachability"].ok and report["batch_independence"].ok


class ViewMix(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        h = F.relu(self.fc1(x))
        h = h.view(h.shape[1], h.shape[0]).t()  # the bug: a view where a transpose was meant mixes the batch
        return self.fc2(h)


def test_batch_independence_fails_for_a_view_that_mixes_the_batch(digits):
    torch.manual_seed(0)
    report = agent.preflight(ViewMix(), digits, F.cross_entropy, num_classes=10)
    r = report["batch_independence"]
    assert not r.ok and r.value > 1e-3
    assert "view()/reshape()" in r.message and "other example(s)" in r.message
    assert report["loss_at_init"].ok and report["gradient_reachability"].ok


def test_batch_norm_in_eval_mode_does_not_mix_but_in_train_mode_it_does(digits):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10))
    assert agent.preflight(model, digits, F.cross_entropy, num_classes=10, steps=1)["batch_independence"].ok

    class TrainModeNorm(nn.Module):  # batch statistics whatever the mode: mixes samples by design
        def forward(self, x):
            return (x - x.mean(0)) / (x.std(0) + 1e-5)

    mixing = nn.Sequential(nn.Linear(64, 32), TrainModeNorm(), nn.ReLU(), nn.Linear(32, 10))
    assert not agent.preflight(mixing, digits, F.cross_entropy, num_classes=10, steps=1)["batch_independence"].ok


class PositionMemoriser(nn.Module):
    """Ignores its input: learns one output per position in the batch (an index feature leaked into forward)."""

    def __init__(self) -> None:
        super().__init__()
        self.by_position = nn.Embedding(64, 10)
        nn.init.zeros_(self.by_position.weight)

    def forward(self, x):
        return self.by_position(torch.arange(x.shape[0], device=x.device))


def test_input_independent_baseline_fails_for_a_model_that_ignores_its_input(digits):
    report = agent.preflight(PositionMemoriser(), digits, F.cross_entropy, num_classes=10,
                             optimizer=lambda p: torch.optim.Adam(p, lr=0.05))
    r = report["input_independent_baseline"]
    assert not r.ok and "ignores it" in r.message
    assert r.value == pytest.approx(report["overfit_one_batch"].value)  # zeroed inputs: the very same loss
    # It memorises the batch (so the overfit passes); there is no input gradient to mix (so that is skipped).
    assert verdicts(report) == {"loss_at_init": "pass", "gradient_reachability": "pass", "overfit_one_batch": "pass",
                                "batch_independence": "skip", "input_independent_baseline": "FAIL"}


def test_loss_at_init_fails_for_a_final_layer_initialised_too_large(digits):
    torch.manual_seed(0)
    model = mlp()
    with torch.no_grad():
        model[-1].weight.mul_(50.0)
    report = agent.preflight(model, digits, F.cross_entropy, num_classes=10)
    r = report["loss_at_init"]
    assert not r.ok and r.value > LN10 + 0.58  # outside ln(10) ± max(25%, 0.5)
    assert "initialise the final layer small" in r.message
    assert all(x.ok for x in report.results if x.name != "loss_at_init"), str(report)


# --- the caller's state ---------------------------------------------------------------------------------------


class Jitter(nn.Module):
    """Draws from every global generator in train and eval mode alike (noise injection, augmentation)."""

    def forward(self, x):
        return x * (1 + 0.01 * torch.randn_like(x)) + 0.0 * (random.random() + float(np.random.rand()))


def test_the_callers_model_optimizer_and_random_state_are_untouched(digits):
    torch.manual_seed(0)
    model = nn.Sequential(Jitter(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.5),
                          nn.Linear(32, 10))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
    F.cross_entropy(model(digits[0]), digits[1]).backward()
    opt.step()  # optimizer state (moments, step) and BN running statistics exist
    F.cross_entropy(model(digits[0]), digits[1]).backward()  # and gradients are pending
    model.train()
    random.seed(1)
    np.random.seed(2)
    weights = copy.deepcopy(model.state_dict())
    grads = [p.grad.clone() for p in model.parameters()]
    opt_state = copy.deepcopy(opt.state_dict())
    rng = (torch.get_rng_state(), random.getstate(), np.random.get_state())

    report = agent.preflight(model, digits, F.cross_entropy, num_classes=10, optimizer=opt)
    assert any("weight decay 0.1 set to 0" in n for n in report.notes)
    report = agent.preflight(model, digits, F.cross_entropy, num_classes=10)  # the default optimizer too

    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, model.parameters()))
    assert model.training and all(m.training for m in model.modules())
    after = opt.state_dict()
    assert after["param_groups"] == opt_state["param_groups"]
    assert all(torch.equal(opt_state["state"][i][k], v) for i, s in after["state"].items() for k, v in s.items())
    assert torch.equal(torch.get_rng_state(), rng[0])
    assert random.getstate() == rng[1]
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), rng[2]))
    assert opt.param_groups[0]["params"][0] is next(model.parameters())


def test_an_attached_monitor_sees_nothing_of_the_preflight(digits):
    torch.manual_seed(0)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with agent.attach(model, opt, port=None, num_classes=10) as monitor:
        hooks = (dict(model._forward_hooks), dict(model._forward_pre_hooks))
        report = agent.preflight(model, digits, F.cross_entropy, num_classes=10, steps=20)
        assert monitor.step_index == 0 and monitor.first_loss is None
        assert (dict(model._forward_hooks), dict(model._forward_pre_hooks)) == hooks
    assert report.results and not monitor.guard.errors


# --- the report, the error, the arguments ---------------------------------------------------------------------


def test_the_report_prints_a_table_and_the_error_lists_the_failures(digits):
    torch.manual_seed(0)
    report = agent.preflight(ViewMix(), digits, F.cross_entropy, num_classes=10, steps=30)
    text = str(report)
    lines = text.splitlines()
    assert lines[0].startswith("nnwatch preflight:") and f"in {report.seconds:.2f} s" in lines[0]  # the total time
    assert lines[1].split()[:4] == ["check", "verdict", "value", "what"]
    for r in report.results:
        assert any(line.startswith(r.name) and report.verdict(r) in line for line in lines)
    assert lines[-1].startswith("preflight FAILED")
    with pytest.raises(agent.PreflightError) as err:
        report.raise_if_failed()
    assert isinstance(err.value, AssertionError)
    assert [r.name for r in err.value.failures] == [r.name for r in report.failures]
    assert "batch_independence" in str(err.value) and "loss_at_init" not in str(err.value).split("\n", 1)[1]
    with pytest.raises(KeyError):
        report["no_such_check"]


def test_bad_arguments_fail_at_once_saying_what_to_pass(digits):
    model = mlp()
    with pytest.raises(TypeError, match="pair"):
        agent.preflight(model, digits[0], F.cross_entropy)
    with pytest.raises(ValueError, match="num_classes"):
        agent.preflight(model, digits, F.cross_entropy, num_classes=1)
    with pytest.raises(ValueError, match="steps"):
        agent.preflight(model, digits, F.cross_entropy, steps=0)
    with pytest.raises(TypeError, match="scalar"):
        agent.preflight(model, digits, lambda out, y: F.cross_entropy(out, y, reduction="none"))
    with pytest.raises(TypeError, match="factory"):
        agent.preflight(model, digits, F.cross_entropy, optimizer=lambda p: None)
    with pytest.raises(RuntimeError) as err:
        agent.preflight(model, (digits[0][:, :10], digits[1]), F.cross_entropy)
    assert any("forward" in note for note in err.value.__notes__)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_preflight_on_cuda_keeps_the_cuda_random_state(digits):
    torch.manual_seed(0)
    model = mlp().cuda()
    x, y = digits[0].cuda(), digits[1].cuda()
    state = torch.cuda.get_rng_state_all()
    report = agent.preflight(model, (x, y), F.cross_entropy, num_classes=10)
    assert report.ok, str(report)
    assert all(torch.equal(a, b) for a, b in zip(state, torch.cuda.get_rng_state_all()))
    assert next(model.parameters()).is_cuda
