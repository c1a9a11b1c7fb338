"""The hook protocol every method implements; the engine's one epoch loop calls these hooks.

A method changes training only through hooks, so comparing methods never means comparing training
loops: ``setup`` once, ``loss`` per batch, ``after_backward`` between backward and the optimizer step,
``on_epoch_end`` after evaluation (it may change the model and returns extra metrics), and
``state_dict``/``load_state_dict`` so an interrupted run resumes exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from drl_tune.models import ModelOutput, MultimodalClassifier


@dataclass
class NoParams:
    """A method without hyperparameters of its own."""


class EpochContext(Protocol):
    """What the engine offers a method at the end of an epoch."""

    epoch: int
    n_classes: int
    seed: int
    optimizer: torch.optim.Optimizer

    def features(self, split: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Eval-mode pooled features of every sample of ``split`` per modality, and the labels."""
        ...


class Method:
    """Base class: joint training with cross-entropy on the fused logits, no extra behaviour."""

    name: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams

    def __init__(self, params: Any) -> None:
        self.params = params

    def setup(self, model: MultimodalClassifier, optimizer: torch.optim.Optimizer) -> None:
        """Called once, before the first epoch (not again on resume: ``load_state_dict`` is)."""

    def loss(self, outputs: ModelOutput, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs.logits, labels)

    def after_backward(self, model: nn.Module) -> None:
        """Gradients are in ``.grad``; the optimizer step follows."""

    def on_epoch_end(self, model: MultimodalClassifier, ctx: EpochContext) -> dict[str, float]:
        """After the epoch's evaluation; may change the model; returns extra metrics for this epoch."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
