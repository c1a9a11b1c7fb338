"""Batch-wise input preparation on the training device: dtype conversion, augmentation, normalisation.

Cached arrays stay uint8/float16 until they reach the device; augmentation then runs on whole batches
(one ``roi_align`` call crops and resizes every sample) instead of per-sample PIL work in a DataLoader.
Training: random resized crop (scale 0.08–1, ratio 3/4–4/3, torchvision's defaults, as the official
``RandomResizedCrop(224)``) and horizontal flip; evaluation: the stored frame, normalised.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torchvision.ops import roi_align

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _crop_boxes(n: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """Per-sample RandomResizedCrop boxes [n, 4] (x1, y1, x2, y2), torchvision's sampling rule."""
    area = height * width
    scale = torch.empty(n, 10).uniform_(0.08, 1.0, generator=generator) * area
    log_ratio = torch.empty(n, 10).uniform_(math.log(3 / 4), math.log(4 / 3), generator=generator)
    ratio = torch.exp(log_ratio)
    w = torch.sqrt(scale * ratio).round()
    h = torch.sqrt(scale / ratio).round()
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((n,), -1))
    boxes = torch.zeros(n, 4)
    for i in range(n):  # 10 tries per sample, then the whole image (torchvision falls back to a centre crop)
        j = int(first[i])
        bw, bh = (w[i, j].item(), h[i, j].item()) if j >= 0 else (float(width), float(height))
        x = torch.randint(0, int(width - bw) + 1, (1,), generator=generator).item()
        y = torch.randint(0, int(height - bh) + 1, (1,), generator=generator).item()
        boxes[i] = torch.tensor([x, y, x + bw, y + bh])
    return boxes


def prepare_frames(
    batch: np.ndarray | torch.Tensor,
    device: torch.device,
    *,
    kind: str,
    augment: bool,
    generator: torch.Generator,
) -> torch.Tensor:
    """uint8 [B, T, C, H, W] -> normalised float [B, T, C, H, W] on ``device``."""
    x = torch.as_tensor(np.asarray(batch)).to(device, non_blocking=True).float().div_(255.0)
    b, t, c, h, w = x.shape
    if augment:
        # the same crop and flip for every frame of a clip, as the official per-clip transform
        boxes = _crop_boxes(b, h, w, generator).to(device)
        rois = torch.cat([torch.arange(b * t, device=device, dtype=x.dtype).unsqueeze(1),
                          boxes.repeat_interleave(t, dim=0)], dim=1)
        x = roi_align(x.view(b * t, c, h, w), rois, (h, w), aligned=True).view(b, t, c, h, w)
        flip = (torch.rand(b, generator=generator) < 0.5).to(device)
        x = torch.where(flip.view(b, 1, 1, 1, 1), x.flip(-1), x)
        if kind == "flow":  # a mirrored scene moves the other way: u -> 1 - u
            x[:, :, 0] = torch.where(flip.view(b, 1, 1, 1), 1.0 - x[:, :, 0], x[:, :, 0])
    if kind == "frames":
        mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=device).view(1, 1, 3, 1, 1)
        return (x - mean) / std
    return (x - 0.5) / 0.5


def prepare_input(
    kind: str,
    batch: np.ndarray,
    device: torch.device,
    *,
    augment: bool,
    generator: torch.Generator,
) -> torch.Tensor:
    """Turn one modality's cached batch into the encoder's input."""
    if kind == "spectrogram":
        return torch.as_tensor(np.asarray(batch)).to(device, non_blocking=True).float()
    return prepare_frames(batch, device, kind=kind, augment=augment, generator=generator)
