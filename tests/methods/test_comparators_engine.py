"""MMCosine, CML, PMR and AGM through the one engine loop: they train with the common metrics, refuse what they are
not defined for, refuse bad parameters by key, and a run restored from a checkpoint continues exactly."""

from __future__ import annotations

import math

import pytest
import torch

from drl_tune.ground.errors import ConfigError
from drl_tune.methods import REGISTRY
from drl_tune.training.config import make_config
from drl_tune.training.engine import Engine
from tests.conftest import straight_and_resumed, without_time

NEW = ["mmcosine", "cml", "pmr", "agm"]
DIAG = {"mmcosine": "diag/logit_audio", "cml": "diag/cml_penalty", "pmr": "diag/rho", "agm": "diag/coeff_audio"}


@pytest.mark.parametrize("method", NEW)
def test_each_new_method_trains_through_the_engine_with_the_common_metrics(method, tiny_config, tiny_data):
    from tests.training.test_engine import DESIGN_KEYS

    engine = Engine(tiny_config(method=method, epochs=2), tiny_data)
    before = {n: p.detach().clone() for n, p in engine.model.named_parameters()}
    history = [engine.run_epoch() for _ in range(2)]
    for m in history:
        assert m.keys() >= DESIGN_KEYS and math.isfinite(m["train/loss"])
    assert DIAG[method] in history[-1] and math.isfinite(history[-1][DIAG[method]])
    assert any(not torch.equal(before[n], p) for n, p in engine.model.named_parameters())
    assert REGISTRY[method].name == method


@pytest.mark.parametrize("method", ["pmr", "agm"])
def test_pair_methods_refuse_another_number_of_modalities(method, tiny_config, tiny_data):
    assert REGISTRY[method].modalities == 2
    with pytest.raises(ConfigError, match="exactly two modalities"):
        Engine(tiny_config(method=method, data__modalities="visual", epochs=1), tiny_data)


@pytest.mark.parametrize("method", ["cml", "agm", "pmr"])
def test_feature_level_methods_accept_film_fusion(method, tiny_config, tiny_data):
    engine = Engine(tiny_config(method=method, fusion="film", epochs=1), tiny_data)
    assert math.isfinite(engine.run_epoch()["train/loss"])


@pytest.mark.parametrize(("key", "value"), [
    ("mmcosine.scale", 0), ("cml.beta", -1), ("cml.epsilon", -0.1), ("cml.ce", "partial"), ("cml.inner_steps", 0),
    ("pmr.alpha", -1), ("pmr.momentum", 1.5), ("pmr.modulation_ends", -1), ("agm.alpha", 0),
    ("agm.modulation_starts", -1),
])
def test_bad_parameters_are_refused_with_their_key(key, value):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        make_config({key: value})


def test_pmr_reads_features_before_the_epoch_and_trains_in_train_mode(tiny_config, tiny_data):
    engine = Engine(tiny_config(method="pmr", epochs=1), tiny_data)
    modes = []
    original = engine.method.training_step
    engine.method.training_step = lambda model, batch: (modes.append(model.training), original(model, batch))[1]
    engine.run_epoch()
    assert modes and all(modes)
    assert set(engine.method.prototypes) == {"audio", "visual"}
    assert all(p.shape == (tiny_data.n_classes, 32) for p in engine.method.prototypes.values())


@pytest.mark.parametrize("method", ["pmr", "agm", "cml", pytest.param("mmcosine", marks=pytest.mark.slow)])
def test_new_methods_resume_exactly(method, tiny_config, tiny_data, tmp_path):
    """PMR's prototypes (blended from epoch 2 on, so the resumed epochs blend the restored ones), AGM's running
    means, step count and coefficients, CML's removal draws from the checkpointed RNG, MMCosine's head hook
    registered again: a run restored after two epochs ends with the uninterrupted run's metrics."""
    overrides = {"method": method, "epochs": 4, "data__augment": True, "agm__modulation_ends": 2}
    expected, resumed = straight_and_resumed(lambda: Engine(tiny_config(**overrides), tiny_data), 4, 2,
                                             tmp_path / "state.pt")
    assert [without_time(resumed.run_epoch()) for _ in range(2)] == expected[2:]
