"""The GPU path's switches (``perf.*``, drl_tune/training/accel.py) change nothing on a CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from drl_tune.ground.errors import ConfigError
from drl_tune.training.accel import GPU_MEM_METRIC, Accel
from drl_tune.training.config import PerfConfig, make_config
from drl_tune.training.engine import Engine

ALL_ON = {"perf.bf16": True, "perf.channels_last": True, "perf.pin_memory": True, "perf.gpu_augment": True,
          "perf.compile": True}
ALL_OFF = {k: False for k in ALL_ON}


def _train(tiny_config, tiny_data, switches: dict, epochs: int = 2) -> tuple[list[dict], dict]:
    config = tiny_config(epochs=epochs, data__augment=True, method="drl", drl__diagnosis_interval=1,
                         **{k.replace(".", "__"): v for k, v in switches.items()})
    engine = Engine(config, tiny_data)
    history = [{k: v for k, v in engine.run_epoch().items() if k != "time/epoch_s"} for _ in range(epochs)]
    return history, {k: v.detach().clone() for k, v in engine.model.state_dict().items()}


def test_switches_are_config_keys_typed_like_the_others():
    config = make_config({"perf.bf16": "false", "perf.compile": "on"})
    assert config.perf == PerfConfig(bf16=False, compile=True)
    assert config.to_flat()["perf.channels_last"] is True
    with pytest.raises(ConfigError, match="perf.bf16 must be true or false"):
        make_config({"perf.bf16": "maybe"})
    with pytest.raises(ConfigError, match="unknown key 'perf.amp'"):
        make_config({"perf.amp": True})


def test_every_switch_resolves_to_off_on_a_cpu():
    accel = Accel(PerfConfig(**{k.removeprefix("perf."): True for k in ALL_ON}), torch.device("cpu"))
    assert not any(accel.describe().values())
    assert accel.augment_device == torch.device("cpu")
    assert accel.epoch_metrics() == {}
    array = np.arange(24, dtype=np.uint8).reshape(6, 4)
    out = accel.gather("x", array, np.array([4, 1]))
    assert isinstance(out, np.ndarray) and out.tolist() == [[16, 17, 18, 19], [4, 5, 6, 7]]


def test_gpu_augment_off_moves_augmentation_to_the_host_on_cuda():
    # resolving the switches needs no GPU; only applying them does
    on = Accel(PerfConfig(), torch.device("cuda"))
    off = Accel(PerfConfig(gpu_augment=False, bf16=False), torch.device("cuda"))
    assert on.augment_device == torch.device("cuda") and off.augment_device == torch.device("cpu")
    assert on.channels_last and on.pin and not on.compile and not off.bf16


def test_switches_on_and_off_give_identical_losses_and_weights_on_a_cpu(tiny_config, tiny_data):
    history_on, weights_on = _train(tiny_config, tiny_data, ALL_ON)
    history_off, weights_off = _train(tiny_config, tiny_data, ALL_OFF)
    assert history_on == history_off
    assert history_on[0]["train/loss"] > 0 and any("diag/alpha_audio" in h for h in history_on)  # DRL re-init ran
    assert GPU_MEM_METRIC not in history_on[0]
    assert weights_on.keys() == weights_off.keys()
    for name, value in weights_on.items():
        assert torch.equal(value, weights_off[name]), name
    # an engine with the switches on keeps the plain parameter names (checkpoints stay interchangeable)
    assert not any("_orig_mod" in k for k in weights_on)


def test_the_training_loop_reads_the_loss_once_per_epoch(tiny_config, tiny_data, monkeypatch):
    """The host must not wait for the GPU after every step (it gathers the next batch meanwhile): the engine's
    epoch loop reads the summed loss once. Its mean equals the per-step floats' mean, as before the change."""
    engine = Engine(tiny_config(epochs=1, method="joint"), tiny_data)
    losses, reads = [], []
    step = engine.method.training_step

    def recording_step(model, batch):
        loss = step(model, batch)
        losses.append((float(loss), len(batch.labels)))
        return loss

    item = torch.Tensor.item

    def counted_item(self):
        reads.append(self.shape)
        return item(self)

    monkeypatch.setattr(engine.method, "training_step", recording_step)
    monkeypatch.setattr(torch.Tensor, "item", counted_item)
    mean = engine.train_epoch()
    assert len(losses) > 2 and len(reads) == 1
    assert mean == sum(loss * n for loss, n in losses) / sum(n for _, n in losses)


def test_a_non_finite_loss_still_stops_the_epoch(tiny_config, tiny_data, monkeypatch):
    engine = Engine(tiny_config(epochs=1, method="joint", lr=0.1), tiny_data)
    step = engine.method.training_step
    calls = []

    def poisoned(model, batch):
        calls.append(1)
        loss = step(model, batch)
        return loss * float("nan") if len(calls) == 2 else loss

    monkeypatch.setattr(engine.method, "training_step", poisoned)
    with pytest.raises(FloatingPointError, match="training loss became nan at epoch"):
        engine.train_epoch()
