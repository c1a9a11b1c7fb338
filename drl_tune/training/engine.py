"""The one epoch loop every method uses.

``Engine(config).run_epoch()`` trains one epoch through the method's hooks (``on_epoch_start``,
``training_rows``, ``training_step`` per batch and the optimizer step unless the method steps itself;
methods/base.py), evaluates on val and test (the method's ``eval_logits``), lets the method act
(``on_epoch_end``), and returns the epoch's metrics under the names of docs/configuration.md ("Metrics"):

    epoch, train/loss, val/acc, val/macro_f1, val/acc_best, test/acc, test/macro_f1,
    test/acc_at_best_val, val/acc_<modality>, balance/gap, diag/* (diagnosis epochs), time/epoch_s, and the
    balance of the best-validation epoch: at_best_val/balance_gap, at_best_val/acc_<modality>

``epoch`` is the 0-based index of the epoch just finished (the official code's numbering). The best
epoch is chosen on validation accuracy only; test accuracy is reported at that epoch
(``test/acc_at_best_val``) and never used for selection.

``state_dict()`` holds everything the next epochs depend on (model, optimizer, method state such as
DRL's θ_init, RNG states, epoch, best-so-far), so a run restored from it continues exactly as the
uninterrupted run would have.
"""

from __future__ import annotations

import math
import os
import pickle
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from drl_tune.data import MultimodalData, Split, load_dataset
from drl_tune.data.transforms import BatchBuffers, prepare_input
from drl_tune.ground.errors import ConfigError
from drl_tune.ground.io import atomic_save_torch
from drl_tune.ground.metrics import accuracy, balance_gap, macro_f1, probe_accuracy
from drl_tune.methods import REGISTRY
from drl_tune.methods.base import Batch, modality_mismatch
from drl_tune.models import MultimodalClassifier
from drl_tune.models.encoders import FeatureSizes
from drl_tune.training.accel import Accel
from drl_tune.training.config import TrainConfig


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name} was asked for but no CUDA GPU is visible; use device=auto or cpu")
    return torch.device(name)


def select_modalities(data: MultimodalData, names: list[str]) -> MultimodalData:
    """``data`` restricted to ``names`` (all modalities if empty), in the dataset's order."""
    if not names:
        return data
    unknown = [m for m in names if m not in data.modalities]
    if unknown:
        raise ConfigError(f"data.modalities: {unknown[0]!r} is not a modality of {data.name!r}; it has "
                          f"{', '.join(data.modalities)}")
    keep = {m: kind for m, kind in data.modalities.items() if m in names}
    splits = {
        name: Split({m: s.inputs[m] for m in keep}, s.labels, s.clip_ids) for name, s in data.splits.items()
    }
    return MultimodalData(data.name, data.classes, keep, splits, data.preprocessing)


def build_model(config: TrainConfig, data: MultimodalData) -> MultimodalClassifier:
    """The classifier for ``data``'s modalities as ``config`` sizes it (feature encoders read their input size
    off the cached arrays)."""
    m = config.model
    sizes = FeatureSizes(m.feature_hidden, m.feature_layers, m.sequence_encoder, m.feature_heads)
    shapes = {name: tuple(data.splits["train"].inputs[name].shape[1:]) for name in data.modalities}
    return MultimodalClassifier(data.modalities, data.n_classes, m.width, config.fusion, shapes, sizes)


class Engine:
    """Trains one configuration epoch by epoch; see the module docstring."""

    def __init__(self, config: TrainConfig, data: MultimodalData | None = None) -> None:
        self.config = config
        if config.threads > 0:
            torch.set_num_threads(config.threads)
        self.device = resolve_device(config.device)
        self.data = select_modalities(data if data is not None else load_dataset(config.data), config.data.modalities)
        for split in ("train", "val", "test"):
            if split not in self.data.splits or len(self.data.splits[split]) == 0:
                raise ConfigError(f"dataset {self.data.name!r} has no (or an empty) {split!r} split")
        torch.manual_seed(config.seed)
        self.model = build_model(config, self.data)
        self.method = REGISTRY[config.method](config.params)
        mismatch = modality_mismatch(type(self.method), config.method, self.model.modalities)
        if mismatch:
            raise ConfigError(mismatch)
        extra = self.method.extra_modules(self.model, self.data.n_classes)
        if extra:  # trained, checkpointed and moved with the model (MMPareto's uni-modal heads)
            self.model.add_module("method_modules", nn.ModuleDict(extra))
        self.model.to(self.device)
        self.accel = Accel(config.perf, self.device)  # the GPU path; nothing changes on a CPU
        self.accel.prepare_model(self.model)
        self.optimizer = self._make_optimizer()
        self.method.setup(self.model, self.optimizer)
        self.generator = torch.Generator().manual_seed(config.seed)  # shuffling and augmentation
        n_train = len(self.data.splits["train"])
        order = np.random.default_rng(config.seed).permutation(n_train)
        self.probe_indices = np.sort(order[: config.eval.probe_samples])
        self.epoch = 0
        self.best = {"val/acc_best": -1.0, "test/acc_at_best_val": float("nan"), "best_epoch": -1.0}
        self._feature_cache: dict[str, tuple[dict[str, np.ndarray], np.ndarray]] = {}
        # each batch is consumed (forward, backward, step) before the next is prepared: reuse its memory
        self._buffers = BatchBuffers()
        augment_policy = self.data.preprocessing.get("augment") or {}
        self._policy = {m: augment_policy.get(m) for m in self.data.modalities}  # None: the kind's default
        self._aspect = self.data.preprocessing.get("source_aspect")

    def _make_optimizer(self) -> torch.optim.Optimizer:
        c = self.config
        if c.optimizer == "sgd":
            return torch.optim.SGD(self.model.parameters(), lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)
        return torch.optim.Adam(self.model.parameters(), lr=c.lr, weight_decay=c.weight_decay)

    @property
    def done(self) -> bool:
        return self.epoch >= self.config.epochs

    @property
    def epochs(self) -> int:
        """The run's number of epochs (EpochContext)."""
        return self.config.epochs

    # -- data ------------------------------------------------------------------------------------------

    def _batch(self, split: str, indices: np.ndarray, train: bool, modalities: list[str] | None = None
               ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        data = self.data.splits[split]
        augment = train and self.config.data.augment
        accel = self.accel
        inputs = {
            m: accel.to_device(prepare_input(
                kind, accel.gather(m, data.inputs[m], indices), accel.augment_device, augment=augment,
                generator=self.generator, policy=self._policy[m], aspect=self._aspect, buffers=self._buffers, key=m))
            for m, kind in self.data.modalities.items() if modalities is None or m in modalities
        }
        labels = accel.host_to_device(torch.as_tensor(data.labels[indices], dtype=torch.long))
        return inputs, labels

    def train_batches(self, indices: np.ndarray, training: bool = True, modalities: list[str] | None = None
                      ) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        """Batches of the training samples ``indices`` for a method's own passes (EpochContext.train_batches):
        ``training`` = the epoch's recipe (shuffled by the run's generator, batch_size, augmentation, no batch of
        one); otherwise in order, eval.batch_size, no augmentation; only ``modalities``' inputs if given."""
        indices = np.asarray(indices, dtype=np.int64)
        if not training:
            size = self.config.eval.batch_size
            for start in range(0, len(indices), size):
                yield self._batch("train", indices[start : start + size], train=False, modalities=modalities)
            return
        for chosen in self._shuffled_batches(len(indices)):
            yield self._batch("train", np.sort(indices[chosen]), train=True, modalities=modalities)

    def _shuffled_batches(self, n: int) -> Iterator[np.ndarray]:
        """Positions 0..n-1 shuffled by the run's generator, in training batches of ``batch_size`` (a batch of one is
        dropped: BatchNorm cannot train on it) — the epoch's batches and a method's own training passes alike."""
        order = torch.randperm(n, generator=self.generator).numpy()
        size = self.config.batch_size
        for start in range(0, n, size):
            chosen = order[start : start + size]
            if len(chosen) >= 2:
                yield chosen

    def _row_batches(self, rows: np.ndarray, keep: np.ndarray | None) -> Iterator[np.ndarray]:
        """The epoch's batches as positions into ``rows``: all rows shuffled together; or, for a method with
        ``batch_by_keep``, the rows of each keep pattern shuffled and batched on their own, pattern after pattern in
        the order of each pattern's first row (Data Remixing's uni-modal batches)."""
        if keep is None or not self.method.batch_by_keep:
            yield from self._shuffled_batches(len(rows))
            return
        _, first, group = np.unique(keep, axis=0, return_index=True, return_inverse=True)
        group = group.reshape(-1)
        for g in np.argsort(first, kind="stable"):
            members = np.flatnonzero(group == g)
            for chosen in self._shuffled_batches(len(members)):
                yield members[chosen]

    # -- training --------------------------------------------------------------------------------------

    def train_epoch(self) -> float:
        # before model.train(): a method may read eval-mode features here (PMR's prototypes); nothing it reads
        # before training is kept for the probe, which needs this epoch's trained model
        self.method.on_epoch_start(self.model, self)
        self._feature_cache.clear()
        self.model.train()
        rows, keep = self.method.training_rows(len(self.data.splits["train"]))
        # the loss is summed on the device and read once per epoch: a per-step .item() would make the host wait
        # for every step, so it could not gather the next batch while the GPU trains (float64: the same sum as
        # adding the float32 losses' Python floats one by one)
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        count = 0
        for chosen in self._row_batches(rows, keep):
            # rows sorted by sample index read memory-mapped arrays in file order; order inside a batch is
            # irrelevant (with the default rows, this is the sorted slice of the permutation)
            chosen = chosen[np.argsort(rows[chosen], kind="stable")]
            inputs, labels = self._batch("train", rows[chosen], train=True)
            batch_keep = None if keep is None else self.accel.host_to_device(keep[chosen])
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.method.training_step(self.model, Batch(inputs, labels, batch_keep))
            if loss is None:  # the method skipped this batch (OPM dropped every sample)
                continue
            if not self.method.steps_optimizer:  # MLA and ReconBoost step inside training_step
                self.optimizer.step()
            total += loss.detach().double() * len(chosen)
            count += len(chosen)
        mean = total.item() / max(count, 1)
        if not math.isfinite(mean):  # a non-finite step poisons the sum; the trial stops before any checkpoint
            raise FloatingPointError(
                f"training loss became {mean} at epoch {self.epoch}; lower lr (now {self.config.lr})"
            )
        return mean

    # -- evaluation ------------------------------------------------------------------------------------

    @torch.no_grad()
    def _forward(self, split: str, indices: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Eval-mode logits and pooled features of ``split`` (or of ``indices`` of it)."""
        self.model.eval()
        n = len(self.data.splits[split])
        indices = np.arange(n) if indices is None else indices
        logits: list[np.ndarray] = []
        features: dict[str, list[np.ndarray]] = {m: [] for m in self.model.modalities}
        for start in range(0, len(indices), self.config.eval.batch_size):
            inputs, _ = self._batch(split, indices[start : start + self.config.eval.batch_size], train=False)
            feats = self.method.encode_batch(self.model, inputs)  # default: model.encode
            logits.append(self.method.eval_logits(self.model, feats).float().cpu().numpy())  # default: the fused head
            for m, f in feats.items():
                features[m].append(f.float().cpu().numpy())
        all_logits, all_features = np.concatenate(logits), {m: np.concatenate(f) for m, f in features.items()}
        if not (np.isfinite(all_logits).all() and all(np.isfinite(f).all() for f in all_features.values())):
            raise FloatingPointError(
                f"the model's outputs on {split} became non-finite at epoch {self.epoch}; "
                f"lower lr (now {self.config.lr})"
            )
        return all_logits, all_features

    def features(self, split: str, indices: np.ndarray | None = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Eval-mode features of every sample of ``split`` and its labels (cached within an epoch), or of the
        samples ``indices`` of it (not cached)."""
        if indices is not None:
            _, feats = self._forward(split, indices)
            return feats, self.data.splits[split].labels[indices]
        if split not in self._feature_cache:
            _, feats = self._forward(split)
            self._feature_cache[split] = (feats, self.data.splits[split].labels)
        return self._feature_cache[split]

    def evaluate(self) -> dict[str, float]:
        metrics: dict[str, float] = {}
        n_classes = self.data.n_classes
        for split in ("val", "test"):
            logits, feats = self._forward(split)
            labels = self.data.splits[split].labels
            self._feature_cache[split] = (feats, labels)
            predictions = logits.argmax(1)
            metrics[f"{split}/acc"] = accuracy(labels, predictions)
            metrics[f"{split}/macro_f1"] = macro_f1(labels, predictions, n_classes)
        if len(self.probe_indices) == len(self.data.splits["train"]):
            probe_feats, probe_labels = self.features("train")
        else:
            _, probe_feats = self._forward("train", self.probe_indices)
            probe_labels = self.data.splits["train"].labels[self.probe_indices]
        val_feats, val_labels = self._feature_cache["val"]
        unimodal = {
            m: probe_accuracy(probe_feats[m], probe_labels, val_feats[m], val_labels) for m in self.model.modalities
        }
        metrics |= {f"val/acc_{m}": acc for m, acc in unimodal.items()}
        metrics["balance/gap"] = balance_gap(unimodal)
        return metrics

    # -- the loop --------------------------------------------------------------------------------------

    def run_epoch(self) -> dict[str, float]:
        """Train, evaluate, let the method act; returns this epoch's metrics."""
        if self.done:
            raise RuntimeError(f"all {self.config.epochs} epochs are done")
        start = time.perf_counter()
        self._feature_cache.clear()
        self.accel.epoch_start()
        metrics: dict[str, float] = {"epoch": float(self.epoch), "train/loss": self.train_epoch()}
        metrics |= self.evaluate()
        if metrics["val/acc"] > self.best["val/acc_best"]:
            # the balance of the selected epoch travels with it: a multi-objective search reads accuracy and
            # balance at the same (best-validation) epoch, never balance at the last one
            self.best = {
                "val/acc_best": metrics["val/acc"],
                "test/acc_at_best_val": metrics["test/acc"],
                "best_epoch": float(self.epoch),
                "at_best_val/balance_gap": metrics["balance/gap"],
                **{f"at_best_val/acc_{k.removeprefix('val/acc_')}": v for k, v in metrics.items()
                   if k.startswith("val/acc_") and k != "val/acc_best"},
            }
        metrics |= self.best
        metrics |= self.method.on_epoch_end(self.model, self)
        self._feature_cache.clear()
        self.epoch += 1
        metrics["time/epoch_s"] = time.perf_counter() - start
        metrics |= self.accel.epoch_metrics()  # time/gpu_mem_peak_mb on CUDA
        return metrics

    # EpochContext for the method hooks
    @property
    def n_classes(self) -> int:
        return self.data.n_classes

    @property
    def seed(self) -> int:
        return self.config.seed

    @property
    def batch_size(self) -> int:
        return self.config.batch_size

    @property
    def n_train(self) -> int:
        return len(self.data.splits["train"])

    # -- state -----------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        state = {
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "method": self.method.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "best": dict(self.best),
            "config": self.config.to_flat(),
        }
        if torch.cuda.is_available():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["config"].get("method") != self.config.method:
            raise ConfigError(
                f"checkpoint is of method {state['config'].get('method')!r}, this run is {self.config.method!r}"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.method.load_state_dict(state["method"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.best = dict(state["best"])
        self.epoch = int(state["epoch"])

    def save(self, path: str | os.PathLike) -> None:
        """Write the state atomically (a crash mid-write leaves the previous checkpoint intact)."""
        atomic_save_torch(self.state_dict(), path)

    def load(self, path: str | os.PathLike) -> None:
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
        except (OSError, EOFError, RuntimeError, pickle.UnpicklingError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConfigError(f"{path}: not a loadable checkpoint ({first[:200]}); delete it to start over") from None
        self.load_state_dict(state)
