"""UMT: uni-modal teachers (Du, Teng, Li, Liu, Yuan, Wang, Yuan & Zhao, ICML 2023, "On Uni-Modal Feature Learning in
Supervised Multi-Modal Learning").

No official code was found; the paper is the reference and BalanceBenchmark's ``balancemm/trainer/UMT_trainer.py``
a second reading:

* teacher stage, before the first epoch (``on_epoch_start`` of epoch 0): per modality m, a uni-modal teacher — an
  encoder of m's architecture (a copy of the student's initial encoder m) with its own linear head — trained with
  CE(head(teacher(x_m))) for ``teacher_epochs`` epochs over the training split, with a fresh optimizer of the
  run's kind and settings and the run's own batches and augmentation (``ctx.train_batches``);
* then the multimodal student trains with  L = CE(fused logits) + s·Σ_m MSE(h_m, t_m),  t_m the pooled features
  teacher m gives the same batch (no gradient; the teachers frozen, in eval mode), MSE the mean over batch and
  feature dimensions (``nn.MSELoss``), s = ``distill`` (BalanceBenchmark's ``alpha`` = 1);
* the teachers live in ``model.method_modules``, so the checkpoint carries them and a resumed run distils from the
  same teachers without training them again.

Cost: the teacher stage is M·``teacher_epochs`` uni-modal epochs (each prepares and runs one modality, so together
about ``teacher_epochs`` multimodal epochs) inside epoch 0; ``diag/teacher_epochs`` reports M·teacher_epochs on
epoch 0, whose ``time/epoch_s`` includes the stage. ``teacher_epochs`` 0 (the default) = the run's ``epochs``:
teachers trained as long as the uni-modal baselines they stand for, which roughly doubles a run's cost.

Any number of modalities (one teacher each).

Departures from BalanceBenchmark's reading: (1) the teachers run in eval mode during distillation, as the issue
states (``UMT_trainer.training_step`` calls them in train mode: BatchNorm then uses batch statistics and keeps
updating the teachers' running ones); (2) the teachers are trained inside the run (BalanceBenchmark loads the
newest checkpoint of its separate ``unimodalTrainer_<m>`` runs); (3) no distillation window (BalanceBenchmark
distils while modulation_starts ≤ epoch ≤ modulation_ends, 0–80 of its 70 epochs: always).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from drl_tune.ground.domains import check_fields, param
from drl_tune.methods.base import Batch, EpochContext, EpochMeans, Method, like_optimizer
from drl_tune.models import ModelOutput, MultimodalClassifier


@dataclass
class UMTParams:
    distill: float = param(1.0, "s: weight of Σ_m MSE(student features, teacher features)", ge=0)
    teacher_epochs: int = param(0, "epochs each uni-modal teacher trains before the first epoch (0 = `epochs`); the "
                                   "stage costs about this many multimodal epochs (`diag/teacher_epochs`)", ge=0)

    def __post_init__(self) -> None:
        check_fields(self, "umt.")


def distillation_loss(student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor]) -> torch.Tensor:
    """Σ_m mean((h_m − t_m)²) over the modalities of ``teacher``."""
    return sum(F.mse_loss(student[m], teacher[m]) for m in teacher)  # type: ignore[return-value]


class UMT(Method):
    name = "umt"
    Params = UMTParams
    params: UMTParams

    def __init__(self, params: UMTParams) -> None:
        super().__init__(params)
        self.trained = False  # the teacher stage has run (restored from the checkpoint on resume)
        self._targets: dict[str, torch.Tensor] = {}
        self._diag = EpochMeans()  # diag/distill: the epoch's mean Σ_m MSE, per step
        self._teacher_report: dict[str, float] = {}

    def extra_modules(self, model: MultimodalClassifier, n_classes: int) -> dict[str, nn.Module]:
        modules: dict[str, nn.Module] = {}
        for m in model.modalities:
            modules[f"teacher_{m}"] = copy.deepcopy(model.encoders[m])
            modules[f"teacher_head_{m}"] = nn.Linear(model.feature_width(m), n_classes)
        return modules

    def on_epoch_start(self, model: MultimodalClassifier, ctx: EpochContext) -> None:
        self._diag.reset()
        if not self.trained:
            self.train_teachers(model, ctx)

    def train_teachers(self, model: MultimodalClassifier, ctx: EpochContext) -> None:
        epochs = self.params.teacher_epochs or ctx.epochs
        everyone = np.arange(ctx.n_train)
        report: dict[str, float] = {"diag/teacher_epochs": float(epochs * len(model.modalities))}
        for m in model.modalities:
            teacher, head = model.method_modules[f"teacher_{m}"], model.method_modules[f"teacher_head_{m}"]
            optimizer = like_optimizer(ctx.optimizer, [*teacher.parameters(), *head.parameters()])
            teacher.train()
            head.train()
            total: Any = 0.0
            count = 0
            for epoch in range(epochs):
                for inputs, labels in ctx.train_batches(everyone, modalities=[m]):
                    loss = F.cross_entropy(head(teacher(inputs[m])), labels)
                    if not torch.isfinite(loss):
                        raise FloatingPointError(f"UMT's {m} teacher's loss became {float(loss)}; lower lr")
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    if epoch == epochs - 1:
                        total, count = total + loss.detach() * len(labels), count + len(labels)
            optimizer.zero_grad(set_to_none=True)
            teacher.eval()
            if count:
                report[f"diag/teacher_loss_{m}"] = float(total) / count  # the last teacher epoch's mean loss
        self.trained = True
        self._teacher_report = report

    def training_step(self, model: MultimodalClassifier, batch: Batch) -> torch.Tensor | None:
        with torch.no_grad():  # frozen teachers in eval mode (the engine set the whole model to train mode)
            self._targets = {}
            for m in model.modalities:
                teacher = model.method_modules[f"teacher_{m}"]
                teacher.eval()
                self._targets[m] = teacher(batch.inputs[m])
        return super().training_step(model, batch)

    def loss(self, outputs: ModelOutput, labels: torch.Tensor) -> torch.Tensor:
        distill = distillation_loss(outputs.features, self._targets)
        self._diag.add("distill", distill)
        return F.cross_entropy(outputs.logits, labels) + self.params.distill * distill

    def on_epoch_end(self, model: MultimodalClassifier, ctx: EpochContext) -> dict[str, float]:
        metrics, self._teacher_report = dict(self._teacher_report), {}
        return metrics | self._diag.means()

    def state_dict(self) -> dict[str, Any]:
        return {"trained": self.trained}  # the teachers' weights are in the model's state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.trained = bool(state.get("trained", False))
