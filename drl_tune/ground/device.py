"""Host-to-device copies that do not stall an accelerator's queue (used by the data pipeline and the GPU path)."""

from __future__ import annotations

import torch


def to_device_async(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``x.to(device)`` that does not stall the GPU's queue: a plain copy from pageable host memory waits for
    every kernel queued before it (PyTorch synchronises the stream), so on CUDA the tensor goes through pinned
    memory and is copied non-blocking (safe: the caching host allocator keeps the pinned copy until it is read)."""
    if torch.device(device).type != "cuda" or x.device.type != "cpu":
        return x.to(device)
    return x.pin_memory().to(device, non_blocking=True)
