"""Audio features: Kaldi-compatible log-mel filterbanks (torchaudio), as the DRL/OGM-GE CREMA-D setup.

Every dataset — the synthetic one included — goes through :func:`log_fbank`, so a model trained on the
synthetic set sees the same kind of input as one trained on real speech.
"""

from __future__ import annotations

import numpy as np
import torch
from torchaudio.compliance import kaldi


def log_fbank(
    waveform: np.ndarray | torch.Tensor,
    sample_rate: int,
    n_mels: int = 128,
    n_frames: int | None = None,
    frame_shift_ms: float = 10.0,
    frame_length_ms: float = 25.0,
) -> np.ndarray:
    """[T, n_mels] log-mel energies of a mono waveform, padded/cropped to ``n_frames`` if given.

    Normalisation: per-clip mean removal (Kaldi's CMN, ``subtract_mean``), no variance scaling.
    """
    wave = torch.as_tensor(np.asarray(waveform), dtype=torch.float32).reshape(1, -1)
    feats = kaldi.fbank(
        wave,
        sample_frequency=float(sample_rate),
        num_mel_bins=n_mels,
        frame_shift=frame_shift_ms,
        frame_length=frame_length_ms,
        dither=0.0,
        window_type="hanning",
        htk_compat=True,
        use_energy=False,
        subtract_mean=True,
    )
    if n_frames is not None:
        if feats.shape[0] < n_frames:
            feats = torch.nn.functional.pad(feats, (0, 0, 0, n_frames - feats.shape[0]))
        feats = feats[:n_frames]
    return feats.numpy()
