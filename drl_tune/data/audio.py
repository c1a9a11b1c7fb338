"""Audio features: Kaldi-compatible log-mel filterbanks (torchaudio), as the DRL/OGM-GE CREMA-D setup.

Every dataset — the synthetic one included — goes through :func:`log_fbank`, so a model trained on the
synthetic set sees the same kind of input as one trained on real speech.
"""

from __future__ import annotations

import numpy as np
import torch


def _kaldi_fbank(wave: torch.Tensor, sample_rate: int, n_mels: int, frame_shift_ms: float, frame_length_ms: float,
                 subtract_mean: bool) -> torch.Tensor:
    """The one Kaldi fbank front end of every dataset (so the per-clip and batched paths cannot drift apart).

    torchaudio is imported here, not at module level: only computing features needs its compiled extension, so
    the commands that compute none (``--help``, ``--dry-run``, ``report``, ``confirm --answer``) work even when a
    mismatched torchaudio does not load (``python -m drl_tune.doctor`` says so)."""
    from torchaudio.compliance import kaldi

    return kaldi.fbank(wave, sample_frequency=float(sample_rate), num_mel_bins=n_mels, frame_shift=frame_shift_ms,
                       frame_length=frame_length_ms, dither=0.0, window_type="hanning", htk_compat=True,
                       use_energy=False, subtract_mean=subtract_mean)


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
    feats = _kaldi_fbank(wave, sample_rate, n_mels, frame_shift_ms, frame_length_ms, subtract_mean=True)
    if n_frames is not None:
        if feats.shape[0] < n_frames:
            feats = torch.nn.functional.pad(feats, (0, 0, 0, n_frames - feats.shape[0]))
        feats = feats[:n_frames]
    return feats.numpy()


def log_fbank_batch(
    waveforms: np.ndarray | torch.Tensor,
    sample_rate: int,
    n_mels: int = 128,
    n_frames: int = 100,
    frame_shift_ms: float = 10.0,
    frame_length_ms: float = 25.0,
    chunk: int = 256,
) -> np.ndarray:
    """[N, n_frames, n_mels]: :func:`log_fbank` of each row of ``waveforms`` [N, L], in a few calls.

    Why: ``kaldi.fbank`` takes one waveform and rebuilds its mel bank on every call, which dominates for
    short clips. Each clip is zero-padded to a whole number of frame shifts that holds its ``n_frames``
    frames, the clips are joined end to end, and one call computes every frame; a frame only reads its own
    samples (Kaldi's per-frame DC removal, pre-emphasis and window), so clip ``k``'s frames are exactly
    frames ``k * stride ...`` of the joined signal. The per-clip mean removal is then done per clip.
    Clips must fit the ``n_frames`` window (a longer one's mean would cover frames that are cropped).
    """
    waves = torch.as_tensor(np.asarray(waveforms), dtype=torch.float32)
    shift = int(sample_rate * frame_shift_ms / 1000)
    length = int(sample_rate * frame_length_ms / 1000)
    stride = -(-(length + (n_frames - 1) * shift) // shift)  # frame shifts per clip, its frames fit inside
    if waves.ndim != 2 or waves.shape[1] > stride * shift:
        raise ValueError(f"log_fbank_batch takes [N, L] clips with L <= {stride * shift} samples ({n_frames} "
                         f"frames at {sample_rate} Hz), got shape {list(waves.shape)}")
    padded = torch.zeros(waves.shape[0], stride * shift)
    padded[:, : waves.shape[1]] = waves
    out = np.empty((waves.shape[0], n_frames, n_mels), dtype=np.float32)
    valid = min(n_frames, 1 + (waves.shape[1] - length) // shift) if waves.shape[1] >= length else 0
    for start in range(0, waves.shape[0], chunk):
        part = padded[start:start + chunk]
        feats = _kaldi_fbank(part.reshape(1, -1), sample_rate, n_mels, frame_shift_ms, frame_length_ms,
                             subtract_mean=False)
        feats = torch.nn.functional.pad(feats, (0, 0, 0, len(part) * stride - feats.shape[0]))
        feats = feats.reshape(len(part), stride, n_mels)
        feats = feats[:, :valid]
        feats = feats - feats.mean(dim=1, keepdim=True)
        out[start:start + len(part)] = torch.nn.functional.pad(feats, (0, 0, 0, n_frames - valid)).numpy()
    return out
