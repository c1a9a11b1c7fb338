"""PMR and AGM: prototypes, ρ and the prototype term; AGM's coefficients, its gradient and its clipping rule —
expected numbers computed independently from hand-built features and logits."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from drl_tune.methods.agm import AGM, AGMParams, agm_coefficients, clip_if_head_grad_large, mono_score
from drl_tune.methods.base import Batch
from drl_tune.methods.pmr import PMR, PMRParams, prototype_sample
from drl_tune.models import ModelOutput, MultimodalClassifier

TWO = {"audio": "spectrogram", "visual": "frames"}


# the machine is shared: the unit cases here run on one torch thread (the engine cases set their own)
pytestmark = pytest.mark.usefixtures("one_thread")


def _model(fusion="concat", seed=0) -> MultimodalClassifier:
    torch.manual_seed(seed)
    return MultimodalClassifier(TWO, n_classes=3, width=4, fusion=fusion)


class _FeatureCtx:
    """An epoch context whose training features are given arrays (the first ``count`` rows are sampled)."""

    def __init__(self, epoch, feats, labels):
        self.epoch, self.n_classes, self.seed, self.batch_size = epoch, 3, 0, len(labels)
        self.n_train, self._feats, self._labels = len(labels), feats, labels

    def features(self, split, indices=None):
        assert split == "train" and indices is not None
        return {m: f[indices] for m, f in self._feats.items()}, self._labels[indices]


# -- PMR --------------------------------------------------------------------------------------------------------


def test_pmr_prototype_sample_is_a_tenth_of_the_batches_at_least_one():
    assert len(prototype_sample(1000, 64, 0, 0)) == 64  # 16 batches -> 1
    assert len(prototype_sample(6698, 64, 0, 0)) == 640  # CREMA-D: 105 batches -> 10
    assert len(prototype_sample(50, 64, 0, 0)) == 50  # one partial batch
    a, b = prototype_sample(6698, 64, 0, 3), prototype_sample(6698, 64, 0, 4)
    assert not np.array_equal(a, b) and np.array_equal(a, prototype_sample(6698, 64, 0, 3))


def test_pmr_prototypes_are_class_means_blended_from_the_third_epoch_and_absent_classes_are_guarded():
    labels = np.array([0, 0, 1, 1, 2, 2])
    audio = np.array([[1, 0], [3, 0], [0, 2], [0, 4], [5, 5], [7, 7]], dtype=np.float32)
    visual = np.array([[2, 2], [2, 4], [1, 1], [3, 3], [0, 0], [0, 2]], dtype=np.float32)
    method, model = PMR(PMRParams(momentum=0.25)), _model()
    method.on_epoch_start(model, _FeatureCtx(0, {"audio": audio, "visual": visual}, labels))
    first = {"audio": [[2, 0], [0, 3], [6, 6]], "visual": [[2, 3], [2, 2], [0, 1]]}
    for m in TWO:
        np.testing.assert_allclose(method.prototypes[m].numpy(), first[m])
    # epoch 1: recomputed, not blended (the official call after epoch 0 has epoch <= 0)
    method.on_epoch_start(model, _FeatureCtx(1, {"audio": audio + 1, "visual": visual}, labels))
    np.testing.assert_allclose(method.prototypes["audio"].numpy(), np.array(first["audio"]) + 1)
    # epoch 2: blended 0.75·new + 0.25·old; class 2 absent from the sample -> keeps its prototype
    method.on_epoch_start(model, _FeatureCtx(2, {"audio": audio[:4] + 3, "visual": visual[:4]}, labels[:4]))
    expected = 0.75 * (np.array(first["audio"]) + 3) + 0.25 * (np.array(first["audio"]) + 1)
    expected[2] = np.array(first["audio"][2]) + 1
    np.testing.assert_allclose(method.prototypes["audio"].numpy(), expected, rtol=1e-6)
    assert method.on_epoch_end(model, _FeatureCtx(2, {}, labels))["diag/proto_absent"] == 1.0
    # before any prototype exists an absent class takes the mean of the sampled features: finite, no NaN
    fresh = PMR(PMRParams())
    fresh.on_epoch_start(model, _FeatureCtx(0, {"audio": audio[:4], "visual": visual[:4]}, labels[:4]))
    np.testing.assert_allclose(fresh.prototypes["audio"][2].numpy(), audio[:4].mean(0))


def _distance_logits(h: np.ndarray, p: np.ndarray) -> np.ndarray:
    return -np.array([[np.sqrt(((h[i] - p[c]) ** 2).sum()) for c in range(len(p))] for i in range(len(h))])


PROTOS = torch.tensor([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]])
LABELS = torch.tensor([0, 1, 2, 1])
NEAR = PROTOS[LABELS] + 0.1  # close to their own class's prototype
MIDDLE = torch.tensor([[1.6, 1.5], [1.4, 1.6], [1.5, 1.4], [1.5, 1.5]])  # about as far from all three


@pytest.mark.parametrize(("leader", "feats"), [
    ("audio", {"audio": NEAR, "visual": MIDDLE}),
    ("visual", {"audio": MIDDLE, "visual": NEAR}),
    ("tie", {"audio": NEAR, "visual": NEAR.clone()}),
])
def test_pmr_rho_and_the_weaker_modalitys_prototype_term(leader, feats):
    method = PMR(PMRParams(alpha=2.0))
    method.prototypes = {m: PROTOS.clone() for m in TWO}
    logits = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    got = method.loss(ModelOutput(logits, feats), LABELS)
    d = {m: _distance_logits(feats[m].double().numpy(), PROTOS.double().numpy()) for m in TWO}
    soft = {m: np.exp(d[m]) / np.exp(d[m]).sum(1, keepdims=True) for m in TWO}
    score = {m: soft[m][np.arange(4), LABELS.numpy()].sum() for m in TWO}
    rho = score["audio"] / score["visual"]  # batch sums, no temperature
    assert method._diag.means()["diag/rho"] == pytest.approx(rho, rel=1e-5)  # one step: its mean is its value
    ce = float(F.cross_entropy(logits, LABELS))
    if leader == "tie":
        assert rho == 1.0 and float(got) == pytest.approx(ce, rel=1e-6)
        return
    assert (rho > 1) == (leader == "audio")
    weak = "visual" if leader == "audio" else "audio"
    proto_ce = float(F.cross_entropy(torch.from_numpy(d[weak]), LABELS))
    assert float(got) == pytest.approx(ce + 2.0 * proto_ce, rel=1e-5)


def test_pmr_outside_its_window_trains_plain_cross_entropy():
    method = PMR(PMRParams(modulation_starts=2, modulation_ends=3))
    method.prototypes = {m: torch.zeros(3, 2) for m in TWO}
    method.epoch = 4
    feats = {"audio": torch.rand(4, 2), "visual": torch.rand(4, 2) * 5}
    logits, labels = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    assert float(method.loss(ModelOutput(logits, feats), labels)) == pytest.approx(
        float(F.cross_entropy(logits, labels)))


# -- AGM --------------------------------------------------------------------------------------------------------


def test_agm_coefficients_damp_the_modality_ahead_of_its_reference():
    # audio's loss 1.2 > visual's 0.8: ratio_a = e^-0.4 below its reference e^0 = 1 -> boosted; visual damped
    ca, cv = agm_coefficients((1.2, 0.8), (1.0, 1.0), alpha=1.0)
    assert ca == pytest.approx(math.exp(1 - math.exp(-0.4))) and ca > 1
    assert cv == pytest.approx(math.exp(1 - math.exp(0.4))) and cv < 1
    # the reference moves with the running means: ref_a = e^(0.5 - 1.0)
    ca, _ = agm_coefficients((1.0, 1.0), (1.0, 0.5), alpha=2.0)
    assert ca == pytest.approx(math.exp(2.0 * (math.exp(-0.5) - 1.0)))
    # the exponent is capped at α·10
    assert agm_coefficients((30.0, 0.0), (0.0, 30.0), alpha=0.5)[0] == pytest.approx(math.exp(5.0))


def test_agm_score_floors_probabilities_at_1e8():
    logits = torch.tensor([[0.0, 0.0], [0.0, -50.0]])
    labels = torch.tensor([0, 1])  # p = 0.5 and e^-50 < 1e-8
    assert mono_score(logits, labels) == pytest.approx((math.log(2) - math.log(1e-8)) / 2)


def _inputs(batch=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    inputs = {"audio": torch.randn(batch, 20, 16, generator=g), "visual": torch.randn(batch, 2, 3, 16, 16, generator=g)}
    return inputs, torch.arange(batch) % 3


def test_agm_step_gradient_is_the_coefficient_weighted_sum_of_the_three_passes(monkeypatch):
    import drl_tune.methods.agm as agm_module

    monkeypatch.setattr(agm_module, "clip_if_head_grad_large", lambda model: False)
    model, inputs, labels = _model(), *_inputs()
    ref = copy.deepcopy(model)
    method = AGM(AGMParams(alpha=1.0))
    method.running = (1.1, 0.9)
    method.steps = 5
    method.training_step(model, Batch(inputs, labels))
    # independently: f(a, v) in train mode; f(a, 0), f(0, v) in eval mode on full zero batches
    total = ref(inputs).logits
    ref.eval()
    pad_v = ref({"audio": inputs["audio"], "visual": torch.zeros_like(inputs["visual"])}).logits
    pad_a = ref({"audio": torch.zeros_like(inputs["audio"]), "visual": inputs["visual"]}).logits
    ref.train()
    m_a, m_v = 0.5 * (total - pad_a + pad_v), 0.5 * (total - pad_v + pad_a)
    s = [float(-torch.log_softmax(z.double(), 1)[torch.arange(6), labels].mean()) for z in (m_a, m_v)]
    ca = math.exp(min(math.exp(0.9 - 1.1) - math.exp(s[1] - s[0]), 10))
    cv = math.exp(min(math.exp(1.1 - 0.9) - math.exp(s[0] - s[1]), 10))
    assert method.coeffs == pytest.approx((ca, cv), rel=1e-6)
    assert method.running == pytest.approx((1.1 * 5 / 6 + s[0] / 6, 0.9 * 5 / 6 + s[1] / 6))
    g = ((torch.softmax(total, 1) - F.one_hot(labels, 3)) / 6).detach()  # dCE/dlogits
    surrogate = ((total * 0.5 * (ca + cv) * g).sum() + (pad_v * 0.5 * (ca - cv) * g).sum()
                 + (pad_a * 0.5 * (cv - ca) * g).sum())
    surrogate.backward()
    for (n, p), (_, q) in zip(model.named_parameters(), ref.named_parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=n)


def test_agm_keeps_the_last_coefficients_after_its_window_while_the_means_move_on(monkeypatch):
    model, inputs, labels = _model(), *_inputs()
    method = AGM(AGMParams(alpha=1.0, modulation_starts=0, modulation_ends=0))

    class Ctx:
        def __init__(self, epoch):
            self.epoch = epoch

    method.on_epoch_start(model, Ctx(0))
    method.training_step(model, Batch(inputs, labels))
    method.training_step(model, Batch(inputs, labels))
    in_window = method.coeffs
    assert in_window != (1.0, 1.0)
    method.on_epoch_start(model, Ctx(1))
    before = method.running
    method.training_step(model, Batch(inputs, labels))
    assert method.coeffs == in_window and method.running != before and method.steps == 3
    restored = AGM(AGMParams())
    restored.load_state_dict(method.state_dict())
    assert (restored.coeffs, restored.running, restored.steps) == (method.coeffs, method.running, 3)


def test_agm_clips_to_norm_one_only_when_a_head_weight_gradient_leaves_minus_one_one():
    model = _model()
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    assert not clip_if_head_grad_large(model)
    assert all(torch.equal(p.grad, torch.full_like(p, 0.5)) for p in model.parameters())
    model.fusion.fc_out.weight.grad[1, 2] = -1.5
    assert clip_if_head_grad_large(model)
    total = torch.sqrt(sum((p.grad ** 2).sum() for p in model.parameters()))
    assert float(total) == pytest.approx(1.0, rel=1e-4)
