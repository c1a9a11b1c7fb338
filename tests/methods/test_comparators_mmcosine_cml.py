"""MMCosine and CML: the cosine logits and the calibration penalty on hand-built features and logits, with the
expected numbers written out independently of the method files."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from drl_tune.ground.errors import ConfigError
from drl_tune.methods.base import Batch
from drl_tune.methods.cml import CML, CMLParams, calibration_penalty, removal_masks
from drl_tune.methods.mmcosine import MMCosine, MMCosineParams
from drl_tune.models import ModelOutput, MultimodalClassifier
from drl_tune.training.engine import Engine

TWO = {"audio": "spectrogram", "visual": "frames"}
THREE = {"audio": "spectrogram", "visual": "frames", "flow": "flow"}


# the machine is shared: the unit cases here run on one torch thread (the engine cases set their own)
pytestmark = pytest.mark.usefixtures("one_thread")


def _model(modalities=TWO, fusion="concat", seed=0) -> MultimodalClassifier:
    torch.manual_seed(seed)
    return MultimodalClassifier(modalities, n_classes=3, width=4, fusion=fusion)


def _cosines_by_loop(h: np.ndarray, w: np.ndarray, s: float) -> np.ndarray:
    """s·cos(h_i, w_c) sample by sample, class by class."""
    out = np.zeros((len(h), len(w)))
    for i in range(len(h)):
        for c in range(len(w)):
            out[i, c] = s * h[i] @ w[c] / (np.linalg.norm(h[i]) * np.linalg.norm(w[c]))
    return out


# -- MMCosine ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("modalities", "fusion"), [(TWO, "concat"), (TWO, "sum"), (THREE, "concat")])
def test_mmcosine_logits_are_scaled_cosines_to_the_head_blocks_without_bias(modalities, fusion):
    model = _model(modalities, fusion)
    MMCosine(MMCosineParams(scale=7.5)).setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
    g = torch.Generator().manual_seed(3)
    feats = {m: torch.rand(5, 32, generator=g) for m in modalities}
    expected = np.zeros((5, 3))
    start = 0
    for i, m in enumerate(modalities):
        if fusion == "concat":
            w = model.fusion.fc_out.weight.detach().numpy()[:, start : start + 32]
            start += 32
        else:
            w = model.fusion.fc[i].weight.detach().numpy()
        expected += _cosines_by_loop(feats[m].double().numpy(), w.astype(np.float64), 7.5)
    got = model.fuse(feats)  # the hooked head: training and evaluation alike
    np.testing.assert_allclose(got.detach().numpy(), expected, rtol=1e-5, atol=1e-5)
    # a sample's logits stay in [-s·M, s·M] whatever the feature norm, and the bias does not enter
    scaled = model.fuse({m: 100.0 * f for m, f in feats.items()})
    np.testing.assert_allclose(scaled.detach().numpy(), expected, rtol=1e-5, atol=1e-5)


def test_mmcosine_head_of_a_copied_model_reads_the_copys_weights():
    model = _model()
    MMCosine(MMCosineParams()).setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin.fusion.fc_out.weight.neg_()
    feats = {m: torch.rand(3, 32) for m in TWO}
    torch.testing.assert_close(twin.fuse(feats), -model.fuse(feats))


def test_mmcosine_step_trains_on_the_cosine_cross_entropy_and_leaves_the_bias_alone():
    model = _model()
    method = MMCosine(MMCosineParams())
    method.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
    g = torch.Generator().manual_seed(1)
    inputs = {"audio": torch.randn(6, 20, 16, generator=g), "visual": torch.randn(6, 2, 3, 16, 16, generator=g)}
    labels = torch.arange(6) % 3
    loss = method.training_step(model, Batch(inputs, labels))
    with torch.no_grad():
        feats = model.encode(inputs)
        w = model.fusion.fc_out.weight.double().numpy()
        logits = (_cosines_by_loop(feats["audio"].double().numpy(), w[:, :32], 10.0)
                  + _cosines_by_loop(feats["visual"].double().numpy(), w[:, 32:], 10.0))
    expected = F.cross_entropy(torch.from_numpy(logits), labels)
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    assert model.fusion.fc_out.bias.grad is None and model.fusion.fc_out.weight.grad is not None


@pytest.mark.parametrize("fusion", ["film", "gated"])
def test_mmcosine_refuses_heads_without_per_modality_blocks(fusion, tiny_config, tiny_data):
    with pytest.raises(ConfigError, match="fusion=concat"):
        Engine(tiny_config(method="mmcosine", fusion=fusion, epochs=1), tiny_data)


def test_mmcosine_evaluates_with_the_cosine_logits(tiny_config, tiny_data):
    engine = Engine(tiny_config(method="mmcosine", epochs=1), tiny_data)
    logits, feats = engine._forward("val", np.arange(8))
    w = engine.model.fusion.fc_out.weight.detach().double().numpy()
    expected = (_cosines_by_loop(feats["audio"].astype(np.float64), w[:, :4 * 8], 10.0)
                + _cosines_by_loop(feats["visual"].astype(np.float64), w[:, 4 * 8:], 10.0))
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)


# -- CML --------------------------------------------------------------------------------------------------------


def _logits(probabilities: list[list[float]]) -> torch.Tensor:
    return torch.log(torch.tensor(probabilities, dtype=torch.float32)).requires_grad_(True)


def test_cml_penalty_on_each_case_of_the_official_masks():
    labels = torch.tensor([0, 0, 0, 0])
    # full input: right (0.6), right (0.7), wrong (0.5 on class 1), wrong (0.6 on class 1)
    full = _logits([[0.6, 0.3, 0.1], [0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.1, 0.6, 0.3]])
    # partial input: more confident (0.8), less (0.5), more confident and wrong (0.7 on 2), right (0.9)
    part = _logits([[0.8, 0.1, 0.1], [0.5, 0.3, 0.2], [0.1, 0.2, 0.7], [0.9, 0.05, 0.05]])
    # row 0: fuller right, partial more confident -> 0.8 - 0.6; row 1: less confident -> 0;
    # row 2: both wrong -> 0.7 - 0.5 (fuller detached); row 3: fuller wrong, partial right -> 0
    penalty = calibration_penalty([full, part], labels)
    assert float(penalty.detach()) == pytest.approx(0.2 + 0.2, abs=1e-6)
    penalty.backward()
    assert full.grad[0].abs().sum() > 0 and part.grad[0].abs().sum() > 0  # both confidences pushed
    assert torch.equal(full.grad[2], torch.zeros(3)) and part.grad[2].abs().sum() > 0  # only the partial one
    assert torch.equal(full.grad[1], torch.zeros(3)) and torch.equal(part.grad[3], torch.zeros(3))
    # the margin ε lowers each hinge; rows with mask 0 stay 0 (relu(−ε))
    assert float(calibration_penalty([full, part], labels, 0.15).detach()) == pytest.approx(0.05 + 0.05, abs=1e-6)


def test_cml_removal_chain_is_nested_with_a_random_order_per_sample():
    torch.manual_seed(0)
    masks = removal_masks(200, 3, torch.device("cpu"))
    assert len(masks) == 3 and torch.equal(masks[0], torch.ones(200, 3))
    assert (masks[1].sum(1) == 2).all() and (masks[2].sum(1) == 1).all()
    assert (masks[2] <= masks[1]).all() and (masks[1] <= masks[0]).all()
    first_removed = (1 - masks[1]).argmax(1)
    assert set(first_removed.tolist()) == {0, 1, 2}  # every modality is removed first in some rows


@pytest.mark.parametrize("ce", ["chain", "full"])
def test_cml_loss_is_the_cross_entropy_plus_beta_over_100_times_the_penalty(ce):
    model = _model()
    method = CML(CMLParams(beta=10.0, ce=ce))
    method.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
    keep = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])  # rows 0, 2 lose visual; 1, 3 audio
    g = torch.Generator().manual_seed(2)
    feats = {"audio": torch.rand(4, 32, generator=g), "visual": torch.rand(4, 32, generator=g)}
    labels = torch.tensor([0, 1, 2, 0])
    full = model.fuse(feats)
    w, b = model.fusion.fc_out.weight, model.fusion.fc_out.bias
    only_audio = feats["audio"] @ w[:, :32].T + b
    only_visual = feats["visual"] @ w[:, 32:].T + b
    partial = torch.stack([only_audio[0], only_visual[1], only_audio[2], only_visual[3]])
    probs_full, probs_part = torch.softmax(full.detach(), 1), torch.softmax(partial.detach(), 1)
    conf_f, pred_f = probs_full.max(1)
    conf_p, pred_p = probs_part.max(1)
    penalty = sum(float(max(conf_p[i] - conf_f[i], 0)) for i in range(4)
                  if pred_f[i] == labels[i] or (pred_p[i] != labels[i] and pred_f[i] != labels[i]))
    ce_value = ((F.cross_entropy(full, labels) + F.cross_entropy(partial, labels)) / 2 if ce == "chain"
                else F.cross_entropy(full, labels))
    got, got_penalty = method.chain_loss(ModelOutput(full, feats), labels, [torch.ones(4, 2), keep])
    assert float(got.detach()) == pytest.approx(float(ce_value.detach()) + 0.1 * penalty, rel=1e-5)
    assert float(got_penalty.detach()) == pytest.approx(penalty, rel=1e-5, abs=1e-7)


def _hinge_by_loop(chain: list[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """The official masked hinge (ε = 0), sample by sample: for each adjacent pair, relu(conf_partial − conf_fuller)
    where the fuller input is right, relu(conf_partial − detached conf_fuller) where both are wrong, else 0."""
    total = torch.zeros(())
    for fuller, partial in zip(chain, chain[1:], strict=False):
        p_f, p_p = torch.softmax(fuller, 1), torch.softmax(partial, 1)
        for i in range(len(labels)):
            right_f = int(p_f[i].argmax()) == int(labels[i])
            right_p = int(p_p[i].argmax()) == int(labels[i])
            if right_f:
                total = total + torch.clamp(p_p[i].max() - p_f[i].max(), min=0)
            elif not right_p:
                total = total + torch.clamp(p_p[i].max() - p_f[i].max().detach(), min=0)
    return total


@pytest.mark.parametrize("inner_steps", [1, 2, 5])
def test_cml_takes_inner_steps_sgd_steps_per_batch_on_one_draw_of_the_chain(inner_steps, monkeypatch):
    """The official stage 2 (miwae/train.py lines 274–308): masks drawn once per batch, then per inner step a full
    forward on the same inputs and masks, the loss, backward, step — here by hand with plain SGD on a twin model
    (inner_steps 1 is the single step per batch the method took before inner_steps existed)."""
    import drl_tune.methods.cml as cml_module

    keep = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    draws = []
    monkeypatch.setattr(cml_module, "removal_masks",
                        lambda n, m, device: draws.append((n, m)) or [torch.ones(n, m), keep])
    g = torch.Generator().manual_seed(1)
    x = {"audio": torch.randn(6, 20, 16, generator=g), "visual": torch.randn(6, 2, 3, 16, 16, generator=g)}
    y = torch.arange(6) % 3
    lr, beta = 0.5, 100.0  # β/100 = 1: the penalty weighs as much as the cross-entropy
    model = _model()
    model.train()
    twin = copy.deepcopy(model)

    losses, penalties = [], []
    params = [p for p in twin.parameters() if p.requires_grad]
    for _ in range(inner_steps):
        feats = twin.encode(x)
        full = twin.fuse(feats)
        partial = twin.fuse({"audio": feats["audio"] * keep[:, :1], "visual": feats["visual"] * keep[:, 1:]})
        penalty = _hinge_by_loop([full, partial], y)
        loss = (F.cross_entropy(full, y) + F.cross_entropy(partial, y)) / 2 + beta / 100 * penalty
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        with torch.no_grad():
            for p, grad in zip(params, grads, strict=True):
                if grad is not None:
                    p -= lr * grad
        losses.append(float(loss.detach()))
        penalties.append(float(penalty.detach()))
    assert penalties[0] > 0  # the hinge is active on this batch

    method = CML(CMLParams(beta=beta, inner_steps=inner_steps))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    method.setup(model, optimizer)
    assert CML.steps_optimizer  # the engine does not step after training_step
    got = method.training_step(model, Batch(x, y))
    assert draws == [(6, 2)]  # one draw of the chain for the whole batch
    assert float(got) == pytest.approx(np.mean(losses), rel=1e-5)  # train/loss: the mean over the inner steps
    for (name, p), q in zip(model.named_parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6, msg=name)
    for (name, b), c in zip(model.named_buffers(), twin.buffers(), strict=True):  # BN statistics: one pass per step
        torch.testing.assert_close(b, c, rtol=1e-4, atol=1e-6, msg=name)


def test_cml_steps_the_runs_optimizer_inner_steps_times_per_engine_batch(tiny_config, tiny_data):
    engine = Engine(tiny_config(method="cml", epochs=1, cml__inner_steps=3), tiny_data)
    steps = []
    original = engine.optimizer.step
    engine.optimizer.step = lambda *a, **k: (steps.append(1), original(*a, **k))[1]
    batches = []
    training_step = engine.method.training_step
    engine.method.training_step = lambda model, batch: (batches.append(1), training_step(model, batch))[1]
    engine.run_epoch()
    assert batches and len(steps) == 3 * len(batches)


def test_cml_runs_on_one_modality_with_no_penalty(tiny_config, tiny_data):
    engine = Engine(tiny_config(method="cml", data__modalities="visual", epochs=1), tiny_data)
    assert engine.run_epoch()["diag/cml_penalty"] == 0.0
