"""Data Remixing: the KL-to-uniform score, the per-sample assignment, the uni-modal batches the engine builds for it,
the warm-up and remixing losses — expected numbers computed by hand or with plain torch on hand-built tensors —
and training, exact resume and refusals through the engine."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from drl_tune.ground.errors import ConfigError
from drl_tune.methods import REGISTRY
from drl_tune.methods.base import Batch, modality_mismatch
from drl_tune.methods.remix import Remix, RemixParams, assign, kl_to_uniform, remix_rows
from drl_tune.models import MultimodalClassifier
from drl_tune.training.config import make_config
from drl_tune.training.engine import Engine
from tests.conftest import straight_and_resumed, without_time

TWO = {"audio": "spectrogram", "visual": "frames"}

# the machine is shared: the unit cases here run on one torch thread (the engine cases set their own)
pytestmark = pytest.mark.usefixtures("one_thread")


def _model_with_heads(params: RemixParams | None = None) -> tuple[Remix, MultimodalClassifier]:
    torch.manual_seed(0)
    model = MultimodalClassifier(TWO, n_classes=3, width=4)
    method = Remix(params or RemixParams())
    model.add_module("method_modules", nn.ModuleDict(method.extra_modules(model, 3)))
    return method, model


def test_kl_to_uniform_is_the_official_clipped_kl_in_bits():
    logits = np.array([[0.0, 0.0, 0.0], [math.log(2.0), 0.0, 0.0], [0.0, -100.0, -100.0]])
    got = kl_to_uniform(logits)
    assert got[0] == pytest.approx(0.0, abs=1e-12)
    # p = (1/2, 1/4, 1/4): Σ p·log2(3p)
    assert got[1] == pytest.approx(0.5 * math.log2(1.5) + 2 * 0.25 * math.log2(0.75), rel=1e-12)
    # p ≈ (1, e^-100, e^-100): the two small ones clipped to 1e-9 (and not renormalised)
    assert got[2] == pytest.approx(math.log2(3.0) + 2 * 1e-9 * math.log2(3e-9), rel=1e-12)


def test_each_sample_goes_to_its_less_confident_modality_ties_to_the_second():
    np.testing.assert_array_equal(assign(np.array([0.1, 0.5, 0.5, 0.0]), np.array([0.2, 0.5, 0.4, 0.0])),
                                  [0, 1, 1, 1])
    rows, keep = remix_rows(np.array([0, 1, 1, 0, 1]))
    np.testing.assert_array_equal(rows, [1, 2, 4, 0, 3])  # the second ("video") subset first, as the official
    np.testing.assert_array_equal(keep, [[False, True]] * 3 + [[True, False]] * 2)
    rows, keep = remix_rows(np.array([1, 1]))
    assert keep.shape == (2, 2) and rows.tolist() == [0, 1]


class _FeatureCtx:
    def __init__(self, epoch, feats, labels):
        self.epoch, self._feats, self._labels = epoch, feats, labels

    def features(self, split, indices=None):
        assert split == "train" and indices is None  # training data only, every sample
        return self._feats, self._labels


def test_the_assignment_reads_each_uni_modal_head_on_training_features_from_the_warmup_epoch_on():
    method, model = _model_with_heads(RemixParams(warmup=2))
    with torch.no_grad():
        for m in TWO:  # head logits = (f[0], 0, 0)
            head = model.method_modules[f"head_{m}"]
            head.weight.zero_()
            head.bias.zero_()
            head.weight[0, 0] = 1.0
    audio, visual = np.zeros((4, 32), np.float32), np.zeros((4, 32), np.float32)
    audio[:, 0], visual[:, 0] = [2.0, 0.0, 1.0, 5.0], [1.0, 0.0, 3.0, 5.0]
    ctx = _FeatureCtx(1, {"audio": audio, "visual": visual}, np.zeros(4, np.int64))
    method.on_epoch_start(model, ctx)  # still warm-up: every sample, nothing masked
    rows, keep = method.training_rows(4)
    assert rows.tolist() == [0, 1, 2, 3] and keep is None and method.on_epoch_end(model, ctx) == {}
    ctx.epoch = 2
    method.on_epoch_start(model, ctx)
    # softmax((x, 0, 0)) is more confident the larger x: sample 0's audio is the confident one -> visual; 1 and 3
    # tie -> visual; sample 2's audio is the less confident -> audio
    rows, keep = method.training_rows(4)
    assert rows.tolist() == [0, 1, 3, 2]
    np.testing.assert_array_equal(keep, [[False, True]] * 3 + [[True, False]])

    def kl(x):
        p = np.array([math.exp(x), 1.0, 1.0]) / (math.exp(x) + 2.0)
        return float(sum(q * math.log2(3 * q) for q in p))

    metrics = method.on_epoch_end(model, ctx)
    assert metrics["diag/remix_share_audio"] == 0.25 and metrics["diag/remix_share_visual"] == 0.75
    assert metrics["diag/kl_audio"] == pytest.approx(np.mean([kl(x) for x in (2, 0, 1, 5)]), rel=1e-6)


def _features_step(method, model, feats, labels, keep):
    """training_step with the encoders bypassed: the features are given leaves (their gradients are checked)."""
    model.encode = lambda inputs: dict(inputs)
    return method.training_step(model, Batch(feats, labels, keep))


def test_warmup_loss_is_fused_plus_weighted_unimodal_heads():
    method, model = _model_with_heads(RemixParams(alpha_first=0.3, alpha_second=0.7))
    torch.manual_seed(1)
    a, v = torch.randn(5, 32), torch.randn(5, 32)
    labels = torch.tensor([0, 1, 2, 1, 0])
    loss = _features_step(method, model, {"audio": a, "visual": v}, labels, None)
    heads, fc = model.method_modules, model.fusion.fc_out
    with torch.no_grad():
        expected = (F.cross_entropy(torch.cat([a, v], 1) @ fc.weight.t() + fc.bias, labels)
                    + 0.3 * F.cross_entropy(a @ heads["head_audio"].weight.t() + heads["head_audio"].bias, labels)
                    + 0.7 * F.cross_entropy(v @ heads["head_visual"].weight.t() + heads["head_visual"].bias, labels))
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)


@pytest.mark.parametrize("kept", [0, 1])
def test_a_remixed_batch_trains_one_modality_with_the_other_zeroed(kept):
    method, model = _model_with_heads(RemixParams(gamma_first=2.0, gamma_second=0.5))
    torch.manual_seed(2)
    a, v = torch.randn(4, 32, requires_grad=True), torch.randn(4, 32, requires_grad=True)
    labels = torch.tensor([2, 0, 1, 1])
    keep = torch.tensor([[kept == 0, kept == 1]] * 4)
    loss = _features_step(method, model, {"audio": a, "visual": v}, labels, keep)
    heads, fc = model.method_modules, model.fusion.fc_out
    name, f, gamma = ("audio", a, 2.0) if kept == 0 else ("visual", v, 0.5)
    with torch.no_grad():
        fused_in = torch.cat([a, torch.zeros_like(v)] if kept == 0 else [torch.zeros_like(a), v], 1)
        head = heads[f"head_{name}"]
        expected = (F.cross_entropy(fused_in @ fc.weight.t() + fc.bias, labels)
                    + gamma * F.cross_entropy(f @ head.weight.t() + head.bias, labels))
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)
    other, other_head = (v, "head_visual") if kept == 0 else (a, "head_audio")
    assert other.grad is not None and torch.count_nonzero(other.grad) == 0  # the zeroed modality learns nothing
    assert f.grad is not None and torch.count_nonzero(f.grad) > 0
    assert model.method_modules[other_head].weight.grad is None or torch.count_nonzero(
        model.method_modules[other_head].weight.grad) == 0


def test_the_engine_batches_each_keep_pattern_on_its_own_in_order_of_first_row(tiny_config, tiny_data):
    engine = Engine(tiny_config(method="remix", batch_size=4), tiny_data)
    rows = np.array([5, 6, 7, 8, 9, 0, 1, 2, 3])
    keep = np.array([[False, True]] * 6 + [[True, False]] * 3)
    batches = list(engine._row_batches(rows, keep))
    assert [len(b) for b in batches] == [4, 2, 3]
    assert sorted(np.concatenate(batches[:2]).tolist()) == [0, 1, 2, 3, 4, 5] and sorted(batches[2]) == [6, 7, 8]
    # the second pattern listed first is trained first; a pattern's batch of one is dropped (the engine's rule)
    batches = list(engine._row_batches(rows[:6][::-1].copy(), np.array([[True, False]] * 5 + [[False, True]])))
    assert [len(b) for b in batches] == [4] and set(batches[0]) <= {0, 1, 2, 3, 4}
    # without batch_by_keep (every other method) all rows are shuffled together, whatever their patterns
    engine.method.batch_by_keep = False
    mixed = list(engine._row_batches(np.arange(8), np.array([[True, False], [False, True]] * 4)))
    assert [len(b) for b in mixed] == [4, 4] and sorted(np.concatenate(mixed).tolist()) == list(range(8))


def test_remix_trains_through_the_engine_in_uni_modal_batches_with_the_common_metrics(tiny_config, tiny_data):
    from tests.training.test_engine import DESIGN_KEYS

    engine = Engine(tiny_config(method="remix", epochs=2, remix__warmup=1), tiny_data)
    seen: list[tuple[bool, bool] | None] = []
    step = engine.method.training_step

    def spy(model, batch):
        if batch.keep is None:
            seen.append(None)
        else:
            patterns = {tuple(bool(x) for x in row) for row in batch.keep.tolist()}
            assert len(patterns) == 1  # every remixed batch is uni-modal
            seen.append(patterns.pop())
        return step(model, batch)

    engine.method.training_step = spy
    before = {n: p.detach().clone() for n, p in engine.model.named_parameters()}
    history = [engine.run_epoch() for _ in range(2)]
    for m in history:
        assert m.keys() >= DESIGN_KEYS and math.isfinite(m["train/loss"])
    assert seen[:3] == [None] * 3  # warm-up: 96 samples in 3 joint batches
    remixed = seen[3:]
    share = history[1]["diag/remix_share_visual"]
    n_v = round(share * 96)
    assert history[1]["diag/remix_share_audio"] == pytest.approx(1 - share)
    # the second modality's batches first, then the first's; ⌈n/32⌉ each (a batch of one dropped)
    expected = [(False, True)] * (-(-n_v // 32) - (n_v % 32 == 1)) + [(True, False)] * (
        -(-(96 - n_v) // 32) - ((96 - n_v) % 32 == 1))
    assert remixed == expected and REGISTRY["remix"].name == "remix"
    assert any(not torch.equal(before[n], p) for n, p in engine.model.named_parameters())
    assert "diag/kl_audio" in history[1] and "diag/kl_audio" not in history[0]


def test_remix_resumes_exactly_between_warmup_and_remixing(tiny_config, tiny_data, tmp_path):
    """The assignment is recomputed from the restored model, the uni-modal heads travel with it: a run restored
    after the warm-up ends with the uninterrupted run's metrics."""
    config = {"method": "remix", "epochs": 4, "data__augment": True, "remix__warmup": 1}
    expected, resumed = straight_and_resumed(lambda: Engine(tiny_config(**config), tiny_data), 4, 2,
                                             tmp_path / "state.pt")
    got = [without_time(resumed.run_epoch()) for _ in range(2)]
    assert got == expected[2:]


@pytest.mark.parametrize(("key", "value"), [
    ("remix.warmup", -1), ("remix.alpha_first", -0.1), ("remix.alpha_second", float("nan")),
    ("remix.gamma_first", -1.0), ("remix.gamma_second", float("inf")), ("remix.beta", 0.5),
])
def test_bad_parameters_are_refused_with_their_key(key, value):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        make_config({key: value})


def test_remix_is_defined_for_two_modalities_only(tiny_config, tiny_data):
    message = modality_mismatch(Remix, "remix", ["sound", "scene", "still"])
    assert message is not None and "exactly two modalities, this run has 3" in message
    with pytest.raises(ConfigError, match="method remix is defined for exactly two modalities, this run has 1"):
        Engine(tiny_config(method="remix", data__modalities="visual", epochs=1), tiny_data)
