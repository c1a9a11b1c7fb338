"""The comparator methods: each rule on a constructed case with independently computed numbers, each
method training through the one engine loop, and their configuration errors."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from drl_tune.ground.errors import ConfigError
from drl_tune.methods import REGISTRY
from drl_tune.methods.base import Batch, unimodal_logits
from drl_tune.methods.inforeg import InfoReg, InfoRegParams, betas, window_k
from drl_tune.methods.mmpareto import MMPareto, MMParetoParams, combine, pareto_weights
from drl_tune.methods.ogm_ge import OGMGE, OGMGEParams, modulate_encoder, ogm_coefficients
from drl_tune.methods.opm import OPM, OPMParams, drop_probabilities, feature_rescale
from drl_tune.methods.valuation import (
    copies_for,
    modality_level_rows,
    sample_level_rows,
    shapley_values,
)
from drl_tune.models import MultimodalClassifier
from drl_tune.training.config import make_config
from drl_tune.training.engine import Engine
from tests.conftest import straight_and_resumed, without_time

MODALITIES = {"audio": "spectrogram", "visual": "frames"}
COMPARATORS = ["ogm_ge", "opm", "mmpareto", "inforeg", "valuation"]


# the machine is shared: the unit cases here run on one torch thread (the engine cases set their own)
pytestmark = pytest.mark.usefixtures("one_thread")


class _Ctx:
    def __init__(self, epoch: int) -> None:
        self.epoch, self.n_classes, self.seed = epoch, 3, 0


def _model(fusion: str = "concat", seed: int = 0) -> MultimodalClassifier:
    torch.manual_seed(seed)
    return MultimodalClassifier(MODALITIES, n_classes=3, width=4, fusion=fusion)


def _inputs(batch: int = 6, seed: int = 1) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    inputs = {"audio": torch.randn(batch, 20, 16, generator=g), "visual": torch.randn(batch, 2, 3, 16, 16, generator=g)}
    return inputs, torch.arange(batch) % 3


# -- the shared uni-modal logits ----------------------------------------------------------------------------


def test_unimodal_logits_are_the_head_halves_plus_half_bias_and_sum_to_the_fused_logits():
    model = _model("concat")
    feats = {"audio": torch.randn(5, 32), "visual": torch.randn(5, 32)}
    w, b = model.fusion.fc_out.weight.detach(), model.fusion.fc_out.bias.detach()
    uni = unimodal_logits(model, feats)
    torch.testing.assert_close(uni["audio"], feats["audio"] @ w[:, :32].T + b / 2)
    torch.testing.assert_close(uni["visual"], feats["visual"] @ w[:, 32:].T + b / 2)
    torch.testing.assert_close(uni["audio"] + uni["visual"], model.fuse(feats))
    summed = _model("sum")
    uni = unimodal_logits(summed, feats)
    torch.testing.assert_close(uni["audio"], summed.fusion.fc[0](feats["audio"]))  # own layer, full bias
    torch.testing.assert_close(uni["audio"] + uni["visual"], summed.fuse(feats))


@pytest.mark.parametrize("method", ["ogm_ge", "opm", "inforeg"])
@pytest.mark.parametrize("fusion", ["film", "gated"])
def test_methods_that_need_unimodal_logits_refuse_film_and_gated(method, fusion, tiny_config, tiny_data):
    with pytest.raises(ConfigError, match="fusion=concat"):
        Engine(tiny_config(method=method, fusion=fusion, epochs=1), tiny_data)


@pytest.mark.parametrize("method", COMPARATORS)
def test_comparators_refuse_a_single_modality(method, tiny_config, tiny_data):
    with pytest.raises(ConfigError, match="exactly two modalities"):
        Engine(tiny_config(method=method, data__modalities="visual", epochs=1), tiny_data)


@pytest.mark.parametrize(("key", "value"), [
    ("ogm_ge.alpha", 0), ("ogm_ge.modulation_ends", -1), ("opm.q_base", 1.5), ("opm.p_exe", -0.1),
    ("opm.lam", -1), ("opm.theta_grad", "paper"), ("mmpareto.gamma", 0), ("inforeg.window", 0),
    ("inforeg.threshold", -1),
    ("valuation.level", "batch"), ("valuation.warmup", 0), ("valuation.part_ratio", 0),
])
def test_bad_method_parameters_are_refused_with_their_key(key, value):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        make_config({key: value})


# -- OGM-GE ---------------------------------------------------------------------------------------------------


def test_ogm_ge_coefficients_for_known_scores_including_the_tie():
    alpha = 0.1
    # audio leads (ratio_v = 20/30 < 1): audio slowed by 1 - tanh(alpha * 30/20)
    assert ogm_coefficients(30.0, 20.0, alpha) == pytest.approx((1 - np.tanh(0.15), 1.0))
    # visual leads (ratio_v = 1.5): visual slowed by 1 - tanh(alpha * 1.5)
    assert ogm_coefficients(20.0, 30.0, alpha) == pytest.approx((1.0, 1 - np.tanh(0.15)))
    # tie: ratio_v = 1 is not > 1, so audio is the one modulated, by 1 - tanh(alpha)
    assert ogm_coefficients(25.0, 25.0, alpha) == pytest.approx((1 - np.tanh(0.1), 1.0))
    assert ogm_coefficients(25.0, 25.0, 2.0) == pytest.approx((1 - np.tanh(2.0), 1.0))


def test_ogm_modulation_scales_conv_weight_gradients_only_and_adds_noise_of_the_unmodulated_std():
    model = _model()
    encoder = model.encoders["audio"]
    for p in encoder.parameters():
        p.grad = torch.randn_like(p)
    before = {n: p.grad.clone() for n, p in encoder.named_parameters()}
    modulate_encoder(encoder, 0.25, noise=False)
    for n, p in encoder.named_parameters():
        expected = before[n] * 0.25 if before[n].dim() == 4 else before[n]
        torch.testing.assert_close(p.grad, expected)
    # with GE: the same, plus N(0, std(g) + 1e-8) drawn in parameter order from the global generator
    for n, p in encoder.named_parameters():
        p.grad = before[n].clone()
    torch.manual_seed(7)
    modulate_encoder(encoder, 0.25, noise=True)
    torch.manual_seed(7)
    for n, p in encoder.named_parameters():
        g = before[n]
        if g.dim() != 4:
            torch.testing.assert_close(p.grad, g)
            continue
        noise = torch.zeros_like(g).normal_(0.0, g.std().item() + 1e-8)
        torch.testing.assert_close(p.grad, g * 0.25 + noise)


def test_ogm_ge_modulates_both_encoders_only_inside_the_epoch_window():
    model = _model()
    method = OGMGE(OGMGEParams(alpha=0.5, modulation_starts=1, modulation_ends=2, ge=False))
    method.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
    inputs, labels = _inputs()
    for epoch, active in ((0, False), (1, True), (2, True), (3, False)):
        method.on_epoch_start(model, _Ctx(epoch))
        model.zero_grad()
        method.training_step(model, Batch(inputs, labels))
        # independently: the plain gradient of the fused CE and the coefficients from the head halves
        ref = copy.deepcopy(model)
        ref.zero_grad()
        out = ref(inputs)
        F.cross_entropy(out.logits, labels).backward()
        w, b = ref.fusion.fc_out.weight.detach(), ref.fusion.fc_out.bias.detach()
        with torch.no_grad():
            sa = torch.softmax(out.features["audio"] @ w[:, :32].T + b / 2, 1)[torch.arange(6), labels].sum().item()
            sv = torch.softmax(out.features["visual"] @ w[:, 32:].T + b / 2, 1)[torch.arange(6), labels].sum().item()
        ca, cv = (1.0, 1 - math.tanh(0.5 * sv / sa)) if sv / sa > 1 else (1 - math.tanh(0.5 * sa / sv), 1.0)
        for m, c in (("audio", ca), ("visual", cv)):
            for (n, p), (_, q) in zip(model.encoders[m].named_parameters(), ref.encoders[m].named_parameters(),
                                      strict=True):
                scale = c if (active and q.grad.dim() == 4) else 1.0
                torch.testing.assert_close(p.grad, q.grad * scale, msg=f"{m}.{n} epoch {epoch}")
        torch.testing.assert_close(model.fusion.fc_out.weight.grad, ref.fusion.fc_out.weight.grad)


# -- OPM ------------------------------------------------------------------------------------------------------


def test_opm_drop_probabilities_for_both_modalities_and_the_shared_rescale():
    q_base, lam = 0.5, 0.5
    expected = q_base * (1 + lam * np.tanh(30 / 20 - 1))
    assert drop_probabilities(30.0, 20.0, q_base, lam) == pytest.approx((expected, 0.0))
    assert drop_probabilities(20.0, 30.0, q_base, lam) == pytest.approx((0.0, expected))
    assert drop_probabilities(25.0, 25.0, q_base, lam) == (0.0, 0.0)  # tanh(relu(0)) = 0: nothing dropped
    assert drop_probabilities(100.0, 1.0, 0.9, 1.0) == (1.0, 0.0)  # 0.9 * (1 + tanh(99)) clipped to 1
    # θ = (d1 q1 + d2 q2) / (d1 + d2)
    assert feature_rescale((0.6, 0.0), (512, 512)) == pytest.approx(1 / (1 - 0.3))
    assert feature_rescale((0.0, 0.5), (256, 768)) == pytest.approx(1 / (1 - 0.375))


def _opm_case(q_base: float, epoch: int = 6):
    """A concat head under which audio is confidently right and visual uninformative (uniform)."""
    model = _model()
    with torch.no_grad():
        model.fusion.fc_out.weight.zero_()
        model.fusion.fc_out.bias.zero_()
        model.fusion.fc_out.weight[torch.arange(3), torch.arange(3)] = 10.0  # audio feature c -> class c
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    feats = {"audio": F.one_hot(labels, 32).float(), "visual": torch.randn(6, 32)}
    method = OPM(OPMParams(q_base=q_base, lam=0.0, p_exe=1.0))
    method.on_epoch_start(model, _Ctx(epoch))
    return method, feats, labels


def test_opm_drops_the_leading_modality_with_probability_q_and_rescales_both():
    # lam = 0: q_audio = q_base = 1 (audio leads), q_visual = 0 -> audio always dropped, visual always kept,
    # θ = 32/64 = 0.5, so visual features are doubled; no sample loses both modalities
    method, feats, labels = _opm_case(q_base=1.0)
    out, kept = method.modify_features(dict(feats), labels, Batch({}, labels))
    assert torch.equal(out["audio"], torch.zeros_like(feats["audio"]))
    torch.testing.assert_close(out["visual"], feats["visual"] * 2.0)
    assert torch.equal(kept, labels)
    # q_base = 0: q = (0, 0) -> unchanged
    method, feats, labels = _opm_case(q_base=0.0)
    out, _ = method.modify_features(dict(feats), labels, Batch({}, labels))
    torch.testing.assert_close(out["audio"], feats["audio"])
    # during warm-up (epoch <= 5) nothing is dropped
    method, feats, labels = _opm_case(q_base=1.0, epoch=5)
    out, _ = method.modify_features(dict(feats), labels, Batch({}, labels))
    torch.testing.assert_close(out["audio"], feats["audio"])


def test_opm_removes_samples_that_lost_every_modality_and_skips_an_empty_batch(monkeypatch):
    import drl_tune.methods.opm as opm_module

    method, feats, labels = _opm_case(q_base=0.5)
    # q = (0.5, 0): audio dropped at random, visual never -> no row loses both, none removed
    torch.manual_seed(0)
    audio_dropped = 0
    for _ in range(50):
        out, kept = method.modify_features(dict(feats), labels, Batch({}, labels))
        assert len(out["audio"]) == len(out["visual"]) == len(kept) == 6
        audio_dropped += int((out["audio"].abs().sum(1) == 0).sum())
    assert 0.35 < audio_dropped / 300 < 0.65  # Bernoulli(1 - q_audio = 0.5) keeps
    # q = (0.5, 0.5): rows with both dropped are removed from features and labels alike
    monkeypatch.setattr(opm_module, "drop_probabilities", lambda *a: (0.5, 0.5))
    torch.manual_seed(1)
    sizes = []
    for _ in range(50):
        out = method.modify_features(dict(feats), labels, Batch({}, labels))
        if out is None:
            continue
        f, kept = out
        sizes.append(len(kept))
        assert len(f["audio"]) == len(f["visual"]) == len(kept)
        assert ((f["audio"].abs().sum(1) > 0) | (f["visual"].abs().sum(1) > 0)).all()
    assert min(sizes) < 6
    # every modality of every sample dropped -> the batch is skipped
    monkeypatch.setattr(opm_module, "drop_probabilities", lambda *a: (1.0, 1.0))
    assert method.modify_features(dict(feats), labels, Batch({}, labels)) is None


def _opm_step(theta_grad: str, q_base: float = 0.5, lam: float = 0.5, epoch: int = 6, p_exe: float = 1.0):
    """Gradients of every parameter after one OPM training step on a fixed batch (same weights, same draws)."""
    model = _model()
    inputs, labels = _inputs(batch=8)
    method = OPM(OPMParams(q_base=q_base, lam=lam, p_exe=p_exe, theta_grad=theta_grad))
    method.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
    method.on_epoch_start(model, _Ctx(epoch))
    torch.manual_seed(7)
    assert method.training_step(model, Batch(inputs, labels)) is not None
    return model, {n: p.grad.clone() if p.grad is not None else torch.zeros_like(p) for n, p in
                   model.named_parameters()}


def _half_theta_squared_grads(q_base: float, lam: float) -> dict[str, torch.Tensor]:
    """∇ of θ²/2 w.r.t. the encoders, written out from the paper's quantities (not from opm.py): scores from the
    detached head halves + b/2, q of the leading modality, θ = d_lead·q / (d_a + d_v)."""
    model = _model()
    inputs, labels = _inputs(batch=8)
    feats = model.encode(inputs)
    w, b = model.fusion.fc_out.weight.detach(), model.fusion.fc_out.bias.detach()
    d_a, d_v = feats["audio"].shape[1], feats["visual"].shape[1]
    p_a = torch.softmax(feats["audio"] @ w[:, :d_a].T + b / 2, 1)[torch.arange(8), labels].sum().double()
    p_v = torch.softmax(feats["visual"] @ w[:, d_a:].T + b / 2, 1)[torch.arange(8), labels].sum().double()
    lead, other, d_lead = (p_a, p_v, d_a) if p_a > p_v else (p_v, p_a, d_v)
    q = torch.clamp(q_base * (1 + lam * torch.tanh(lead / other - 1)), max=1.0)
    theta = d_lead * q / (d_a + d_v)
    names = [n for n, _ in model.named_parameters() if n.startswith("encoders.")]
    params = [p for n, p in model.named_parameters() if n.startswith("encoders.")]
    grads = torch.autograd.grad(0.5 * theta**2, params, allow_unused=True)
    return {n: (torch.zeros_like(p) if g is None else g.float()) for n, p, g in zip(names, params, grads, strict=True)}


def test_opm_official_theta_gradient_is_the_plain_one_plus_half_theta_squared():
    model, official = _opm_step("official")
    _, plain = _opm_step("none")
    extra = _half_theta_squared_grads(0.5, 0.5)
    encoder = [n for n in official if n.startswith("encoders.")]
    assert encoder and set(extra) == set(encoder)
    for name in encoder:  # float32 rounding: gradients here are O(1)
        torch.testing.assert_close(official[name], plain[name] + extra[name], rtol=1e-4, atol=1e-5, msg=name)
    flat = torch.cat([official[n].flatten() for n in encoder])
    push = torch.cat([extra[n].flatten() for n in encoder])
    rest = torch.cat([(official[n] - plain[n]).flatten() for n in encoder])
    assert push.norm() > 1e-2 * flat.norm()  # the θ term is there and not negligible (2.3 % here): it can fail
    assert (rest - push).norm() < 1e-3 * push.norm()
    for name in official:  # the head (fusion) gradient is the same either way
        if not name.startswith("encoders."):
            torch.testing.assert_close(official[name], plain[name], msg=name)


@pytest.mark.parametrize("case", [
    {"lam": 0.0},  # q = q_base, a constant
    {"q_base": 1.0, "lam": 0.5},  # q clips to 1: no gradient through the clip
    {"epoch": 5},  # warm-up: nothing dropped
    {"p_exe": 0.0},  # the batch is not modulated
])
def test_opm_official_and_plain_theta_gradients_coincide_where_theta_is_constant(case):
    _, official = _opm_step("official", **case)
    _, plain = _opm_step("none", **case)
    for name in official:
        torch.testing.assert_close(official[name], plain[name], msg=name)


# -- MMPareto -------------------------------------------------------------------------------------------------


def _brute_force_min_norm(g1: np.ndarray, g2: np.ndarray) -> float:
    """argmin over a fine grid of c of ‖c·g1 + (1 − c)·g2‖², expanded into the three inner products."""
    v11, v12, v22 = float(g1 @ g1), float(g1 @ g2), float(g2 @ g2)
    c = np.linspace(0.0, 1.0, 1_000_001)
    norms = c**2 * v11 + 2 * c * (1 - c) * v12 + (1 - c) ** 2 * v22
    return float(c[np.argmin(norms)])


def test_mmpareto_weights_are_the_min_norm_solution_for_conflicting_gradients():
    g_mm, g_uni = np.array([1.0, 0.0, 0.5]), np.array([-0.5, 1.0, -0.25])
    assert g_mm @ g_uni < 0
    k0, k1, cos = pareto_weights(torch.tensor(g_mm), torch.tensor(g_uni))
    assert cos == pytest.approx(g_mm @ g_uni / np.linalg.norm(g_mm) / np.linalg.norm(g_uni))
    assert k0 == pytest.approx(_brute_force_min_norm(g_mm, g_uni), abs=2e-6)
    assert k0 + k1 == pytest.approx(1.0)


def test_mmpareto_branch_switches_at_cos_zero():
    g_mm = torch.tensor([2.0, 0.0])
    assert pareto_weights(g_mm, torch.tensor([1e-3, 1.0]))[:2] == (0.5, 0.5)  # cos > 0: equal weights
    # cos = 0 exactly is not > 0: the min-norm point of [2,0] and [0,1] is c = 1/5
    assert pareto_weights(g_mm, torch.tensor([0.0, 1.0]))[0] == pytest.approx(0.2)
    assert pareto_weights(g_mm, torch.tensor([-1e-3, 1.0]))[0] == pytest.approx(
        _brute_force_min_norm(np.array([2.0, 0.0]), np.array([-1e-3, 1.0])), abs=2e-6)


def test_mmpareto_combine_rescales_to_the_summed_norm_then_gamma():
    # equal weights: new = g_mm + g_uni has the summed gradient's norm -> only gamma
    g_mm, g_uni = torch.tensor([3.0, 0.0]), torch.tensor([0.0, 4.0])
    torch.testing.assert_close(combine(g_mm, g_uni, (0.5, 0.5), 1.5), (g_mm + g_uni) * 1.5)
    # the min-norm weights of [2, 0] and [0, 1] (c = 0.2): new = 2(0.2·[2, 0] + 0.8·[0, 1]) = [0.8, 1.6],
    # shorter than the summed [2, 1] -> raised to its norm, then gamma
    g_mm, g_uni = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 1.0])
    new = torch.tensor([0.8, 1.6])
    expected = new / new.norm() * math.sqrt(5.0) * 1.5
    torch.testing.assert_close(combine(g_mm, g_uni, (0.2, 0.8), 1.5), expected)
    # a longer recombination is kept as it is: k = (0.9, 0.1) -> [3.6, 0.2], longer than [2, 1]
    torch.testing.assert_close(combine(g_mm, g_uni, (0.9, 0.1), 1.5), torch.tensor([3.6, 0.2]) * 1.5)


def test_mmpareto_step_gives_encoders_the_recombined_and_heads_the_summed_gradient():
    model = _model()
    method = MMPareto(MMParetoParams(gamma=1.5))
    model.add_module("method_modules", torch.nn.ModuleDict(method.extra_modules(model, 3)))
    method.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
    method.on_epoch_start(model, _Ctx(0))
    inputs, labels = _inputs()
    ref = copy.deepcopy(model)
    method.training_step(model, Batch(inputs, labels))
    # independently: one full backward per loss on a copy
    feats = ref.encode(inputs)
    losses = {"mm": F.cross_entropy(ref.fuse(feats), labels)}
    for m in ref.modalities:
        losses[m] = F.cross_entropy(ref.method_modules[f"head_{m}"](feats[m]), labels)
    grads = {}
    for name, loss in losses.items():
        ref.zero_grad()
        loss.backward(retain_graph=True)
        grads[name] = {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p))
                       for n, p in ref.named_parameters()}
    for n, p in model.named_parameters():
        modality = next((m for m in ref.modalities if n.startswith(f"encoders.{m}.")), None)
        if modality is None:  # fusion head and uni-modal heads: plain sum of the three gradients
            torch.testing.assert_close(p.grad, sum(g[n] for g in grads.values()), msg=n)
            continue
        names = [q for q, _ in ref.encoders[modality].named_parameters()]
        flat_mm = torch.cat([grads["mm"][f"encoders.{modality}.{q}"].flatten() for q in names]).double().numpy()
        flat_uni = torch.cat([grads[modality][f"encoders.{modality}.{q}"].flatten() for q in names]).double().numpy()
        if flat_mm @ flat_uni > 0:
            k = (0.5, 0.5)
        else:
            c = _brute_force_min_norm(flat_mm, flat_uni)
            k = (c, 1 - c)
        gm, gu = grads["mm"][n], grads[modality][n]
        new = 2 * k[0] * gm + 2 * k[1] * gu
        ratio = (gm + gu).norm() / new.norm()
        expected = new * (ratio if ratio > 1 else 1.0) * 1.5
        torch.testing.assert_close(p.grad, expected, rtol=1e-4, atol=1e-6, msg=n)


# -- InfoReg --------------------------------------------------------------------------------------------------


def test_inforeg_k_on_a_trace_sequence_matches_the_official_means():
    values = [4.0, 3.0, 2.5, 2.0, 1.8, 1.7, 1.65, 1.6, 1.58, 1.57, 1.565, 1.56]
    trace = [0.0] * 10
    for t in values:
        trace.append(t)
        tr1, tr2 = sum(trace[-10:]) / 10, sum(trace[-11:-1]) / 10  # the official expression
        assert window_k(trace) == pytest.approx((tr1 - tr2) / tr1)
    assert window_k([0.0] * 10 + [4.0]) == pytest.approx(1.0)  # epoch 1: (4 - 0) / 4
    assert window_k([0.0] * 10 + [4.0, 2.0, 1.0]) == pytest.approx(1 / 7)
    # the last value: (1.56 - 3.0) / (sum of the last ten) -- a negative k, outside the window
    assert window_k(trace) == pytest.approx((1.56 - 3.0) / sum(values[2:]))


def test_inforeg_beta_per_batch():
    p = InfoRegParams()
    assert betas(20.3, 20.0, 0.5, p) == pytest.approx((0.95 * math.exp(math.tanh(0.3)), 0.0))
    assert betas(20.0, 20.3, 0.5, p) == pytest.approx((0.0, 0.1 * math.exp(math.tanh(0.3))))
    assert betas(20.3, 20.0, 0.05, p) == (0.0, 0.0)  # k must exceed K = 0.05
    assert betas(20.0, 20.0, 0.5, p) == (0.0, 0.0)  # a tie regulates nobody


def test_inforeg_adds_the_proximal_term_to_the_leading_encoder_and_tracks_its_trace():
    model = _model()
    method = InfoReg(InfoRegParams())
    method.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
    method.on_epoch_start(model, _Ctx(0))  # k = 1 at epoch 0
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
            p.grad = torch.zeros_like(p)
    method._scores = {"audio": 30.0, "visual": 29.5}  # audio leads by 0.5
    method.after_backward(model)
    beta = 0.95 * math.exp(math.tanh(0.5))
    for n, p in model.named_parameters():
        expected = beta * (p.detach() - start[n]) if n.startswith("encoders.audio.") else torch.zeros_like(p)
        torch.testing.assert_close(p.grad, expected, msg=n)
    metrics = method.on_epoch_end(model, _Ctx(0))
    convs = [mod.weight for mod in model.encoders["audio"].modules() if isinstance(mod, torch.nn.Conv2d)]
    expected_trace = sum(float((w.grad ** 2).mean()) for w in convs)
    assert metrics["diag/trace"] == pytest.approx(expected_trace, rel=1e-5)
    assert method.trace == [0.0] * 10 + [pytest.approx(expected_trace, rel=1e-5)]


def test_inforeg_loss_is_the_three_cross_entropies():
    model = _model()
    method = InfoReg(InfoRegParams())
    method.on_epoch_start(model, _Ctx(0))
    inputs, labels = _inputs()
    out = model(inputs)
    w, b = model.fusion.fc_out.weight, model.fusion.fc_out.bias
    expected = (F.cross_entropy(out.logits, labels)
                + F.cross_entropy(out.features["audio"] @ w[:, :32].T + b / 2, labels)
                + F.cross_entropy(out.features["visual"] @ w[:, 32:].T + b / 2, labels))
    torch.testing.assert_close(method.loss(out, labels), expected)


# -- modality valuation ---------------------------------------------------------------------------------------


def _shapley_by_definition(ca: int, cv: int, call: int) -> tuple[float, float]:
    value = {(): 0.0, ("a",): 1.0 * ca, ("v",): 1.0 * cv, ("a", "v"): 2.0 * call}
    phi_a = 0.5 * (value[("a",)] - value[()]) + 0.5 * (value[("a", "v")] - value[("v",)])
    phi_v = 0.5 * (value[("v",)] - value[()]) + 0.5 * (value[("a", "v")] - value[("a",)])
    return phi_a, phi_v


def test_valuation_shapley_values_for_every_correctness_case():
    cases = [(ca, cv, call) for ca in (0, 1) for cv in (0, 1) for call in (0, 1)]
    ca, cv, call = (np.array(x) for x in zip(*cases, strict=True))
    phi_a, phi_v = shapley_values(ca, cv, call)
    for i, case in enumerate(cases):
        assert (phi_a[i], phi_v[i]) == _shapley_by_definition(*case), case
    # the four cases with the fused prediction right, and the four with it wrong
    table = {(1, 1, 1): (1.0, 1.0), (1, 0, 1): (1.5, 0.5), (0, 1, 1): (0.5, 1.5), (0, 0, 1): (1.0, 1.0),
             (1, 1, 0): (0.0, 0.0), (1, 0, 0): (0.5, -0.5), (0, 1, 0): (-0.5, 0.5), (0, 0, 0): (0.0, 0.0)}
    for i, case in enumerate(cases):
        assert (phi_a[i], phi_v[i]) == table[case]


def test_valuation_sample_level_copy_counts_and_zeroed_modality():
    assert [copies_for(x) for x in (1.5, 1.0, 0.5, 0.0, -0.5)] == [0, 0, 1, 2, 3]
    phi_a = np.array([1.5, 1.0, 0.5, 0.0, -0.5])
    phi_v = np.array([1.0, 1.0, 1.0, 1.0, 0.5])
    rows, keep = sample_level_rows(phi_a, phi_v)
    assert list(rows[:5]) == [0, 1, 2, 3, 4] and keep[:5].all()
    extra_rows, extra_keep = rows[5:], keep[5:]
    counts_a = [int(((extra_rows == i) & ~extra_keep[:, 1]).sum()) for i in range(5)]
    counts_v = [int(((extra_rows == i) & ~extra_keep[:, 0]).sum()) for i in range(5)]
    assert counts_a == [0, 0, 1, 2, 3]  # copies for a weak audio contribution: visual zeroed
    assert counts_v == [0, 0, 0, 0, 1]  # φ_v = 0.5 -> one copy with audio zeroed
    assert (extra_keep.sum(1) == 1).all()  # every copy keeps exactly one modality


def test_valuation_modality_level_adds_copies_with_the_stronger_modality_zeroed():
    n = 30
    torch.manual_seed(0)
    # audio contributes 1.5 everywhere, visual 0.5: gap_a = -0.5, gap_v = 0.5 -> int(30 * 1 * 2/3 * 1) = 20
    rows, keep, part_a, part_v = modality_level_rows(np.full(n, 1.5), np.full(n, 0.5), 0.2, 1.0)
    assert (part_a, part_v) == (1.5, 0.5)
    assert len(rows) == n + 20 and list(rows[:n]) == list(range(n))
    assert (keep[n:] == [False, True]).all()  # audio (the stronger) is zeroed in the copies
    rows, keep, _, _ = modality_level_rows(np.full(n, 0.5), np.full(n, 1.0), 0.2, 0.5)
    assert len(rows) == n + int(n * 0.5 * 2 / 3 * 0.5) and (keep[n:] == [True, False]).all()


def test_valuation_rows_reach_the_engine_with_their_masks(tiny_config, tiny_data):
    engine = Engine(tiny_config(method="valuation", epochs=2, valuation__warmup=1), tiny_data)
    m0 = engine.run_epoch()
    n = len(tiny_data.splits["train"])
    assert m0["diag/train_rows"] == len(engine.method.rows) >= n
    seen = []
    original = engine.method.training_step

    def spy(model, batch):
        seen.append((len(batch.labels), None if batch.keep is None else batch.keep.clone()))
        return original(model, batch)

    engine.method.training_step = spy
    rows, keep = engine.method.rows.copy(), engine.method.keep.copy()  # built after epoch 0, trained in epoch 1
    engine.run_epoch()
    skipped = 1 if len(rows) % 32 == 1 else 0  # a last batch of one is skipped (BatchNorm)
    assert sum(size for size, _ in seen) == len(rows) - skipped
    if not skipped:
        masks = torch.cat([k for _, k in seen])
        assert int((~masks).sum()) == int((~keep).sum()) > 0


# -- every method through the engine ----------------------------------------------------------------------------


DIAG = {"ogm_ge": "diag/coeff_audio", "opm": "diag/q_audio", "mmpareto": "diag/cos_audio", "inforeg": "diag/k",
        "valuation": "diag/value_audio"}


@pytest.mark.parametrize("method", COMPARATORS)
def test_each_method_trains_through_the_engine_with_the_common_metrics(method, tiny_config, tiny_data):
    from tests.training.test_engine import DESIGN_KEYS

    engine = Engine(tiny_config(method=method, epochs=2, opm__warmup_epochs=0, valuation__warmup=1), tiny_data)
    before = {n: p.detach().clone() for n, p in engine.model.named_parameters()}
    history = [engine.run_epoch() for _ in range(2)]
    for m in history:
        assert m.keys() >= DESIGN_KEYS
        assert math.isfinite(m["train/loss"])
        assert m["balance/gap"] == pytest.approx(abs(m["val/acc_audio"] - m["val/acc_visual"]))
    assert DIAG[method] in history[-1]
    assert any(not torch.equal(before[n], p) for n, p in engine.model.named_parameters())
    assert REGISTRY[method].name == method


@pytest.mark.parametrize("method", ["mmpareto", "valuation"])
def test_methods_without_head_arithmetic_accept_film_fusion(method, tiny_config, tiny_data):
    engine = Engine(tiny_config(method=method, fusion="film", epochs=1, valuation__warmup=1), tiny_data)
    assert math.isfinite(engine.run_epoch()["train/loss"])


# -- exact resume -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", [
    "inforeg", pytest.param("valuation", marks=pytest.mark.slow),
    pytest.param("opm", marks=pytest.mark.slow), pytest.param("ogm_ge", marks=pytest.mark.slow),
    pytest.param("mmpareto", marks=pytest.mark.slow),
])
def test_stateful_methods_resume_exactly(method, tiny_config, tiny_data, tmp_path):
    """InfoReg's trace list and epoch-start weights, valuation's re-sampled rows, the RNG behind OGM-GE's noise
    and OPM's drops, MMPareto's extra heads: a run restored mid-way ends with the uninterrupted run's metrics."""
    overrides = {"method": method, "epochs": 4, "valuation__warmup": 1, "opm__warmup_epochs": 0,
                 "data__augment": True}
    expected, resumed = straight_and_resumed(lambda: Engine(tiny_config(**overrides), tiny_data), 4, 2,
                                             tmp_path / "state.pt")
    got = [without_time(resumed.run_epoch()) for _ in range(2)]
    assert got == expected[2:]
    if method == "inforeg":
        assert len(resumed.method.trace) == 10 + 4
    if method == "valuation":
        assert expected[3]["diag/train_rows"] > len(tiny_data.splits["train"])  # the resumed part re-samples
