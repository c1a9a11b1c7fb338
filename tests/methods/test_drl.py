"""DRL's re-learning step: the exact parameter update, what it leaves alone, and when it happens."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from drl_tune.ground.errors import ConfigError
from drl_tune.methods.drl import DRL, DRLParams, soft_reinit
from drl_tune.methods.drl_diagnosis import diagnose
from drl_tune.models import MultimodalClassifier
from drl_tune.training.config import make_config
from drl_tune.training.engine import Engine

MODALITIES = {"audio": "spectrogram", "visual": "frames"}


def _perturbed_model(seed: int = 0) -> MultimodalClassifier:
    torch.manual_seed(seed)
    model = MultimodalClassifier(MODALITIES, n_classes=3, width=4)
    return model


def test_soft_reinit_moves_every_parameter_to_the_blend():
    model = _perturbed_model()
    encoder = model.encoders["audio"]
    init = {k: v.clone() for k, v in encoder.state_dict().items()}
    with torch.no_grad():  # "training" moved every parameter
        for p in encoder.parameters():
            p.add_(torch.randn_like(p))
    before = {k: v.detach().clone() for k, v in encoder.named_parameters()}
    strength = 0.37
    soft_reinit(encoder, init, strength)
    for name, param in encoder.named_parameters():
        expected = strength * init[name] + (1 - strength) * before[name]
        torch.testing.assert_close(param.detach(), expected)
        assert not torch.allclose(param.detach(), before[name])


def test_soft_reinit_extremes():
    model = _perturbed_model()
    encoder = model.encoders["visual"]
    init = {k: v.clone() for k, v in encoder.state_dict().items()}
    with torch.no_grad():
        for p in encoder.parameters():
            p.mul_(3.0).add_(1.0)
    moved = {k: v.detach().clone() for k, v in encoder.named_parameters()}
    soft_reinit(encoder, init, 0.0)
    for name, p in encoder.named_parameters():
        torch.testing.assert_close(p.detach(), moved[name])
    soft_reinit(encoder, init, 1.0)
    for name, p in encoder.named_parameters():
        torch.testing.assert_close(p.detach(), init[name])
    with pytest.raises(ValueError):
        soft_reinit(encoder, init, 1.5)


def test_drl_epoch_end_updates_encoders_only_and_by_the_reported_alpha(tiny_config, tiny_data):
    config = tiny_config(method="drl", epochs=3, drl__diagnosis_interval=1, drl__max_reinits=1)
    engine = Engine(config, tiny_data)
    init = {m: {k: v.clone() for k, v in enc.state_dict().items()} for m, enc in engine.model.encoders.items()}
    # train one epoch and evaluate by hand, then call the hook on a known "before" state
    engine.epoch = 1  # make this a diagnosis epoch (index 1 with interval 1)
    engine.train_epoch()
    before = copy.deepcopy(engine.model.state_dict())
    buffers_before = {k: v.clone() for k, v in engine.model.named_buffers()}
    metrics = engine.method.on_epoch_end(engine.model, engine)
    after = engine.model.state_dict()
    for m in engine.model.modalities:
        alpha = metrics[f"diag/alpha_{m}"]
        assert 0.0 <= alpha <= 1.0
        gap = abs(metrics[f"diag/purity_train_{m}"] - metrics[f"diag/purity_val_{m}"])
        assert alpha == pytest.approx(np.tanh(config.params.lam * gap))
        for name, _ in engine.model.encoders[m].named_parameters():
            key = f"encoders.{m}.{name}"
            torch.testing.assert_close(after[key], alpha * init[m][name] + (1 - alpha) * before[key])
    for key in after:
        if key.startswith("fusion."):
            torch.testing.assert_close(after[key], before[key])  # fusion and head untouched
    for key, value in engine.model.named_buffers():
        torch.testing.assert_close(value, buffers_before[key])  # BN running stats untouched by default


def test_drl_options_blend_bn_stats_and_reset_momentum(tiny_config, tiny_data):
    config = tiny_config(method="drl", drl__diagnosis_interval=1, drl__lam=50.0,
                         drl__blend_bn_stats=True, drl__reset_momentum=True)
    engine = Engine(config, tiny_data)
    init = {m: {k: v.clone() for k, v in enc.state_dict().items()} for m, enc in engine.model.encoders.items()}
    engine.epoch = 1
    engine.train_epoch()
    before = {k: v.clone() for k, v in engine.model.named_buffers()}
    assert all(p in engine.optimizer.state for p in engine.model.parameters())
    metrics = engine.method.on_epoch_end(engine.model, engine)
    for m in engine.model.modalities:
        alpha = metrics[f"diag/alpha_{m}"]
        for name, buf in engine.model.encoders[m].named_buffers():
            if name.endswith(("running_mean", "running_var")):
                expected = alpha * init[m][name] + (1 - alpha) * before[f"encoders.{m}.{name}"]
                torch.testing.assert_close(buf, expected)
        assert all(p not in engine.optimizer.state for p in engine.model.encoders[m].parameters())
    assert all(p in engine.optimizer.state for p in engine.model.fusion.parameters())


@pytest.mark.parametrize(("interval", "max_reinits", "epochs", "expected"), [
    (2, 2, 7, [2, 4]),        # capped by max_reinits: no re-init at epoch 6
    (3, 5, 10, [3, 6, 9]),    # capped by the number of epochs
    (1, 0, 3, []),            # max_reinits = 0 disables DRL
])
def test_drl_reinitialises_exactly_at_multiples_of_the_interval(interval, max_reinits, epochs, expected):
    method = DRL(DRLParams(diagnosis_interval=interval, max_reinits=max_reinits))
    fired = []
    for epoch in range(epochs):
        if method.is_diagnosis_epoch(epoch):
            fired.append(epoch)
            method.reinits_done += 1
    assert fired == expected


def test_drl_diagnosis_epochs_in_a_real_run(tiny_config, tiny_data):
    engine = Engine(tiny_config(method="drl", epochs=5, drl__diagnosis_interval=2, drl__max_reinits=1), tiny_data)
    diag_epochs = []
    while not engine.done:
        m = engine.run_epoch()
        if "diag/alpha_audio" in m:
            diag_epochs.append(int(m["epoch"]))
            assert {"diag/purity_train_visual", "diag/purity_val_visual", "diag/alpha_visual"} <= m.keys()
    assert diag_epochs == [2]
    assert engine.method.reinits_done == 1


# --- the k-means seed and the restarts ------------------------------------------------------------------


class _FixedFeatures:
    """An EpochContext whose features are given: the diagnosis sees exactly these arrays."""

    def __init__(self, seed: int, feats: dict[str, tuple[dict[str, np.ndarray], np.ndarray]]) -> None:
        self.epoch, self.n_classes, self.seed = 1, 6, seed
        self.optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
        self._feats = feats

    def features(self, split: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
        return self._feats[split]


def _overlapping_features(seed: int = 0) -> dict[str, tuple[dict[str, np.ndarray], np.ndarray]]:
    """Six overlapping Gaussian classes per modality: k-means' partition depends on its start."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in (("train", 300), ("val", 150)):
        y = rng.integers(0, 6, n)
        out[split] = ({m: rng.normal(0, 1, (6, 16))[y] + rng.normal(0, 2.0, (n, 16)) for m in MODALITIES}, y)
    return out


def _diagnose_once(params: DRLParams, run_seed: int, feats) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    model = _perturbed_model()
    method = DRL(params)
    method.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
    with torch.no_grad():
        for p in model.encoders.parameters():
            p.add_(1.0)  # "training" moved the encoders away from θ_init
    metrics = method.on_epoch_end(model, _FixedFeatures(run_seed, feats))
    return metrics, {k: v.clone() for k, v in model.state_dict().items()}


def test_official_kmeans_seed_clusters_identically_whatever_the_trial_seed():
    feats = _overlapping_features()
    params = DRLParams(diagnosis_interval=1, stability_restarts=0)
    assert params.kmeans_seed == "official" and params.kmeans_n_init == 1  # the defaults are the paper's code
    runs = [_diagnose_once(params, run_seed, feats)[0] for run_seed in (1, 2, 3)]
    assert runs[0] == runs[1] == runs[2]
    # and it is KMeans(random_state=0): the same as diagnosing with seed 0 directly
    (f_train, y_train), (f_val, y_val) = feats["train"], feats["val"]
    d = diagnose(f_train["audio"], y_train, f_val["audio"], y_val, n_clusters=6, reinit_lambda=3.0, seed=0)
    assert runs[0]["diag/alpha_audio"] == d.strength


def test_trial_kmeans_seed_follows_the_run_seed_and_can_change_alpha():
    feats = _overlapping_features()
    params = DRLParams(diagnosis_interval=1, stability_restarts=0, kmeans_seed="trial")
    alphas = {s: _diagnose_once(params, s, feats)[0]["diag/alpha_audio"] for s in range(1, 6)}
    assert len(set(alphas.values())) > 1  # on these overlapping classes the start changes α
    (f_train, y_train), (f_val, y_val) = feats["train"], feats["val"]
    for s, a in alphas.items():
        assert a == diagnose(f_train["audio"], y_train, f_val["audio"], y_val, n_clusters=6, reinit_lambda=3.0,
                             seed=s).strength


def test_stability_restarts_log_the_spread_without_changing_the_reinit():
    feats = _overlapping_features()
    plain, state_plain = _diagnose_once(DRLParams(diagnosis_interval=1, stability_restarts=0), 0, feats)
    spread, state_spread = _diagnose_once(DRLParams(diagnosis_interval=1, stability_restarts=6), 0, feats)
    assert not any(k.startswith(("diag/alpha_std", "diag/gap_std")) for k in plain)
    for m in MODALITIES:
        assert spread[f"diag/alpha_{m}"] == plain[f"diag/alpha_{m}"]
        assert spread[f"diag/alpha_min_{m}"] <= spread[f"diag/alpha_{m}"] <= spread[f"diag/alpha_max_{m}"]
        assert spread[f"diag/alpha_std_{m}"] > 0 and spread[f"diag/gap_std_{m}"] > 0
    for key, value in state_plain.items():  # the same re-initialisation, parameter for parameter
        torch.testing.assert_close(state_spread[key], value, rtol=0, atol=0)


def test_torch_kmeans_backend_through_drl():
    feats = _overlapping_features()
    metrics, _ = _diagnose_once(DRLParams(diagnosis_interval=1, stability_restarts=2, kmeans_backend="torch"), 0, feats)
    for m in MODALITIES:
        assert 0.0 <= metrics[f"diag/alpha_{m}"] <= 1.0 and f"diag/alpha_std_{m}" in metrics


@pytest.mark.parametrize(("key", "value", "message"), [
    ("drl.kmeans_seed", "random", "drl.kmeans_seed must be 'official'"),
    ("drl.kmeans_n_init", "0", "drl.kmeans_n_init must be an integer >= 1, got 0"),
    ("drl.stability_restarts", "-1", "drl.stability_restarts must be an integer >= 0, got -1"),
    ("drl.kmeans_backend", "faiss", "drl.kmeans_backend must be one of sklearn, torch"),
])
def test_kmeans_knobs_reject_bad_values(key, value, message):
    with pytest.raises(ConfigError, match=message):
        make_config({"method": "drl", key: value})


def test_the_old_key_for_lambda_is_read_with_a_notice(capsys, tmp_path):
    """``drl.alpha`` was λ's key until 2026-12-07: it is still read (a --set, a space file, a nested block) as
    ``drl.lam``, with one line saying so; giving both names is refused."""
    from drl_tune.ground.errors import ConfigError
    from drl_tune.study.spaces import load_space
    from drl_tune.training import config as config_module
    from drl_tune.training.config import make_config, parse_assignments

    config_module._NOTED.clear()
    assert make_config({"method": "drl", "drl.alpha": 4.5}).params.lam == 4.5
    assert make_config({"method": "drl", "drl": {"alpha": 2.0}}).params.lam == 2.0
    assert parse_assignments(["drl.alpha=1.5"]) == {"drl.lam": "1.5"}
    err = capsys.readouterr().err
    assert err.count("note: drl.alpha is deprecated since 2026-12-07; use drl.lam") == 1  # once per process
    with pytest.raises(ConfigError, match="drl.alpha and drl.lam are the same key"):
        make_config({"drl.lam": 1.0, "drl.alpha": 2.0})
    space = tmp_path / "old.yaml"
    space.write_text("dataset: {name: synthetic}\ndefaults: {method: drl, drl.alpha: 2.5}\n"
                     "search: {drl.alpha: {type: uniform, low: 1, high: 4}}\n")
    loaded = load_space(str(space))
    assert loaded.defaults["drl.lam"] == 2.5 and "drl.lam" in loaded.search
