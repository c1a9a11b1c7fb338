"""G-Blending: gradient blending (Wang, Tran & Feiszli, CVPR 2020, "What Makes Training Multi-modal Classification
Networks Hard?").

No official code was found; the paper is the reference, BalanceBenchmark's ``balancemm/trainer/GBlending_trainer.py``
a second reading:

* model: the multimodal model plus a linear head per modality on its encoder's features (``extra_modules``);
  loss = Σ_k w_k·CE_k over the M uni-modal heads and the fused head (k = 1 … M + 1); evaluation uses the fused
  head;
* the weights come from each head's generalisation G and overfitting O (the paper's overfitting-to-generalisation
  ratio): starting from the current model, L^T_k and L^V_k (eval-mode mean CE of head k on T′ and V′) are
  measured, head k's loss alone is trained for K = ``super_epoch`` epochs on T′ (a fresh optimizer of the run's
  kind and settings, the run's batches and augmentation), and both are measured again;
  G_k = L^V_before − L^V_after, O = L^V − L^T, ΔO_k = O_after − O_before, w_k = |G_k| / ΔO_k², normalised to
  Σ_k w_k = 1. The model is then restored: the nested runs change nothing but the weights;
* T′ and V′ split the *training* split (a ``holdout`` share in V′, drawn once from the run's seed). Validation and
  test are never used, so the selection split stays untouched (BalanceBenchmark measures on its validation
  loader, which is the split it selects on);
* ``mode: online`` (the default, as BalanceBenchmark): re-estimated before epochs 0, K, 2K, …; ``offline``: once,
  before epoch 0, from the initialisation (the paper's offline G-Blend).

Cost: each estimate trains the M + 1 heads' losses for K epochs on T′ (a uni-modal head's run prepares and
forwards one modality only) and evaluates the training split 1 + (M + 1) times; ``diag/blend_epochs`` reports
the nested epochs, (M + 1)·K, on an estimate's epoch, whose ``time/epoch_s`` includes them. Online that is about
(M + 1)·(1 − holdout) nested training passes per epoch of the run, whatever K; offline it is paid once.
``diag/blend_w_<k>`` logs the weights in force (k = each modality and ``fused``).

Any number of modalities (M + 1 heads).

Choices where the paper and BalanceBenchmark leave room: the losses at both checkpoints are eval-mode means over
T′ and V′ (BalanceBenchmark sums its running training loss of the first and last nested epoch and evaluates its
validation loader after them); |G_k| as BalanceBenchmark and the issue write it (the paper's G is a decrease,
assumed positive); ΔO_k² is floored at 1e-12, and all-zero weights fall back to equal weights; the nested
optimizer starts fresh (BalanceBenchmark reloads the optimizer's initial state).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from drl_tune.ground.domains import check_fields, param
from drl_tune.methods.base import EpochContext, Method, like_optimizer
from drl_tune.models import ModelOutput, MultimodalClassifier

FUSED = "fused"
MODES = ("online", "offline")


@dataclass
class GBlendingParams:
    super_epoch: int = param(10, "K: nested epochs per weight estimate, and (online) epochs between estimates; an "
                                 "estimate costs (M + 1)·K nested epochs on the held-out split's rest "
                                 "(`diag/blend_epochs`)", ge=1)
    mode: str = param("online", "`online`: re-estimate every K epochs; `offline`: once, before epoch 0", choices=MODES)
    holdout: float = param(0.2, "share of the *training* split held out as V′ for the estimates (never val or test)",
                           gt=0, lt=1)

    def __post_init__(self) -> None:
        check_fields(self, "gblending.")


def blend_weights(before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]) -> dict[str, float]:
    """w_k ∝ |G_k| / ΔO_k² from each head's (train loss, held-out loss) before and after its nested run."""
    raw = {}
    for k, (train0, held0) in before.items():
        train1, held1 = after[k]
        g = held0 - held1
        delta_o = (held1 - train1) - (held0 - train0)
        raw[k] = abs(g) / max(delta_o * delta_o, 1e-12)
    total = sum(raw.values())
    if total == 0 or not np.isfinite(total):
        return {k: 1.0 / len(raw) for k in raw}
    return {k: w / total for k, w in raw.items()}


def holdout_split(n_train: int, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(T′, V′): sorted training indices, a ``share`` of them (at least one each side) held out."""
    order = np.random.default_rng([seed, 20200]).permutation(n_train)
    held = min(max(int(round(n_train * share)), 1), n_train - 1)
    return np.sort(order[held:]), np.sort(order[:held])


class GBlending(Method):
    name = "gblending"
    Params = GBlendingParams
    params: GBlendingParams

    def __init__(self, params: GBlendingParams) -> None:
        super().__init__(params)
        self.weights: dict[str, float] | None = None
        self.model: MultimodalClassifier | None = None
        self._nested = 0

    def extra_modules(self, model: MultimodalClassifier, n_classes: int) -> dict[str, nn.Module]:
        return {f"head_{m}": nn.Linear(model.feature_width(m), n_classes) for m in model.modalities}

    def heads(self, model: MultimodalClassifier) -> list[str]:
        return [*model.modalities, FUSED]

    @staticmethod
    def needed(model: MultimodalClassifier, heads: list[str]) -> list[str]:
        """The encoders ``heads`` read: every one for the fused head, a uni-modal head's own otherwise."""
        return list(model.modalities) if FUSED in heads else heads

    @staticmethod
    def head_logits(model: MultimodalClassifier, features: dict[str, torch.Tensor], k: str) -> torch.Tensor:
        """Head k's logits from the encoders' features (of :meth:`needed`)."""
        return model.fuse(features) if k == FUSED else model.method_modules[f"head_{k}"](features[k])

    def encode(self, model: MultimodalClassifier, inputs: dict[str, torch.Tensor], heads: list[str]
               ) -> dict[str, torch.Tensor]:
        return {m: model.encoders[m](inputs[m]) for m in self.needed(model, heads)}

    @torch.no_grad()
    def losses(self, model: MultimodalClassifier, ctx: EpochContext, indices: np.ndarray, heads: list[str]
               ) -> dict[str, float]:
        """Eval-mode mean cross-entropy of each of ``heads`` over the training samples ``indices``."""
        model.eval()
        sums: dict[str, list[torch.Tensor]] = {k: [] for k in heads}
        for inputs, labels in ctx.train_batches(indices, training=False, modalities=self.needed(model, heads)):
            features = self.encode(model, inputs, heads)
            for k in heads:
                logits = self.head_logits(model, features, k)
                sums[k].append(F.cross_entropy(logits.float(), labels, reduction="sum").double())
        return {k: float(torch.stack(v).sum()) / len(indices) for k, v in sums.items()}

    def estimate(self, model: MultimodalClassifier, ctx: EpochContext) -> dict[str, float]:
        train, held = holdout_split(ctx.n_train, self.params.holdout, ctx.seed)
        heads = self.heads(model)
        saved = {name: value.detach().clone() for name, value in model.state_dict().items()}
        start_t, start_v = self.losses(model, ctx, train, heads), self.losses(model, ctx, held, heads)
        before = {k: (start_t[k], start_v[k]) for k in heads}
        after = {}
        for k in heads:
            optimizer = like_optimizer(ctx.optimizer, model.parameters())
            for _ in range(self.params.super_epoch):
                model.train()
                for inputs, labels in ctx.train_batches(train, modalities=self.needed(model, [k])):
                    loss = F.cross_entropy(self.head_logits(model, self.encode(model, inputs, [k]), k), labels)
                    if not torch.isfinite(loss):
                        raise FloatingPointError(f"G-Blending's nested {k} loss became {float(loss)}; lower lr")
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
            after[k] = (self.losses(model, ctx, train, [k])[k], self.losses(model, ctx, held, [k])[k])
            model.load_state_dict(saved)  # the nested run leaves nothing behind
        self._nested += len(heads) * self.params.super_epoch
        return blend_weights(before, after)

    def on_epoch_start(self, model: MultimodalClassifier, ctx: EpochContext) -> None:
        self.model, self._nested = model, 0
        due = ctx.epoch % self.params.super_epoch == 0 if self.params.mode == "online" else ctx.epoch == 0
        if self.weights is None or due:
            self.weights = self.estimate(model, ctx)

    def loss(self, outputs: ModelOutput, labels: torch.Tensor) -> torch.Tensor:
        assert self.model is not None and self.weights is not None
        heads = self.model.method_modules
        total = self.weights[FUSED] * F.cross_entropy(outputs.logits, labels)
        for m in self.model.modalities:
            total = total + self.weights[m] * F.cross_entropy(heads[f"head_{m}"](outputs.features[m]), labels)
        return total

    def on_epoch_end(self, model: MultimodalClassifier, ctx: EpochContext) -> dict[str, float]:
        metrics = {f"diag/blend_w_{k}": w for k, w in (self.weights or {}).items()}
        if self._nested:
            metrics["diag/blend_epochs"] = float(self._nested)
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {} if self.weights is None else {"weights": dict(self.weights)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.weights = dict(state["weights"]) if "weights" in state else None
