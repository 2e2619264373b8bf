"""What the loss and the model receive (agent.collect.lossinputs, agent.collect.inputs): the wrappers pass every
call through unchanged, see module and functional losses, attribute a call to the right model, and are removed
when the last monitor closes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import agent
from agent.collect import lossinputs


def _mlp(d_out: int = 4) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, d_out))


def _step(model, opt, mon, loss_fn, x, y):
    opt.zero_grad()
    loss = loss_fn(model(x), y)
    loss.backward()
    opt.step()
    return loss


def test_loss_functions_are_wrapped_while_a_monitor_is_open_and_restored_after_the_last():
    originals = {name: getattr(F, name) for name in lossinputs.WATCHED}
    models = [_mlp(), _mlp()]  # a monitor closes when its model is garbage-collected: keep them
    a = agent.attach(models[0], port=None)
    b = agent.attach(models[1], port=None)
    assert all(getattr(getattr(F, n), "__nnwatch_original__", None) is originals[n] for n in originals)
    a.close()
    assert F.cross_entropy is not originals["cross_entropy"]  # b still watches
    b.close()
    assert all(getattr(F, n) is originals[n] for n in originals)


def test_the_wrapper_changes_no_number():
    x, y = torch.randn(32, 8), torch.arange(32) % 4
    reference = F.cross_entropy(_mlp()(x), y, label_smoothing=0.1)
    model = _mlp()
    mon = agent.attach(model, torch.optim.SGD(model.parameters(), lr=0.1), port=None, sample_every=1)
    watched = nn.CrossEntropyLoss(label_smoothing=0.1)(model(x), y)
    assert torch.equal(watched, reference)
    mon.close()


def _findings_of(loss_fn, head: nn.Module | None = None, steps: int = 6, **attach_kw):
    model = _mlp() if head is None else nn.Sequential(_mlp(), head)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    mon = agent.attach(model, opt, port=None, sample_every=1, **attach_kw)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x = torch.randn(32, 8, generator=g)
        _step(model, opt, mon, loss_fn, x, torch.randint(0, 4, (32,), generator=g))
    mon.close()
    return {r.check for r in mon.history}, mon


def test_probabilities_are_seen_through_the_module_and_the_functional_losses():
    seen, _ = _findings_of(nn.CrossEntropyLoss(), nn.Softmax(dim=1))
    assert "probabilities_as_logits" in seen
    seen, mon = _findings_of(lambda out, y: F.nll_loss(out, y), nn.Softmax(dim=1))  # looked up after attach
    assert "probabilities_as_logits" in seen
    assert "nll_loss" in [r for r in mon.history if r.check == "probabilities_as_logits"][0].message


def test_log_softmax_before_cross_entropy_and_logits_are_not_flagged():
    for head in (nn.LogSoftmax(dim=1), None):  # log_softmax is idempotent: harmless before cross_entropy
        seen, _ = _findings_of(F.cross_entropy, head)
        assert "probabilities_as_logits" not in seen
    seen, _ = _findings_of(lambda out, y: F.nll_loss(out, y), nn.LogSoftmax(dim=1))
    assert "probabilities_as_logits" not in seen


def test_skipping_the_loss_checks_leaves_the_loss_functions_alone():
    original = F.cross_entropy
    model = _mlp()
    mon = agent.attach(model, port=None, skip_checks="probabilities_as_logits,unshuffled_batches,class_imbalance")
    assert F.cross_entropy is original and mon.loss_watch is None
    mon.close()


def test_a_gan_discriminator_loss_belongs_to_the_discriminator():
    torch.manual_seed(0)
    g = nn.Sequential(nn.Linear(4, 8), nn.Tanh())
    d = nn.Sequential(nn.Linear(8, 1), nn.Sigmoid())  # the bug: a sigmoid before BCEWithLogits
    opt_g, opt_d = torch.optim.Adam(g.parameters(), 1e-3), torch.optim.Adam(d.parameters(), 1e-3)
    mon_g = agent.attach(g, opt_g, port=None, sample_every=1, name="G")
    mon_d = agent.attach(d, opt_d, port=None, sample_every=1, name="D")
    loss_fn = nn.BCEWithLogitsLoss()
    for _ in range(6):
        fake = g(torch.randn(64, 4))
        opt_d.zero_grad()
        loss_fn(d(fake.detach()), torch.zeros(64, 1)).backward()
        opt_d.step()
        opt_g.zero_grad()
        loss_fn(d(fake), torch.ones(64, 1)).backward()
        opt_g.step()
    mon_g.close()
    mon_d.close()
    assert "probabilities_as_logits" in {r.check for r in mon_d.history}
    assert "probabilities_as_logits" not in {r.check for r in mon_g.history}


def test_labels_are_counted_per_sample_not_per_token():
    model = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = agent.attach(model, opt, port=None, sample_every=1)
    tokens = torch.randint(0, 10, (4, 6))
    _step(model, opt, mon, lambda out, t: F.cross_entropy(out.reshape(-1, 10), t.reshape(-1)), tokens, tokens)
    assert mon.snapshot.class_counts is None  # 24 token labels for 4 sequences: a vocabulary, not classes
    clf = _mlp()
    opt = torch.optim.SGD(clf.parameters(), lr=0.1)
    mon2 = agent.attach(clf, opt, port=None, sample_every=1)
    y = torch.tensor([0, 0, 1, 3, -100, 3, 3, 3])
    _step(clf, opt, mon2, lambda out, t: F.cross_entropy(out, t, ignore_index=-100), torch.randn(8, 8), y)
    assert mon2.snapshot.class_counts == (2, 1, 0, 4)  # padding left out
    mon.close()
    mon2.close()


def test_input_scale_and_fingerprint():
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    mon = agent.attach(model, opt, port=None, sample_every=1)
    x = torch.randn(32, 8)
    x[:, 3] = x[:, 3] * 1e4
    _step(model, opt, mon, F.cross_entropy, x, torch.arange(32) % 4)
    first = mon.snapshot
    assert first.input_feature_ratio > 1000 and first.input_rms > 100 and first.input_constant is False
    _step(model, opt, mon, F.cross_entropy, x.clone(), torch.arange(32) % 4)
    assert mon.snapshot.input_fingerprint == first.input_fingerprint  # the same batch, another tensor
    x2 = x.clone()
    x2[31, 7] += 1e-3  # one element differs
    _step(model, opt, mon, F.cross_entropy, x2, torch.arange(32) % 4)
    assert mon.snapshot.input_fingerprint != first.input_fingerprint
    mon.close()


def _summing_losses(model: nn.Module, opt: torch.optim.Optimizer, keep_graph: bool) -> agent.Monitor:
    mon = agent.attach(model, opt, port=None, sample_every=2)
    total = 0.0
    for _ in range(20):
        opt.zero_grad()
        loss = model(torch.randn(3, 4)).pow(2).mean()
        loss.backward()
        opt.step()
        total = total + (loss if keep_graph else loss.item())  # the bug: a running sum with its graph
    mon.close()
    return mon


def test_graphs_kept_across_steps_are_found_whatever_their_size():
    model = nn.Linear(4, 2)  # a few bytes per step: no memory check could see it
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    mon = _summing_losses(model, opt, keep_graph=True)
    [record] = [r for r in mon.history if r.check == "graph_retained"]
    assert "loss.item()" in record.message
    healthy = _summing_losses(model, opt, keep_graph=False)
    assert healthy.snapshot.retained_graphs == 0 and not healthy.history


def test_a_compiled_loss_traces_through_the_wrapper_without_a_graph_break():
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = agent.attach(model, opt, port=None, sample_every=1)
    x, y = torch.randn(16, 8), torch.arange(16) % 4
    out = model(x)  # a sampled forward: the watch is armed
    compiled = torch.compile(lambda o, t: F.cross_entropy(o, t), fullgraph=True, backend="eager")
    assert torch.equal(compiled(out, y), F.cross_entropy(out, y))
    mon.close()


@pytest.mark.parametrize("sigmoid", [False, True], ids=["small_logits", "sigmoid_outputs"])
def test_bce_logits_that_happen_to_lie_in_0_1_are_not_called_probabilities(sigmoid):
    """A GAN's discriminator near equilibrium gives logits around 0..1: the autograd graph says they come from a
    linear layer. Outputs of a sigmoid passed to BCEWithLogitsLoss are flagged."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1))
    with torch.no_grad():
        model[2].weight.mul_(0.01)
        model[2].bias.fill_(0.5)  # every logit near 0.5
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    mon = agent.attach(model, opt, port=None, sample_every=1, overhead_budget=None)
    for _ in range(6):
        out = model(torch.randn(64, 4))
        if sigmoid:
            out = torch.sigmoid(out)
        loss = F.binary_cross_entropy_with_logits(out.squeeze(-1), torch.ones(64))
        opt.zero_grad()
        loss.backward()
        opt.step()
        mon.log(loss=loss)
    found = {f.check for f in mon.findings}
    mon.close()
    assert ("probabilities_as_logits" in found) == sigmoid, found
