"""AV-digits: real handwritten digits paired with the same digit spoken by eSpeak NG voices.

Built on these machines from material nobody here designed, with no download at run time:

* **visual**: scikit-learn's copy of the UCI optical digits (``load_digits``, 1 797 real 8×8 images of 10
  classes), upscaled (bilinear) to ``image_size`` frames, grey on three channels, moved by a random
  translation of up to ``visual_shift`` of the frame (plus one pixel of jitter between frames) and
  degraded by Gaussian pixel noise ``visual_noise`` (on the 0–1 scale).
* **audio**: the image's digit spoken by eSpeak NG (GPL-3.0, the optional extra ``.[avdigits]``), from
  the ``espeakng-loader`` wheel through ``ctypes``. Each language in ``languages`` says the digit in its
  own word ("seven", "sieben", "sept" …; three English accents by default). A **speaker** is a language
  with one voice variant (male m1–m8, female f1–f5, whisper, croak, klatt …), a pitch and a rate. The
  voice variants are first dealt to the splits (no variant is heard in two splits), then each language gets
  ``speakers_<split>`` of its split's variants with their own pitch and rate — so no speaker, and no voice,
  appears in two splits, the role actor identity plays in CREMA-D. Each (speaker, digit) utterance is
  synthesised once; every clip places it at a random offset in 0.815 s of silence, adds white noise at
  ``audio_snr_db`` (±3 dB per clip, relative to the speech's power) and goes through the same Kaldi fbank
  front end as every other set (data/audio.py; 16 kHz, 40 mel bins, 80 frames).

Images are split 60/20/20 (stratified by class, seeded); the source does not say which of its 13 writers
drew which image, so writers may appear in several splits. Every image is paired with one utterance of its
own label by a speaker of its split (speakers used in turn, so each is heard about equally often); the
clip id says which image and speaker (``train-img0042-s03-de+m3``).

Generated once into the cache format (data/cache.py) under a key that includes :data:`GENERATOR_VERSION`,
then re-read (memory-mapped) without needing eSpeak NG.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from drl_tune.data.audio import log_fbank_batch
from drl_tune.data.cache import CacheError, MultimodalData, Split, load_cache, write_cache
from drl_tune.data.config import AVDigitsConfig
from drl_tune.ground.errors import ConfigError
from drl_tune.ground.modality import ModalityKind
from drl_tune.ground.paths import default_root

GENERATOR_VERSION = 1  # part of the cache key: bump whenever generate() changes what a config produces
SAMPLE_RATE = 16000
N_MELS = 40
N_FRAMES = 80
CLIP_SAMPLES = 400 + (N_FRAMES - 1) * 160  # 80 frames of 25 ms every 10 ms: 0.815 s
SPLIT_FRACTIONS = {"train": 0.6, "val": 0.2, "test": 0.2}
# eSpeak NG voice variants (espeak-ng-data/voices/!v), dealt to the splits so none is heard in two
VARIANTS = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5", "whisper", "whisperf",
    "croak", "klatt", "klatt2", "klatt3", "klatt4", "grandma", "grandpa", "aunty", "linda",
)
PITCH = (25, 75)  # eSpeak's 0-100 pitch scale (50 = the voice's own)
RATE = (130, 200)  # words per minute (eSpeak's default 175)
SNR_JITTER_DB = 3.0
EXTRA_HINT = "pip install -e '.[avdigits]' -c constraints.txt"


def _espeak_paths() -> tuple[str, str, str]:
    """The eSpeak NG library, its data and the loader's version, or a ConfigError naming the extra."""
    try:
        loader = importlib.import_module("espeakng_loader")
    except ImportError:
        raise ConfigError(
            "data.name=avdigits synthesises its spoken digits with eSpeak NG (GPL-3.0), an optional extra that "
            f"is not installed; install it with: {EXTRA_HINT}"
        ) from None
    from importlib.metadata import PackageNotFoundError, version

    try:
        loader_version = version("espeakng-loader")
    except PackageNotFoundError:
        loader_version = "unknown"
    return str(loader.get_library_path()), str(loader.get_data_path()), loader_version


def synthesise(utterances: list[tuple[str, str, int, int]]) -> tuple[list[np.ndarray], int]:
    """16-bit waveforms of ``(voice, text, pitch, rate)`` requests, from a fresh eSpeak NG process
    (deterministic for the same requests; see _espeak_worker.py), and their sample rate."""
    library, data_path, _ = _espeak_paths()
    request = json.dumps({"library": library, "data_path": data_path, "utterances": [list(u) for u in utterances]})
    worker = Path(__file__).with_name("_espeak_worker.py")
    with tempfile.TemporaryDirectory(prefix="drl_tune_espeak_") as tmp:
        out = Path(tmp) / "utterances.npz"
        done = subprocess.run([sys.executable, str(worker), str(out)], input=request, capture_output=True,
                              text=True, timeout=600)
        if done.returncode != 0:
            message = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"
            raise ConfigError(f"data.avdigits: eSpeak NG failed: {message} (languages are eSpeak NG voice "
                              "names such as en-us, de, fr)")
        with np.load(out, allow_pickle=False) as arrays:
            samples, lengths, rate = arrays["samples"], arrays["lengths"], int(arrays["sample_rate"])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    return [samples[offsets[i]:offsets[i + 1]] for i in range(len(lengths))], rate


def make_speakers(cfg: AVDigitsConfig) -> dict[str, list[dict]]:
    """Per split, its speakers: ``{"name", "voice", "language", "variant", "pitch", "rate"}``.

    The variants are dealt to the splits in proportion to their speakers per language (each split gets at
    least as many as it needs for one language), so no voice variant is used in two splits."""
    counts = {"train": cfg.speakers_train, "val": cfg.speakers_val, "test": cfg.speakers_test}
    if sum(counts.values()) > len(VARIANTS):
        raise ConfigError(f"data.avdigits: {sum(counts.values())} speakers per language need as many voice "
                          f"variants; eSpeak NG offers {len(VARIANTS)} here")
    rng = np.random.default_rng([cfg.seed, 1])
    order = [VARIANTS[i] for i in rng.permutation(len(VARIANTS))]
    total = sum(counts.values())
    pools, start = {}, 0
    for split, n in counts.items():
        size = len(VARIANTS) * n // total
        pools[split], start = order[start:start + size], start + size
    speakers: dict[str, list[dict]] = {split: [] for split in counts}
    index = 0
    for language in cfg.languages:
        for split, n in counts.items():
            for variant in rng.choice(pools[split], size=n, replace=False):
                pitch, rate = int(rng.integers(*PITCH, endpoint=True)), int(rng.integers(*RATE, endpoint=True))
                voice = f"{language}+{variant}"
                speakers[split].append({"name": f"s{index:02d}-{voice}", "voice": voice, "language": language,
                                        "variant": str(variant), "pitch": pitch, "rate": rate})
                index += 1
    return speakers


def _prepare_utterances(waves: list[np.ndarray], rate: int) -> list[torch.Tensor]:
    """Silence trimmed, resampled to 16 kHz (one batched call), unit RMS (the SNR is then the noise alone)."""
    trimmed = []
    for wave in waves:
        x = torch.from_numpy(wave.astype(np.float32) / 32768.0)
        loud = torch.nonzero(x.abs() > 0.02 * x.abs().max()).flatten() if len(x) else x
        if len(loud) == 0:
            raise ConfigError("data.avdigits: eSpeak NG returned a silent utterance")
        trimmed.append(x[loud[0]:loud[-1] + 1])
    batch = torch.nn.utils.rnn.pad_sequence(trimmed, batch_first=True)
    from torchaudio.functional import resample  # lazily, as data/audio.py says why

    resampled = resample(batch, rate, SAMPLE_RATE)
    out = []
    for x, kept in zip(resampled, trimmed, strict=True):
        x = x[: min(CLIP_SAMPLES, -(-len(kept) * SAMPLE_RATE // rate))]
        out.append(x / x.pow(2).mean().sqrt())
    return out


def _image_splits(cfg: AVDigitsConfig, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Indices of the images of each split: stratified by class, seeded (sklearn's splitter)."""
    from sklearn.model_selection import train_test_split

    index = np.arange(len(labels))
    if cfg.n_images:
        index, _ = train_test_split(index, train_size=cfg.n_images, stratify=labels, random_state=cfg.seed)
    train, rest = train_test_split(index, train_size=SPLIT_FRACTIONS["train"], stratify=labels[index],
                                   random_state=cfg.seed)
    val, test = train_test_split(rest, test_size=0.5, stratify=labels[rest], random_state=cfg.seed)
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def _frames(cfg: AVDigitsConfig, rng: np.random.Generator, images: np.ndarray) -> np.ndarray:
    """[N, T, 3, S, S] uint8: each 8×8 image upscaled, translated, jittered per frame, noised."""
    size, n = cfg.image_size, len(images)
    up = F.interpolate(torch.from_numpy(images[:, None] / 16.0), size=(size, size), mode="bilinear",
                       align_corners=False)[:, 0].numpy()
    pad = int(round(cfg.visual_shift * size)) + 1
    canvas = np.pad(up, ((0, 0), (pad, pad), (pad, pad)))
    shift = rng.integers(-pad + 1, pad, size=(n, 2)) if pad > 1 else np.zeros((n, 2), dtype=np.int64)
    out = np.empty((n, cfg.frames, 3, size, size), dtype=np.uint8)
    for f in range(cfg.frames):
        jitter = rng.integers(-1, 2, size=(n, 2)) if f else np.zeros((n, 2), dtype=np.int64)
        dy, dx = (shift + jitter)[:, 0] + pad, (shift + jitter)[:, 1] + pad
        frame = np.stack([canvas[i, dy[i]:dy[i] + size, dx[i]:dx[i] + size] for i in range(n)])
        noisy = frame[:, None] + rng.normal(0.0, cfg.visual_noise, (n, 3, size, size))
        out[:, f] = (np.clip(noisy, 0, 1) * 255).round().astype(np.uint8)
    return out


def generate_clips(cfg: AVDigitsConfig) -> tuple[dict[str, tuple[torch.Tensor, np.ndarray, np.ndarray, np.ndarray]],
                                                   dict[str, list[dict]], str]:
    """Each split's raw material before any feature is computed — waveforms [N, CLIP_SAMPLES] at 16 kHz, frames,
    labels, clip ids — with the speakers and eSpeak NG loader's version (deterministic in ``cfg``). Kept apart from
    :func:`generate` so the same clips can be written out as files (wav + png) and prepared through the manifest
    path: tests/data/test_manifest.py checks that path trains exactly as this loader does."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images, labels = digits.images.astype(np.float64), digits.target.astype(np.int64)
    speakers = make_speakers(cfg)
    requests = [(s["voice"], str(d), s["pitch"], s["rate"]) for split in speakers.values() for s in split
                for d in range(10)]
    waves, rate = synthesise(requests)
    utterances = dict(zip([(r[0], int(r[1])) for r in requests], _prepare_utterances(waves, rate), strict=True))
    _, _, loader_version = _espeak_paths()
    splits = {}
    for index, (name, members) in enumerate(_image_splits(cfg, labels).items()):
        rng = np.random.default_rng([cfg.seed, 2, index])
        voices = speakers[name]
        turn = rng.permutation(len(members)) % len(voices)  # each speaker about equally often
        clips = torch.from_numpy(rng.standard_normal((len(members), CLIP_SAMPLES)).astype(np.float32))
        snr_db = cfg.audio_snr_db + rng.uniform(-SNR_JITTER_DB, SNR_JITTER_DB, len(members))
        clips *= torch.from_numpy(10 ** (-snr_db / 20)).float()[:, None]  # unit-RMS speech over this noise
        for i, image in enumerate(members):
            speech = utterances[(voices[turn[i]]["voice"], int(labels[image]))]
            start = int(rng.integers(0, CLIP_SAMPLES - len(speech) + 1))
            clips[i, start:start + len(speech)] += speech
        frames = _frames(cfg, rng, images[members])
        ids = np.asarray([f"{name}-img{image:04d}-{voices[turn[i]]['name']}" for i, image in enumerate(members)])
        splits[name] = (clips, frames, labels[members], ids)
    return splits, speakers, loader_version


def generate(cfg: AVDigitsConfig) -> MultimodalData:
    """All three splits in memory (deterministic in ``cfg``)."""
    clips, speakers, loader_version = generate_clips(cfg)
    splits = {
        name: Split({"audio": log_fbank_batch(waves, SAMPLE_RATE, n_mels=N_MELS, n_frames=N_FRAMES).astype(np.float16),
                     "visual": frames}, labels, ids)
        for name, (waves, frames, labels, ids) in clips.items()
    }
    return MultimodalData(
        "avdigits",
        [str(d) for d in range(10)],
        {"audio": ModalityKind.SPECTROGRAM, "visual": ModalityKind.FRAMES},
        splits,
        {"sample_rate": SAMPLE_RATE, "n_mels": N_MELS, "n_frames": N_FRAMES, "generator_version": GENERATOR_VERSION,
         "espeakng_loader": loader_version, "config": asdict(cfg), "speakers": speakers},
    )


def cache_path(cfg: AVDigitsConfig, root: str | os.PathLike | None = None) -> Path:
    """The cache folder of ``cfg``: one per configuration and generator version."""
    identity = {"generator_version": GENERATOR_VERSION, **asdict(cfg)}
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
    return Path(root or default_root()) / f"avdigits-{key}"


def load_avdigits(cfg: AVDigitsConfig, root: str | os.PathLike | None = None) -> MultimodalData:
    """Load AV-digits for ``cfg`` from its cache (no eSpeak NG needed), generating it on first use."""
    path = cache_path(cfg, root)
    with contextlib.suppress(CacheError):
        return load_cache(path)
    data = generate(cfg)
    with contextlib.suppress(OSError):  # another trial wrote the same cache first; its copy is identical
        write_cache(path, data.name, data.classes, data.modalities, data.splits, data.preprocessing)
    with contextlib.suppress(CacheError):
        return load_cache(path)  # memory-mapped: trials on a node share it through the page cache
    return data
