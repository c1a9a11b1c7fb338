"""The kinds of modality a dataset can hold. A dataset's manifest names each modality's kind as a string; that
string becomes a :class:`ModalityKind` where it is read, and everything that depends on the kind (how the cache
stores it, which encoder reads it, how it is augmented) asks the kind instead of matching the string."""

from __future__ import annotations

from enum import StrEnum

import numpy as np

SEQUENCE_ENCODERS = ("conv", "transformer")  # the temporal models of a feature sequence (model.sequence_encoder)


class ModalityKind(StrEnum):
    """A modality's array layout. A ``StrEnum``: it is written to (and compares equal with) its plain name."""

    SPECTROGRAM = "spectrogram"  # float16 [T, mel bins]
    FRAMES = "frames"  # uint8 [T, 3, H, W] RGB
    FLOW = "flow"  # uint8 [T, 2, H, W] optical flow u, v with 128 = no motion
    VECTOR = "vector"  # float32 [D]: a precomputed feature vector
    # float32 [T, D + 1]: a precomputed feature sequence padded/truncated to T steps; the last column is its mask
    # (1 = a real step, 0 = padding), kept in the same array so a sample stays one row of one memory-mapped file
    SEQUENCE = "sequence"

    @classmethod
    def parse(cls, kind: str) -> ModalityKind:
        """The kind named ``kind``; ValueError naming the known kinds otherwise."""
        try:
            return cls(kind)
        except ValueError:
            raise ValueError(f"unknown modality kind {kind!r}; known: {', '.join(cls)}") from None

    @property
    def dtype(self) -> type[np.generic]:
        """How the cache stores it."""
        if self.is_features:
            return np.float32
        return np.float16 if self is ModalityKind.SPECTROGRAM else np.uint8

    @property
    def channels(self) -> int:
        """Input channels of its ResNet encoder (a spectrogram is one image-like channel)."""
        return {ModalityKind.SPECTROGRAM: 1, ModalityKind.FRAMES: 3, ModalityKind.FLOW: 2}[self]

    @property
    def is_image(self) -> bool:
        """Stored as uint8 images: normalised, cropped and flipped batch-wise (data/transforms.py)."""
        return self in (ModalityKind.FRAMES, ModalityKind.FLOW)

    @property
    def is_features(self) -> bool:
        """Precomputed features (a vector or a masked sequence): read as they are, never augmented."""
        return self in (ModalityKind.VECTOR, ModalityKind.SEQUENCE)

    @property
    def default_policy(self) -> str:
        """Its augmentation when the manifest names none: a flow field cannot be rescaled by a random crop."""
        return "flip" if self is ModalityKind.FLOW else "crop_flip"
