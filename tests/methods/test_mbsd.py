"""MBSD: the confidence-gap weight, the kl_div term as BalanceBenchmark calls it and the RS term on hand-built logits
(numpy), its gradient against a per-sample loop written as the reference code's, the three-modality pair average,
and MBSD through the one engine loop (common metrics, exact resume, refusals)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from drl_tune.ground.errors import ConfigError
from drl_tune.methods import REGISTRY
from drl_tune.methods.base import Batch
from drl_tune.methods.mbsd import MBSD, MBSDParams, mbsd_loss, pair_terms
from drl_tune.models import MultimodalClassifier
from drl_tune.training.config import make_config
from drl_tune.training.engine import Engine
from tests.conftest import straight_and_resumed, without_time

pytestmark = pytest.mark.usefixtures("one_thread")

ZA = np.array([[2.0, 0.0, 0.0], [0.0, 1.0, 0.5], [0.3, 0.2, 0.1], [1.0, 0.0, 3.0]])
ZB = np.array([[0.5, 0.0, 0.2], [2.0, 0.0, 0.0], [0.0, 0.0, 1.5], [0.0, 2.0, 0.0]])
ZC = np.array([[0.0, 0.4, 0.0], [0.1, 0.3, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.2]])
Y = np.array([0, 1, 1, 2])  # sample 2: neither a nor b predicts class 1 -> weight 0


def _soft(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _pair_by_hand(za, zb, y, on_logits):
    pa, pb = _soft(za), _soft(zb)
    ca, cb = pa[np.arange(len(y)), y], pb[np.arange(len(y)), y]
    ps, pw = np.maximum(ca, cb), np.minimum(ca, cb)
    correct = (pa.argmax(1) == y) | (pb.argmax(1) == y)
    w = np.where(correct, ps - pw, 0.0)
    kl = pw * (np.log(pw) - ps)  # F.kl_div(input=ps, target=pw): target·(log target − input)
    d = za - zb if on_logits else pa - pb
    rs = (d**2).sum(1) / za.shape[1]
    return (w * kl).sum() / len(y), (w * rs).sum() / len(y), w


def test_pair_terms_match_a_hand_computation():
    t = {k: torch.tensor(v) for k, v in (("a", ZA), ("b", ZB))}
    for on_logits in (True, False):
        kl, rs, w_mean = pair_terms(t["a"], t["b"], torch.tensor(Y), on_logits)
        hkl, hrs, w = _pair_by_hand(ZA, ZB, Y, on_logits)
        assert w[2] == 0.0 and (w > 0).sum() == 3
        assert float(kl) == pytest.approx(hkl, rel=1e-10) and float(rs) == pytest.approx(hrs, rel=1e-10)
        assert float(w_mean) == pytest.approx(w.mean(), rel=1e-10)


def _reference_loop(fused, za, zb, labels):
    """The two-modality branch written as the reference trainer's per-sample loop (index assignment, Python
    max/min), to compare gradients with."""
    n, c = len(labels), za.shape[1]
    pa, pb = torch.softmax(za, 1), torch.softmax(zb, 1)
    rs = 1 / c * torch.sum((za - zb) ** 2, dim=1)
    w, ps, pw = torch.zeros(n, dtype=za.dtype), torch.zeros(n, dtype=za.dtype), torch.zeros(n, dtype=za.dtype)
    ya, yb = pa.argmax(-1), pb.argmax(-1)
    for i in range(n):
        a, b = pa[i][labels[i]], pb[i][labels[i]]
        if ya[i] == labels[i] or yb[i] == labels[i]:
            w[i] = max(a, b) - min(a, b)
        ps[i], pw[i] = max(a, b), min(a, b)
    kl = F.kl_div(ps, pw, reduction="none").reshape(-1, 1)
    kl = torch.mm(w.reshape(1, -1), kl) / n
    rs = torch.mm(w.reshape(1, -1), rs.reshape(-1, 1)) / n
    return (F.cross_entropy(fused, labels) + F.cross_entropy(za, labels) + F.cross_entropy(zb, labels)
            + rs.squeeze() + kl.squeeze())


def test_two_modality_loss_and_gradient_match_the_reference_loop():
    labels = torch.tensor(Y)
    fused = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    leaves = [torch.tensor(z, requires_grad=True) for z in (ZA, ZB)]
    ref_leaves = [torch.tensor(z, requires_grad=True) for z in (ZA, ZB)]
    loss, terms = mbsd_loss(fused, leaves, labels)
    expected = _reference_loop(fused, *ref_leaves, labels)
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-12)
    hkl, hrs, _ = _pair_by_hand(ZA, ZB, Y, on_logits=True)
    assert float(terms["mbsd_kl"]) == pytest.approx(hkl) and float(terms["mbsd_rs"]) == pytest.approx(hrs)
    loss.backward()
    expected.backward()
    for got, want in zip(leaves, ref_leaves, strict=True):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-10, atol=1e-12)


def test_three_modalities_average_the_three_pairs_on_probabilities():
    labels, fused = torch.tensor(Y), torch.zeros(4, 3, dtype=torch.float64)
    zs = [torch.tensor(z) for z in (ZA, ZB, ZC)]
    loss, terms = mbsd_loss(fused, zs, labels)  # official: probabilities with three
    pairs = [_pair_by_hand(a, b, Y, on_logits=False) for a, b in ((ZA, ZB), (ZA, ZC), (ZB, ZC))]
    kl, rs = np.mean([p[0] for p in pairs]), np.mean([p[1] for p in pairs])
    ce = math.log(3) + sum(float(F.cross_entropy(z, labels)) for z in zs)
    assert float(terms["mbsd_kl"]) == pytest.approx(kl) and float(terms["mbsd_rs"]) == pytest.approx(rs)
    assert float(loss) == pytest.approx(ce + kl + rs, rel=1e-12)
    _, on_logits = mbsd_loss(fused, zs, labels, rs_on="logits")
    assert float(on_logits["mbsd_rs"]) == pytest.approx(
        np.mean([_pair_by_hand(a, b, Y, True)[1] for a, b in ((ZA, ZB), (ZA, ZC), (ZB, ZC))]))


def test_outside_the_window_the_loss_is_the_fused_cross_entropy():
    class Ctx:
        epoch = 3

    torch.manual_seed(0)
    model = MultimodalClassifier({"audio": "spectrogram", "visual": "frames"}, n_classes=3, width=4)
    g = torch.Generator().manual_seed(1)
    x = {"audio": torch.randn(6, 20, 16, generator=g), "visual": torch.randn(6, 2, 3, 16, 16, generator=g)}
    labels = torch.arange(6) % 3
    method = MBSD(MBSDParams(modulation_starts=0, modulation_ends=2))
    method.on_epoch_start(model, Ctx())
    got = method.training_step(model, Batch(x, labels))
    assert float(got) == pytest.approx(float(F.cross_entropy(model(x).logits, labels).detach()), rel=1e-6)
    assert method.on_epoch_end(model, Ctx()) == {}


def test_mbsd_trains_through_the_engine_with_the_common_metrics(tiny_config, tiny_data):
    from tests.training.test_engine import DESIGN_KEYS

    engine = Engine(tiny_config(method="mbsd", epochs=2), tiny_data)
    before = {n: p.detach().clone() for n, p in engine.model.named_parameters()}
    history = [engine.run_epoch() for _ in range(2)]
    for m in history:
        assert m.keys() >= DESIGN_KEYS and math.isfinite(m["train/loss"])
        assert all(math.isfinite(m[k]) for k in ("diag/mbsd_kl", "diag/mbsd_rs", "diag/mbsd_w"))
    assert any(not torch.equal(before[n], p) for n, p in engine.model.named_parameters())
    assert REGISTRY["mbsd"].name == "mbsd"


def test_mbsd_resumes_exactly(tiny_config, tiny_data, tmp_path):
    config = {"method": "mbsd", "epochs": 3, "mbsd__modulation_ends": 1}  # the window closes after the resume
    expected, resumed = straight_and_resumed(lambda: Engine(tiny_config(**config), tiny_data), 3, 1,
                                             tmp_path / "state.pt")
    got = [without_time(resumed.run_epoch()) for _ in range(2)]
    assert got == expected[1:]
    assert "diag/mbsd_kl" in expected[1] and "diag/mbsd_kl" not in expected[2]


@pytest.mark.parametrize(("key", "value"), [
    ("mbsd.rs_on", "kl"), ("mbsd.modulation_starts", -1), ("mbsd.modulation_ends", -1),
])
def test_bad_parameters_are_refused_with_their_key(key, value):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        make_config({key: value})


def test_one_modality_and_a_fusion_without_unimodal_logits_are_refused(tiny_config, tiny_data):
    with pytest.raises(ConfigError, match="needs two or more"):
        Engine(tiny_config(method="mbsd", data__modalities="visual", epochs=1), tiny_data)
    with pytest.raises(ConfigError, match="fusion=concat"):
        Engine(tiny_config(method="mbsd", fusion="gated", epochs=1), tiny_data)


def test_the_study_check_refuses_one_modality_before_anything_starts():
    """AMCo and MBSD need two or more modalities: the same check a study runs before it starts
    (driver.check_methods_fit, through modality_mismatch) says so; two and three pass."""
    from drl_tune.methods import REGISTRY
    from drl_tune.methods.base import modality_mismatch

    for name in ("amco", "mbsd"):
        assert modality_mismatch(REGISTRY[name], name, ["visual"]) == (
            f"method {name} needs two or more modalities, this run has 1 (visual); set data.modalities to two or "
            "more of them")
        assert modality_mismatch(REGISTRY[name], name, ["audio", "visual"]) is None
        assert modality_mismatch(REGISTRY[name], name, ["audio", "visual", "flow"]) is None
