"""The epoch loop: metric names, validation-only selection, every fusion, exact save/restore."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchvision.models.resnet import BasicBlock

from drl_tune.ground.errors import ConfigError
from drl_tune.models import MultimodalClassifier
from drl_tune.training.engine import Engine
from tests.conftest import straight_and_resumed, without_time

DESIGN_KEYS = {
    "epoch", "train/loss", "val/acc", "val/macro_f1", "val/acc_best", "test/acc", "test/macro_f1",
    "test/acc_at_best_val", "val/acc_audio", "val/acc_visual", "balance/gap", "time/epoch_s",
}


def test_metrics_have_the_design_names_and_selection_uses_val_only(tiny_config, tiny_data):
    engine = Engine(tiny_config(epochs=4), tiny_data)
    history = [engine.run_epoch() for _ in range(4)]
    assert engine.done
    for i, m in enumerate(history):
        assert m.keys() >= DESIGN_KEYS
        assert m["epoch"] == i
        assert m["balance/gap"] == pytest.approx(abs(m["val/acc_audio"] - m["val/acc_visual"]))
        for key in ("val/acc", "test/acc", "val/macro_f1", "val/acc_audio"):
            assert 0.0 <= m[key] <= 1.0
    # best-so-far by validation accuracy (first best kept on ties); test is read at that epoch
    for i, m in enumerate(history):
        best = max(range(i + 1), key=lambda j: (history[j]["val/acc"], -j))
        assert m["val/acc_best"] == history[best]["val/acc"]
        assert m["test/acc_at_best_val"] == history[best]["test/acc"]


def test_macro_f1_matches_sklearn_on_the_engine_predictions(tiny_config, tiny_data):
    from sklearn.metrics import f1_score

    engine = Engine(tiny_config(epochs=1), tiny_data)
    m = engine.run_epoch()
    logits, _ = engine._forward("val")
    labels = tiny_data.splits["val"].labels
    assert m["val/acc"] == pytest.approx(float(np.mean(logits.argmax(1) == labels)))
    expected = f1_score(labels, logits.argmax(1), average="macro", labels=np.arange(tiny_data.n_classes),
                        zero_division=0)
    assert m["val/macro_f1"] == pytest.approx(expected)


@pytest.mark.parametrize("fusion", ["concat", "sum", "film", "gated"])
def test_every_fusion_trains_and_reports_unimodal_accuracy(fusion, tiny_config, tiny_data):
    engine = Engine(tiny_config(fusion=fusion, epochs=1), tiny_data)
    m = engine.run_epoch()
    assert math.isfinite(m["train/loss"])
    assert {"val/acc_audio", "val/acc_visual"} <= m.keys()


def test_single_modality_run(tiny_config, tiny_data):
    engine = Engine(tiny_config(data__modalities="visual", epochs=1), tiny_data)
    m = engine.run_epoch()
    assert list(engine.model.encoders) == ["visual"]
    assert "val/acc_audio" not in m and m["balance/gap"] == 0.0
    with pytest.raises(ConfigError, match="not a modality"):
        Engine(tiny_config(data__modalities="smell"), tiny_data)


def test_encoders_are_torchvision_resnet18_with_a_width_knob():
    model = MultimodalClassifier({"audio": "spectrogram", "visual": "frames", "flow": "flow"}, 5, width=8)
    for name, encoder in model.encoders.items():
        blocks = [b for b in encoder.modules() if isinstance(b, BasicBlock)]
        assert len(blocks) == 8, name  # ResNet18 = 4 stages x 2 BasicBlocks
        assert encoder.out_dim == 64
    out = model({
        "audio": torch.randn(2, 40, 32),
        "visual": torch.randn(2, 3, 3, 32, 32),
        "flow": torch.randn(2, 3, 2, 32, 32),
    })
    assert out.logits.shape == (2, 5)
    assert {k: tuple(v.shape) for k, v in out.features.items()} == {k: (2, 64) for k in ("audio", "visual", "flow")}
    assert model.encoders["flow"].trunk.conv1.in_channels == 2


def test_visual_features_pool_over_frames():
    torch.manual_seed(0)
    model = MultimodalClassifier({"audio": "spectrogram", "visual": "frames"}, 3, width=4).eval()
    frames = torch.randn(1, 3, 3, 32, 32)
    with torch.no_grad():
        together = model.encoders["visual"](frames)
        # average of per-frame pooled features == pooled features of the clip (same map size per frame)
        per_frame = torch.stack([model.encoders["visual"](frames[:, t : t + 1]) for t in range(3)]).mean(0)
    torch.testing.assert_close(together, per_frame)


@pytest.mark.parametrize("method", ["joint", "drl"])
def test_save_and_restore_mid_run_reproduces_the_uninterrupted_metrics(method, tiny_config, tiny_data, tmp_path):
    overrides = {"method": method, "epochs": 5, "drl__diagnosis_interval": 2, "drl__max_reinits": 2,
                 "data__augment": True}
    expected, resumed = straight_and_resumed(lambda: Engine(tiny_config(**overrides), tiny_data), 5, 3,
                                             tmp_path / "state.pt")
    assert resumed.epoch == 3
    got = [without_time(resumed.run_epoch()) for _ in range(2)]
    assert got == expected[3:]
    if method == "drl":
        assert "diag/alpha_audio" in expected[4]  # the resumed part includes a re-init (epoch 4)


def test_checkpoint_of_another_method_is_refused(tiny_config, tiny_data, tmp_path):
    engine = Engine(tiny_config(method="joint"), tiny_data)
    engine.save(tmp_path / "s.pt")
    other = Engine(tiny_config(method="drl"), tiny_data)
    with pytest.raises(ConfigError, match="method"):
        other.load(tmp_path / "s.pt")


def test_a_diverging_run_stops_with_a_clear_error(tiny_config, tiny_data):
    engine = Engine(tiny_config(lr=1e6, epochs=3), tiny_data)
    with pytest.raises(FloatingPointError, match="lower lr"):
        for _ in range(3):
            engine.run_epoch()


def test_engine_passes_the_manifests_augmentation_policy_and_aspect(tiny_config, tiny_data, monkeypatch):
    import dataclasses

    import drl_tune.training.engine as engine_module

    seen = []
    real = engine_module.prepare_input

    def spy(kind, batch, device, **kwargs):
        seen.append((kind, kwargs["policy"], kwargs["aspect"], kwargs["augment"]))
        return real(kind, batch, device, **kwargs)

    monkeypatch.setattr(engine_module, "prepare_input", spy)
    data = dataclasses.replace(tiny_data, preprocessing={"augment": {"visual": "flip"}, "source_aspect": 4 / 3})
    engine = Engine(tiny_config(epochs=1, data__augment=True), data)
    engine.train_epoch()
    assert ("frames", "flip", 4 / 3, True) in seen and ("spectrogram", None, 4 / 3, True) in seen
