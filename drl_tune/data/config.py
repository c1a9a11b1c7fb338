"""The ``data.*`` blocks of a run's configuration: which dataset, where its cache is, and the knobs of the two
generated ones. They live with the data (the floor below the run layer), so reading data never imports the run
configuration or the methods (``training/config.py`` composes them into :class:`TrainConfig`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from drl_tune.ground.domains import bounded, check_fields
from drl_tune.ground.errors import ConfigError


@dataclass
class SyntheticConfig:
    """Knobs of the embedded synthetic imbalanced audio-visual dataset (see data/synthetic.py)."""

    n_train: int = bounded(1000, ge=1)
    n_val: int = bounded(500, ge=1)
    n_test: int = bounded(500, ge=1)
    n_classes: int = bounded(6, ge=2)
    seed: int = bounded(0, ge=0, le=2**32 - 1)
    # audio: class tones under noise, plus a per-clip identity cue that lets the audio encoder memorise
    # the training set (the role speaker/scene identity plays in real corpora)
    audio_snr_db: float = 0.0
    audio_shortcut: float = bounded(0.6, ge=0, le=1)
    audio_confusion: float = bounded(0.25, ge=0, le=1)
    # visual: one shape per class, random colours, pixel noise
    visual_noise: float = bounded(0.12, ge=0)
    visual_confusion: float = bounded(0.10, ge=0, le=1)
    frames: int = bounded(2, ge=1)
    image_size: int = bounded(32, ge=8)
    # a modality that carries no label information at all ("scarcely informative"), if set
    noise_only: str = ""

    def __post_init__(self) -> None:
        check_fields(self, "data.synthetic.")  # the numbers' domains are declared on the fields (ground/domains.py)
        if self.noise_only not in ("", "audio", "visual"):
            raise ConfigError(f"data.synthetic.noise_only must be '', 'audio' or 'visual', got {self.noise_only!r}")


AVDIGITS_LANGUAGES = ["en-us", "en-gb-scotland", "en-029", "de", "fr", "es", "it", "nl"]


@dataclass
class AVDigitsConfig:
    """Knobs of the AV-digits set (data/avdigits.py): real handwritten digits paired with digits spoken by
    eSpeak NG voices. Speakers are per language and never shared between splits."""

    seed: int = bounded(0, ge=0, le=2**32 - 1)
    n_images: int = 0  # 0 = all 1797 images of sklearn's digits; fewer (stratified) for quick tests
    # eSpeak NG voices: every language's own word for each digit, several English accents
    languages: list[str] = field(default_factory=lambda: list(AVDIGITS_LANGUAGES))
    speakers_train: int = bounded(4, ge=1)  # per language
    speakers_val: int = bounded(2, ge=1)
    speakers_test: int = bounded(2, ge=1)
    # difficulty, chosen from the two uni-modal runs alone (docs/datasets.md, "AV-digits"): white noise under the
    # speech (dB below its power), Gaussian pixel noise on the digit (0-1 scale)
    audio_snr_db: float = 10.0
    visual_noise: float = bounded(0.6, ge=0)
    visual_shift: float = bounded(0.15, ge=0, lt=0.5)  # largest random translation, as a fraction of the frame
    frames: int = bounded(2, ge=1)
    image_size: int = bounded(32, ge=8)

    def __post_init__(self) -> None:
        check_fields(self, "data.avdigits.")  # the numbers' domains are declared on the fields (ground/domains.py)
        if self.n_images < 0 or 0 < self.n_images < 60:
            raise ConfigError(f"data.avdigits.n_images must be 0 (all) or >= 60, got {self.n_images}")
        if not self.languages:
            raise ConfigError("data.avdigits.languages must name at least one eSpeak NG language (e.g. en-us)")


@dataclass
class DataConfig:
    """Which dataset to read. ``root`` is the prepared cache directory (real datasets) or where the
    synthetic set is generated (default: the user cache directory)."""

    name: str = "synthetic"
    root: str = ""
    augment: bool = False
    # train on a subset of the dataset's modalities (e.g. ["visual"] for a uni-modal reference run)
    modalities: list[str] = field(default_factory=list)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    avdigits: AVDigitsConfig = field(default_factory=AVDigitsConfig)
