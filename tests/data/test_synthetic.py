"""The embedded synthetic set: deterministic, the documented shapes, and each knob does what it says.

Class information is measured with a nearest-class-mean classifier written here (independent of the
models): fitted on one set of clips, scored on another.
"""

from __future__ import annotations

import numpy as np
import pytest

from drl_tune.data.config import SyntheticConfig
from drl_tune.data.synthetic import N_FRAMES, N_MELS, generate, load_synthetic
from drl_tune.ground.errors import ConfigError
from drl_tune.training.config import make_config

SMALL = {"n_train": 240, "n_val": 120, "n_test": 60, "n_classes": 4, "image_size": 24}


def nearest_mean_accuracy(x_fit: np.ndarray, y_fit: np.ndarray, x_eval: np.ndarray, y_eval: np.ndarray) -> float:
    x_fit = x_fit.reshape(len(x_fit), -1).astype(np.float64)
    x_eval = x_eval.reshape(len(x_eval), -1).astype(np.float64)
    classes = np.unique(y_fit)
    means = np.stack([x_fit[y_fit == c].mean(0) for c in classes])
    distances = ((x_eval[:, None, :] - means[None]) ** 2).sum(-1)
    return float((classes[distances.argmin(1)] == y_eval).mean())


def class_features(modality: str, x: np.ndarray) -> np.ndarray:
    """Audio: the log-mel spectrogram as is. Visual: a colour- and position-free view of the first frame —
    the log magnitude spectrum (shift-invariant) of its foreground map (each pixel's distance from the
    border colour): colours and positions are random by design, the shape is the class."""
    if modality == "audio":
        return x
    frames = x.astype(np.float64) / 255.0  # [N, T, 3, H, W]
    border = np.concatenate([frames[..., 0, :], frames[..., -1, :], frames[..., :, 0], frames[..., :, -1]], -1)
    background = np.median(border, axis=-1)[..., None, None]
    foreground = np.abs(frames - background).sum(2)[:, 0]
    return np.log1p(np.abs(np.fft.fft2(foreground)))


@pytest.fixture(scope="module")
def small():
    return generate(SyntheticConfig(**SMALL))


def test_shapes_dtypes_and_balanced_labels(small):
    assert small.modalities == {"audio": "spectrogram", "visual": "frames"}
    assert len(small.classes) == 4
    for name, n in (("train", 240), ("val", 120), ("test", 60)):
        split = small.splits[name]
        assert split.inputs["audio"].shape == (n, N_FRAMES, N_MELS)
        assert split.inputs["audio"].dtype == np.float16
        assert split.inputs["visual"].shape == (n, 2, 3, 24, 24)
        assert split.inputs["visual"].dtype == np.uint8
        assert np.bincount(split.labels, minlength=4).tolist() == [n // 4] * 4


def test_same_config_same_data_and_seed_changes_it(small):
    again = generate(SyntheticConfig(**SMALL))
    other = generate(SyntheticConfig(**SMALL, seed=1))
    for name in ("train", "val"):
        for m in ("audio", "visual"):
            assert np.array_equal(small.splits[name].inputs[m], again.splits[name].inputs[m])
        assert not np.array_equal(small.splits[name].inputs["audio"], other.splits[name].inputs["audio"])


def test_both_modalities_carry_class_information(small):
    train, val = small.splits["train"], small.splits["val"]
    for m in ("audio", "visual"):
        x_train, x_val = class_features(m, train.inputs[m]), class_features(m, val.inputs[m])
        acc = nearest_mean_accuracy(x_train, train.labels, x_val, val.labels)
        assert acc > 0.45, (m, acc)  # chance is 0.25


@pytest.mark.parametrize("modality", ["audio", "visual"])
def test_noise_only_modality_carries_no_class_information(modality):
    data = generate(SyntheticConfig(**SMALL, noise_only=modality))
    train, val = data.splits["train"], data.splits["val"]
    for m in ("audio", "visual"):
        x_train, x_val = class_features(m, train.inputs[m]), class_features(m, val.inputs[m])
        acc = nearest_mean_accuracy(x_train, train.labels, x_val, val.labels)
        if m == modality:
            assert acc < 0.36, (m, acc)  # chance 0.25; 120 val clips
        else:
            assert acc > 0.45, (m, acc)


def test_identity_cue_predicts_labels_in_train_only():
    """The high cue band (mel bins above ~2.4 kHz) follows the label in train, not in val/test."""
    data = generate(SyntheticConfig(**SMALL, audio_shortcut=1.0))
    train, val = data.splits["train"], data.splits["val"]
    cue = slice(30, N_MELS)  # Kaldi mel scale, 20 Hz-4 kHz in 40 bins: bins 30+ are above ~2.4 kHz

    def band_peaks(x: np.ndarray) -> np.ndarray:  # the cue's time is random: each band's peak over time
        return x[:, :, cue].astype(np.float64).max(1)

    half = len(train.labels) // 2
    fit_x, fit_y = band_peaks(train.inputs["audio"][:half]), train.labels[:half]
    in_train = nearest_mean_accuracy(fit_x, fit_y, band_peaks(train.inputs["audio"][half:]), train.labels[half:])
    in_val = nearest_mean_accuracy(fit_x, fit_y, band_peaks(val.inputs["audio"]), val.labels)
    assert in_train > 0.5 and in_val < 0.36, (in_train, in_val)


def test_cache_round_trip_and_one_folder_per_config(tmp_path):
    cfg = SyntheticConfig(**{**SMALL, "n_train": 40, "n_val": 20, "n_test": 20})
    first = load_synthetic(cfg, tmp_path)
    again = load_synthetic(cfg, tmp_path)  # read back from the cache
    assert np.array_equal(first.splits["train"].inputs["audio"], again.splits["train"].inputs["audio"])
    load_synthetic(SyntheticConfig(**{**SMALL, "n_train": 40, "n_val": 20, "n_test": 20, "seed": 5}), tmp_path)
    assert len([p for p in tmp_path.iterdir() if p.name.startswith("synthetic-")]) == 2


@pytest.mark.parametrize(
    "key, value, words",
    [
        ("n_train", 0, "n_train must be an integer >= 1, got 0"),
        ("n_classes", 1, "n_classes must be an integer >= 2, got 1"),
        ("audio_confusion", 1.5, "audio_confusion must be a number in [0, 1], got 1.5"),
        ("audio_shortcut", -0.1, "audio_shortcut must be a number in [0, 1], got -0.1"),
        ("noise_only", "speech", "noise_only must be"),
    ],
)
def test_invalid_knob_is_a_clear_config_error(key, value, words):
    with pytest.raises(ConfigError, match=words.replace("[", r"\[").replace("]", r"\]")):
        make_config({f"data.synthetic.{key}": value})
