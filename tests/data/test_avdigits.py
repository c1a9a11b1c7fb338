"""AV-digits: deterministic, speaker-disjoint splits, the two modalities say the same digit, a clear error
without the extra, and the cache round-trips.

The label checks are independent of the generator's pairing code: the visual side finds each clip's image
among all 1 797 of scikit-learn's by block-averaging the frame back to 8×8; the audio side matches each
clip's spectrogram against clean utterances of the ten digits by the clip's speaker, synthesised here.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import sys

import numpy as np
import pytest
import torch
import torchaudio

from drl_tune.data import avdigits, load_dataset
from drl_tune.data.audio import log_fbank, log_fbank_batch
from drl_tune.data.avdigits import N_FRAMES, N_MELS, cache_path, generate, load_avdigits
from drl_tune.data.config import AVDigitsConfig
from drl_tune.ground.errors import ConfigError
from drl_tune.training.config import make_config

needs_espeak = pytest.mark.skipif(
    importlib.util.find_spec("espeakng_loader") is None,
    reason="espeakng-loader is not installed; AV-digits needs the optional extra: pip install -e '.[avdigits]'",
)
SMALL = {"n_images": 100, "languages": ["en-us", "de"], "speakers_train": 2, "speakers_val": 1, "speakers_test": 1,
         "image_size": 16}


def speaker_of(clip_id: str) -> str:
    return clip_id.split("-", 2)[2]


def image_of(clip_id: str) -> int:
    return int(clip_id.split("-")[1].removeprefix("img"))


def best_correlation(x: np.ndarray, template: np.ndarray) -> float:
    """Largest correlation of ``template`` [t, F] with any t consecutive frames of ``x`` [T, F], each with its
    own per-bin mean removed (the clip's mean removal covers its noise-only frames, the template's not)."""
    t = template[: len(x)]
    windows = np.lib.stride_tricks.sliding_window_view(x, (len(t), x.shape[1]))[:, 0]
    w = (windows - windows.mean(1, keepdims=True)).reshape(len(windows), -1)
    t = (t - t.mean(0, keepdims=True)).ravel()
    return float(((w @ t) / (np.linalg.norm(w, axis=1) * np.linalg.norm(t) + 1e-12)).max())


@pytest.fixture(scope="module")
def small():
    return generate(AVDigitsConfig(**SMALL))


@needs_espeak
def test_shapes_and_dtypes(small):
    assert small.name == "avdigits" and small.classes == [str(d) for d in range(10)]
    assert small.modalities == {"audio": "spectrogram", "visual": "frames"}
    sizes = {name: len(split) for name, split in small.splits.items()}
    assert sizes == {"train": 60, "val": 20, "test": 20}
    for split in small.splits.values():
        assert split.inputs["audio"].shape == (len(split), N_FRAMES, N_MELS)
        assert split.inputs["audio"].dtype == np.float16
        assert split.inputs["visual"].shape == (len(split), 2, 3, 16, 16)
        assert split.inputs["visual"].dtype == np.uint8
        assert np.bincount(split.labels, minlength=10).min() >= 1  # stratified: every digit in every split


@needs_espeak
def test_generation_is_deterministic_for_a_seed(small):
    again = generate(AVDigitsConfig(**SMALL))
    other = generate(AVDigitsConfig(**SMALL, seed=1))
    for name, split in small.splits.items():
        assert np.array_equal(split.clip_ids, again.splits[name].clip_ids)
        assert np.array_equal(split.labels, again.splits[name].labels)
        for m in ("audio", "visual"):
            assert np.array_equal(split.inputs[m], again.splits[name].inputs[m]), (name, m)
        assert not np.array_equal(split.clip_ids, other.splits[name].clip_ids)


@needs_espeak
def test_no_speaker_or_voice_in_two_splits(small):
    heard = {name: {speaker_of(i) for i in split.clip_ids} for name, split in small.splits.items()}
    listed = {name: {s["name"] for s in speakers} for name, speakers in small.preprocessing["speakers"].items()}
    for name in heard:
        assert heard[name] <= listed[name]
    assert heard["train"] == listed["train"]  # 60 clips, 4 speakers: every one is heard
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not heard[a] & heard[b]
        variants = [{s["variant"] for s in small.preprocessing["speakers"][x]} for x in (a, b)]
        assert not variants[0] & variants[1], (a, b)  # not even the same voice in another language
    for speakers in small.preprocessing["speakers"].values():  # every language in every split
        assert {s["language"] for s in speakers} == {"en-us", "de"}


@needs_espeak
def test_both_modalities_show_the_label():
    from sklearn.datasets import load_digits

    cfg = AVDigitsConfig(**{**SMALL, "audio_snr_db": 30.0, "visual_noise": 0.0, "visual_shift": 0.0})
    data = generate(cfg)
    digits = load_digits()
    sources = digits.images.reshape(len(digits.images), -1) / 16.0
    speakers = {s["name"]: s for group in data.preprocessing["speakers"].values() for s in group}
    names = sorted(speakers)
    waves, rate = avdigits.synthesise(
        [(speakers[n]["voice"], str(d), speakers[n]["pitch"], speakers[n]["rate"]) for n in names for d in range(10)]
    )
    speech = []
    for wave in waves:
        loud = np.flatnonzero(np.abs(wave) > 0.01 * np.abs(wave).max())  # eSpeak's digital silence cut off
        speech.append(torch.from_numpy(wave[loud[0]:loud[-1] + 1].astype(np.float32)))
    resampled = torchaudio.functional.resample(torch.nn.utils.rnn.pad_sequence(speech, batch_first=True), rate, 16000)
    templates = {(names[k // 10], k % 10): log_fbank(x[: len(s) * 16000 // rate], 16000, n_mels=N_MELS)
                 for k, (x, s) in enumerate(zip(resampled, speech, strict=True))}
    audio_right = 0
    total = 0
    for split in data.splits.values():
        for clip_id, label, frames, spec in zip(split.clip_ids, split.labels, split.inputs["visual"],
                                                split.inputs["audio"], strict=True):
            # visual: the frame, averaged back to 8×8, is closest to the image its id names, of that label
            small_img = frames[0, 0].astype(np.float64).reshape(8, 2, 8, 2).mean((1, 3)) / 255.0
            nearest = int(((sources - small_img.reshape(1, -1)) ** 2).sum(1).argmin())
            assert nearest == image_of(clip_id) and digits.target[nearest] == label, clip_id
            # audio: best-correlating clean digit of the clip's speaker (over all time offsets)
            scores = [best_correlation(spec.astype(np.float64), templates[(speaker_of(clip_id), d)])
                      for d in range(10)]
            audio_right += int(np.argmax(scores) == label)
            total += 1
    assert audio_right / total >= 0.9, f"{audio_right}/{total} clips sound like their label"


@needs_espeak
def test_cache_round_trips_without_espeak(tmp_path, monkeypatch, small):
    cfg = AVDigitsConfig(**SMALL)
    monkeypatch.setattr(avdigits, "generate", lambda cfg: small)  # generated once for the module already
    first = load_avdigits(cfg, tmp_path)
    path = cache_path(cfg, tmp_path)
    assert (path / "manifest.json").is_file()
    monkeypatch.setattr(avdigits, "generate", lambda cfg: pytest.fail("the cache was not used"))
    monkeypatch.setitem(sys.modules, "espeakng_loader", None)  # reading needs no eSpeak NG
    again = load_avdigits(cfg, tmp_path)
    assert isinstance(again.splits["train"].inputs["audio"], np.memmap)
    for name, split in small.splits.items():
        for m in ("audio", "visual"):
            assert np.array_equal(first.splits[name].inputs[m], split.inputs[m])
            assert np.array_equal(again.splits[name].inputs[m], split.inputs[m])
        assert np.array_equal(again.splits[name].labels, split.labels)
        assert list(again.splits[name].clip_ids) == list(split.clip_ids)
    assert again.preprocessing["speakers"] == small.preprocessing["speakers"]
    # through the registry, as a run asks for it
    config = make_config({f"data.avdigits.{k}": v for k, v in SMALL.items()} | {"data.name": "avdigits",
                                                                                  "data.root": str(tmp_path)})
    assert np.array_equal(load_dataset(config.data).splits["val"].labels, small.splits["val"].labels)


def test_cache_key_follows_config_and_generator_version(tmp_path, monkeypatch):
    cfg = AVDigitsConfig(**SMALL)
    key = cache_path(cfg, tmp_path)
    assert cache_path(AVDigitsConfig(**SMALL), tmp_path) == key
    assert cache_path(dataclasses.replace(cfg, audio_snr_db=5.0), tmp_path) != key
    monkeypatch.setattr(avdigits, "GENERATOR_VERSION", avdigits.GENERATOR_VERSION + 1)
    assert cache_path(cfg, tmp_path) != key


def test_clear_error_without_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "espeakng_loader", None)  # `import espeakng_loader` raises ImportError
    with pytest.raises(ConfigError, match=r"pip install -e '\.\[avdigits\]'") as err:
        load_avdigits(AVDigitsConfig(**SMALL), tmp_path)
    assert "GPL-3.0" in str(err.value) and "\n" not in str(err.value)
    assert not any(tmp_path.iterdir())  # nothing half-written


@needs_espeak
def test_unknown_language_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no voice 'xx-nowhere"):
        generate(AVDigitsConfig(**{**SMALL, "languages": ["xx-nowhere"]}))


def test_bad_knobs_are_config_errors():
    with pytest.raises(ConfigError, match="n_images"):
        AVDigitsConfig(n_images=10)
    with pytest.raises(ConfigError, match="speakers_val"):
        AVDigitsConfig(speakers_val=0)
    with pytest.raises(ConfigError, match="voice variants"):
        avdigits.make_speakers(AVDigitsConfig(speakers_train=20, speakers_val=3, speakers_test=3))


def test_batched_fbank_equals_one_clip_at_a_time():
    rng = np.random.default_rng(0)
    for length in (13040, 9000, 300):  # a full window, a short clip (zero frames padded), shorter than a frame
        clips = rng.standard_normal((5, length)).astype(np.float32) * rng.uniform(0.1, 3.0, (5, 1)).astype(np.float32)
        one = np.stack([log_fbank(c, 16000, n_mels=40, n_frames=80) if length >= 400 else np.zeros((80, 40))
                        for c in clips])
        np.testing.assert_allclose(log_fbank_batch(clips, 16000, n_mels=40, n_frames=80, chunk=2), one, atol=1e-4)
    with pytest.raises(ValueError, match="L <= 13120"):
        log_fbank_batch(np.zeros((2, 20000)), 16000, n_mels=40, n_frames=80)
