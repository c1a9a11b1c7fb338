"""AMCo: the mask schedule, the mass shares that flag a dependent modality, the masked co-optimized loss and its
gradient — expected numbers computed independently with numpy / plain torch — and AMCo through the one engine loop
(common metrics, exact resume, refusals)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from drl_tune.ground.errors import ConfigError
from drl_tune.methods import REGISTRY
from drl_tune.methods.amco import AMCo, AMCoParams, class_mask, mask_ratio, masked_count, mass_shares
from drl_tune.methods.base import Batch
from drl_tune.models import MultimodalClassifier
from drl_tune.training.config import make_config
from drl_tune.training.engine import Engine
from tests.conftest import straight_and_resumed, without_time

TWO = {"audio": "spectrogram", "visual": "frames"}

pytestmark = pytest.mark.usefixtures("one_thread")


class Ctx:
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch


def _model(method: AMCo, modalities=TWO, seed: int = 0, fusion: str = "concat") -> MultimodalClassifier:
    torch.manual_seed(seed)
    model = MultimodalClassifier(modalities, n_classes=3, width=4, fusion=fusion)
    model.add_module("method_modules", nn.ModuleDict(method.extra_modules(model, 3)))
    return model


def _inputs(batch: int = 6, seed: int = 1, three: bool = False):
    g = torch.Generator().manual_seed(seed)
    x = {"audio": torch.randn(batch, 20, 16, generator=g), "visual": torch.randn(batch, 2, 3, 16, 16, generator=g)}
    if three:
        x["still"] = torch.randn(batch, 1, 3, 16, 16, generator=g)
    return x, torch.arange(batch) % 3


def test_mask_ratio_ramps_by_epoch_over_ten_per_batch_and_is_full_at_eps():
    # the code's accumulation: l starts at 0 each epoch and grows by epoch/10 per batch (p = sin(π/2·min(ε,l)/ε))
    for epoch, expected_n in [(0, [0, 0, 0, 0, 0]), (1, [0, 3, 5, 6, 6]), (2, [0, 5, 6, 6, 6])]:
        level, got = 0.0, []
        for _ in range(5):
            p = float(np.sin(np.pi / 2 * (min(0.3, level) / 0.3)))
            assert mask_ratio(level, 0.3) == pytest.approx(p, abs=1e-15)
            got.append(masked_count(mask_ratio(level, 0.3), 6))
            level += epoch / 10
        assert got == expected_n
    assert mask_ratio(0.1, 0.3) == pytest.approx(0.5)


def test_class_mask_zeroes_n_random_positions():
    torch.manual_seed(3)
    masks = [class_mask(6, 2) for _ in range(20)]
    assert all(int((m == 0).sum()) == 2 and int((m == 1).sum()) == 4 for m in masks)
    assert len({tuple(m.tolist()) for m in masks}) > 1  # the positions vary
    assert torch.equal(class_mask(6, 0), torch.ones(6)) and torch.equal(class_mask(6, 6), torch.zeros(6))


def test_mass_shares_are_the_batch_mean_softmax_mass_on_each_slice():
    za, zv = np.array([[2.0, 0.0, 1.0], [0.0, 0.0, 0.0]]), np.array([[0.0, 1.0, 0.0], [3.0, 0.0, 0.0]])
    e = np.exp(np.concatenate([za, zv], axis=1))
    p = e / e.sum(1, keepdims=True)
    expected = [p[:, :3].sum() / 2, p[:, 3:].sum() / 2]
    got = mass_shares([torch.tensor(za), torch.tensor(zv)])
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)
    assert float(got.sum()) == pytest.approx(1.0)


def _by_hand(ref: MultimodalClassifier, x, labels, audio_factor: torch.Tensor):
    """The official loss from the reference model's parts, in plain torch: z_m = h_m·W[:, cols]ᵀ + b/2."""
    h = {m: ref.encoders[m](x[m]) for m in TWO}
    w, b = ref.fusion.fc_out.weight, ref.fusion.fc_out.bias
    d = h["audio"].shape[1]
    za = (h["audio"] @ w[:, :d].t() + b / 2) * audio_factor
    zv = h["visual"] @ w[:, d:].t() + b / 2
    star = ref.method_modules["linear_star"]
    loss = F.cross_entropy(star(za + zv), labels) + F.cross_entropy(za, labels) + F.cross_entropy(zv, labels)
    return loss, za.detach(), zv.detach()


def test_a_flagged_modality_is_fully_masked_once_the_ramp_is_full_and_the_gradient_matches():
    method = AMCo(AMCoParams(sigma=0.5))
    model = _model(method)
    ref = copy.deepcopy(model)
    x, labels = _inputs()
    method.on_epoch_start(model, Ctx(1))
    method.flags = torch.tensor([True, False])  # the previous batch flagged audio
    method.level = 0.3  # p_t = 1: N = C = 3, every audio logit zeroed
    got = method.training_step(model, Batch(x, labels))
    assert method.level == pytest.approx(0.4)
    expected, za, zv = _by_hand(ref, x, labels, torch.zeros(3))
    assert float(got) == pytest.approx(float(expected.detach()), rel=1e-6)
    assert float(F.cross_entropy(za, labels)) == pytest.approx(math.log(3))  # the masked CE is the constant log C
    expected.backward()
    for (n, p), (_, q) in zip(model.named_parameters(), ref.named_parameters(), strict=True):
        if q.grad is None:
            assert p.grad is None or not p.grad.any(), n
        else:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-7, msg=n)
    # the next batch's flags: share of softmax mass over [0, 0, 0, z_v]
    e = torch.cat([za, zv], 1).double().exp()
    share_audio = float((e[:, :3].sum(1) / e.sum(1)).mean())
    assert method.flags.tolist() == [share_audio > 0.5, (1 - share_audio) > 0.5]


def test_unflagged_modalities_train_unmasked_and_epoch_zero_never_masks():
    method = AMCo(AMCoParams())
    model = _model(method)
    ref = copy.deepcopy(model)
    x, labels = _inputs()
    method.on_epoch_start(model, Ctx(0))
    assert method.flags.tolist() == [False, False]
    method.flags = torch.tensor([True, True])
    got = method.training_step(model, Batch(x, labels))  # epoch 0: l stays 0, p_t = 0, nothing zeroed
    expected, _, _ = _by_hand(ref, x, labels, torch.ones(3))
    assert float(got) == pytest.approx(float(expected.detach()), rel=1e-6)
    assert method.level == 0.0 and method.on_epoch_end(model, Ctx(0))["diag/p_t"] == 0.0


def test_outside_the_window_the_loss_is_the_fused_cross_entropy_alone():
    method = AMCo(AMCoParams(modulation_starts=2, modulation_ends=3))
    model = _model(method)
    ref = copy.deepcopy(model)
    x, labels = _inputs()
    method.on_epoch_start(model, Ctx(4))
    got = method.training_step(model, Batch(x, labels))
    expected = F.cross_entropy(ref.method_modules["linear_star"](ref(x).logits), labels)
    assert float(got) == pytest.approx(float(expected.detach()), rel=1e-6)
    assert method.flags.tolist() == [False, False]  # no flags are set outside the window


def test_evaluation_scores_linear_star_of_the_unmasked_sum():
    method = AMCo(AMCoParams())
    model = _model(method)
    x, _ = _inputs()
    feats = model.encode(x)
    torch.testing.assert_close(method.eval_logits(model, feats), model.method_modules["linear_star"](model.fuse(feats)))


def test_three_modalities_get_three_shares():
    method = AMCo(AMCoParams())
    model = _model(method, {**TWO, "still": "frames"})
    x, labels = _inputs(three=True)
    method.setup(model, torch.optim.SGD(model.parameters(), lr=0.0))
    method.on_epoch_start(model, Ctx(1))
    assert math.isfinite(float(method.training_step(model, Batch(x, labels))))
    shares = [method._diag.means()[f"diag/share_{m}"] for m in ("audio", "visual", "still")]
    assert sum(shares) == pytest.approx(1.0) and len(method.flags) == 3


def test_amco_trains_through_the_engine_with_the_common_metrics(tiny_config, tiny_data):
    from tests.training.test_engine import DESIGN_KEYS

    engine = Engine(tiny_config(method="amco", epochs=2), tiny_data)
    before = {n: p.detach().clone() for n, p in engine.model.named_parameters()}
    history = [engine.run_epoch() for _ in range(2)]
    for m in history:
        assert m.keys() >= DESIGN_KEYS and math.isfinite(m["train/loss"])
        assert m["diag/share_audio"] + m["diag/share_visual"] == pytest.approx(1.0)
    assert history[0]["diag/p_t"] == 0.0 and history[1]["diag/p_t"] > 0.0
    assert any(not torch.equal(before[n], p) for n, p in engine.model.named_parameters())
    assert REGISTRY["amco"].name == "amco" and "linear_star" in engine.model.method_modules


def test_amco_resumes_exactly(tiny_config, tiny_data, tmp_path):
    """Epoch 2 draws masks from torch's generator after the resume (σ < 1/2: some modality is always flagged)."""
    config = {"method": "amco", "epochs": 3, "amco__sigma": 0.3}
    expected, resumed = straight_and_resumed(lambda: Engine(tiny_config(**config), tiny_data), 3, 1,
                                             tmp_path / "state.pt")
    got = [without_time(resumed.run_epoch()) for _ in range(2)]
    assert got == expected[1:]
    assert max(expected[2]["diag/dependent_audio"], expected[2]["diag/dependent_visual"]) > 0
    assert 0 < expected[2]["diag/p_t"] < 1  # a partial mask (random positions) on some batch


@pytest.mark.parametrize(("key", "value"), [
    ("amco.sigma", 1.5), ("amco.eps", 0), ("amco.modulation_starts", -1), ("amco.modulation_ends", -2),
])
def test_bad_parameters_are_refused_with_their_key(key, value):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        make_config({key: value})


def test_an_empty_window_is_refused():
    with pytest.raises(ConfigError, match=r"amco\.modulation_starts"):
        make_config({"amco.modulation_starts": 5, "amco.modulation_ends": 4})


def test_one_modality_and_a_fusion_without_unimodal_logits_are_refused(tiny_config, tiny_data):
    with pytest.raises(ConfigError, match="two or more modalities"):
        Engine(tiny_config(method="amco", data__modalities="visual", epochs=1), tiny_data)
    with pytest.raises(ConfigError, match="fusion=concat"):
        Engine(tiny_config(method="amco", fusion="film", epochs=1), tiny_data)
