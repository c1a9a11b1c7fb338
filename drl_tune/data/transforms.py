"""Batch-wise input preparation on the training device: dtype conversion, augmentation, normalisation.

Cached arrays stay uint8/float16 until they reach the device; augmentation then runs on whole batches
instead of per-sample PIL work in DataLoader workers.

What the official code does (DRL ``av_dataset.py``, OGM-GE, per frame, each call drawing new random
parameters): augmented training (DRL's mode ``'train'``, which only its *baseline* script reads; OGM-GE's
training) ``RandomResizedCrop(224)`` (scale 0.08–1, ratio 3/4–4/3, torchvision's sampling rule, 10 tries then
a centre crop) + ``RandomHorizontalFlip()`` + ``ToTensor`` + ImageNet ``Normalize``; evaluation — and DRL's own
training, mode ``'my_train'`` (``ours.py`` line 354; ``av_dataset.py`` lines 92–97) — ``Resize((224, 224))`` +
``ToTensor`` + ``Normalize``, which is what ``data.augment=false`` gives. Frames are cached already resized to the
training resolution (``Resize((224, 224))`` of the source frame, done once by ``prepare``), so here:

* evaluation = normalise the stored frame (exactly the official evaluation input);
* training (policy ``crop_flip``) = a random resized crop of the stored frame, drawn independently for
  every frame of every clip as the official per-frame transform does, resized back to the training
  resolution with bilinear interpolation, then a horizontal flip with probability 1/2. Crop boxes are
  drawn in the *source* frame's geometry (``aspect`` = source width / height, stored in the manifest as
  ``preprocessing.source_aspect``) and mapped onto the stored square, so scale and ratio mean what they
  mean in torchvision. The one difference from the official transform: the crop is upsampled from the
  stored 224² frame instead of resampled from the full-resolution source.
* policy ``flip`` (the official UCF-101 training transform, ``Resize`` + ``RandomHorizontalFlip``):
  flip only. Policy ``none``: no augmentation.

Optical flow (``flow`` kind: u, v stored as uint8 with 128 = no motion) is scaled to [-1, 1]; a flipped
flow frame also has its horizontal component negated (mirroring a scene reverses its horizontal motion;
the official UCF-101 code flips u and v independently and keeps the sign, which we do not copy).

On a CPU the crop runs frame by frame on uint8 (torch's vectorised uint8 bilinear kernel) with the
normalisation fused into the same pass; on an accelerator it is one ``roi_align`` call on the whole batch.
Both sample the same boxes with the same bilinear rule. Without augmentation, frames smaller than 64×64 are
normalised in one batched op on a CPU too (per-frame Python overhead: 4.6 ms vs 0.2 ms for 128 frames of
32², measured on 2 cores); larger ones keep the per-frame pass (16 ms vs 24 ms for 64 frames of 224²).
"""

from __future__ import annotations

import functools
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from drl_tune.ground.device import to_device_async
from drl_tune.ground.modality import ModalityKind

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
POLICIES = ("crop_flip", "flip", "none")
_LOOP_MIN_PIXELS = 64 * 64  # on a CPU, un-augmented frames at least this large are normalised per frame
_SCALE = (0.08, 1.0)
_RATIO = (3 / 4, 4 / 3)


def _crop_boxes(
    n: int, height: int, width: int, generator: torch.Generator, aspect: float | None = None
) -> torch.Tensor:
    """Per-frame RandomResizedCrop boxes [n, 4] as integer pixels (x, y, w, h) of the stored frame.

    Sampled with torchvision's rule in a virtual source frame of height ``height`` and the source aspect
    ratio (default: the stored frame's own), then mapped horizontally onto the stored frame.
    """
    aspect = width / height if aspect is None else float(aspect)
    src_h, src_w = float(height), float(height) * aspect
    area = src_h * src_w
    scale = torch.empty(n, 10).uniform_(*_SCALE, generator=generator) * area
    log_ratio = torch.empty(n, 10).uniform_(math.log(_RATIO[0]), math.log(_RATIO[1]), generator=generator)
    ratio = torch.exp(log_ratio)
    w = torch.sqrt(scale * ratio).round()
    h = torch.sqrt(scale / ratio).round()
    ok = (w > 0) & (w <= src_w) & (h > 0) & (h <= src_h)
    first = ok.float().argmax(1)
    found = ok.any(1)
    w = w.gather(1, first[:, None])[:, 0]
    h = h.gather(1, first[:, None])[:, 0]
    # fallback (no try fitted): torchvision's centre crop with the ratio clamped to the allowed range
    in_ratio = src_w / src_h
    fw: float
    fh: float
    if in_ratio < _RATIO[0]:
        fw, fh = src_w, round(src_w / _RATIO[0])
    elif in_ratio > _RATIO[1]:
        fw, fh = round(src_h * _RATIO[1]), src_h
    else:
        fw, fh = src_w, src_h
    w = torch.where(found, w, torch.full_like(w, fw))
    h = torch.where(found, h, torch.full_like(h, fh))
    u = torch.rand(n, 2, generator=generator)
    x = torch.where(found, torch.floor(u[:, 0] * (src_w - w + 1)), torch.full_like(w, (src_w - fw) // 2))
    y = torch.where(found, torch.floor(u[:, 1] * (src_h - h + 1)), torch.full_like(h, (src_h - fh) // 2))
    sx = width / src_w  # source -> stored pixels
    x0 = (x * sx).round().clamp(0, width - 1)
    w_px = (w * sx).round().clamp(min=1)
    w_px = torch.minimum(w_px, width - x0)
    return torch.stack([x0, y, w_px, h], dim=1).long()


@functools.lru_cache(maxsize=32)
def _normaliser(kind: ModalityKind, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (scale, bias) with ``uint8 * scale + bias`` = the encoder's input; built once per device
    (``torch.tensor(..., device=cuda)`` would be a synchronising copy in every batch). Read-only."""
    if kind is ModalityKind.FRAMES:
        mean = torch.tensor(IMAGENET_MEAN, device=device).view(3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=device).view(3, 1, 1)
        return 1.0 / (255.0 * std), -mean / std
    return torch.full((1, 1, 1), 2.0 / 255.0, device=device), torch.full((1, 1, 1), -1.0, device=device)


_POOL: ThreadPoolExecutor | None = None


def _empty_float(shape: tuple[int, ...]) -> torch.Tensor:
    """A float32 CPU tensor backed by a NumPy allocation: NumPy asks Linux for transparent huge pages on
    large arrays, which makes first-touching a fresh 77 MB batch about 4x cheaper than a plain torch.empty."""
    return torch.from_numpy(np.empty(shape, dtype=np.float32))


class BatchBuffers:
    """Reusable CPU output tensors for :func:`prepare_input`, one per key (e.g. modality).

    A fresh float batch of 224² frames is 77 MB; allocating it every step costs a page fault per 4 KB page
    (about as much time as the augmentation itself on 2 cores). A loop that is done with a batch before it
    asks for the next one — the engine's train and eval loops: forward, backward and step finish first —
    can hand its buffers in and get the same memory back each step. Never use it where batches outlive
    the step (e.g. a prefetching queue): the next call overwrites the previous batch.
    """

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def get(self, key: str, shape: tuple[int, ...]) -> torch.Tensor:
        """A float32 [shape] view of the key's buffer, grown when a larger batch comes."""
        size = math.prod(shape)
        buffer = self._buffers.get(key)
        if buffer is None or buffer.numel() < size:
            buffer = self._buffers[key] = _empty_float((size,))
        return buffer[:size].view(shape)


def _pool(threads: int) -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None or _POOL._max_workers != threads:
        _POOL = ThreadPoolExecutor(threads, thread_name_prefix="drl_tune-augment")
    return _POOL


def _augment_cpu(x: torch.Tensor, boxes: torch.Tensor | None, flips: torch.Tensor, kind: ModalityKind,
                 scale: torch.Tensor, bias: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 [N, C, H, W] -> normalised float, frame by frame (crop, resize, flip, normalise).

    Frames are shared out over ``torch.get_num_threads()`` Python threads, each running single-threaded
    torch ops (which release the GIL): hundreds of small OpenMP-parallel ops per batch would each pay a
    barrier, and on a CPU shared with other trials those barriers made this 20x slower.
    """
    n, c, h, w = x.shape
    out = _empty_float((n, c, h, w)) if out is None else out
    box_list = boxes.tolist() if boxes is not None else None
    flip_list = flips.tolist()

    def work(lo: int, hi: int) -> None:
        for i in range(lo, hi):
            frame = x[i : i + 1]
            if box_list is not None:
                x0, y0, bw, bh = box_list[i]
                frame = frame[:, :, y0 : y0 + bh, x0 : x0 + bw]
            if flip_list[i]:
                frame = frame.flip(-1)  # flipping the crop before resizing it = flipping the result
            if box_list is not None:  # torch's fast uint8 bilinear kernel wants channels-last
                frame = F.interpolate(frame.contiguous(memory_format=torch.channels_last), size=(h, w),
                                      mode="bilinear", antialias=True, align_corners=False)
            o = out[i]
            # one fused pass: uint8 (channels-last after the resize) -> normalised float; 3x faster than
            # copy_ + mul_ + add_, whose strided uint8->float copy_ alone took 0.42 ms per 224² frame
            torch.addcmul(bias, frame[0], scale, out=o)
            if kind is ModalityKind.FLOW and flip_list[i]:
                o[0].neg_()

    before = torch.get_num_threads()
    threads = min(before, n)
    torch.set_num_threads(1)
    try:
        if threads <= 1:
            work(0, n)
        else:
            bounds = np.linspace(0, n, threads + 1).astype(int)
            list(_pool(threads).map(work, bounds[:-1], bounds[1:]))
    finally:
        torch.set_num_threads(before)
    return out


def _augment_device(x: torch.Tensor, boxes: torch.Tensor | None, flips: torch.Tensor, kind: ModalityKind,
                    scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The same on an accelerator: one ``roi_align`` for every crop of the batch."""
    n, c, h, w = x.shape
    y = x.float()
    if boxes is not None:
        b = to_device_async(boxes, x.device).float()
        rois = torch.cat([torch.arange(n, device=x.device, dtype=torch.float32)[:, None],
                          b[:, :2], b[:, :2] + b[:, 2:]], dim=1)
        y = roi_align(y, rois, (h, w), aligned=True)
    flip = to_device_async(flips, x.device).view(n, 1, 1, 1)
    y = torch.where(flip, y.flip(-1), y)
    y = y.mul_(scale).add_(bias)
    if kind is ModalityKind.FLOW:
        y[:, 0] = torch.where(flip[:, 0], -y[:, 0], y[:, 0])
    return y


@dataclass(frozen=True)
class InputOptions:
    """How :func:`prepare_input` treats one modality's batch: augment or not, with which generator and policy,
    the source frames' aspect ratio, and where a CPU batch is written (``buffers[key]``)."""

    augment: bool
    generator: torch.Generator
    policy: str | None = None
    aspect: float | None = None
    buffers: BatchBuffers | None = None
    key: str = ""


def prepare_frames(batch: np.ndarray | torch.Tensor, device: torch.device, kind: ModalityKind,
                   opts: InputOptions) -> torch.Tensor:
    """uint8 [B, T, C, H, W] (an array, or a tensor already on ``device``) -> normalised float [B, T, C, H, W] on
    ``device``."""
    augment, generator, aspect, buffers, key = opts.augment, opts.generator, opts.aspect, opts.buffers, opts.key
    policy = opts.policy or kind.default_policy
    if policy not in POLICIES:
        raise ValueError(f"augmentation policy {policy!r} unknown; known: {', '.join(POLICIES)}")
    x = batch if isinstance(batch, torch.Tensor) else torch.as_tensor(np.asarray(batch))
    b, t, c, h, w = x.shape
    n = b * t
    scale, bias = _normaliser(kind, device)
    frames = x.reshape(n, c, h, w)
    on_cpu = torch.device(device).type == "cpu"
    out = buffers.get(key, (n, c, h, w)) if on_cpu and buffers is not None else None
    if not augment or policy == "none":
        if on_cpu and h * w >= _LOOP_MIN_PIXELS:
            no_flip = torch.zeros(n, dtype=torch.bool)
            return _augment_cpu(frames, None, no_flip, kind, scale, bias, out).view(b, t, c, h, w)
        if on_cpu:  # small frames: one batched op (the same arithmetic as the per-frame pass)
            out = _empty_float((n, c, h, w)) if out is None else out
            return torch.addcmul(bias, frames, scale, out=out).view(b, t, c, h, w)
        return x.to(device, non_blocking=True).float().mul_(scale).add_(bias)
    # every frame gets its own crop and flip, as the official per-frame transform
    boxes = _crop_boxes(n, h, w, generator, aspect) if policy == "crop_flip" else None
    flips = torch.rand(n, generator=generator) < 0.5
    if on_cpu:
        out = _augment_cpu(frames, boxes, flips, kind, scale, bias, out)
    else:
        out = _augment_device(frames.to(device, non_blocking=True), boxes, flips, kind, scale, bias)
    return out.view(b, t, c, h, w)


def prepare_input(
    kind: str,
    batch: np.ndarray | torch.Tensor,
    device: torch.device,
    *,
    augment: bool,
    generator: torch.Generator,
    policy: str | None = None,
    aspect: float | None = None,
    buffers: BatchBuffers | None = None,
    key: str = "",
) -> torch.Tensor:
    """Turn one modality's cached batch into the encoder's input.

    ``policy`` (``crop_flip`` | ``flip`` | ``none``; default by kind: frames ``crop_flip``, flow ``flip``)
    and ``aspect`` (source frame width / height) come from the dataset manifest's
    ``preprocessing["augment"][modality]`` and ``preprocessing["source_aspect"]`` when known. With
    ``buffers`` (see :class:`BatchBuffers`), a CPU batch is written into the buffer under ``key``.
    """
    kind = ModalityKind.parse(kind)
    if kind is ModalityKind.SPECTROGRAM or kind.is_features:  # read as stored (features are never augmented)
        if torch.device(device).type == "cpu":
            # torch's float16->float32 is ~2.5x NumPy's here
            spec = batch if isinstance(batch, torch.Tensor) else torch.from_numpy(np.asarray(batch))
            if buffers is None:
                return spec.float()
            return buffers.get(key, tuple(spec.shape)).copy_(spec)
        spec = batch if isinstance(batch, torch.Tensor) else torch.as_tensor(np.asarray(batch))
        return spec.to(device, non_blocking=True).float()
    return prepare_frames(batch, device, kind, InputOptions(augment, generator, policy, aspect, buffers, key))
