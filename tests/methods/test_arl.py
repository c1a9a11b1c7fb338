"""ARL: the coefficients by hand, the uni-modal logits off the shared head, the loss and the encoders' scaled
gradients after the warm-up, the clipping, the torch-2.0 question (zero_grad's default and the released GradScale),
training through the engine, exact resume and refusals."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from drl_tune.ground.errors import ConfigError
from drl_tune.methods import REGISTRY
from drl_tune.methods.arl import ARL, ARLParams, arl_coefficients, head_logits
from drl_tune.methods.base import Batch, modality_mismatch
from drl_tune.models import MultimodalClassifier
from drl_tune.training.config import make_config
from drl_tune.training.engine import Engine
from tests.conftest import straight_and_resumed, without_time

TWO = {"audio": "spectrogram", "visual": "frames"}
D = 32  # each encoder's feature width at model width 4

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(fusion="concat", seed=0) -> MultimodalClassifier:
    torch.manual_seed(seed)
    return MultimodalClassifier(TWO, n_classes=3, width=4, fusion=fusion)


def _hand_coefficients(z_a: list[list[float]], z_v: list[list[float]], t: float) -> tuple[float, float]:
    """main_arl_variance.py lines 116-153 in plain Python: logit magnitudes, entropies, floor, softmax."""
    def magnitude(z):
        return sum(sum(abs(row[k]) for row in z) / len(z) for k in range(len(z[0])))

    def entropy(z):
        total = 0.0
        for row in z:
            e = [math.exp(x) for x in row]
            p = [x / sum(e) for x in e]
            total += sum(-q * math.log(q + 1e-16) for q in p)
        return total / len(z)

    s_a, s_v = magnitude(z_a), magnitude(z_v)
    s_a, s_v = s_a / (s_a + s_v), s_v / (s_a + s_v)
    h_a, h_v = entropy(z_a), entropy(z_v)
    h_a, h_v = max(h_a / (h_a + h_v), 0.3), max(h_v / (h_a + h_v), 0.3)
    u_a, u_v = 1 / h_a, 1 / h_v
    u_a, u_v = u_a / (u_a + u_v), u_v / (u_a + u_v)
    x_a, x_v = t * s_v * u_a, t * s_a * u_v
    return math.exp(x_a) / (math.exp(x_a) + math.exp(x_v)), math.exp(x_v) / (math.exp(x_a) + math.exp(x_v))


@pytest.mark.parametrize(("z_a", "z_v", "t"), [
    ([[2.0, -1.0, 0.5], [0.0, 1.0, -0.5]], [[0.2, 0.1, -0.3], [-0.1, 0.4, 0.0]], 8.0),  # audio confident, big
    ([[0.1, 0.0, 0.0], [0.0, 0.1, 0.0]], [[6.0, -3.0, 0.0], [-2.0, 5.0, 1.0]], 4.0),  # floor 0.3 binds on visual
])
def test_coefficients_match_the_official_formula_by_hand(z_a, z_v, t):
    got = arl_coefficients(torch.tensor(z_a), torch.tensor(z_v), t)
    want = _hand_coefficients(z_a, z_v, t)
    assert got.tolist() == pytest.approx(want, rel=1e-5)
    assert float(got.sum()) == pytest.approx(1.0)


def test_coefficients_stay_finite_when_both_entropies_vanish():
    sure = torch.tensor([[200.0, -200.0, -200.0], [-200.0, 200.0, -200.0]])  # softmax exactly one-hot: H = 0
    got = arl_coefficients(sure, sure * 0.5, 8.0)
    assert torch.isfinite(got).all()
    # entropies 0/0 -> 0.5 each (officially NaN); magnitudes 2/3, 1/3 -> softmax(8 * [1/3 * 0.5, 2/3 * 0.5])
    x = torch.tensor([8.0 / 6.0, 8.0 / 3.0])
    assert got.tolist() == pytest.approx(torch.softmax(x, 0).tolist(), rel=1e-5)


def test_unimodal_logits_take_the_whole_bias_of_the_concat_head_and_each_sum_layer():
    model = _model()
    assert model.feature_width("audio") == model.feature_width("visual") == D
    fa, fv = torch.randn(5, D), torch.randn(5, D)
    got = head_logits(model, {"audio": fa, "visual": fv})
    fc = model.fusion.fc_out
    torch.testing.assert_close(got["audio"], fc(torch.cat([fa, torch.zeros_like(fv)], 1)))  # ConcatFusion_AUXI
    torch.testing.assert_close(got["visual"], fc(torch.cat([torch.zeros_like(fa), fv], 1)))
    model = _model("sum")
    got = head_logits(model, {"audio": fa, "visual": fv})
    torch.testing.assert_close(got["audio"], model.fusion.fc[0](fa))  # SumFusion_AUXI: fc_x(x)
    torch.testing.assert_close(got["visual"], model.fusion.fc[1](fv))


def _step(method: ARL, model: MultimodalClassifier, fa: torch.Tensor, fv: torch.Tensor, labels: torch.Tensor,
          monkeypatch) -> torch.Tensor:
    """One training step on given (leaf) features: the encoders' gradient is what reaches the features."""
    monkeypatch.setattr(model, "encode", lambda inputs: {"audio": fa, "visual": fv})
    loss = method.training_step(model, Batch({}, labels))
    assert loss is not None
    return loss


def _expected(model, fa, fv, labels, weight, scale):
    """Plain torch: loss CE(fused) + w·(CE(W_a f_a + b) + CE(W_v f_v + b)); the features' gradient × (1 + c_m);
    the head's unscaled."""
    a, v = fa.detach().clone().requires_grad_(), fv.detach().clone().requires_grad_()
    w, b = model.fusion.fc_out.weight.detach().clone().requires_grad_(), model.fusion.fc_out.bias.detach().clone()
    b.requires_grad_()
    fused = torch.cat([a, v], 1) @ w.t() + b
    z_a, z_v = a @ w[:, :D].t() + b, v @ w[:, D:].t() + b
    loss = F.cross_entropy(fused, labels) + weight * (F.cross_entropy(z_a, labels) + F.cross_entropy(z_v, labels))
    loss.backward()
    return loss.detach(), a.grad * scale[0], v.grad * scale[1], w.grad, (z_a.detach(), z_v.detach())


@pytest.mark.parametrize("coefficients", ["computed", "released"])
def test_after_the_warm_up_gamma_weighs_the_unimodal_terms_and_each_encoder_gradient_is_scaled(coefficients,
                                                                                              monkeypatch):
    torch.manual_seed(1)
    model = _model()
    fa, fv = torch.randn(6, D, requires_grad=True), (0.3 * torch.randn(6, D)).requires_grad_()
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    method = ARL(ARLParams(gamma=4.0, temperature=8.0, start=2, coefficients=coefficients))
    method.epoch = 3  # > start
    loss = _step(method, model, fa, fv, labels, monkeypatch)
    z_a = (fa @ model.fusion.fc_out.weight[:, :D].t() + model.fusion.fc_out.bias).detach()
    z_v = (fv @ model.fusion.fc_out.weight[:, D:].t() + model.fusion.fc_out.bias).detach()
    c = _hand_coefficients(z_a.tolist(), z_v.tolist(), 8.0) if coefficients == "computed" else (0.5, 0.5)
    want_loss, want_ga, want_gv, want_gw, _ = _expected(model, fa, fv, labels, 4.0, (1 + c[0], 1 + c[1]))
    assert float(loss) == pytest.approx(float(want_loss), rel=1e-6)
    torch.testing.assert_close(fa.grad, want_ga, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(fv.grad, want_gv, rtol=1e-5, atol=1e-7)
    assert float(torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in model.parameters()
                                                     if p.grad is not None]))) < 40  # no clipping here
    torch.testing.assert_close(model.fusion.fc_out.weight.grad, want_gw)  # the head is not scaled
    if coefficients == "computed":
        assert c[0] != pytest.approx(c[1], abs=1e-3)  # asymmetric


def test_during_the_warm_up_the_unimodal_terms_weigh_one_and_nothing_is_scaled(monkeypatch):
    torch.manual_seed(2)
    model = _model()
    fa, fv = torch.randn(4, D, requires_grad=True), torch.randn(4, D, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 0])
    method = ARL(ARLParams(gamma=4.0, start=2))
    method.epoch = 2  # == start: still warming up (official `epoch > args.start`)
    loss = _step(method, model, fa, fv, labels, monkeypatch)
    want_loss, want_ga, want_gv, _, _ = _expected(model, fa, fv, labels, 1.0, (1.0, 1.0))
    assert float(loss) == pytest.approx(float(want_loss), rel=1e-6)
    torch.testing.assert_close(fa.grad, want_ga)
    torch.testing.assert_close(fv.grad, want_gv)


def test_every_step_clips_all_gradients_to_total_norm_40(monkeypatch):
    torch.manual_seed(3)
    model = _model()
    with torch.no_grad():
        model.fusion.fc_out.weight.mul_(500.0)
    fa, fv = (50 * torch.randn(8, D)).requires_grad_(), (50 * torch.randn(8, D)).requires_grad_()
    method = ARL(ARLParams(start=0))
    method.epoch = 0  # warm-up too
    _step(method, model, fa, fv, torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]), monkeypatch)
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None]))
    assert float(norm) == pytest.approx(40.0, rel=1e-4)


# -- the README's torch >= 2.0 warning ---------------------------------------------------------------------------


def _two_sgd_steps(set_to_none: bool, extra: torch.nn.Parameter | None = None) -> list[torch.Tensor]:
    """Two ARL steps (after the warm-up) of SGD with momentum and weight decay, the gradients between them zeroed
    (torch 1.x's zero_grad()) or dropped (torch >= 2.0's)."""
    torch.manual_seed(4)
    model = _model()
    params = list(model.parameters()) + ([extra] if extra is not None else [])
    optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4)
    method = ARL(ARLParams(start=0))
    method.epoch = 1
    batch = Batch({"audio": torch.randn(4, 16, 16), "visual": torch.randn(4, 1, 3, 16, 16)},
                  torch.tensor([0, 1, 2, 0]))
    for step in range(2):
        optimizer.zero_grad(set_to_none=set_to_none)
        method.training_step(model, batch)
        assert all(p.grad is not None for p in model.parameters())  # the ARL loss reaches every parameter
        if extra is not None and step == 0:
            extra.grad = torch.ones_like(extra)  # the contrast: a parameter reached at the first step only
        optimizer.step()
    return [p.detach().clone() for p in params]


def test_zeroed_and_dropped_gradients_give_the_same_arl_steps_because_every_parameter_gets_a_gradient():
    """torch 2.0 made zero_grad() drop gradients; SGD then skips a parameter without one, where zeroed gradients
    still move it by momentum and weight decay. ARL reaches every parameter at every step, so the two agree; a
    parameter reached at one step and not the next (the contrast, MLA's case) tells them apart."""
    for zeroed, dropped in zip(_two_sgd_steps(False), _two_sgd_steps(True), strict=True):
        torch.testing.assert_close(zeroed, dropped, rtol=0, atol=0)
    contrast = [_two_sgd_steps(flag, torch.nn.Parameter(torch.ones(3)))[-1] for flag in (False, True)]
    assert not torch.equal(contrast[0], contrast[1])


class _ReleasedGradScale(torch.autograd.Function):
    """models/backbone.py lines 71-86 as released: ``weight = ctx.saved_tensors`` keeps the tuple."""

    @staticmethod
    def forward(ctx, x, weight):
        ctx.save_for_backward(weight)
        return x

    @staticmethod
    def backward(ctx, grad):
        weight = ctx.saved_tensors
        return grad + grad * weight, torch.tensor(1.0)


def test_the_released_gradscale_backward_fails_on_its_saved_tuple():
    x = torch.randn(3, 4, requires_grad=True)
    with pytest.raises(TypeError):
        _ReleasedGradScale.apply(x, torch.tensor(0.5)).sum().backward()


# -- through the engine ------------------------------------------------------------------------------------------


def test_arl_trains_through_the_engine_with_the_common_metrics(tiny_config, tiny_data):
    from tests.training.test_engine import DESIGN_KEYS

    engine = Engine(tiny_config(method="arl", epochs=2, arl__start=0), tiny_data)
    before = {n: p.detach().clone() for n, p in engine.model.named_parameters()}
    history = [engine.run_epoch() for _ in range(2)]
    for m in history:
        assert m.keys() >= DESIGN_KEYS and math.isfinite(m["train/loss"])
    assert history[0]["diag/coeff_audio"] == 0.0  # warm-up
    coeff = history[1]["diag/coeff_audio"] + history[1]["diag/coeff_visual"]
    assert coeff == pytest.approx(1.0) and "diag/loss_visual" in history[1]
    assert REGISTRY["arl"] is ARL
    assert any(not torch.equal(before[n], p) for n, p in engine.model.named_parameters())


def test_arl_resumes_exactly_after_the_warm_up(tiny_config, tiny_data, tmp_path):
    """Stopped after the warm-up epoch 0, the resumed run takes up γ and the scaling at epoch 1 as the straight one."""
    config = {"method": "arl", "epochs": 3, "arl__start": 0, "data__augment": True}
    expected, resumed = straight_and_resumed(lambda: Engine(tiny_config(**config), tiny_data), 3, 1,
                                             tmp_path / "state.pt")
    got = [without_time(resumed.run_epoch()) for _ in range(2)]
    assert got == expected[1:] and got[0]["diag/coeff_audio"] > 0


@pytest.mark.parametrize(("key", "value"), [
    ("arl.gamma", -1.0), ("arl.temperature", 0.0), ("arl.start", -1), ("arl.coefficients", "paper"),
    ("arl.alpha", 1.0),
])
def test_bad_parameters_are_refused_with_their_key(key, value):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        make_config({"method": "arl", key: value})


def test_arl_refuses_other_modality_counts_and_fusions_without_unimodal_logits(tiny_config, tiny_data):
    assert "exactly two modalities" in (modality_mismatch(ARL, "arl", ["sound", "scene", "still"]) or "")
    with pytest.raises(ConfigError, match="this run has 1"):
        Engine(tiny_config(method="arl", data__modalities="visual", epochs=1), tiny_data)
    with pytest.raises(ConfigError, match="method arl reads uni-modal logits"):
        Engine(tiny_config(method="arl", fusion="film", epochs=1), tiny_data)
