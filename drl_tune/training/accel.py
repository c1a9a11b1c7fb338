"""The GPU path of the engine: bf16 autocast, channels_last, pinned non-blocking transfers, batch-wise
augmentation on the GPU, optional ``torch.compile``, and the per-epoch peak GPU memory.

Each switch (config block ``perf.*``, see :class:`~drl_tune.training.config.PerfConfig`) acts only when the run's
device is CUDA: on a CPU, bf16 autocast would change the arithmetic and channels_last / pinning / compiling
buy little, so a CPU run computes exactly what it computed before these switches existed (the tests check
that the losses and weights are identical with every switch on and off).

* ``bf16``: each encoder's forward runs under ``torch.autocast("cuda", torch.bfloat16)`` and hands back
  float32 features, so the fusion head, the loss, the probe and the diagnosis see float32 as before and the
  backward pass runs outside the autocast region (as PyTorch recommends). bf16 needs no loss scaling.
* ``channels_last``: model weights in NHWC; cuDNN then runs the convolutions on tensor cores without
  transposes.
* ``pin_memory``: a batch is gathered from the memory-mapped cache straight into a pinned host buffer
  (``np.take(..., out=)``: no extra copy) and copied with ``non_blocking=True``. The labels, crop boxes and
  flips travel that way on CUDA whatever this switch says (a few bytes; a plain copy would stall the GPU's
  queue, see :func:`to_device_async`). The buffers come from PyTorch's caching host allocator, which records
  each non-blocking copy and hands a buffer out again only once its copy has finished — so the engine need not
  synchronise per step and the host gathers batch i+1 while the GPU still trains on batch i (the training loop
  reads its loss once per epoch).
* ``gpu_augment``: the uint8 batch goes to the GPU first and ``data.transforms`` crops, flips and
  normalises it there in one ``roi_align`` (false: on the host CPU, then copied).
* ``compile``: ``nn.Module.compile()`` on each encoder, in place, so parameter names and checkpoints are
  unchanged.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from drl_tune.ground.device import to_device_async
from drl_tune.training.config import PerfConfig

GPU_MEM_METRIC = "time/gpu_mem_peak_mb"


def _bf16_forward(forward: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    @functools.wraps(forward)
    def run(*args: Any, **kwargs: Any) -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = forward(*args, **kwargs)
        return out.float()

    return run


class Accel:
    """What the ``perf.*`` switches resolve to on ``device``; every method is a no-op off CUDA."""

    def __init__(self, perf: PerfConfig, device: torch.device) -> None:
        self.device = device
        cuda = device.type == "cuda"
        self.bf16 = cuda and perf.bf16 and torch.cuda.is_bf16_supported()
        self.channels_last = cuda and perf.channels_last
        self.pin = cuda and perf.pin_memory
        self.compile = cuda and perf.compile
        self.cuda = cuda
        # where data.transforms augments and normalises: the run's device unless gpu_augment is off
        self.augment_device = device if (not cuda or perf.gpu_augment) else torch.device("cpu")

    def describe(self) -> dict[str, bool]:
        """The switches as they apply on this device (all false on a CPU)."""
        return {"bf16": self.bf16, "channels_last": self.channels_last, "pin_memory": self.pin,
                "gpu_augment": self.cuda and self.augment_device.type == "cuda", "compile": self.compile}

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Apply channels_last, bf16 and compile to ``model`` (a MultimodalClassifier, on its device)."""
        if self.channels_last:
            # Module.to takes memory_format (torch's own docs); its typed overloads leave it out
            model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        encoders = getattr(model, "encoders", {})
        for encoder in encoders.values():
            if self.bf16:
                encoder.forward = _bf16_forward(encoder.forward)
            if self.compile:
                encoder.compile()
        return model

    def gather(self, key: str, array: np.ndarray, indices: np.ndarray) -> np.ndarray | torch.Tensor:
        """``array[indices]``; with pinning, gathered into a pinned buffer and sent to the augmentation device
        non-blocking. ``key`` names the modality (kept for callers; the host allocator needs no name)."""
        if not self.pin:
            return array[indices]
        dtype = torch.from_numpy(np.empty(0, dtype=array.dtype)).dtype
        # not a buffer of our own reused by hand: the caching host allocator knows when its copy is done
        staged = torch.empty((len(indices), *array.shape[1:]), dtype=dtype, pin_memory=True)
        # mode='clip': with the default 'raise', NumPy gathers into a temporary and copies (engine indices are valid)
        np.take(array, indices, axis=0, out=staged.numpy(), mode="clip")
        if self.augment_device.type == "cpu":
            return staged
        return staged.to(self.augment_device, non_blocking=True)

    def host_to_device(self, x: np.ndarray | torch.Tensor) -> torch.Tensor:
        """A small host array (labels, a keep mask) on the run's device without a stream synchronisation."""
        return to_device_async(torch.as_tensor(x), self.device)

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        """A prepared input on the run's device (it already is there unless augmentation ran on the host)."""
        return x if x.device == self.device else x.to(self.device, non_blocking=self.pin)

    def epoch_start(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)

    def epoch_metrics(self) -> dict[str, float]:
        """``time/gpu_mem_peak_mb``: the epoch's peak of memory allocated by tensors on the GPU (on CUDA only);
        what a trial needs, the basis for choosing ``--gpus-per-trial``."""
        if not self.cuda:
            return {}
        return {GPU_MEM_METRIC: torch.cuda.max_memory_allocated(self.device) / 2**20}
