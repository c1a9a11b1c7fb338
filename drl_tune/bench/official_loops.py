"""What the benchmarks compare the engine against, shared by ``drl_tune.bench.cli`` (CPU sub-benchmarks) and
``drl_tune.bench.gpu`` (the one-shot GPU measurement): the official DRL script's per-sample input pipeline and
training step, a generated CREMA-D-layout cache made by the real ``prepare cremad``, and the timers' device
synchronisation (``drl_tune.bench.diagnosis_speed`` too).

A module of its own so that both benchmarks import it without importing each other (``bench`` dispatches to
``drl_tune.bench.gpu``). Nothing here imports Ray, MLflow or Optuna: the GPU machines have none of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from drl_tune.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from drl_tune.ground.modality import ModalityKind


class ReferenceSamples(Dataset):
    """Per-sample inputs the way the official DRL dataset builds them: every frame a PIL image through
    ``ToTensor`` + ``Normalize`` (+ ``RandomResizedCrop`` + flip when augmenting), the spectrogram an fp32
    tensor — from the same cached arrays the engine reads, so only the per-sample pipeline differs."""

    def __init__(self, inputs: dict[str, np.ndarray], kinds: Mapping[str, str], labels: np.ndarray, augment: bool):
        from torchvision import transforms

        self.inputs, self.kinds, self.labels = inputs, kinds, labels
        tail = [transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
        size = next(a.shape[-1] for m, a in inputs.items() if kinds[m] != ModalityKind.SPECTROGRAM)
        self.frame_transform = transforms.Compose(
            ([transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip()] if augment else []) + tail)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[dict[str, torch.Tensor], int]:
        from PIL import Image

        sample = {}
        for m, kind in self.kinds.items():
            x = np.asarray(self.inputs[m][i])
            if kind == ModalityKind.SPECTROGRAM:
                sample[m] = torch.tensor(x, dtype=torch.float32)
            else:  # uint8 [T, C, H, W] -> per frame PIL -> transform
                frames = [Image.fromarray(np.ascontiguousarray(f.transpose(1, 2, 0))) for f in x]
                sample[m] = torch.stack([self.frame_transform(f) for f in frames])
        return sample, int(self.labels[i])


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously), so a timer read next means what it says."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def trained_samples(n: int, batch_size: int) -> int:
    """Samples one training epoch of ``n`` clips trains on: the engine (and :func:`reference_epoch`) skip a last
    batch of one, on which BatchNorm cannot train."""
    return n - (n % batch_size == 1)


def reference_epoch(model: torch.nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader,
                    device: torch.device) -> int:
    """One epoch of the official-style step: fp32 forward, cross-entropy, backward, SGD step."""
    model.train()
    count = 0
    for inputs, labels in loader:
        if len(labels) < 2:  # as the engine: BatchNorm cannot train on a batch of one
            continue
        inputs = {m: x.to(device) for m, x in inputs.items()}
        labels = labels.to(device)
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(inputs).logits, labels)
        loss.backward()
        optimizer.step()
        loss.item()
        count += len(labels)
    return count


def cremad_cache(work: Path, clips: int, workers: int) -> Path:
    """``clips`` generated CREMA-D-layout clips, prepared (all but two in the training split); ``workers`` 0
    decodes in this process."""
    from drl_tune.bench.data import generate
    from drl_tune.data import fixtures as fx
    from drl_tune.data.prepare import main as prepare

    src, splits, cache = work / "src", work / "splits", work / "cache"
    if (cache / "manifest.json").is_file():
        return cache
    rows = [(c, sorted(fx.CREMAD_EMOTIONS)[y]) for c, y in generate(src, clips, frames_per_clip=4)]
    fx.write_csv(splits / "val.csv", rows[:1])
    fx.write_csv(splits / "test.csv", rows[1:2])
    fx.write_csv(splits / "my_train.csv", rows[2:])
    code = prepare(["cremad", "--src", str(src), "--splits", str(splits), "--out", str(cache), "--workers",
                    str(max(0, workers)), "--force", "--quiet"])
    if code:
        raise RuntimeError(f"prepare cremad failed with exit status {code}")
    return cache
