"""The comparators that step, stage or nest their own training (MLA, ReconBoost, UMT, G-Blending) and the hook
extension they use: each rule on hand-built numbers computed independently, each method through the one engine
loop (exact resume included), and ``EpochContext.train_batches``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from drl_tune.ground.errors import ConfigError
from drl_tune.methods import REGISTRY
from drl_tune.methods.base import Batch, shared_width
from drl_tune.methods.gblending import FUSED, blend_weights, holdout_split
from drl_tune.methods.mla import MLA, MLAParams, gated_logits, projection_alpha, projection_update
from drl_tune.methods.reconboost import ReconBoost, ReconBoostParams, boosting_loss, stage_of
from drl_tune.methods.umt import UMT, UMTParams
from drl_tune.models import ModelOutput, MultimodalClassifier
from drl_tune.models.encoders import FeatureSizes
from drl_tune.training.config import make_config
from drl_tune.training.engine import Engine
from tests.conftest import straight_and_resumed, without_time

MODALITIES = {"audio": "spectrogram", "visual": "frames"}
STAGED = ["mla", "reconboost", "umt", "gblending"]
CHEAP = {"umt__teacher_epochs": 1, "gblending__super_epoch": 1, "reconboost__epochs_per_stage": 1,
         "reconboost__correct_epoch": 1}


# the machine is shared: the unit cases here run on one torch thread (the engine cases set their own)
pytestmark = pytest.mark.usefixtures("one_thread")


class Recorder(torch.optim.SGD):
    """An optimizer that records, at every step, each parameter's gradient (None or a copy) and changes nothing."""

    def __init__(self, params, **_settings) -> None:  # built by like_optimizer too: the settings are not used
        super().__init__(params, lr=0.0)
        self.seen: list[dict[int, torch.Tensor | None]] = []

    def step(self, closure=None):  # noqa: ARG002
        self.seen.append({id(p): None if p.grad is None else p.grad.detach().clone()
                          for g in self.param_groups for p in g["params"]})


class Ctx:
    def __init__(self, epoch: int = 0, optimizer=None, n_train: int = 12, batch_size: int = 6) -> None:
        self.epoch, self.n_classes, self.seed, self.epochs = epoch, 3, 0, 4
        self.n_train, self.batch_size, self.optimizer = n_train, batch_size, optimizer


def with_method(method, seed: int = 0) -> MultimodalClassifier:
    torch.manual_seed(seed)
    model = MultimodalClassifier(MODALITIES, n_classes=3, width=4)
    model.add_module("method_modules", nn.ModuleDict(method.extra_modules(model, 3)))
    return model


def inputs(batch: int = 6, seed: int = 1) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = {"audio": torch.randn(batch, 20, 16, generator=g), "visual": torch.randn(batch, 2, 3, 16, 16, generator=g)}
    return x, torch.arange(batch) % 3


def grad_of(loss: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    return torch.autograd.grad(loss, param)[0]


# -- the hook extension -------------------------------------------------------------------------------------------


def test_train_batches_give_chosen_training_samples_through_the_engines_batches(tiny_config, tiny_data):
    engine = Engine(tiny_config(method="joint", epochs=1, data__augment=True), tiny_data)
    chosen = np.array([3, 7, 8, 20, 21, 40, 41, 42, 60, 90])
    labels = tiny_data.splits["train"].labels
    ordered = [y.numpy() for _, y in engine.train_batches(chosen, training=False)]
    np.testing.assert_array_equal(np.concatenate(ordered), labels[chosen])  # in order, never shuffled
    state = engine.generator.get_state()
    first = [(x["audio"].clone(), y.clone()) for x, y in engine.train_batches(chosen)]
    assert not torch.equal(engine.generator.get_state(), state)  # the run's generator draws the order and crops
    engine.generator.set_state(state)
    again = [(x["audio"].clone(), y.clone()) for x, y in engine.train_batches(chosen)]
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again, strict=True))
    assert sorted(torch.cat([y for _, y in first]).tolist()) == sorted(labels[chosen].tolist())
    size = engine.config.batch_size  # 32: the 10 samples are one training batch; one sample alone is dropped
    assert len(first) == math.ceil(len(chosen) / size) and list(engine.train_batches(np.array([5]))) == []
    only, _ = next(engine.train_batches(chosen, training=False, modalities=["audio"]))
    assert set(only) == {"audio"}  # a uni-modal pass prepares its own modality only


# -- MLA ----------------------------------------------------------------------------------------------------------


def test_mla_projection_update_and_projected_gradient_match_a_hand_computation():
    r = np.array([[1.0, 2.0, 2.0]])
    alpha = 0.1
    # official (utils/utils.py line 36): k = P·rᵀ = rᵀ for P = I; k·r is the 3×3 outer product, divided element-wise:
    # entry (i, j) loses k_i·k_j / (α + k_i·r_j)
    raw = np.array([[1 - 1 / 1.1, -2 / 2.1, -2 / 2.1],
                    [-2 / 2.1, 1 - 4 / 4.1, -4 / 4.1],
                    [-2 / 2.1, -4 / 4.1, 1 - 4 / 4.1]])
    got = projection_update(torch.eye(3, dtype=torch.float64), torch.tensor(r), alpha)
    np.testing.assert_allclose(got.numpy(), raw / np.sqrt((raw * raw).sum()), rtol=1e-12)
    # from a memory that is not the identity, entry by entry: k_i = Σ_j P_ij r_j
    memory = np.array([[2.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 1.0]])
    k = [sum(memory[i, j] * r[0, j] for j in range(3)) for i in range(3)]  # [4, 2, 1]
    raw = np.array([[memory[i, j] - k[i] * k[j] / (alpha + k[i] * r[0, j]) for j in range(3)] for i in range(3)])
    got = projection_update(torch.tensor(memory), torch.tensor(r), alpha)
    np.testing.assert_allclose(got.numpy(), raw / np.sqrt((raw * raw).sum()), rtol=1e-12)
    # rank_one (ours): the scalar α + r·k = 0.1 + 4 + 4 + 2
    raw = memory - np.outer(k, k) / (alpha + 10.0)
    got = projection_update(torch.tensor(memory), torch.tensor(r), alpha, rank_one=True)
    np.testing.assert_allclose(got.numpy(), raw / np.sqrt((raw * raw).sum()), rtol=1e-12)
    assert projection_alpha(0, 4) == pytest.approx(0.1) and projection_alpha(2, 4) == pytest.approx(0.1**1.5)


def _updated(p: np.ndarray, r: np.ndarray, alpha: float, rank_one: bool) -> np.ndarray:
    """GSPlugin's update by hand: k = P·rᵀ, then P − k·kᵀ ⊘ (α + k·r) (official) or / (α + r·k) (rank one), /‖·‖_F."""
    k = p @ r.T
    raw = p - k @ k.T / (alpha + ((r @ k).item() if rank_one else k @ r))
    return raw / np.linalg.norm(raw)


@pytest.mark.parametrize("projection", ["official", "applied", "rank_one"])
def test_mla_official_gate_leaves_the_head_gradient_alone_and_applied_projects_it(projection):
    x, y = inputs()
    method = MLA(MLAParams(projection=projection))
    model = with_method(method)
    model.train()
    recorder = Recorder(model.parameters())
    method.setup(model, recorder)
    method.on_epoch_start(model, Ctx(n_train=12, batch_size=6))  # two batches per epoch
    method.training_step(model, Batch(x, y))
    head = model.method_modules["head"]
    feats = model.encode(x)  # lr 0: the same weights, so the same train-mode features
    plain = {m: grad_of(F.cross_entropy(head(feats[m]), y), head.weight) for m in MODALITIES}
    seen_a, seen_v = (step[id(head.weight)] for step in recorder.seen)
    torch.testing.assert_close(seen_a, plain["audio"])  # the run's first step is never projected
    if projection == "official":
        torch.testing.assert_close(seen_v, plain["visual"])
        assert method.memory is None
        return
    rank_one = projection == "rank_one"
    r = feats["visual"].detach().double().mean(0, keepdim=True).numpy()
    p = _updated(np.eye(r.shape[1]), r, 0.1, rank_one)  # α = 0.1 at batch 0
    np.testing.assert_allclose(seen_v.double().numpy(), plain["visual"].double().numpy() @ p.T, rtol=1e-4,
                               atol=1e-7)
    method.training_step(model, Batch(x, y))  # batch 1: the audio step is projected by the updated memory
    r2 = feats["audio"].detach().double().mean(0, keepdim=True).numpy()
    p2 = _updated(p, r2, 0.1**1.5, rank_one)
    np.testing.assert_allclose(recorder.seen[2][id(head.weight)].double().numpy(),
                               plain["audio"].double().numpy() @ p2.T, rtol=1e-4, atol=1e-7)
    assert not np.allclose(p2, _updated(p, r2, 0.1**1.5, not rank_one))  # the two updates differ here


@pytest.mark.parametrize("momentum_all", [True, False])
def test_mla_steps_once_per_modality_and_zeroes_rather_than_drops_between_steps(momentum_all):
    x, y = inputs()
    method = MLA(MLAParams(momentum_all=momentum_all))
    model = with_method(method)
    recorder = Recorder(model.parameters())
    method.setup(model, recorder)
    method.on_epoch_start(model, Ctx())
    loss = method.training_step(model, Batch(x, y))
    assert len(recorder.seen) == 2 and MLA.steps_optimizer
    audio_weight = next(model.encoders["audio"].parameters())
    visual_weight = next(model.encoders["visual"].parameters())
    first, second = recorder.seen
    assert first[id(audio_weight)] is not None and first[id(visual_weight)] is None
    assert second[id(visual_weight)] is not None
    if momentum_all:  # torch 1.8.1's zero_grad: the audio encoder is stepped again, by momentum and decay
        assert second[id(audio_weight)] is not None and not second[id(audio_weight)].any()
    else:
        assert second[id(audio_weight)] is None
    assert all(p.grad is None for p in model.parameters())  # dropped after the batch (the official del p.grad)
    head = model.method_modules["head"]
    with torch.no_grad():
        feats = model.encode(x)
    expected = np.mean([F.cross_entropy(head(feats[m]), y).item() for m in MODALITIES])
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert all(step[id(model.fusion.fc_out.weight)] is None for step in recorder.seen)  # the fusion head is unused


def test_mla_gating_weights_for_hand_built_logits():
    za = np.array([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    zv = np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 3.0]])
    zt = np.array([[1.0, 0.0, 0.5], [0.0, 0.0, 2.0]])
    z = [torch.tensor(za), torch.tensor(zv)]

    def ent(z, axis):
        p = np.exp(z - z.max(axis=axis, keepdims=True))
        p /= p.sum(axis=axis, keepdims=True)
        return -(p * np.log(p)).sum(axis=axis)

    e = np.array([ent(za, 0).sum(), ent(zv, 0).sum()])  # official (line 66): softmax over the batch's samples, summed
    lam = np.exp(e.max() - e) / np.exp(e.max() - e).sum()
    np.testing.assert_allclose(gated_logits(z, "batch").numpy(), lam[0] * za + lam[1] * zv, rtol=1e-6)
    e = np.array([ent(za, 1).sum(), ent(zv, 1).sum()])  # commented-out line 67: over classes, still summed (line 69)
    lam = np.exp(e.max() - e) / np.exp(e.max() - e).sum()
    np.testing.assert_allclose(gated_logits(z, "classes").numpy(), lam[0] * za + lam[1] * zv, rtol=1e-6)
    e = np.stack([ent(za, 1), ent(zv, 1)])  # ours: per sample, over classes
    lam = np.exp(e.max(0) - e) / np.exp(e.max(0) - e).sum(0)
    np.testing.assert_allclose(gated_logits(z, "sample").numpy(), lam[0][:, None] * za + lam[1][:, None] * zv,
                               rtol=1e-6)
    # official fixed fusion: av_alpha = 0.55 on the first output (main.py lines 651, 968); 0.35/0.25/0.4 for three
    np.testing.assert_allclose(gated_logits(z, "fixed").numpy(), 0.55 * za + 0.45 * zv, rtol=1e-6)
    np.testing.assert_allclose(gated_logits(z + [torch.tensor(zt)], "fixed").numpy(),
                               0.35 * za + 0.25 * zv + 0.4 * zt, rtol=1e-6)
    np.testing.assert_allclose(gated_logits(z + [torch.tensor(zt)], "equal").numpy(), (za + zv + zt) / 3, rtol=1e-6)
    with pytest.raises(ConfigError, match="two modalities .* and three .* this run has 4: use mla.gating: equal"):
        gated_logits(z + z, "fixed")


def test_mla_fixed_gating_refuses_a_count_without_official_weights(tiny_config, tiny_data):
    with pytest.raises(ConfigError, match="this run has 1"):
        Engine(tiny_config(method="mla", data__modalities="visual", mla__gating="fixed", epochs=1), tiny_data)


@pytest.mark.parametrize("gating", ["batch", "classes", "fixed"])
def test_mla_gating_follows_the_runs_batches_at_evaluation(gating):
    method = MLA(MLAParams(gating=gating))
    model = with_method(method)
    model.eval()
    method.on_epoch_start(model, Ctx(batch_size=2))
    feats = {m: torch.randn(5, 32) for m in MODALITIES}
    head = model.method_modules["head"]
    with torch.no_grad():
        got = method.eval_logits(model, feats)
        z = [head(feats[m]) for m in MODALITIES]
        expected = torch.cat([gated_logits([t[s:s + 2] for t in z], gating) for s in (0, 2, 4)])
    torch.testing.assert_close(got, expected)
    if gating == "fixed":  # audio (the model's first modality) weighs 0.55, as out_a in the official
        torch.testing.assert_close(got, 0.55 * z[0] + 0.45 * z[1])


def test_a_shared_head_refuses_unequal_feature_widths():
    model = MultimodalClassifier({"audio": "spectrogram", "emb": "vector"}, 3, width=4,
                                shapes={"emb": (10,)}, feature_sizes=FeatureSizes(hidden=16))
    with pytest.raises(ConfigError, match="equal feature widths; these are audio 32, emb 16"):
        shared_width(model, "mla")


# -- ReconBoost ---------------------------------------------------------------------------------------------------


def test_reconboost_stage_schedule():
    # 2 boosting + 1 rectification epochs per stage, two modalities: a a R v v R a a R …
    table = [stage_of(e, 2, 2, 1) for e in range(7)]
    assert table == [(0, 0, False), (0, 0, False), (0, 0, True), (1, 1, False), (1, 1, False), (1, 1, True),
                     (2, 0, False)]
    assert [stage_of(e, 3, 1, 0)[1] for e in range(7)] == [0, 1, 2, 0, 1, 2, 0]  # three modalities cycle
    method = ReconBoost(ReconBoostParams(epochs_per_stage=2, correct_epoch=1))
    model = MultimodalClassifier({"a": "spectrogram", "b": "spectrogram", "c": "spectrogram"}, 3, width=4)
    members = []
    for epoch in range(8):
        method.phase = stage_of(epoch, 3, 2, 1)
        members.append((method.members(model, False), method.members(model, True)))
    assert members[0] == ([], ["a"]) and members[2] == (["a"], ["a"])  # a joins after its first boosting phase
    assert members[3] == (["a"], ["a", "b"]) and members[6] == (["a", "b"], ["a", "b", "c"])


def test_reconboost_boosting_loss_for_hand_built_logits():
    z = np.array([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    others = np.array([[0.0, 3.0, 0.0], [1.0, 0.0, 0.0]])
    y = np.array([1, 0])
    log_p = z - np.log(np.exp(z).sum(1, keepdims=True))
    q = np.exp(others) / np.exp(others).sum(1, keepdims=True)
    w1, w2, c = 5.0, 1.0, 3
    expected = np.mean([(-w1 * log_p[i, y[i]] + w2 * q[i, y[i]] * log_p[i, y[i]]) / c for i in range(2)])
    got = boosting_loss(torch.tensor(z), torch.tensor(others), torch.tensor(y), w1, w2)
    assert float(got) == pytest.approx(expected, rel=1e-12)
    empty = np.mean([(-w1 + w2) * log_p[i, y[i]] / c for i in range(2)])  # no other learner yet: q_y = 1
    assert float(boosting_loss(torch.tensor(z), None, torch.tensor(y), w1, w2)) == pytest.approx(empty, rel=1e-12)


def test_reconboost_ga_term_is_detached_as_official_and_trains_the_learner_when_asked():
    x, y = inputs()
    grads = {}
    for alpha, ga_grad in ((0.0, False), (0.5, False), (0.5, True)):
        method = ReconBoost(ReconBoostParams(alpha=alpha, ga_grad=ga_grad, epochs_per_stage=1, correct_epoch=1))
        model = with_method(method)
        recorder = Recorder(model.parameters())
        method.on_epoch_start(model, Ctx(epoch=2, optimizer=recorder))  # stage 1: visual, against audio
        assert method.phase == (1, 1, False)
        method.optimizer = recorder
        method.training_step(model, Batch(x, y))
        weight = next(model.encoders["visual"].parameters())
        grads[(alpha, ga_grad)] = recorder.seen[0][id(weight)]
        assert recorder.seen[0][id(next(model.encoders["audio"].parameters()))] is None
    torch.testing.assert_close(grads[(0.5, False)], grads[(0.0, False)], rtol=0, atol=0)
    assert not torch.allclose(grads[(0.5, True)], grads[(0.0, False)])


def test_reconboost_phases_train_only_their_parameters(tiny_config, tiny_data):
    engine = Engine(tiny_config(method="reconboost", epochs=3, reconboost__epochs_per_stage=1,
                                reconboost__correct_epoch=1), tiny_data)
    model = engine.model

    def snapshot(module):
        return [p.detach().clone() for p in module.parameters()]

    def same(before, module):
        return all(torch.equal(a, b) for a, b in zip(before, module.parameters(), strict=True))

    audio, visual, head = snapshot(model.encoders["audio"]), snapshot(model.encoders["visual"]), \
        snapshot(model.method_modules["head"])
    m0 = engine.run_epoch()  # boosting audio
    assert same(visual, model.encoders["visual"]) and not same(audio, model.encoders["audio"])
    assert not same(head, model.method_modules["head"]) and m0["diag/boost_rate"] == 1.0
    m1 = engine.run_epoch()  # rectification of the ensemble {audio}: β trains
    assert same(visual, model.encoders["visual"]) and m1["diag/rectify"] == 1.0 and m1["diag/boost_rate"] != 1.0
    audio = snapshot(model.encoders["audio"])
    m2 = engine.run_epoch()  # boosting visual against audio
    assert same(audio, model.encoders["audio"]) and not same(visual, model.encoders["visual"])
    assert m2["diag/stage_modality"] == 1.0 and "diag/ga" in m2
    assert not engine.optimizer.state  # the run's own optimizer never stepped


# -- UMT ----------------------------------------------------------------------------------------------------------


def test_umt_loss_is_cross_entropy_plus_s_times_the_summed_feature_mse():
    method = UMT(UMTParams(distill=0.7))
    logits = np.array([[1.0, 0.0, -1.0], [0.2, 0.3, 0.1]])
    y = np.array([0, 2])
    h = {"audio": np.array([[1.0, 2.0], [0.0, -1.0]]), "visual": np.array([[0.5, 0.5, 0.5], [1.0, 0.0, 0.0]])}
    t = {"audio": np.array([[0.0, 2.0], [1.0, 1.0]]), "visual": np.array([[0.5, 0.0, 0.5], [0.0, 0.0, 0.0]])}
    ce = np.mean([-(logits[i, y[i]] - np.log(np.exp(logits[i]).sum())) for i in range(2)])
    mse = (1 + 0 + 1 + 4) / 4 + (0.25 + 1) / 6
    method._targets = {m: torch.tensor(v) for m, v in t.items()}
    got = method.loss(ModelOutput(torch.tensor(logits), {m: torch.tensor(v) for m, v in h.items()}), torch.tensor(y))
    assert float(got) == pytest.approx(ce + 0.7 * mse, rel=1e-12)


def test_umt_teachers_train_before_the_first_epoch_then_stay_frozen(tiny_config, tiny_data):
    engine = Engine(tiny_config(method="umt", epochs=2, umt__teacher_epochs=2), tiny_data)
    teacher = engine.model.method_modules["teacher_audio"]
    init = [p.detach().clone() for p in teacher.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(init, engine.model.encoders["audio"].parameters(), strict=True))
    first = engine.run_epoch()
    assert first["diag/teacher_epochs"] == 4.0 and math.isfinite(first["diag/teacher_loss_visual"])
    trained = {k: v.detach().clone() for k, v in engine.model.method_modules.state_dict().items() if "teacher" in k}
    assert any(not torch.equal(a, b) for a, b in zip(init, teacher.parameters(), strict=True))
    second = engine.run_epoch()
    assert "diag/teacher_epochs" not in second and second["diag/distill"] > 0
    after = engine.model.method_modules.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in trained.items())  # frozen, BN statistics included


# -- G-Blending ---------------------------------------------------------------------------------------------------


def test_gblending_weights_from_given_losses():
    before = {"audio": (1.0, 1.2), "visual": (0.9, 1.0), FUSED: (0.8, 1.1)}
    after = {"audio": (0.5, 1.0), "visual": (0.8, 0.95), FUSED: (0.3, 1.05)}
    # G = 0.2, 0.05, 0.05; ΔO = 0.3, 0.05, 0.45; G/ΔO² = 20/9, 20, 20/81 → 180 : 1620 : 20 of 1820
    got = blend_weights(before, after)
    assert got == pytest.approx({"audio": 9 / 91, "visual": 81 / 91, FUSED: 1 / 91}, rel=1e-9)
    # a: held-out loss rose (G = −0.5, ΔO = 1): counts by |G| = 0.5; b: G = 0.2, ΔO = 0.2 → 5
    worse = blend_weights({"a": (1.0, 1.0), "b": (1.0, 1.0)}, {"a": (0.5, 1.5), "b": (0.6, 0.8)})
    assert worse == pytest.approx({"a": 1 / 11, "b": 10 / 11})
    flat = blend_weights({"a": (1.0, 1.0), "b": (1.0, 1.0)}, {"a": (0.5, 0.5), "b": (0.6, 0.8)})  # ΔO_a = 0
    assert flat["a"] == pytest.approx(1.0) and flat["b"] == pytest.approx(5 / 5e11, rel=1e-6)  # ΔO² floored at 1e-12
    assert blend_weights({"a": (1, 1), "b": (1, 1)}, {"a": (1, 1), "b": (1, 1)}) == {"a": 0.5, "b": 0.5}


def test_gblending_estimates_on_a_held_out_part_of_train_and_leaves_the_model_as_it_was(tiny_config, tiny_data):
    engine = Engine(tiny_config(method="gblending", epochs=1, gblending__super_epoch=1), tiny_data)
    train, held = holdout_split(96, 0.2, 0)
    assert len(held) == 19 and not set(train) & set(held) and len(train) + len(held) == 96
    splits, original = [], engine._batch
    engine._batch = lambda split, *a, **k: (splits.append(split), original(split, *a, **k))[1]
    state = {k: v.clone() for k, v in engine.model.state_dict().items()}
    engine.method.on_epoch_start(engine.model, engine)
    assert set(splits) == {"train"} and len(splits) > 0  # validation and test are never touched
    assert all(torch.equal(v, engine.model.state_dict()[k]) for k, v in state.items())
    assert sum(engine.method.weights.values()) == pytest.approx(1.0) and set(engine.method.weights) == {
        "audio", "visual", FUSED}


@pytest.mark.parametrize(("mode", "estimated"), [("online", [0, 2]), ("offline", [0])])
def test_gblending_reestimates_every_k_epochs_online_and_once_offline(mode, estimated, tiny_config, tiny_data):
    engine = Engine(tiny_config(method="gblending", epochs=3, gblending__super_epoch=2, gblending__mode=mode),
                    tiny_data)
    history = [engine.run_epoch() for _ in range(3)]
    assert [e for e, m in enumerate(history) if "diag/blend_epochs" in m] == estimated
    assert all(history[e]["diag/blend_epochs"] == 3 * 2 for e in estimated)  # (M + 1)·K nested epochs


# -- every method through the engine ------------------------------------------------------------------------------


@pytest.mark.parametrize(("key", "value"), [
    ("mla.gating", "entropy"), ("mla.projection", "scalar"), ("reconboost.epochs_per_stage", 0),
    ("reconboost.weight1", -1), ("reconboost.boost_rate", 0), ("umt.distill", -0.1), ("umt.teacher_epochs", -1),
    ("gblending.super_epoch", 0), ("gblending.mode", "batch"), ("gblending.holdout", 1.0),
])
def test_bad_parameters_are_refused_with_their_key(key, value):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        make_config({key: value})


DIAG = {"mla": "diag/loss_audio", "reconboost": "diag/stage", "umt": "diag/distill", "gblending": "diag/blend_w_fused"}


@pytest.mark.parametrize("method", STAGED)
def test_each_staged_method_trains_through_the_engine_with_the_common_metrics(method, tiny_config, tiny_data):
    from tests.training.test_engine import DESIGN_KEYS

    engine = Engine(tiny_config(method=method, epochs=2, **CHEAP), tiny_data)
    before = {n: p.detach().clone() for n, p in engine.model.named_parameters()}
    history = [engine.run_epoch() for _ in range(2)]
    for m in history:
        assert m.keys() >= DESIGN_KEYS and math.isfinite(m["train/loss"])
    assert DIAG[method] in history[-1] and REGISTRY[method].name == method
    assert any(not torch.equal(before[n], p) for n, p in engine.model.named_parameters())


@pytest.mark.parametrize(("method", "overrides", "stop_at"), [
    ("mla", {"mla__projection": "applied"}, 2),
    ("reconboost", {"reconboost__epochs_per_stage": 2, "reconboost__correct_epoch": 1}, 1),  # mid boosting phase
    ("umt", {"umt__teacher_epochs": 1}, 2),
    ("gblending", {"gblending__super_epoch": 2}, 2),  # the resumed process re-estimates at epoch 2
])
def test_staged_methods_resume_exactly(method, overrides, stop_at, tiny_config, tiny_data, tmp_path):
    """MLA's projection memory and step count, ReconBoost's stage optimizer, UMT's teachers, G-Blending's weights and
    the generator its nested runs draw from: a run restored mid-way ends with the uninterrupted run's metrics."""
    config = {"method": method, "epochs": 4, "data__augment": True, **overrides}
    expected, resumed = straight_and_resumed(lambda: Engine(tiny_config(**config), tiny_data), 4, stop_at,
                                             tmp_path / "state.pt")
    got = [without_time(resumed.run_epoch()) for _ in range(4 - stop_at)]
    assert got == expected[stop_at:]


@pytest.fixture(scope="module")
def three_modalities(tmp_path_factory):
    """A prepared manifest dataset of three modalities (tests/data/test_manifest.py's: a sound, frames, an image)."""
    from drl_tune.data.prepare import main as prepare
    from tests.data.test_manifest import SMALL, write_dataset

    root = tmp_path_factory.mktemp("three")
    manifest = write_dataset(root / "raw")
    assert prepare(["manifest", "--manifest", str(manifest), "--out", str(root / "cache"), *SMALL]) == 0
    return root / "cache"


def test_the_staged_methods_run_on_three_modalities(three_modalities):
    """Each rule is per modality, so each runs on N: MLA steps three times a batch, ReconBoost's stages cycle
    through three, UMT trains three teachers, G-Blending weighs four heads."""
    names = ("sound", "scene", "still")
    base = {"data.name": "manifest", "data.root": str(three_modalities), "model.width": 4, "batch_size": 6,
            "lr": 0.05, "threads": 1, "eval.probe_samples": 18, "umt.teacher_epochs": 1, "gblending.super_epoch": 1,
            "reconboost.epochs_per_stage": 1, "reconboost.correct_epoch": 0}
    seen = {}
    for method in STAGED:
        engine = Engine(make_config({**base, "method": method, "epochs": 3}))
        seen[method] = [engine.run_epoch() for _ in range(3)]
        assert all(math.isfinite(m["train/loss"]) for m in seen[method])
    assert all(f"diag/loss_{m}" in seen["mla"][0] for m in names)
    assert [m["diag/stage_modality"] for m in seen["reconboost"]] == [0.0, 1.0, 2.0]
    assert seen["umt"][0]["diag/teacher_epochs"] == 3.0 and all(f"diag/teacher_loss_{m}" in seen["umt"][0]
                                                                for m in names)
    weights = [seen["gblending"][0][f"diag/blend_w_{k}"] for k in (*names, FUSED)]
    assert sum(weights) == pytest.approx(1.0) and seen["gblending"][0]["diag/blend_epochs"] == 4.0
