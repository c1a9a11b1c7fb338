"""``python -m drl_tune.bench.data``: samples/s of the cached pipeline vs a reference-style pipeline.

Both read the same generated CREMA-D data in the layout the official code reads (``visual/<clip>/*.jpg`` at
CREMA-D's 480×360, ``audio/<clip>.pt`` fbank tensors) and deliver the same training batch: audio
spectrograms and 2 frames per clip at 224², augmented (training) or not (evaluation), as float tensors on
``--device``.

* reference: what the official DRL code does per sample — ``torch.load`` of the clip's ``.pt``, ``listdir``
  of its frame folder, PIL decode of 2 jpgs, torchvision ``RandomResizedCrop(224)`` +
  ``RandomHorizontalFlip`` + ``ToTensor`` + ``Normalize`` (evaluation: ``Resize((224, 224))``), in a
  ``DataLoader`` with ``--workers`` worker processes (persistent, so their start-up is not counted);
* cached: ``prepare`` once, then per batch a fancy index into the memory-mapped arrays and
  :func:`drl_tune.data.transforms.prepare_input` on the whole batch, with ``--workers`` torch threads,
  writing into reused output buffers as the engine does.

One run measures both and prints the ratio. It is a command, not a test: the numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from drl_tune.data import fixtures as fx
from drl_tune.data.cache import load_cache
from drl_tune.data.prepare import main as prepare
from drl_tune.data.transforms import IMAGENET_MEAN, IMAGENET_STD, BatchBuffers, prepare_input


class ReferenceCremad(Dataset):
    """Per-sample loading in the style of the official ``AVDataset_CD`` (written here, not copied)."""

    def __init__(self, root: Path, clips: list[tuple[str, int]], train: bool, frames: int = 2) -> None:
        from torchvision import transforms

        self.root, self.clips, self.train, self.frames = root, clips, train, frames
        tail = [transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
        head = ([transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip()] if train
                else [transforms.Resize(size=(224, 224))])
        self.transform = transforms.Compose(head + tail)

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        from PIL import Image

        clip, label = self.clips[idx]
        fbank = torch.load(self.root / "audio" / f"{clip}.pt", weights_only=True).unsqueeze(0)
        folder = self.root / "visual" / clip
        count = len(os.listdir(folder))
        seg = count // self.frames
        images = []
        for i in range(self.frames):
            index = random.randint(i * seg + 1, i * seg + seg) if self.train else i * seg + max(seg // 2, 1)
            with Image.open(folder / f"frame_000{index:02d}.jpg") as image:
                images.append(self.transform(image.convert("RGB")))
        return fbank, torch.stack(images), label


def generate(root: Path, clips: int, frames_per_clip: int) -> list[tuple[str, int]]:
    """``clips`` CREMA-D-layout clips with 480×360 textured jpgs and [300, 128] fbank tensors."""
    rng = np.random.default_rng(0)
    per_class = -(-clips // 6)
    names = fx.cremad_clips(per_class)[:clips]
    yy, xx = np.mgrid[0:360, 0:480]
    base = np.stack([xx * 255 / 480, yy * 255 / 360, (xx + yy) % 256], -1)
    out = []
    for k, (clip, emotion) in enumerate(names):
        label = sorted(fx.CREMAD_EMOTIONS).index(emotion)
        for i in range(frames_per_clip):
            noise = rng.normal(0, 12, (360, 480, 1))
            image = np.clip(np.roll(base, 7 * (k + i), axis=1) + noise, 0, 255).astype(np.uint8)
            fx.write_jpg(root / "visual" / clip / f"frame_000{i + 1:02d}.jpg", image, quality=90)
        (root / "audio").mkdir(parents=True, exist_ok=True)
        torch.save(torch.from_numpy(rng.standard_normal((300, 128), dtype=np.float32)), root / "audio" / f"{clip}.pt")
        out.append((clip, label))
    return out


class ReferencePipeline:
    """The reference: a DataLoader over :class:`ReferenceCremad`, batches moved to the device."""

    def __init__(self, root: Path, clips: list[tuple[str, int]], train: bool, workers: int, batch: int,
                 device: torch.device) -> None:
        self.device = device
        self.loader = DataLoader(ReferenceCremad(root, clips, train), batch_size=batch, shuffle=True,
                                 num_workers=workers, persistent_workers=workers > 0,
                                 pin_memory=device.type == "cuda")

    def epoch(self) -> int:
        count = 0
        for audio, visual, labels in self.loader:
            audio, visual, labels = audio.to(self.device), visual.to(self.device), labels.to(self.device)
            count += len(labels)
        return count


class CachedPipeline:
    """The cached pipeline: memory-mapped gather + batch-wise ``prepare_input`` on the device."""

    def __init__(self, cache: Path, train: bool, batch: int, device: torch.device, host_only: bool = False) -> None:
        self.data = load_cache(cache)
        self.split = self.data.splits["train"]
        self.train, self.batch, self.device, self.host_only = train, batch, device, host_only
        self.generator = torch.Generator().manual_seed(0)
        self.buffers = BatchBuffers()  # as the engine: each batch is used up before the next is made
        self.policy = self.data.preprocessing.get("augment") or {}
        self.aspect = self.data.preprocessing.get("source_aspect")

    def epoch(self) -> int:
        n = len(self.split)
        order = torch.randperm(n, generator=self.generator).numpy()
        for lo in range(0, n, self.batch):
            idx = order[lo : lo + self.batch]
            if self.host_only:  # what the host does when the accelerator augments: gather the uint8 batch
                for m in self.data.modalities:
                    torch.from_numpy(self.split.inputs[m][idx])
                torch.from_numpy(self.split.labels[idx])
                continue
            for m, kind in self.data.modalities.items():
                prepare_input(kind, self.split.inputs[m][idx], self.device, augment=self.train,
                              generator=self.generator, policy=self.policy.get(m), aspect=self.aspect,
                              buffers=self.buffers, key=m)
            torch.as_tensor(self.split.labels[idx]).to(self.device)
        return n


def timed(pipeline: ReferencePipeline | CachedPipeline) -> tuple[int, float]:
    start = time.perf_counter()
    count = pipeline.epoch()
    if pipeline.device.type == "cuda":
        torch.cuda.synchronize()
    return count, time.perf_counter() - start


def run_data_bench(clips: int = 512, workers: int = 2, batch_size: int = 64, epochs: int = 2,
                   device: str | torch.device = "cpu", work: Path | None = None,
                   log: Callable[[str], None] = print) -> dict[str, Any]:
    """Generate ``clips`` CREMA-D-layout clips, prepare them, and time both pipelines side by side; returns
    ``{"ratio": training (augmented) cached / reference, "eval_ratio": ..., "train": {...}, "eval": {...},
    "host_samples_per_s", ...}``."""
    device = torch.device(device)
    work = work or Path(tempfile.mkdtemp(prefix="drl_tune_bench_"))
    src, splits, cache = work / "src", work / "splits", work / "cache"

    t0 = time.perf_counter()
    clip_list = generate(src, clips, frames_per_clip=4)
    rows = [(c, sorted(fx.CREMAD_EMOTIONS)[y]) for c, y in clip_list]
    fx.write_csv(splits / "val.csv", rows[:1])  # only the training split is timed: one clip each for val, test
    fx.write_csv(splits / "test.csv", rows[1:2])
    fx.write_csv(splits / "my_train.csv", rows[2:])
    print(f"generated {len(clip_list)} clips (480x360 jpgs, [300, 128] .pt fbanks) in {time.perf_counter() - t0:.1f} s",
          file=sys.stderr)
    t0 = time.perf_counter()
    code = prepare(["cremad", "--src", str(src), "--splits", str(splits), "--out", str(cache), "--workers",
                    str(workers), "--force", "--quiet"])
    if code:
        raise RuntimeError(f"prepare cremad failed with exit status {code}")
    prep_s = time.perf_counter() - t0
    train_clips = clip_list[2:]
    print(f"prepare: {len(clip_list)} clips in {prep_s:.1f} s ({len(clip_list) / prep_s:.0f} clips/s, {workers} "
          f"workers)", file=sys.stderr)

    threads_before = torch.get_num_threads()
    torch.set_num_threads(max(1, workers))  # the cached pipeline gets as many threads as workers
    load = os.getloadavg()[0]
    result: dict[str, Any] = {"clips": len(train_clips), "batch_size": batch_size, "workers": workers,
                              "epochs": epochs, "device": str(device)}
    try:
        for train in (True, False):
            mode = "train (augment)" if train else "eval"
            ref = ReferencePipeline(src, train_clips, train, workers, batch_size, device)
            cached = CachedPipeline(cache, train, batch_size, device)
            ref.epoch()  # warm-up: worker start-up, page cache, kernels
            cached.epoch()
            totals = {"reference": [0, 0.0], "cached": [0, 0.0]}
            for _ in range(epochs):  # alternate, so a change in machine load hits both alike
                for name, pipeline in (("reference", ref), ("cached", cached)):
                    count, seconds = timed(pipeline)
                    totals[name][0] += count
                    totals[name][1] += seconds
            del ref
            rate = {name: count / seconds for name, (count, seconds) in totals.items()}
            result["train" if train else "eval"] = {"reference_samples_per_s": rate["reference"],
                                                    "cached_samples_per_s": rate["cached"],
                                                    "ratio": rate["cached"] / rate["reference"]}
            log(f"{mode:16s} reference {rate['reference']:7.0f} samples/s   cached {rate['cached']:7.0f} samples/s"
                f"   ratio {rate['cached'] / rate['reference']:5.1f}x")
        host = CachedPipeline(cache, True, batch_size, device, host_only=True)
        host.epoch()
        count, seconds = 0, 0.0
        for _ in range(epochs):
            c, s = timed(host)
            count, seconds = count + c, seconds + s
    finally:
        torch.set_num_threads(threads_before)
    host_rate = count / seconds
    result |= {"ratio": result["train"]["ratio"], "eval_ratio": result["eval"]["ratio"],
               "host_samples_per_s": host_rate, "host_ratio": host_rate / result["train"]["reference_samples_per_s"],
               "load_before": load, "load_after": os.getloadavg()[0]}
    log(f"{'host side only':16s} cached {host_rate:7.0f} samples/s (the uint8 gather an accelerator run "
        f"leaves to the host)   ratio to the train reference {result['host_ratio']:5.1f}x")
    log(f"(batch {batch_size}, {workers} DataLoader workers / torch threads, device {device}, "
        f"{len(train_clips)} clips, {epochs} timed epochs each, {os.cpu_count()} CPUs, load average "
        f"{load:.1f} -> {result['load_after']:.1f}, torch {torch.__version__})")
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m drl_tune.bench.data", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=512, help="generated CREMA-D clips (512)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers / torch threads (2)")
    p.add_argument("--batch-size", type=int, default=64, help="batch size (64, the official)")
    p.add_argument("--epochs", type=int, default=2, help="timed passes over the data per pipeline (2)")
    p.add_argument("--device", default="cpu", help="where batches are delivered and augmented (cpu, cuda)")
    p.add_argument("--work", type=Path, help="folder for the generated data and cache (default: a temp folder)")
    args = p.parse_args(argv)
    try:
        run_data_bench(args.clips, args.workers, args.batch_size, args.epochs, args.device, args.work)
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
