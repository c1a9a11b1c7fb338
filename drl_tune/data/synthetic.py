"""An embedded, deterministic, imbalanced audio-visual dataset for newcomers, tests and CI.

Each clip has a label, an audio track and a few RGB frames:

* **audio** (the dominant modality): a class-specific tone (pitch per class, jittered) in white noise,
  8 kHz, 0.66 s, turned into a log-mel spectrogram by the same torchaudio function real audio uses. It also
  carries an *identity cue*, a short high pip whose pitch follows the label in the training split with
  probability ``audio_shortcut`` and is random in val/test — the role speaker or scene identity plays
  in real corpora: a cheap way to fit the training set that does not carry over.
* **visual** (useful but slower): one shape per class at a jittered place and size, random colours,
  Gaussian pixel noise, moving slightly from frame to frame.
* **complementarity**: ``audio_confusion`` / ``visual_confusion`` of the clips carry the modality of a
  random class, drawn independently, so each modality is right on clips where the other is wrong.
* ``noise_only="audio"|"visual"`` replaces that modality with pure noise (a scarcely informative one).

The defaults are tuned so that the imbalance phenomenon is there and measured, never so that a method
wins: ``python -m drl_tune.experiments.imbalance`` (figures in docs/datasets.md, "The demo data").

Generated once into the cache format (data/cache.py) and re-read afterwards.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np

from drl_tune.data.audio import log_fbank_batch
from drl_tune.data.cache import CacheError, MultimodalData, Split, load_cache, write_cache
from drl_tune.data.config import SyntheticConfig
from drl_tune.ground.modality import ModalityKind
from drl_tune.ground.paths import default_root

SAMPLE_RATE = 8000
CLIP_SAMPLES = 5280  # 0.66 s: 64 frames of 25 ms every 10 ms (the real-audio frame settings)
N_FRAMES = 64
N_MELS = 40  # enough to resolve the class tones (300-1200 Hz) and the cue (2.6-3.5 kHz); small for CPU speed
GENERATOR_VERSION = 3  # part of the cache key: bump whenever generate() changes what a config produces
SHAPES = ("disc", "square", "triangle", "cross", "ring", "hbar", "diamond", "vbar", "ellipse", "x")


def _class_pitch(c: int) -> float:
    return 300.0 * 2 ** (c / 2.5)  # roughly half-octave spacing from 300 Hz


def _cue_pitch(c: int) -> float:
    return 2600.0 + 180.0 * c


def _audio_clip(cfg: SyntheticConfig, rng: np.random.Generator, tone_class: int, cue_class: int) -> np.ndarray:
    t = np.arange(CLIP_SAMPLES) / SAMPLE_RATE
    noise = rng.standard_normal(CLIP_SAMPLES)
    if cfg.noise_only == "audio":
        return noise.astype(np.float32)
    pitch = _class_pitch(tone_class) * rng.uniform(0.97, 1.03)
    onset, length = rng.uniform(0.0, 0.15), rng.uniform(0.3, 0.45)
    envelope = ((t >= onset) & (t < onset + length)).astype(np.float64)
    tone = np.sin(2 * np.pi * pitch * t + rng.uniform(0, 2 * np.pi)) * envelope
    snr_db = cfg.audio_snr_db + rng.uniform(-5.0, 5.0)
    tone *= np.sqrt(2 * 10 ** (snr_db / 10))  # unit-variance noise; a sine of amplitude a has power a²/2
    cue_start = rng.uniform(0.0, 0.56)
    cue_env = ((t >= cue_start) & (t < cue_start + 0.08)).astype(np.float64)
    cue = 2.0 * np.sin(2 * np.pi * _cue_pitch(cue_class) * t) * cue_env
    return (tone + cue + noise).astype(np.float32)


def _shape_mask(shape: str, size: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    dy, dx = yy - cy, xx - cx
    if shape == "disc":
        return dy**2 + dx**2 <= r**2
    if shape == "square":
        return (np.abs(dy) <= r * 0.8) & (np.abs(dx) <= r * 0.8)
    if shape == "triangle":
        return (dy <= r * 0.7) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.6)
    if shape == "cross":
        return ((np.abs(dy) <= r * 0.3) & (np.abs(dx) <= r)) | ((np.abs(dx) <= r * 0.3) & (np.abs(dy) <= r))
    if shape == "ring":
        d = np.sqrt(dy**2 + dx**2)
        return (d <= r) & (d >= r * 0.55)
    if shape == "hbar":
        return (np.abs(dy) <= r * 0.35) & (np.abs(dx) <= r)
    if shape == "diamond":
        return np.abs(dy) + np.abs(dx) <= r
    if shape == "vbar":
        return (np.abs(dx) <= r * 0.35) & (np.abs(dy) <= r)
    if shape == "ellipse":
        return (dy / (r * 0.5)) ** 2 + (dx / r) ** 2 <= 1
    return (np.abs(dy - dx) <= r * 0.3) & (np.abs(dy) <= r) | (np.abs(dy + dx) <= r * 0.3) & (np.abs(dy) <= r)


def _frames(cfg: SyntheticConfig, rng: np.random.Generator, shape_class: int) -> np.ndarray:
    size, t = cfg.image_size, cfg.frames
    out = np.empty((t, 3, size, size), dtype=np.float64)
    background = rng.uniform(0, 1, 3)
    foreground = (background + rng.uniform(0.35, 0.65, 3)) % 1.0  # random colours, but always visible
    r = size * rng.uniform(0.22, 0.34)
    cy, cx = size / 2 + rng.uniform(-0.12, 0.12, 2) * size
    vy, vx = rng.uniform(-1.5, 1.5, 2)
    for f in range(t):
        if cfg.noise_only == "visual":
            img = np.full((3, size, size), 0.5)
        else:
            mask = _shape_mask(SHAPES[shape_class % len(SHAPES)], size, cy + vy * f, cx + vx * f, r)
            img = np.where(mask[None], foreground[:, None, None], background[:, None, None])
        out[f] = img + rng.normal(0, cfg.visual_noise, img.shape)
    return (np.clip(out, 0, 1) * 255).round().astype(np.uint8)


def generate(cfg: SyntheticConfig) -> MultimodalData:
    """Generate all three splits in memory (deterministic in ``cfg``)."""
    if cfg.n_classes > len(SHAPES):
        raise ValueError(f"the synthetic set has {len(SHAPES)} shapes; n_classes={cfg.n_classes} is too many")
    splits = {}
    for index, (name, n) in enumerate((("train", cfg.n_train), ("val", cfg.n_val), ("test", cfg.n_test))):
        rng = np.random.default_rng([cfg.seed, index])
        labels = np.arange(n) % cfg.n_classes  # balanced classes
        rng.shuffle(labels)
        waves = np.empty((n, CLIP_SAMPLES), dtype=np.float32)
        frames = np.empty((n, cfg.frames, 3, cfg.image_size, cfg.image_size), dtype=np.uint8)
        for i, y in enumerate(labels):
            tone = int(rng.integers(cfg.n_classes)) if rng.random() < cfg.audio_confusion else int(y)
            cue_follows_label = name == "train" and rng.random() < cfg.audio_shortcut
            cue = int(y) if cue_follows_label else int(rng.integers(cfg.n_classes))
            shape = int(rng.integers(cfg.n_classes)) if rng.random() < cfg.visual_confusion else int(y)
            waves[i] = _audio_clip(cfg, rng, tone, cue)
            frames[i] = _frames(cfg, rng, shape)
        # all clips in a few fbank calls: the same numbers as one log_fbank per clip, several times faster
        audio = log_fbank_batch(waves, SAMPLE_RATE, n_mels=N_MELS, n_frames=N_FRAMES).astype(np.float16)
        splits[name] = Split({"audio": audio, "visual": frames}, labels.astype(np.int64))
    return MultimodalData(
        "synthetic",
        [SHAPES[c] for c in range(cfg.n_classes)],
        {"audio": ModalityKind.SPECTROGRAM, "visual": ModalityKind.FRAMES},
        splits,
        {"sample_rate": SAMPLE_RATE, "n_mels": N_MELS, "config": asdict(cfg)},
    )


def load_synthetic(cfg: SyntheticConfig, root: str | os.PathLike | None = None) -> MultimodalData:
    """Load the synthetic set for ``cfg`` from its cache, generating it on first use."""
    identity = {"generator_version": GENERATOR_VERSION, **asdict(cfg)}
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
    path = Path(root or default_root()) / f"synthetic-{key}"  # one folder per configuration
    try:
        return load_cache(path, in_memory=True)
    except CacheError:
        pass
    data = generate(cfg)
    with contextlib.suppress(OSError):  # another trial wrote the same cache first; its copy is identical
        write_cache(path, data.name, data.classes, data.modalities, data.splits, data.preprocessing)
    return data
