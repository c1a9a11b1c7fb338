"""LFM: the official alignment term and loss, the fitted schedule, lr_α's halving, the second-order step (checked
against a plain-torch replay of the official ``getAlpha_Learnable``), the held-out samples, training through the
engine, exact resume and the refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from drl_tune.ground.errors import ConfigError
from drl_tune.methods import REGISTRY
from drl_tune.methods.lfm import LFM, LFMParams, alignment, alpha_lr_at, fitted_cls_weight, hypergradient
from drl_tune.models import ModelOutput, MultimodalClassifier
from drl_tune.training.config import make_config
from drl_tune.training.engine import Engine
from tests.conftest import straight_and_resumed, without_time

TWO = {"audio": "spectrogram", "visual": "frames"}

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(fusion: str = "sum", seed: int = 0) -> MultimodalClassifier:
    torch.manual_seed(seed)
    return MultimodalClassifier(TWO, n_classes=3, width=4, fusion=fusion)


def _inputs(batch: int = 6, seed: int = 1) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = {"audio": torch.randn(batch, 20, 16, generator=g), "visual": torch.randn(batch, 2, 3, 16, 16, generator=g)}
    return x, torch.arange(batch) % 3


def _kl(target: np.ndarray, other: np.ndarray) -> float:
    return float((target * np.log(target / other)).sum(axis=1).mean())


def test_alignment_is_half_the_kl_of_the_mean_to_each_prediction_as_the_official_kl_div_computes():
    a = np.array([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    b = np.array([[0.0, 1.0, 0.0], [-1.0, 2.0, 1.0]])
    p = np.exp(a) / np.exp(a).sum(1, keepdims=True)
    q = np.exp(b) / np.exp(b).sum(1, keepdims=True)
    m = 0.5 * (p + q)
    got = float(alignment(torch.tensor(a), torch.tensor(b)))
    assert got == pytest.approx(0.5 * (_kl(m, p) + _kl(m, q)), rel=1e-10)
    assert got != pytest.approx(0.5 * (_kl(p, m) + _kl(q, m)), rel=1e-3)  # not the Jensen-Shannon divergence
    assert float(alignment(torch.tensor(a), torch.tensor(a))) == pytest.approx(0.0, abs=1e-12)
    assert math.isfinite(float(alignment(torch.tensor([[200.0, -200.0]]), torch.tensor([[-200.0, 200.0]]))))


@pytest.mark.parametrize("fusion", ["sum", "concat"])
def test_loss_is_twice_the_weighted_ce_of_the_mean_logits_plus_alignment(fusion):
    model, (x, y) = _model(fusion), _inputs()
    method = LFM(LFMParams(init_align=0.7))
    method.model = model
    feats = model.encode(x)
    got = float(method.loss(ModelOutput(model.fuse(feats), feats), y).detach())
    head = model.fusion
    if fusion == "sum":
        o_a, o_v = (fc(feats[m]) for fc, m in zip(head.layers(), TWO, strict=True))
    else:
        w, b, d = head.fc_out.weight, head.fc_out.bias, feats["audio"].shape[1]
        o_a, o_v = feats["audio"] @ w[:, :d].t() + b / 2, feats["visual"] @ w[:, d:].t() + b / 2
    p, q = torch.softmax(o_a, 1), torch.softmax(o_v, 1)
    m = 0.5 * (p + q)
    align = 0.5 * ((m * (m.log() - p.log())).sum(1).mean() + (m * (m.log() - q.log())).sum(1).mean())
    ce = F.cross_entropy(0.5 * o_v + 0.5 * o_a, y)
    assert got == pytest.approx(float(2 * (0.3 * ce + 0.7 * align).detach()), rel=1e-5)
    assert method._diag.means()["diag/loss_cls"] == pytest.approx(float(ce.detach()), rel=1e-5)


def test_fitted_schedule_and_the_halving_of_lr_alpha():
    assert fitted_cls_weight(0) == pytest.approx(0.204623704)
    e = 20.0
    c = [2.04623704e-01, 3.35472727e-03, 1.22989557e-04, -2.92947416e-06, 2.23835486e-08, -5.39717505e-11]
    assert fitted_cls_weight(20) == pytest.approx(c[0] + c[1] * e + c[2] * e**2 + c[3] * e**3 + c[4] * e**4
                                                 + c[5] * e**5)
    assert fitted_cls_weight(20) == pytest.approx(0.3009, abs=1e-4) and fitted_cls_weight(180) > 1  # as official
    # the official loop: lr carried over epochs, halved before the update when epoch % 20 == 0 and epoch != 0
    params, lr = LFMParams(), 1e-4
    for epoch in range(100):
        if epoch % 20 == 0 and epoch != 0:
            lr = lr / 2
        assert alpha_lr_at(params, epoch) == pytest.approx(lr, rel=1e-12)


def _official_hypergrad(model, x, y, alpha, first_only=True):
    """Crema_epoch_learnable.py lines 68-87, with the model's fused head split into o_a, o_v."""
    feats = model.encode(x)
    o_a, o_v = (fc(feats[m]) for fc, m in zip(model.fusion.layers(), TWO, strict=True))
    p, q = F.softmax(o_a, dim=-1), F.softmax(o_v, dim=-1)
    m = 0.5 * p + 0.5 * q
    loss_alignment = 0.5 * (F.kl_div(p.log(), m, reduction="batchmean") + F.kl_div(q.log(), m, reduction="batchmean"))
    loss_cls = F.cross_entropy(0.5 * o_v + 0.5 * o_a, y, reduction="none").mean()
    total = alpha[0] * loss_cls + alpha[1] * loss_alignment
    theta_grads = torch.autograd.grad(total, model.parameters(), create_graph=True)
    cls_grads = torch.autograd.grad(loss_cls, model.parameters(), retain_graph=True, create_graph=True)
    hvp = torch.autograd.grad(theta_grads, list(model.parameters()), grad_outputs=cls_grads, retain_graph=True)
    if first_only:
        return hvp[0].mean().item()
    return float(sum(h.double().sum() for h in hvp)) / sum(h.numel() for h in hvp)


@pytest.mark.parametrize(("scope", "train_mode"), [("first", False), ("first", True), ("all", False)])
def test_hypergradient_matches_the_official_hessian_vector_product(scope, train_mode):
    model, (x, y) = _model(), _inputs(batch=8)
    model.train(train_mode)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    got = hypergradient(model, x, y, 0.05, 0.95, scope)
    model.load_state_dict(state)  # train mode moved the BN running statistics; replay from the same state
    expected = _official_hypergrad(model, x, y, [0.05, 0.95], first_only=scope == "first")
    assert got == pytest.approx(expected, rel=1e-4, abs=1e-9) and got != 0.0
    assert all(p.grad is None for p in model.parameters())


class _Ctx:
    """An epoch context whose training samples are given tensors."""

    def __init__(self, epoch, x, y):
        self.epoch, self.seed, self.n_train, self.x, self.y, self.asked = epoch, 0, len(y), x, y, []

    def train_batches(self, indices, training=True, modalities=None):
        assert not training and modalities is None
        self.asked.append(np.asarray(indices))
        for start in range(0, len(indices), 3):  # several small batches, as eval.batch_size may give
            chosen = torch.as_tensor(indices[start:start + 3])
            yield {m: t[chosen] for m, t in self.x.items()}, self.y[chosen]


def test_each_epoch_steps_the_weight_on_the_first_half_of_the_held_out_samples():
    x, y = _inputs(batch=40)
    model, method = _model(), LFM(LFMParams(held_out=10, alpha_lr=1e-2))
    ctx = _Ctx(0, x, y)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    method.on_epoch_start(model, ctx)
    held = method._held
    assert held is not None and len(set(held.tolist())) == 10 and np.array_equal(ctx.asked[0], held[:5])
    assert model.training  # epoch 0: train mode, as the fresh official module
    rows, keep = method.training_rows(40)
    assert keep is None and sorted([*rows.tolist(), *held.tolist()]) == list(range(40))
    # independently: the official step from (0.05, 0.95) on those 5 samples in train mode
    replay = _model()
    replay.load_state_dict(state)
    replay.train()
    chosen = torch.as_tensor(held[:5])
    g = _official_hypergrad(replay, {m: t[chosen] for m, t in x.items()}, y[chosen], [0.05, 0.95])
    assert method.w_align == pytest.approx(min(max(0.95 - 1e-2 * g, 0.05), 0.95), rel=1e-6)
    assert method.w_cls == pytest.approx(1 - method.w_align)
    # epoch 1: eval mode (official val() left it so), the same held-out samples
    method.on_epoch_start(model, _Ctx(1, x, y))
    assert not model.training and np.array_equal(method._held, held)
    metrics = method.on_epoch_end(model, _Ctx(1, x, y))
    assert metrics["diag/w_align"] == method.w_align and metrics["diag/alpha_lr"] == 1e-2


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_the_weight_is_clipped_to_its_band(sign, monkeypatch):
    import drl_tune.methods.lfm as lfm_module

    monkeypatch.setattr(lfm_module, "hypergradient", lambda *args: sign * 1e6)
    x, y = _inputs(batch=32)
    method = LFM(LFMParams(init_align=0.5, clip=0.1))
    method.on_epoch_start(_model(), _Ctx(0, x, y))
    assert method.w_align == pytest.approx(0.1 if sign > 0 else 0.9)


def test_fitted_schedule_holds_nothing_out_and_takes_no_step():
    x, y = _inputs(batch=20)
    method, ctx = LFM(LFMParams(schedule="fitted")), _Ctx(3, x, y)
    method.on_epoch_start(_model(), ctx)
    assert ctx.asked == [] and method.w_cls == pytest.approx(fitted_cls_weight(3))
    assert np.array_equal(method.training_rows(20)[0], np.arange(20))
    assert "diag/hypergrad" not in method.on_epoch_end(_model(), ctx)


def test_too_many_held_out_samples_are_refused():
    x, y = _inputs(batch=20)
    with pytest.raises(ConfigError, match="lfm.held_out"):
        LFM(LFMParams(held_out=12)).on_epoch_start(_model(), _Ctx(0, x, y))


@pytest.mark.parametrize("schedule", ["learnable", "fitted"])
def test_lfm_trains_through_the_engine_with_the_common_metrics(schedule, tiny_config, tiny_data):
    from tests.training.test_engine import DESIGN_KEYS

    engine = Engine(tiny_config(method="lfm", fusion="sum", epochs=2, lfm__schedule=schedule), tiny_data)
    before = {n: p.detach().clone() for n, p in engine.model.named_parameters()}
    history = [engine.run_epoch() for _ in range(2)]
    for m in history:
        assert m.keys() >= DESIGN_KEYS and math.isfinite(m["train/loss"]) and math.isfinite(m["diag/loss_align"])
    assert ("diag/hypergrad" in history[-1]) == (schedule == "learnable") and REGISTRY["lfm"].name == "lfm"
    assert any(not torch.equal(before[n], p) for n, p in engine.model.named_parameters())


def test_lfm_resumes_exactly(tiny_config, tiny_data, tmp_path):
    """The learned weight (and lr_α's halving after the stop): a run restored after epoch 2 ends as the straight
    one."""
    config = {"method": "lfm", "epochs": 4, "data__augment": True, "lfm__alpha_lr": 0.05, "lfm__alpha_lr_every": 3}
    expected, resumed = straight_and_resumed(lambda: Engine(tiny_config(**config), tiny_data), 4, 2,
                                             tmp_path / "state.pt")
    assert len({m["diag/w_align"] for m in expected}) > 1  # the weight moved
    got = [without_time(resumed.run_epoch()) for _ in range(2)]
    assert got == expected[2:]


@pytest.mark.parametrize(("key", "value"), [
    ("lfm.schedule", "heuristic"), ("lfm.init_align", 1.5), ("lfm.alpha_lr", -1), ("lfm.alpha_lr_decay", 0),
    ("lfm.alpha_lr_every", 0), ("lfm.clip", 0.5), ("lfm.held_out", 1), ("lfm.hvp_scope", "last"),
])
def test_bad_parameters_are_refused_with_their_key(key, value):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        make_config({key: value})


def test_lfm_refuses_one_modality_and_fusions_without_unimodal_logits(tiny_config, tiny_data):
    assert REGISTRY["lfm"].modalities == 2
    with pytest.raises(ConfigError, match="exactly two modalities"):
        Engine(tiny_config(method="lfm", data__modalities="visual", epochs=1), tiny_data)
    with pytest.raises(ConfigError, match="fusion=concat"):
        Engine(tiny_config(method="lfm", fusion="film", epochs=1), tiny_data)
