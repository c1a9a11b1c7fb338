"""Greedy (balanced multi-modal learning): the MMTM block, the staged forward shared by training and evaluation, the
running mean gates, the conditional learning speeds and the re-balancing schedule — expected numbers computed with
plain torch from the model's own weights and by hand — then the method through the engine (exact resume included)
and its refusals."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from drl_tune.ground.errors import ConfigError
from drl_tune.methods import REGISTRY
from drl_tune.methods import greedy as greedy_module
from drl_tune.methods.base import Batch, modality_mismatch
from drl_tune.methods.greedy import MMTM, Greedy, GreedyParams, speed_difference, speed_groups, step_speeds
from drl_tune.models import MultimodalClassifier
from drl_tune.models.encoders import FeatureSizes
from drl_tune.training.config import make_config
from drl_tune.training.engine import Engine
from tests.conftest import straight_and_resumed, without_time

TWO = {"audio": "spectrogram", "visual": "frames"}

pytestmark = pytest.mark.usefixtures("one_thread")


def with_method(method: Greedy, fusion: str = "sum", seed: int = 0) -> MultimodalClassifier:
    torch.manual_seed(seed)
    model = MultimodalClassifier(TWO, n_classes=3, width=4, fusion=fusion)
    model.add_module("method_modules", nn.ModuleDict(method.extra_modules(model, 3)))
    method.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
    return model


def inputs(batch: int = 4, seed: int = 1) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = {"audio": torch.randn(batch, 20, 16, generator=g), "visual": torch.randn(batch, 2, 3, 16, 16, generator=g)}
    return x, torch.arange(batch) % 3


def hand_gates(block: MMTM, a: torch.Tensor, v: torch.Tensor, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The official squeeze/excitation from the block's weights: audio maps [B, C, h, w], visual [B·T, C, h, w]."""
    b = a.shape[0]
    squeeze = torch.cat([a.mean(dim=(2, 3)), v.reshape(b, frames, *v.shape[1:]).mean(dim=(1, 3, 4))], dim=1)
    hidden = F.relu(F.linear(squeeze, block.squeeze.weight, block.squeeze.bias))
    gate_a, gate_v = (torch.sigmoid(F.linear(hidden, fc.weight, fc.bias)) for fc in block.excite)
    return gate_a, gate_v


def test_mmtm_block_gates_each_samples_maps_and_keeps_running_mean_gates():
    torch.manual_seed(0)
    block = MMTM((6, 6), ratio=4)
    assert block.squeeze.out_features == 6  # int(2·12/4)
    g = torch.Generator().manual_seed(3)
    batches = [(torch.randn(2, 6, 3, 3, generator=g), torch.randn(2 * 3, 6, 2, 2, generator=g)) for _ in range(3)]
    seen = []
    for a, v in batches:
        ga, gv = hand_gates(block, a, v, frames=3)
        seen.append((ga.mean(0), gv.mean(0)))
        out_a, out_v = block([a, v], batch=2)
        torch.testing.assert_close(out_a, a * ga[:, :, None, None])
        torch.testing.assert_close(out_v, (v.reshape(2, 3, 6, 2, 2) * gv[:, None, :, None, None]).reshape(6, 6, 2, 2))
    # official: both running means are built from modality 0's gates (line 114); the mean over the 3 forwards
    expected0 = torch.stack([s[0] for s in seen]).mean(0)
    torch.testing.assert_close(block.mean_gate_0, expected0)
    torch.testing.assert_close(block.mean_gate_1, expected0)
    assert int(block.steps) == 3
    # an evaluation forward leaves the means alone
    block.eval()
    block([batches[0][0], batches[0][1]], batch=2)
    torch.testing.assert_close(block.mean_gate_0, expected0)
    assert int(block.steps) == 3


def test_mmtm_rebalancing_replaces_the_caring_modalitys_gate_by_its_mean_including_this_batch():
    torch.manual_seed(0)
    block = MMTM((4, 4), ratio=2)
    g = torch.Generator().manual_seed(5)
    a1, v1 = torch.randn(3, 4, 2, 2, generator=g), torch.randn(3, 4, 2, 2, generator=g)
    a2, v2 = torch.randn(3, 4, 2, 2, generator=g), torch.randn(3, 4, 2, 2, generator=g)
    ga1, gv1 = hand_gates(block, a1, v1, frames=1)
    block([a1, v1], batch=3, gate_average="own")
    ga2, gv2 = hand_gates(block, a2, v2, frames=1)
    out_a, out_v = block([a2, v2], batch=3, caring=1, gate_average="own")
    mean_v = (gv1.mean(0) + gv2.mean(0)) / 2  # own: modality 1's gates; this batch included
    torch.testing.assert_close(out_v, v2 * mean_v[None, :, None, None])
    torch.testing.assert_close(out_a, a2 * ga2[:, :, None, None])  # the other modality keeps its live gate
    torch.testing.assert_close(block.mean_gate_0, (ga1.mean(0) + ga2.mean(0)) / 2)
    # a third re-balancing forward: the mean takes in that forward's own gate too
    out_v_again = block([a2 * 5, v2], batch=3, caring=1, gate_average="own")[1]
    mean_v3 = (gv1.mean(0) + gv2.mean(0) + hand_gates(block, a2 * 5, v2, 1)[1].mean(0)) / 3
    torch.testing.assert_close(out_v_again, v2 * mean_v3[None, :, None, None])


def test_encode_batch_runs_the_trunks_with_a_block_after_layer2_3_4_in_training_and_evaluation(tiny_config, tiny_data):
    method = Greedy(GreedyParams())
    model = with_method(method)
    x, _ = inputs()
    ea, ev = model.encoders["audio"], model.encoders["visual"]
    blocks = list(model.method_modules["mmtm"])
    assert [b.squeeze.in_features for b in blocks] == [16, 32, 64]  # width 4: 2w, 4w, 8w per trunk
    model.eval()
    with torch.no_grad():
        a = ea.trunk.layer1(ea.trunk.maxpool(ea.trunk.relu(ea.trunk.bn1(ea.trunk.conv1(x["audio"].unsqueeze(1))))))
        v = ev.trunk.layer1(ev.trunk.maxpool(ev.trunk.relu(ev.trunk.bn1(ev.trunk.conv1(x["visual"].flatten(0, 1))))))
        for stage, block in zip(("layer2", "layer3", "layer4"), blocks, strict=True):
            a, v = getattr(ea.trunk, stage)(a), getattr(ev.trunk, stage)(v)
            ga, gv = hand_gates(block, a, v, frames=2)
            a = a * ga[:, :, None, None]
            v = (v.reshape(4, 2, *v.shape[1:]) * gv[:, None, :, None, None]).reshape(v.shape)
        expected = {"audio": a.mean(dim=(2, 3)), "visual": v.reshape(4, 2, *v.shape[1:]).mean(dim=(1, 3, 4))}
        got = method.encode_batch(model, x)
        plain = model.encode(x)  # the encoders alone: what the blocks change
    for m in TWO:
        torch.testing.assert_close(got[m], expected[m])
        assert not torch.allclose(plain[m], got[m])
    # the engine's evaluation (logits, probe and ctx.features) encodes through the method, blocks included
    engine = Engine(tiny_config(method="greedy", fusion="sum", epochs=1), tiny_data)
    feats, _ = engine.features("val")
    with torch.no_grad():
        batch, _ = engine._batch("val", torch.arange(len(tiny_data.splits["val"])).numpy(), train=False)
        direct = engine.method.encode_batch(engine.model, batch)
    torch.testing.assert_close(torch.from_numpy(feats["audio"]), direct["audio"])


def test_the_loss_is_the_sum_of_the_two_branch_cross_entropies():
    method = Greedy(GreedyParams())
    model = with_method(method, fusion="sum")
    x, labels = inputs()
    model.train()
    with torch.no_grad():
        f = method.encode_batch(model, x)
        fc = model.fusion.layers()
        expected = F.cross_entropy(fc[0](f["audio"]), labels) + F.cross_entropy(fc[1](f["visual"]), labels)
    got = method.training_step(model, Batch(x, labels))
    assert float(got) == pytest.approx(float(expected), rel=1e-5)
    assert all(p.grad is not None for p in model.method_modules.parameters())


def _hand_speeds(model: MultimodalClassifier, fusion: str) -> list[float]:
    """The official compute_BDR grouping by parameter names, with plain loops."""
    wn, gn = [0.0] * 4, [0.0] * 4

    def add(i: int, w: torch.Tensor, g: torch.Tensor) -> None:
        wn[i] += float((w.detach().double() ** 2).sum())
        gn[i] += float((g.double() ** 2).sum())

    for name, p in model.named_parameters():
        if name.startswith("method_modules"):
            if ".squeeze." in name:
                add(0, p, p.grad)
                add(1, p, p.grad)
            else:
                add(0 if ".excite.0." in name else 1, p, p.grad)
        elif name.startswith("encoders.audio") or name.startswith("fusion.fc.0"):
            add(2, p, p.grad)
        elif name.startswith("encoders.visual") or name.startswith("fusion.fc.1"):
            add(3, p, p.grad)
        elif name == "fusion.fc_out.weight":
            d = p.shape[1] // 2
            add(2, p[:, :d], p.grad[:, :d])
            add(3, p[:, d:], p.grad[:, d:])
        elif name == "fusion.fc_out.bias":
            add(2, p, p.grad)
            add(3, p, p.grad)
        else:
            raise AssertionError(name)
    return [g / w for g, w in zip(gn, wn, strict=True)]


@pytest.mark.parametrize("fusion", ["sum", "concat"])
def test_learning_speeds_group_the_blocks_and_branches_as_official(fusion):
    method = Greedy(GreedyParams())
    model = with_method(method, fusion=fusion)
    g = torch.Generator().manual_seed(7)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g) * 0.1
    speeds = step_speeds(speed_groups(model))
    for got, want in zip(speeds, _hand_speeds(model, fusion), strict=True):
        assert got == pytest.approx(want, rel=1e-5)
    sums = [0.2, 0.1, 0.4, 0.8]
    assert speed_difference(sums) == pytest.approx(math.log10(0.2 / 0.4) - math.log10(0.1 / 0.8))
    assert math.isnan(speed_difference([0.0, 0.1, 0.4, 0.8]))


def test_rebalancing_schedule_follows_d_threshold_window_and_starting_epoch(monkeypatch):
    """Steps' speeds chosen so that d (from the running sums) is known; the official on_backward_end by hand."""
    method = Greedy(GreedyParams(threshold=0.1, window=2, starting_epoch=1))
    method._groups = [[]]  # not read: step_speeds is replaced
    feed = iter([
        [1.0, 1.0, 1.0, 1.0],  # locked (epoch 0): sums 1,1,1,1 -> d 0
        [9.0, 1.0, 1.0, 1.0],  # locked: sums 10,2,2,2 -> d = log10(5) > 0.1 but no re-balancing yet
        # unlocked from here
        [0.0, 0.0, 0.0, 0.0],  # d = log10(5) -> re-balance modality 0 for the next 2 steps (no speed read there)
        [0.0, 38.0, 0.0, 0.0],  # then: sums 10,40,2,2 -> d = log10(5) - log10(20) < -0.1 -> modality 1
    ])
    read = []

    def speeds(_groups):
        read.append(True)
        return next(feed)

    monkeypatch.setattr(greedy_module, "step_speeds", speeds)
    states = []
    for epoch, steps in ((0, 2), (1, 4)):
        method.on_epoch_start(None, type("Ctx", (), {"epoch": epoch})())  # type: ignore[arg-type]
        method._groups = [[]]
        for _ in range(steps):
            method.after_step(None)  # type: ignore[arg-type]
            states.append((method.curation, method.caring))
    assert states == [(False, 0), (False, 0), (True, 0), (True, 0), (False, 0), (True, 1)]
    assert len(read) == 4  # the two re-balancing steps measured nothing
    assert method.sums == [10.0, 40.0, 2.0, 2.0]


@pytest.mark.parametrize("fusion", ["sum", "concat"])
def test_greedy_trains_through_the_engine_with_the_common_metrics(fusion, tiny_config, tiny_data):
    from tests.training.test_engine import DESIGN_KEYS

    engine = Engine(tiny_config(method="greedy", fusion=fusion, epochs=2, greedy__starting_epoch=0,
                                greedy__threshold=0.0), tiny_data)
    before = {n: p.detach().clone() for n, p in engine.model.named_parameters()}
    history = [engine.run_epoch() for _ in range(2)]
    for m in history:
        assert m.keys() >= DESIGN_KEYS and math.isfinite(m["train/loss"])
        assert "diag/rebalance_audio" in m and "diag/rebalance_visual" in m
    assert any(m["diag/rebalance_audio"] + m["diag/rebalance_visual"] > 0 for m in history)
    assert REGISTRY["greedy"].name == "greedy"
    moved = {n for n, p in engine.model.named_parameters() if not torch.equal(before[n], p)}
    assert any(n.startswith("method_modules.mmtm") for n in moved) and any(n.startswith("encoders") for n in moved)
    assert int(engine.model.method_modules["mmtm"][0].steps) == 6  # 3 training batches an epoch, 2 epochs


def test_greedy_resumes_exactly_in_the_middle_of_a_rebalancing_window(tiny_config, tiny_data, tmp_path):
    """The running sums, the re-balancing state (here a window that crosses the epoch boundary) and the blocks'
    running mean gates: a run restored after epoch 2 ends with the uninterrupted run's metrics."""
    config = {"method": "greedy", "epochs": 4, "data__augment": True, "greedy__starting_epoch": 0,
              "greedy__threshold": 0.0, "greedy__window": 3}
    expected, resumed = straight_and_resumed(lambda: Engine(tiny_config(**config), tiny_data), 4, 2,
                                             tmp_path / "state.pt")
    # 6 steps: a trigger, 3 re-balancing, a trigger, the first of 3 re-balancing steps
    assert resumed.method.curation and resumed.method.curation_step == 1
    assert int(resumed.model.method_modules["mmtm"][2].steps) == 6
    got = [without_time(resumed.run_epoch()) for _ in range(2)]
    assert got == expected[2:]


@pytest.mark.parametrize(("key", "value"), [
    ("greedy.threshold", -0.1), ("greedy.window", 0), ("greedy.starting_epoch", -1), ("greedy.ratio", 0),
    ("greedy.gate_average", "visual"),
])
def test_bad_parameters_are_refused_with_their_key(key, value):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        make_config({key: value})


def test_greedy_refuses_other_modality_counts_feature_encoders_and_mixed_fusions(tiny_config, tiny_data):
    assert modality_mismatch(Greedy, "greedy", ["sound", "scene", "still"]) == (
        "method greedy is defined for exactly two modalities, this run has 3 (sound, scene, still); "
        "set data.modalities to two of them")
    with pytest.raises(ConfigError, match="defined for exactly two modalities"):
        Engine(tiny_config(method="greedy", data__modalities="visual", epochs=1), tiny_data)
    model = MultimodalClassifier({"audio": "spectrogram", "emb": "vector"}, 3, width=4, shapes={"emb": (10,)},
                                 feature_sizes=FeatureSizes(hidden=32))
    with pytest.raises(ConfigError, match="ResNet18 trunks.*'emb' has a VectorEncoder"):
        Greedy(GreedyParams()).extra_modules(model, 3)
    with pytest.raises(ConfigError, match="FiLMFusion"):
        Engine(tiny_config(method="greedy", fusion="film", epochs=1), tiny_data)
    with pytest.raises(ConfigError, match="greedy.ratio"):
        Engine(tiny_config(method="greedy", greedy__ratio=100.0, epochs=1), tiny_data)
